"""The node graph through the CLI and real daemons (issue 11): Polykey's issue 344 word for
word, the ``peer`` commands with their errors and exit codes, and a kill -9 restart."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time

import pytest

from meshkey.cli.errors import ExitCode
from tests.integration.networks import random_node_id

from .conftest import Cli

pytestmark = pytest.mark.integration


def udp_of(cli: Cli, node: str) -> str:
    """HOST:PORT of the node's UDP socket."""
    parts = cli.address(node, "udp").split("/")
    return f"{parts[2]}:{parts[4]}"


def seed_of(cli: Cli, node: str) -> str:
    return f"{cli.node_id(node)}@{udp_of(cli, node)}"


def graph(cli: Cli, node: str) -> dict[str, dict[str, object]]:
    listed = cli.json("peer", "list", "--at", node)
    return {peer["node_id"]: peer for peer in listed["peers"]}


def test_polykey_344_a_node_started_with_a_seed_is_in_the_seeds_graph(cli: Cli) -> None:
    """A node started with --seed connects to the seed; the seed's `peer list` then shows the
    node with its observed address, without any lookup having been made by the seed."""
    cli.ok("node", "create", "seed", "--udp", "127.0.0.1:0")
    assert graph(cli, "seed") == {}
    cli.ok("node", "create", "newcomer", "--seed", seed_of(cli, "seed"))
    newcomer = cli.node_id("newcomer")
    cli.wait_for(lambda: newcomer in graph(cli, "seed"), "the newcomer in the seed's graph")
    entry = graph(cli, "seed")[newcomer]
    assert entry["addresses"] == [udp_of(cli, "newcomer")]  # where its hop came from
    assert entry["learned"] == "inbound"  # the authenticated hop put it there, not a lookup
    text = cli.ok("peer", "list", "--at", "seed")
    assert newcomer in text and udp_of(cli, "newcomer") in text
    # and the newcomer holds the seed, learned as a seed
    assert graph(cli, "newcomer")[cli.node_id("seed")]["learned"] == "seed"
    assert cli.json("node", "show", "newcomer")["graph"]["peers"] >= 1


def test_peer_commands_answer_with_json_and_their_exit_codes(cli: Cli) -> None:
    cli.ok("node", "create", "green")
    seed = seed_of(cli, "green")
    cli.ok("node", "create", "blue", "--seed", seed)
    cli.ok("node", "create", "yellow", "--seed", seed)
    yellow = cli.node_id("yellow")
    cli.wait_for(lambda: yellow in graph(cli, "green"), "yellow in green's graph")

    found = cli.json("peer", "find", yellow, "--at", "blue")
    assert found["found"] and udp_of(cli, "yellow") in found["addresses"]
    assert found["lookup"]["messages"] >= 1 and found["lookup"]["duration"] > 0
    verbose = cli.ok("peer", "find", "yellow", "--at", "blue", "--verbose")  # a node's name
    assert "nodes asked:" in verbose and udp_of(cli, "yellow") in verbose

    nobody = random_node_id()
    message = cli.fails(ExitCode.NOT_FOUND, "peer", "find", nobody, "--at", "blue")
    assert "not found" in message and nobody in message
    result = cli.run("peer", "find", nobody, "--at", "blue", "--output", "json")
    assert result.returncode == ExitCode.NOT_FOUND
    assert json.loads(result.stdout)["found"] is False
    assert json.loads(result.stderr)["code"] == "not_found"
    cli.fails(ExitCode.NOT_FOUND, "peer", "ping", nobody, "--at", "blue")

    # /peer/NODEID: where the graph says the node is
    route = f"/peer/{yellow}/service/uppercase"
    assert cli.ok("message", "send", "hi", "--from", "blue", "--to", route).strip() == "HI"
    nowhere = f"/peer/{nobody}/service/echo"
    message = cli.fails(
        ExitCode.UNREACHABLE, "message", "send", "hi", "--from", "blue", "--to", nowhere
    )
    assert "knows no path" in message

    pong = cli.json("peer", "ping", yellow, "--at", "blue")
    assert pong["success"] and pong["rtt_ms"] > 0
    assert pong["path"]["transport"] == "udp" and pong["path"]["remote"] == udp_of(cli, "yellow")
    assert "Pong from" in cli.ok("peer", "ping", "yellow", "--at", "blue")

    hops = cli.json("peer", "connections", "--at", "green")
    assert {cli.node_id("blue"), yellow} <= {hop["peer"] for hop in hops}
    assert all({"transport", "remote", "direction", "age"} <= hop.keys() for hop in hops)

    cli.ok("peer", "remove", yellow, "--at", "green")
    assert yellow not in graph(cli, "green")
    cli.fails(ExitCode.NOT_FOUND, "peer", "remove", yellow, "--at", "green")
    added = cli.json("peer", "add", yellow, udp_of(cli, "yellow"), "--at", "green")
    assert added["added"] and yellow in graph(cli, "green")
    # A NodeId that the node at that address cannot prove: refused, and not in the graph.
    impostor = random_node_id()
    cli.fails(ExitCode.REFUSED, "peer", "add", impostor, udp_of(cli, "yellow"), "--at", "green")
    assert impostor not in graph(cli, "green")
    hint = cli.json("peer", "add", impostor, "127.0.0.1:9", "--no-ping", "--at", "green")
    assert not hint["added"] and impostor not in graph(cli, "green")

    assert "HOST:PORT" in cli.fails(
        ExitCode.USAGE, "peer", "add", yellow, "nowhere", "--at", "green"
    )
    cli.fails(ExitCode.USAGE, "peer", "find", "not-a-node-id", "--at", "green")
    assert "NODEID@HOST:PORT" in cli.fails(ExitCode.USAGE, "node", "create", "red", "--seed", "x")
    assert not (cli.home / "nodes" / "red").exists()


