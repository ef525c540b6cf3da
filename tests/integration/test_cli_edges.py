"""The CLI's and API's rough edges, tried as a new user would (issue 9): races, bad homes,
broken and frozen nodes, binary payloads, JSON everywhere, one convention for options."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from meshkey import InvalidNodeIdError, MeshkeyError, Node, RemoteError, RouteError
from meshkey.cli.errors import ExitCode
from meshkey.wire.frames import MAX_PAYLOAD
from meshkey.wire.message import ErrorCode

from .conftest import Cli

pytestmark = pytest.mark.integration


def in_parallel(cli: Cli, count: int, *args: str) -> list[subprocess.CompletedProcess[str]]:
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: cli.run(*args), range(count)))


def test_parallel_creates_and_starts_have_exactly_one_winner(cli: Cli) -> None:
    results = in_parallel(cli, 5, "identity", "create", "alice", "--output", "json")
    winners = [r for r in results if r.returncode == 0]
    assert len(winners) == 1, [r.stderr for r in results]
    assert all(r.returncode == ExitCode.CONFLICT for r in results if r not in winners)
    survivor = cli.json("identity", "show", "alice")["node_id"]
    assert json.loads(winners[0].stdout)["node_id"] == survivor

    cli.ok("node", "create", "blue")
    cli.ok("node", "stop", "blue")
    starts = in_parallel(cli, 5, "node", "start", "blue")
    assert sorted(r.returncode for r in starts) == [0] + [ExitCode.CONFLICT] * 4, [
        r.stderr for r in starts
    ]
    creates = in_parallel(cli, 4, "node", "create", "green")
    assert all(r.returncode in (0, ExitCode.CONFLICT) for r in creates), [r.stderr for r in creates]
    assert [n["name"] for n in cli.json("node", "list")] == ["blue", "green"]
    assert cli.json("node", "show", "green")["status"] == "running"


@pytest.mark.parametrize("home", ["/proc/meshkey-test", "/dev/null/x", "FILE/sub"])
def test_a_state_directory_that_cannot_be_made_is_one_line_and_exit_2(
    tmp_path: Path, home: str
) -> None:
    if home.startswith("FILE"):
        (tmp_path / "FILE").write_text("not a directory")
        home = str(tmp_path / home)
    cli = Cli(Path(home))
    message = cli.fails(ExitCode.USAGE, "identity", "create", "alice")
    assert home.split("/")[1] in message or "directory" in message.lower()


def test_a_broken_node_is_listed_as_broken_and_a_frozen_one_is_named(cli: Cli) -> None:
    for name in ("blue", "green", "yellow"):
        cli.ok("node", "create", name)
    cli.ok("relay", "create", "blue", "--at", "/node/green", "--to", "blue")
    cli.ok("node", "stop", "yellow")
    (cli.home / "nodes" / "yellow" / "state.db").write_bytes(b"this is not sqlite" * 100)
    listed = {n["name"]: n for n in cli.json("node", "list")}
    assert listed["yellow"]["status"] == "broken" and "unusable" in listed["yellow"]["error"]
    assert listed["blue"]["status"] == listed["green"]["status"] == "running"
    pid = cli.json("node", "show", "green")["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        result = cli.run("relay", "list", "--output", "json")
        assert result.returncode == 0, result.stderr
        assert "node green" in result.stderr and "did not answer" in result.stderr
        assert [r["name"] for r in json.loads(result.stdout)] == ["blue"]
    finally:
        os.kill(pid, signal.SIGCONT)


def test_binary_payloads_go_through_the_cli_faithfully(blue_green: Cli, tmp_path: Path) -> None:
    cli = blue_green
    payload = bytes(range(256)) * 64 + b"\xff\xfe"
    source = tmp_path / "payload.bin"
    source.write_bytes(payload)
    route = "/node/blue/service/echo"
    raw = subprocess.run(
        [sys.executable, "-m", "meshkey", "message", "send", "--file", str(source), "--to", route],
        capture_output=True,
        env={**os.environ, "MESHKEY_HOME": str(cli.home)},
        check=False,
    )
    assert raw.returncode == 0, raw.stderr
    assert raw.stdout == payload  # a pipe gets the bytes as they are
    reply = cli.json("message", "send", "--file", "-", "--from", "green", "--to", route)
    assert reply["encoding"] == "utf-8" and reply["reply"] == ""  # stdin was empty
    piped = cli.run(
        "message", "send", "--file", "-", "--to", route, "--output", "json", input="hi there"
    )
    assert json.loads(piped.stdout)["reply"] == "hi there"
    as_json = cli.json("message", "send", "--file", str(source), "--to", route)
    assert as_json["encoding"] == "base64" and base64.b64decode(as_json["reply"]) == payload
    assert "over the" in cli.fails(
        ExitCode.USAGE,
        "message",
        "send",
        "--file",
        "-",
        "--to",
        route,
        input="x" * (MAX_PAYLOAD + 1),
    )


def test_routes_are_checked_before_anything_is_sent(blue_green: Cli) -> None:
    cli = blue_green
    message = cli.fails(ExitCode.USAGE, "message", "send", "x", "--to", "/node/blue")
    assert "ends at a node" in message and "/node/blue/service/echo" in message
    long_route = "/service/hop" * 33 + "/service/echo"
    assert "the limit is 32" in cli.fails(
        ExitCode.USAGE, "message", "send", "x", "--from", "blue", "--to", long_route
    )


def test_errors_are_json_with_output_json_and_help_is_success(cli: Cli) -> None:
    result = cli.run("node", "show", "nosuch", "--output", "json")
    assert result.returncode == ExitCode.NOT_FOUND
    error = json.loads(result.stderr)
    assert error["code"] == "not_found" and "nosuch" in error["error"] and error["exit"] == 3
    bare = cli.run()
    assert bare.returncode == 0 and "Usage: meshkey" in bare.stdout
    assert "DURATION" in cli.ok("message", "send", "--help")
    assert "invalid duration" in cli.fails(
        ExitCode.USAGE, "message", "send", "x", "--to", "/service/echo", "--timeout", "2h"
    )


def test_node_logs_options(cli: Cli) -> None:
    cli.ok("node", "create", "blue")
    assert "--lines -5" in cli.fails(ExitCode.USAGE, "node", "logs", "-n", "-5")
    cli.run("message", "send", "x", "--from", "blue", "--to", "/ip4/127.0.0.1/tcp/1/service/x")
    records = [json.loads(line) for line in cli.ok("node", "logs", "-o", "json").splitlines()]
    assert any(r.get("event") == "daemon.ready" for r in records)
    assert all("time" in r for r in records)
    warnings = cli.ok("node", "logs", "--level", "warning", "-n", "all")
    assert all("level=warning" in line or "level=error" in line for line in warnings.splitlines())


def test_a_missing_control_socket_gives_one_truth(cli: Cli) -> None:
    cli.ok("node", "create", "blue")
    (cli.home / "nodes" / "blue" / "control.sock").unlink()
    assert cli.json("node", "list")[0]["status"] == "running"
    shown = cli.json("node", "show", "blue")
    assert shown["status"] == "running" and "control socket is missing" in shown["control"]
    assert "already running" in cli.fails(ExitCode.CONFLICT, "node", "start", "blue")
    assert "control socket is missing" in cli.fails(
        ExitCode.FAILURE, "message", "send", "x", "--from", "blue", "--to", "/service/echo"
    )
    cli.ok("node", "stop", "blue")  # still stoppable (by its pid)
    assert cli.json("node", "show", "blue")["status"] == "stopped"


def test_policies_refuse_what_would_lock_everyone_out_and_take_names(blue_green: Cli) -> None:
    cli = blue_green
    assert "secure channel listener" in cli.fails(
        ExitCode.USAGE, "policy", "create", "--at", "blue", "--resource", "api", "--allow", "green"
    )
    assert "invalid resource" in cli.fails(
        ExitCode.USAGE, "policy", "create", "--at", "blue", "--resource", "a/b", "--allow", "green"
    )
    later = cli.run("policy", "create", "--at", "blue", "--resource", "later", "--allow", "green")
    assert later.returncode == 0 and "warning: there is no service 'later'" in later.stderr
    created = cli.json("policy", "create", "--at", "blue", "--resource", "echo", "--allow", "green")
    assert created["allow"] == [cli.node_id("green")]  # the name was resolved
    shown = cli.json("policy", "show", "--at", "blue", "--resource", "echo")
    assert shown["allow"] == created["allow"]
    assert "neither a NodeId nor" in cli.fails(
        ExitCode.USAGE, "policy", "create", "--at", "blue", "--resource", "echo", "--allow", "x"
    )


def test_identities_move_between_homes(cli: Cli, tmp_path: Path) -> None:
    created = cli.json("identity", "create")  # the default name
    assert created["name"] == "default" and created["default"] is True
    cli.ok("identity", "create", "other")
    assert cli.json("identity", "default") == {"default": "default"}
    cli.ok("identity", "default", "other")
    assert cli.json("identity", "show")["name"] == "other"
    exported = cli.ok("identity", "export", "default")
    elsewhere = Cli(tmp_path / "elsewhere")
    imported = elsewhere.json("identity", "import", input=exported)
    assert imported["node_id"] == created["node_id"] and imported["name"] == "default"
    assert "already exists" in elsewhere.fails(
        ExitCode.CONFLICT, "identity", "import", input=exported
    )
    env = {"MESHKEY_PASSPHRASE": "secret words"}
    cli.ok("identity", "create", "locked", "--encrypt", env=env)
    locked = json.loads(cli.ok("identity", "export", "locked"))
    assert locked["encrypted"] is True and "ENCRYPTED" in locked["key"]
    stored = elsewhere.json("identity", "import", "--name", "moved", input=json.dumps(locked))
    assert stored["encrypted"] is True
    assert "not a meshkey identity export" in elsewhere.fails(
        ExitCode.USAGE, "identity", "import", input="{nope"
    )


def test_a_configuration_file_sets_up_a_node_again_and_again(cli: Cli, tmp_path: Path) -> None:
    cli.ok("node", "create", "green")
    cli.ok("node", "create", "yellow")
    config = tmp_path / "blue.toml"
    config.write_text(
        """
