"""Node and identity lifecycle through the real CLI and real daemons."""

from __future__ import annotations

import os
import signal
import stat
import time

import pytest

from meshkey.cli.errors import ExitCode

from .conftest import Cli

pytestmark = pytest.mark.integration


def test_identity_commands(cli: Cli) -> None:
    created = cli.json("identity", "create", "alice")
    assert len(created["node_id"]) == 54 and created["node_id"].startswith("mk")
    key = cli.home / "identities" / "alice.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert cli.json("identity", "show", "alice") == created
    assert [i["name"] for i in cli.json("identity", "list")] == ["alice"]
    assert created["node_id"] in cli.ok("identity", "show", "alice")
    assert "already exists" in cli.fails(ExitCode.CONFLICT, "identity", "create", "alice")
    assert "no identity" in cli.fails(ExitCode.NOT_FOUND, "identity", "show", "bob")
    assert "invalid identity name" in cli.fails(ExitCode.USAGE, "identity", "create", "a/b")
    key.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    assert "corrupted" in cli.fails(ExitCode.FAILURE, "node", "create", "n1", "--identity", "alice")


def test_node_lifecycle(cli: Cli) -> None:
    created = cli.json("node", "create", "blue")
    assert created["services"] == ["api", "dht", "echo", "hop", "relay", "uppercase"]
    udp, tcp = created["addresses"]
    assert udp.startswith("/ip4/127.0.0.1/udp/") and f"/id/{created['node_id']}" in udp
    assert tcp.startswith("/ip4/127.0.0.1/tcp/") and f"/id/{created['node_id']}" in tcp
    # Create again on a running node is refused, as in Ockam (a configuration converges it)...
    assert "already running" in cli.fails(ExitCode.CONFLICT, "node", "create", "blue")
    # ...and so is one that asks for something else than the node is.
    assert "udp is" in cli.fails(
        ExitCode.CONFLICT, "node", "create", "blue", "--udp", "127.0.0.1:1"
    )

    listed = cli.json("node", "list")
    assert [(n["name"], n["status"], n["node_id"]) for n in listed] == [
        ("blue", "running", created["node_id"])
    ]
    assert "running" in cli.ok("node", "list")

    assert "is running" in cli.fails(ExitCode.CONFLICT, "node", "delete", "blue")
    assert "already running" in cli.fails(ExitCode.CONFLICT, "node", "start", "blue")
    cli.ok("node", "stop", "blue")
    assert "not running" in cli.fails(ExitCode.CONFLICT, "node", "stop", "blue")
    assert cli.json("node", "show", "blue")["status"] == "stopped"
    assert "started" in cli.ok("node", "create", "blue")  # create starts a stopped node
    cli.ok("node", "stop", "blue")

    restarted = cli.json("node", "start", "blue")
    assert restarted["node_id"] == created["node_id"]
    assert restarted["addresses"] == [udp, tcp]  # the same ports: they were free
    assert "event=daemon.ready" in cli.ok("node", "logs", "blue")

    cli.ok("node", "delete", "blue", "--force")
    assert cli.json("node", "list") == []
    assert "no node" in cli.fails(ExitCode.NOT_FOUND, "node", "show", "blue")
    assert "no node" in cli.fails(ExitCode.NOT_FOUND, "node", "start", "blue")
    # The identity outlives the node, so a node created again under the name keeps its NodeId.
    assert cli.json("node", "create", "blue")["node_id"] == created["node_id"]


def test_node_with_named_identity_and_fixed_port(
    cli: Cli, unused_tcp_port: int, unused_udp_port: int
) -> None:
    identity = cli.json("identity", "create", "shared")
    node = cli.json(
        "node",
        "create",
        "n1",
        "--identity",
        "shared",
        "--tcp",
        f"127.0.0.1:{unused_tcp_port}",
        "--udp",
        f"127.0.0.1:{unused_udp_port}",
    )
    assert node["node_id"] == identity["node_id"]
    assert node["addresses"][0].startswith(f"/ip4/127.0.0.1/udp/{unused_udp_port}/")
    assert node["addresses"][1].startswith(f"/ip4/127.0.0.1/tcp/{unused_tcp_port}/")
    assert "is used by node(s) n1" in cli.fails(ExitCode.CONFLICT, "identity", "delete", "shared")
    # Same port again: the node cannot start, and no half-made node is left behind.
    assert "address already in use" in cli.fails(
        ExitCode.FAILURE, "node", "create", "n2", "--tcp", f"127.0.0.1:{unused_tcp_port}"
    )
    assert [n["name"] for n in cli.json("node", "list")] == ["n1"]
    assert "no identity" in cli.fails(ExitCode.NOT_FOUND, "node", "create", "n3", "--identity", "x")
    assert "HOST:PORT" in cli.fails(ExitCode.USAGE, "node", "create", "n4", "--tcp", "nope")
    assert "invalid node name" in cli.fails(ExitCode.USAGE, "node", "create", "../n5")