def stored_peers(cli: Cli, node: str) -> set[str]:
    with sqlite3.connect(cli.home / "nodes" / node / "state.db") as db:
        return {row[0] for row in db.execute("SELECT node_id FROM dht_peers")}


def test_a_node_killed_and_restarted_has_its_graph_and_answers_lookups(cli: Cli) -> None:
    cli.ok("node", "create", "green")
    seed = seed_of(cli, "green")
    cli.ok("node", "create", "blue", "--seed", seed)
    cli.ok("node", "create", "yellow", "--seed", seed)
    green, blue, yellow = (cli.node_id(n) for n in ("green", "blue", "yellow"))
    cli.wait_for(lambda: yellow in graph(cli, "blue"), "yellow in blue's graph (by lookups)")
    # The graph is written every few seconds: wait until it is on disk, then kill -9.
    cli.wait_for(
        lambda: {green, yellow} <= stored_peers(cli, "blue"), "blue's graph on disk", timeout=30
    )
    pid = cli.json("node", "show", "blue")["pid"]
    os.kill(pid, signal.SIGKILL)
    cli.wait_for(lambda: cli.json("node", "show", "blue")["status"] == "stopped", "blue dead")
    cli.ok("node", "stop", "green")  # its seed is down while it comes back

    cli.ok("node", "start", "blue")
    # Restored from disk at start (green, being down, may be dropped at once by the re-join).
    starts = [line for line in cli.log("blue").splitlines() if "event=dht.started" in line]
    assert len(starts) == 2 and starts[-1].endswith("peers=2"), starts
    assert yellow in graph(cli, "blue")
    assert cli.json("peer", "list", "--at", "blue")["mode"] == "server"  # kept, not re-learned
    found = cli.json("peer", "find", yellow, "--at", "blue")
    assert found["found"] and udp_of(cli, "yellow") in found["addresses"]
    # and it answers lookups: yellow finds blue through blue itself
    deadline = time.monotonic() + 30
    while True:
        again = cli.run("peer", "find", blue, "--at", "yellow", "--output", "json")
        if again.returncode == 0 and json.loads(again.stdout)["found"]:
            break
        assert time.monotonic() < deadline, (again.stderr, graph(cli, "yellow"), cli.log("blue"))
        time.sleep(0.5)
    assert udp_of(cli, "blue") in json.loads(again.stdout)["addresses"]


def test_a_node_started_before_its_seed_joins_once_the_seed_is_up(cli: Cli) -> None:
    cli.ok("node", "create", "green")
    seed = seed_of(cli, "green")
    cli.ok("node", "stop", "green")
    cli.ok("node", "create", "blue", "--seed", seed)  # the seed is down: the join fails
    cli.wait_for(lambda: "event=dht.join_retry" in cli.log("blue"), "blue retrying its join")
    assert graph(cli, "blue") == {}
    cli.ok("node", "start", "green")  # same port: the seed text still holds
    green = cli.node_id("green")
    cli.wait_for(lambda: green in graph(cli, "blue"), "blue joined through green", timeout=30)
    assert graph(cli, "blue")[green]["learned"] == "seed"