[node]
name = "blue"
seeds = ["${SEED}"]

[[tcp_listeners]]
address = "127.0.0.1:0"

[[listeners]]
address = "private"
authorized = ["${FRIEND}"]

[[relays]]
name = "blue"
at = "/node/green"

[[policies]]
resource = "echo"
allow = ["yellow"]
"""
    )
    udp = cli.address("green", "udp").split("/")
    seed = f"SEED={cli.node_id('green')}@{udp[2]}:{udp[4]}"
    for _ in range(2):  # a second run finds everything in place and changes nothing
        cli.ok(
            "node",
            "create",
            "--configuration",
            str(config),
            "--variable",
            "FRIEND=yellow",
            "--variable",
            seed,
        )
    listeners = cli.json("secure-channel-listener", "list", "--at", "blue")
    assert {tuple(item["authorized"] or ()) for item in listeners} == {
        (),
        (cli.node_id("yellow"),),
    }
    assert [r["status"] for r in cli.json("relay", "list", "--at", "blue")] == ["active"]
    assert cli.json("policy", "show", "--at", "blue", "--resource", "echo")["allow"] == [
        cli.node_id("yellow")
    ]
    assert len(cli.json("tcp-listener", "list", "--at", "blue")) >= 2

    def joined() -> dict[str, str]:
        peers = cli.json("peer", "list", "--at", "blue")["peers"]
        return {peer["node_id"]: peer["learned"] for peer in peers}

    cli.wait_for(lambda: cli.node_id("green") in joined(), "blue joined through its seed")
    assert joined()[cli.node_id("green")] == "seed"
    missing = tmp_path / "missing.yaml"
    missing.write_text("listeners:\n  - address: x\n    authorized: ['${NOPE}']\n")
    assert "${NOPE} is not set" in cli.fails(
        ExitCode.USAGE, "node", "create", "x", "--configuration", str(missing)
    )
    bad_mode = tmp_path / "mode.toml"
    bad_mode.write_text('[node]\ndht_mode = "always"\n')
    assert "dht_mode is one of" in cli.fails(
        ExitCode.USAGE, "node", "create", "x", "--configuration", str(bad_mode)
    )
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("relays:\n  - name: x\n    via: y\n")
    assert "unknown key(s) via" in cli.fails(
        ExitCode.USAGE, "node", "create", "x", "--configuration", str(wrong)
    )


def test_tcp_listeners_are_added_kept_and_removed(cli: Cli) -> None:
    cli.ok("node", "create", "blue")
    route = cli.ok("tcp-listener", "create", "127.0.0.1:0", "--at", "blue").strip()
    assert "/tcp/" in route
    assert cli.ok("message", "send", "x", "--to", f"{route}/service/echo") == "x\n"
    port = route.split("/tcp/")[1].split("/")[0]
    cli.ok("node", "stop", "blue")
    cli.ok("node", "start", "blue")
    addresses = [item["address"] for item in cli.json("tcp-listener", "list")]
    assert f"127.0.0.1:{port}" in addresses
    assert cli.json("tcp-connection", "list") == []
    cli.ok("tcp-listener", "delete", f"127.0.0.1:{port}")
    assert "has no TCP listener" in cli.fails(
        ExitCode.NOT_FOUND, "tcp-listener", "delete", f"127.0.0.1:{port}"
    )


def test_one_failure_one_exit_code_whichever_command(blue_green: Cli) -> None:
    cli = blue_green
    for command in (
        ("relay", "create", "x", "--at", "/node/nosuch", "--to", "blue"),
        ("message", "send", "x", "--to", "/node/nosuch/service/echo"),
        ("message", "send", "x", "--from", "green", "--to", "/node/nosuch/service/echo"),
        ("secure-channel", "create", "--from", "green", "--to", "/node/nosuch/service/api"),
    ):
        assert "no node named 'nosuch'" in cli.fails(ExitCode.NOT_FOUND, *command)
    cli.ok("node", "stop", "blue")
    for command in (
        ("message", "send", "x", "--to", "/node/blue/service/echo"),
        ("message", "send", "x", "--from", "green", "--to", "/node/blue/service/echo"),
    ):
        assert "not running" in cli.fails(ExitCode.CONFLICT, *command)


async def test_the_python_api_takes_node_ids_as_text_and_raises_one_kind_of_error() -> None:
    async with Node() as server, Node(tcp=None) as client:
        server.set_policy("echo", [str(client.node_id)])  # text works
        with pytest.raises(InvalidNodeIdError):
            server.set_policy("echo", ["garbage"])
        with pytest.raises(RouteError) as bad:
            await client.send("/nope/x", b"")
        assert isinstance(bad.value, MeshkeyError)
        server.register_service("big", lambda payload: b"z" * (MAX_PAYLOAD + 1))
        with pytest.raises(RemoteError) as large:
            await client.send(f"{server.addresses[0]}/service/big", b"", timeout=5)
        assert large.value.code == ErrorCode.TOO_LARGE and "over the" in large.value.text