def test_sigkill_then_start_brings_back_the_same_node(cli: Cli) -> None:
    created = cli.json("node", "create", "blue")
    pid = created["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while cli.json("node", "show", "blue")["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    restarted = cli.json("node", "start", "blue")
    assert restarted["pid"] != pid
    assert restarted["node_id"] == created["node_id"]
    assert restarted["services"] == created["services"]
    assert cli.ok("message", "send", "hi", "--to", "/node/blue/service/uppercase").strip() == "HI"


def test_delete_all(cli: Cli) -> None:
    cli.ok("node", "create", "a")
    cli.ok("node", "create", "b")
    cli.ok("node", "stop", "b")
    result = cli.run("node", "delete", "--all")
    assert result.returncode == ExitCode.CONFLICT  # a is running: refused, b deleted
    assert [n["name"] for n in cli.json("node", "list")] == ["a"]
    cli.ok("node", "delete", "--all", "--force")
    assert cli.json("node", "list") == []
    assert "NAME or --all" in cli.fails(ExitCode.USAGE, "node", "delete")


def test_help_explains_commands_and_exit_codes(cli: Cli) -> None:
    top = cli.ok("--help")
    assert "Exit codes" in top and "node" in top and "message" in top
    assert "ROUTE" in cli.ok("message", "send", "--help")
    assert "--foreground" in cli.ok("node", "create", "--help")


def test_foreground_node_runs_until_stopped(cli: Cli) -> None:
    import subprocess
    import sys

    env = {**os.environ, "MESHKEY_HOME": str(cli.home)}
    process = subprocess.Popen(
        [sys.executable, "-m", "meshkey", "node", "create", "fg", "--foreground"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            nodes = cli.json("node", "list")
            if nodes and nodes[0]["status"] == "running":
                break
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert cli.ok("message", "send", "fg", "--to", "/node/fg/service/uppercase") == "FG\n"
        cli.ok("node", "stop", "fg")
        assert process.wait(10) == 0
        assert process.stderr is not None
        assert "event=daemon.ready" in process.stderr.read()  # foreground logs go to stderr
    finally:
        if process.poll() is None:
            process.kill()


def _ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_ipv6_and_dns_routes(cli: Cli) -> None:
    node = cli.json("node", "create", "v6", "--tcp", "[::1]:0", "--udp", "[::1]:0")
    for address, protocol in zip(node["addresses"], ("udp", "tcp"), strict=True):
        assert address.startswith(f"/ip6/::1/{protocol}/")
        assert cli.ok("message", "send", "six", "--to", f"{address}/service/uppercase") == "SIX\n"
    assert cli.ok("message", "send", "v6", "--to", "/node/v6/node/v6/service/echo") == "v6\n"
    v4 = cli.json("node", "create", "v4")
    v4_port = v4["addresses"][1].split("/")[4]
    dns = f"/dns/localhost/tcp/{v4_port}"
    assert cli.ok("message", "send", "dns", "--to", f"{dns}/service/uppercase") == "DNS\n"
    pinned_right = f"{dns}/id/{v4['node_id']}/service/echo"
    assert cli.ok("message", "send", "pin", "--to", pinned_right) == "pin\n"
    pinned_wrong = f"{dns}/id/{node['node_id']}/service/echo"
    assert "presented NodeId" in cli.fails(
        ExitCode.REFUSED, "message", "send", "x", "--to", pinned_wrong
    )


def test_a_seed_on_another_machine_makes_the_node_listen_where_it_can_be_reached(
    cli: Cli,
) -> None:
    """DESIGN.md decision 14: a node given a seed off loopback listens on all interfaces
    (the seed must be able to dial back); a loopback listener with such a seed is refused
    with the fix, at create, before anything is left half-made."""
    from meshkey.transport.interfaces import interface_addresses

    outside = [a for a in interface_addresses() if not a.startswith("127.")]
    if not outside:
        pytest.skip("this machine has no address besides loopback")
    seed = cli.json("node", "create", "seed", "--udp", "0.0.0.0:0", "--tcp", "0.0.0.0:0")
    udp_port = int(seed["addresses"][0].split("/")[4])
    seed_arg = f"{seed['node_id']}@{outside[0]}:{udp_port}"
    refused = cli.fails(
        ExitCode.USAGE, "node", "create", "blue", "--seed", seed_arg, "--udp", "127.0.0.1:0"
    )
    assert "loopback only" in refused and "leave --udp out" in refused
    assert "no node named" in cli.fails(ExitCode.NOT_FOUND, "node", "show", "blue")

    blue = cli.json("node", "create", "blue", "--seed", seed_arg)
    udp_addresses = [a for a in blue["addresses"] if "/udp/" in a]
    # One address per interface, none of them the wildcard: each is one a peer can dial.
    assert any(f"/ip4/{outside[0]}/udp/" in a for a in udp_addresses), blue["addresses"]
    assert not any("0.0.0.0" in a for a in blue["addresses"])
    # /node/blue still works on this machine (the wildcard is reached over loopback).
    assert cli.ok("message", "send", "hi", "--to", "/node/blue/service/uppercase").strip() == "HI"
    # And the seed, which can reach it, lists it in its graph once it joined.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        peers = cli.json("peer", "list", "--at", "seed")
        if any(p["node_id"] == blue["node_id"] for p in peers["peers"]):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"blue never joined through {seed_arg}: {peers}")
    cli.ok("node", "delete", "--all", "--force")


def test_a_join_nobody_answers_is_warned_about_at_create_and_shown_by_node_show(
    cli: Cli,
) -> None:
    """Issue 18: a seed that does not answer is visible at once, never retried in silence."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # a UDP port where nobody answers
        port = silent.getsockname()[1]
        ghost = cli.json("identity", "create", "ghost")["node_id"]  # a NodeId nobody runs
        seed = f"{ghost}@127.0.0.1:{port}"
        result = cli.run("node", "create", "lonely", "--seed", seed)
        assert result.returncode == 0, result.stderr
        assert "has not joined the node graph yet" in result.stderr
        assert f"127.0.0.1:{port}: no answer for" in result.stderr
        shown = cli.ok("node", "show", "lonely")
        assert "graph" in shown and "joining (seed 127.0.0.1:" in shown
    cli.ok("node", "delete", "--all", "--force")
