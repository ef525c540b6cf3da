"""``meshkey status`` (every node at a glance) and ``peer ping --count|--watch`` (each reply
with its RTT and path, a line when the path changes), as Tailscale users expect them."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from meshkey.cli.errors import ExitCode

from .conftest import Cli
from .programs import echo_server

pytestmark = pytest.mark.integration


def seed_of(cli: Cli, node: str) -> str:
    udp = cli.address(node, "udp").split("/")
    return f"{cli.node_id(node)}@{udp[2]}:{udp[4]}"


@pytest.fixture
def relayed(cli: Cli) -> Cli:
    """green (the seed), blue and yellow (clients of the graph), yellow with a relay on green
    that its signed record names."""
    cli.ok("node", "create", "green")
    seed = seed_of(cli, "green")
    cli.ok("node", "create", "blue", "--seed", seed, "--dht-mode", "client")
    cli.ok("node", "create", "yellow", "--seed", seed, "--dht-mode", "client")
    cli.ok("relay", "create", "yellow", "--at", "/node/green", "--to", "yellow")

    def published() -> bool:
        result = cli.run("peer", "find", "yellow", "--at", "blue", "-o", "json")
        return result.returncode == 0 and bool(
            (json.loads(result.stdout).get("record") or {}).get("relays")
        )

    cli.wait_for(published, "yellow's record names its relay", timeout=40)
    return cli


def test_peer_ping_counts_and_shows_each_path(relayed: Cli) -> None:
    cli = relayed
    result = cli.run(
        "peer",
        "ping",
        "yellow",
        "--at",
        "blue",
        "--count",
        "4",
        "--interval",
        "200ms",
        "-o",
        "json",
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    replies, summary = lines[:-1], lines[-1]["summary"]
    assert (summary["sent"], summary["received"]) == (4, 4)
    assert all(r["success"] and r["path"]["description"] for r in replies)
    assert any(round(r["rtt_ms"] * 1000) % 1000 for r in replies), replies  # microseconds
    paths = [r["path"]["description"] for r in replies]
    assert [r["path_changed"] for r in replies] == [False] + [
        before != after for before, after in itertools.pairwise(paths)
    ]
    # a relayed peer is first reached through its relay on green, then (punched) directly
    assert paths[0].startswith("via relay green") or "direct" in paths[0], paths
    text = cli.ok("peer", "ping", "yellow", "--at", "blue", "--count", "2", "--interval", "100ms")
    assert text.count("pong from yellow") == 2 and "2 sent, 2 received" in text

    nobody = "mk" + "a" * 52
    assert "0 received" in cli.run("peer", "ping", nobody, "--at", "blue", "-c", "2").stdout
    cli.fails(ExitCode.USAGE, "peer", "ping", "yellow", "--count", "2", "--watch")


def test_peer_ping_watch_runs_until_interrupted(relayed: Cli) -> None:
    cli = relayed
    watch = subprocess.Popen(
        [sys.executable, "-m", "meshkey", "peer", "ping", "yellow", "--at", "blue", "--watch"],
        env={**os.environ, "MESHKEY_HOME": str(cli.home)},
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(3.5)
    watch.send_signal(signal.SIGINT)
    out, _ = watch.communicate(timeout=15)
    assert watch.returncode == 0
    assert out.count("pong from yellow") >= 2 and " received, rtt min/avg/max" in out


def test_status_shows_every_node_on_one_screen(relayed: Cli) -> None:
    cli = relayed
    with echo_server() as port:
        cli.ok("tcp-outlet", "create", "--at", "yellow", "--to", str(port))
        listen = cli.ok(
            "tcp-inlet", "create", "--at", "blue", "--to", "/peer/yellow/secure/api/service/outlet"
        ).strip()
        with socket.create_connection(("127.0.0.1", int(listen.rpartition(":")[2])), 10) as s:
            s.sendall(b"hello")
            assert s.recv(5) == b"hello"
        cli.ok("node", "stop", "green")  # a stopped node is listed too
        text = cli.ok("status")
        nodes = {n["name"]: n for n in cli.json("status")}
    blocks = {block.split()[0]: block for block in text.split("\n\n")}
    assert set(blocks) == {"blue", "green", "yellow"}
    assert "stopped" in blocks["green"].splitlines()[0]
    assert "NAT " in blocks["blue"] and "graph client" in blocks["blue"]
    assert "yellow at /node/green" in blocks["yellow"] and "auto relay" in blocks["yellow"]
    assert "channel" in blocks["blue"] and "yellow (" in blocks["blue"]
    assert "inlet" in blocks["blue"] and "open of 1" in blocks["blue"]
    assert "outlet" in blocks["yellow"] and "5 B to the server" in blocks["yellow"]
    [channel] = nodes["blue"]["channels"]
    assert channel["way"]["kind"] in ("relay", "direct") and channel["state"] == "open"
    assert nodes["yellow"]["tcp_outlets"][0]["bytes_to_server"] == 5
    assert nodes["green"]["status"] == "stopped"
