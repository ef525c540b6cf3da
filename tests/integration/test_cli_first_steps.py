"""What a new user ran into (issue 22, bugs 2-9), each as the command that showed it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshkey.cli.errors import ExitCode

from .conftest import Cli
from .programs import echo_server, free_port

pytestmark = pytest.mark.integration


def test_a_dash_message_is_read_from_standard_input(blue_green: Cli) -> None:
    cli = blue_green
    route = "/node/blue/service/uppercase"
    assert cli.ok("message", "send", "-", "--to", route, input="hello\n") == "HELLO\n"
    assert cli.ok("message", "send", "--hex", "-", "--to", route, input="6869\n") == "4849\n"
    message = cli.fails(ExitCode.USAGE, "message", "send", "-", "--to", "-/service/echo")
    assert "standard input" in message


def test_json_errors_cover_argument_errors_and_o_is_global(blue_green: Cli) -> None:
    cli = blue_green
    for args in (
        ("message", "send", "hi", "-o", "json"),
        ("-o", "json", "message", "send", "hi"),
        ("message", "send", "--output=json"),
    ):
        result = cli.run(*args)
        assert result.returncode == ExitCode.USAGE
        error = json.loads(result.stderr)
        assert error["code"] == "invalid" and "--to" in error["error"], args
    listed = json.loads(cli.ok("-o", "json", "node", "list"))
    assert [n["name"] for n in listed] == ["blue", "green"]
    assert "NAME" in cli.ok("-o", "json", "node", "list", "-o", "text")  # the command's wins
    result = cli.run("-o", "json", "node", "show", "nosuch")
    assert json.loads(result.stderr)["exit"] == ExitCode.NOT_FOUND


def test_ctrl_c_exits_130_and_leaves_no_warning_in_the_daemon(blue_green: Cli) -> None:
    cli = blue_green
    green = cli.json("node", "show", "green")["pid"]
    os.kill(green, signal.SIGSTOP)  # green never answers: blue's send waits
    try:
        command = [sys.executable, "-m", "meshkey", "message", "send", "hi", "--from", "blue"]
        command += ["--to", "/node/green/service/echo", "--timeout", "2s"]
        process = subprocess.Popen(
            command,
            env={**os.environ, "MESHKEY_HOME": str(cli.home)},
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=10)
        assert process.returncode == int(ExitCode.INTERRUPTED) == 130, stderr
        assert stderr.strip() == "error: interrupted"
        time.sleep(2.5)  # blue's send times out and its answer finds nobody
    finally:
        os.kill(green, signal.SIGCONT)
    assert "control.bad_request" not in cli.log("blue")
    follow = subprocess.Popen(
        [sys.executable, "-m", "meshkey", "node", "logs", "blue", "--follow"],
        env={**os.environ, "MESHKEY_HOME": str(cli.home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    follow.send_signal(signal.SIGINT)
    assert follow.wait(timeout=10) == 130


def _round_trip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while data := sock.recv(1 << 16):
            received += data
    return bytes(received)


def _works(port: int) -> bool:
    try:
        return _round_trip(port, b"ping") == b"ping"
    except OSError:
        return False


def test_a_peer_restarted_under_portals_keeps_one_channel_and_closed_ones_leave_the_list(
    blue_green: Cli,
) -> None:
    cli = blue_green
    with echo_server() as port:
        cli.ok("tcp-outlet", "create", "--at", "blue", "--to", str(port))
        listen = cli.ok(
            "tcp-inlet", "create", "--at", "green", "--to", "/node/blue/secure/api/service/outlet"
        )
        inlet_port = int(listen.strip().rpartition(":")[2])
        assert _round_trip(inlet_port, b"hello") == b"hello"
        os.kill(cli.json("node", "show", "blue")["pid"], signal.SIGKILL)
        cli.ok("node", "start", "blue")
        cli.wait_for(lambda: _works(inlet_port), "the portal works again", timeout=20)
        for _ in range(5):
            assert _round_trip(inlet_port, b"again") == b"again"
        live = cli.json("secure-channel", "list", "--at", "green")
        assert len(live) == 1 and live[0]["state"] == "open", live

    # a channel its peer closed (`node stop` tells it) leaves the list; --all still has it
    channel = cli.ok(
        "secure-channel", "create", "--from", "blue", "--to", "/node/green/service/api"
    )
    cli.ok("node", "stop", "green")
    cli.wait_for(
        lambda: channel.strip() not in [c["address"] for c in cli.json("secure-channel", "list")],
        "the closed channel gone from the list",
    )
    closed = [c for c in cli.json("secure-channel", "list", "--all") if c["state"] == "closed"]
    assert channel.strip() in [c["address"] for c in closed]


def test_microsecond_round_trips_empty_log_tails_hosted_relays_and_not_found(cli: Cli) -> None:
    cli.ok("node", "create", "green")
    udp = cli.address("green", "udp").split("/")
    cli.ok("node", "create", "blue", "--seed", f"{cli.node_id('green')}@{udp[2]}:{udp[4]}")
    # round trips in microseconds (the loop's clock ticks in whole milliseconds)
    pongs = [cli.json("peer", "ping", "green", "--at", "blue") for _ in range(5)]
    assert all(p["success"] and p["path"]["kind"] == "direct" for p in pongs), pongs
    assert any(round(p["rtt_ms"] * 1000) % 1000 for p in pongs), pongs
    assert " ms" in cli.ok("peer", "ping", "green", "--at", "blue")

    assert cli.ok("node", "logs", "blue", "-n", "0") == ""
    assert len(cli.ok("node", "logs", "blue", "-n", "1").splitlines()) == 1

    cli.ok("relay", "create", "blue", "--at", "/node/green", "--to", "blue")
    [hosted] = cli.json("relay", "list", "--at", "green")
    assert (hosted["kind"], hosted["name"], hosted["to"]) == ("hosted", "blue", "blue")
    assert "hosted" in cli.ok("relay", "list", "--at", "green")
    assert cli.json("relay", "list", "--to", "green") == []
    assert [r["kind"] for r in cli.json("relay", "list", "--to", "blue")] == ["manual"]
    assert "relay 'nosuch' not found" in cli.fails(ExitCode.NOT_FOUND, "relay", "show", "nosuch")
    assert cli.json("relay", "show", "blue")["node"] == "blue"


def test_an_open_channel_carries_a_message_through_a_stopped_node_and_peer_takes_names(
    cli: Cli,
) -> None:
    for name in ("green", "blue", "yellow"):
        cli.ok("node", "create", name)
    cli.ok("relay", "create", "blue", "--at", "/node/green", "--to", "blue")
    route = "/node/green/service/forward_to_blue/secure/api/service/uppercase"
    assert cli.ok("message", "send", "hello", "--from", "yellow", "--to", route) == "HELLO\n"

    def direct() -> bool:
        channels = cli.json("secure-channel", "list", "--at", "yellow")
        return any((c.get("path") or {}).get("direct") for c in channels)

    cli.wait_for(direct, "the channel on a direct path")
    cli.ok("node", "stop", "green")
    assert cli.ok("message", "send", "again", "--from", "yellow", "--to", route) == "AGAIN\n"
    # without an open channel, a stopped node is still what it was: not running
    other = "/node/green/service/forward_to_blue/secure/other/service/echo"
    assert "not running" in cli.fails(
        ExitCode.CONFLICT, "message", "send", "x", "--from", "yellow", "--to", other
    )

    # /peer/NAME: a local node's name, as `peer find NAME` takes it
    cli.ok("node", "start", "green")
    assert (
        cli.ok("message", "send", "hi", "--from", "yellow", "--to", "/peer/blue/service/echo")
        == "hi\n"
    )
    message = cli.fails(
        ExitCode.USAGE,
        "message",
        "send",
        "x",
        "--from",
        "yellow",
        "--to",
        "/peer/nosuch/service/echo",
    )
    assert "'nosuch' is neither a NodeId" in message


def test_node_list_shows_nat_and_what_is_wrong_and_encrypt_needs_a_passphrase(
    blue_green: Cli,
) -> None:
    cli = blue_green
    listed = {n["name"]: n for n in cli.json("node", "list")}
    assert listed["blue"]["nat"]["class"] and "NAT" in cli.ok("node", "list").splitlines()[0]

    os.kill(listed["blue"]["pid"] or cli.json("node", "show", "blue")["pid"], signal.SIGKILL)
    cli.wait_for(lambda: cli.json("node", "show", "blue")["status"] != "running", "blue dead")
    blue = {n["name"]: n for n in cli.json("node", "list")}["blue"]
    assert blue["status"] == "stopped" and "ended without stopping" in blue["error"]
    assert "ended without stopping" in cli.ok("node", "list")
    cli.ok("node", "start", "blue")
    assert {n["name"]: n for n in cli.json("node", "list")}["blue"]["error"] is None

    cli.ok("node", "stop", "green")
    key = cli.home / "identities" / "green.pem"
    key.write_text(key.read_text().replace("A", "B", 3)[:60] + "\n-----END PRIVATE KEY-----\n")
    green = {n["name"]: n for n in cli.json("node", "list")}["green"]
    assert green["status"] == "broken" and "green.pem is corrupted" in green["error"]

    result = cli.run("identity", "create", "secret", "--encrypt", input="")
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert result.stderr.startswith("error: ") and "MESHKEY_PASSPHRASE" in result.stderr
    assert "Warning" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_one_convention_for_names_ports_and_help(cli: Cli, tmp_path: Path) -> None:
    cli.ok("node", "create", "blue")
    cli.ok("policy", "create", "--at", "blue", "--resource", "echo", "--allow", "blue")
    assert cli.json("policy", "show", "echo", "--at", "blue")["allow"] == [cli.node_id("blue")]
    cli.ok("policy", "delete", "echo", "--at", "blue")
    cli.fails(ExitCode.NOT_FOUND, "policy", "show", "echo", "--at", "blue")

    port = free_port()
    assert f"/tcp/{port}" in cli.ok("tcp-listener", "create", str(port), "--at", "blue")
    cli.ok("tcp-listener", "delete", str(port), "--at", "blue")

    for group in ("node", "identity", "relay", "peer", "secure-channel", "tcp-inlet"):
        commands = cli.ok(group, "--help").split("Commands:")[1]
        assert "..." not in commands, commands

    export = tmp_path / "alice.json"
    cli.ok("identity", "create", "alice")
    cli.ok("identity", "export", "alice", "--file", str(export))
    assert cli.json("identity", "import", "bob", "--file", str(export))["name"] == "bob"
    assert (
        cli.json("identity", "show", "bob")["node_id"]
        == cli.json("identity", "show", "alice")["node_id"]
    )
