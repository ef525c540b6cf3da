"""Ockam's forwarder session, exactly as written, through real daemons and the CLI; relays
across restarts; secure channel authorization; policies."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from meshkey.cli.errors import ExitCode
from meshkey.routing.message import Message

from .conftest import Cli

pytestmark = pytest.mark.integration

TO_BLUE = "/node/green/service/forward_to_blue"


def captured(path: Path) -> list[bytes]:
    data, messages = path.read_bytes(), []
    while data:
        (size,) = struct.unpack("!I", data[:4])
        messages.append(data[4 : 4 + size])
        data = data[4 + size :]
    return messages


def relay_status(cli: Cli, node: str = "blue") -> str:
    status: str = cli.json("relay", "show", "blue", "--to", node)["status"]
    return status


@pytest.mark.parametrize("hops", ["udp", "tcp"])
def test_the_forwarder_session_and_the_relay_sees_only_ciphertext(
    cli: Cli, tmp_path: Path, hops: str
) -> None:
    """Word for word with ``/node/green`` (UDP hops); with green's TCP address (TCP hops)."""
    capture = tmp_path / "green.capture"
    cli.ok("node", "create", "blue")
    cli.ok("node", "create", "green", env={"MESHKEY_CAPTURE": str(capture)})
    green = "/node/green" if hops == "udp" else cli.address("green", "tcp")
    to_blue = f"{green}/service/forward_to_blue"
    assert cli.ok("relay", "create", "blue", "--at", green, "--to", "/node/blue") == (
        "/service/forward_to_blue\n"
    )
    assert cli.ok("message", "send", "hello", "--to", f"{to_blue}/service/uppercase") == "HELLO\n"
    transports = {c["transport"] for c in cli.json("node", "show", "blue")["connections"]}
    assert transports == {hops}  # blue's relay connection to green
    # Control: without a secure channel, green does see the plaintext. So the capture works.
    plain = captured(capture)
    assert any(b"hello" in m for m in plain) and any(b"HELLO" in m for m in plain)
    capture.write_bytes(b"")

    cli.ok("node", "create", "yellow")
    # The pipeline exactly as Ockam's documentation writes it, in a real shell.
    session = subprocess.run(
        [
            "bash",
            "-euo",
            "pipefail",
            "-c",
            "meshkey secure-channel create --from /node/yellow"
            f" --to {to_blue}/service/api"
            " | meshkey message send hello --from /node/yellow --to -/service/uppercase",
        ],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "MESHKEY_HOME": str(cli.home),
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        },
        check=False,
    )
    assert (session.returncode, session.stdout) == (0, "HELLO\n"), session.stderr
    yellow = {c["transport"] for c in cli.json("node", "show", "yellow")["connections"]}
    # Yellow reached green over the route's transport; the channel may then have found a
    # direct (punched, UDP) hop to blue, which is no business of green's.
    assert hops in yellow and yellow <= {hops, "udp"}

    through_green = captured(capture)
    assert len(through_green) >= 6  # handshake both ways, the message and its reply
    assert not any(b"hello" in m or b"HELLO" in m for m in through_green)
    for raw in through_green:  # every payload green handled is sealed channel traffic
        assert Message.from_wire(raw).payload[:1] == b"\x01"


def test_relays_survive_restarts_of_either_side(cli: Cli) -> None:
    cli.ok("node", "create", "blue")
    cli.ok("node", "create", "green")
    cli.ok("relay", "create", "blue", "--at", "/node/green")  # --to: the node named blue
    upper = ("message", "send", "x", "--to", f"{TO_BLUE}/service/uppercase")

    cli.ok("node", "stop", "green")
    cli.wait_for(lambda: relay_status(cli) == "retrying", "blue to notice green is gone")
    cli.ok("node", "start", "green")
    cli.wait_for(lambda: relay_status(cli) == "active", "blue to re-register")
    assert cli.ok(*upper) == "X\n"

    cli.ok("node", "stop", "blue")
    assert "relay 'blue' is offline" in cli.fails(ExitCode.UNREACHABLE, *upper)
    cli.ok("node", "start", "blue")
    cli.wait_for(lambda: cli.run(*upper).stdout == "X\n", "the relay to come back with blue")

    relays = cli.json("relay", "list")
    assert [(r["node"], r["name"], r["status"]) for r in relays] == [("blue", "blue", "active")]
    cli.ok("relay", "delete", "blue")
    assert "no service 'forward_to_blue'" in cli.fails(ExitCode.NOT_FOUND, *upper)
    assert cli.json("relay", "list") == []


def test_a_relay_host_killed_and_restarted_is_noticed_within_seconds(cli: Cli) -> None:
    """kill -9 tells blue nothing; green's new incarnation does (a RESTARTED nudge to the
    owners of the relays it hosted), and blue registers again in about a second, instead of
    at its next keepalive (20 s) or the keepalive timeout (60 s)."""
    cli.ok("node", "create", "blue")
    cli.ok("node", "create", "green")
    cli.ok("relay", "create", "blue", "--at", "/node/green")
    upper = ("message", "send", "x", "--to", f"{TO_BLUE}/service/uppercase")
    assert cli.ok(*upper) == "X\n"
    os.kill(cli.json("node", "show", "green")["pid"], signal.SIGKILL)
    cli.ok("node", "start", "green")
    cli.wait_for(lambda: cli.run(*upper).stdout == "X\n", "blue to register again", timeout=6)
    assert relay_status(cli) == "active"


def test_relay_names_cannot_be_stolen_and_creation_can_be_restricted(cli: Cli) -> None:
    for node in ("blue", "green", "yellow"):
        cli.ok("node", "create", node)
    cli.ok("relay", "create", "blue", "--at", "/node/green")
    assert "belongs to another node" in cli.fails(
        ExitCode.REFUSED, "relay", "create", "blue", "--at", "/node/green", "--to", "yellow"
    )
    assert "belongs to another node" in cli.fails(
        ExitCode.REFUSED, "relay", "create", "blue", "--at", "/node/green", "--to", "yellow"
    )  # and it is refused again, not left half-made
    cli.ok(
        "policy", "create", "--at", "green", "--resource", "relay", "--allow", cli.node_id("blue")
    )
    assert "not allowed to use 'relay'" in cli.fails(
        ExitCode.REFUSED, "relay", "create", "y", "--at", "/node/green", "--to", "yellow"
    )
    assert cli.ok("relay", "create", "b2", "--at", "/node/green", "--to", "blue") == (
        "/service/forward_to_b2\n"
    )
    assert "unreachable" not in cli.fails(
        ExitCode.USAGE, "relay", "create", "bad/name", "--at", "/node/green", "--to", "blue"
    )


def test_authorized_identities_on_both_ends(cli: Cli) -> None:
    for node in ("blue", "yellow", "green"):
        cli.ok("node", "create", node)
    blue, yellow = cli.node_id("blue"), cli.node_id("yellow")
    # The initiator insists on a responder identity it does not get.
    assert "not among the authorized" in cli.fails(
        ExitCode.REFUSED,
        "secure-channel",
        "create",
        "--from",
        "yellow",
        "--to",
        "/node/blue/service/api",
        "--authorized",
        yellow,
    )
    channel = cli.ok(
        "secure-channel",
        "create",
        "--from",
        "yellow",
        "--to",
        "/node/blue/service/api",
        "--authorized",
        blue,
    ).strip()
    assert channel.startswith("/service/")
    # A listener that accepts only yellow.
    cli.ok("secure-channel-listener", "create", "private", "--at", "blue", "--authorized", yellow)
    assert cli.ok(
        "secure-channel", "create", "--from", "yellow", "--to", "/node/blue/service/private"
    ).startswith("/service/")
    assert "refused by the listener" in cli.fails(
        ExitCode.REFUSED,
        "secure-channel",
        "create",
        "--from",
        "green",
        "--to",
        "/node/blue/service/private",
    )
    listeners = cli.json("secure-channel-listener", "list", "--at", "blue")
    assert {(item["address"], tuple(item["authorized"] or ())) for item in listeners} == {
        ("/service/api", ()),
        ("/service/private", (yellow,)),
    }
    # Listeners outlive a restart.
    cli.ok("node", "stop", "blue")
    cli.ok("node", "start", "blue")
    assert len(cli.json("secure-channel-listener", "list", "--at", "blue")) == 2
    cli.ok("secure-channel-listener", "delete", "private", "--at", "blue")
    assert "cannot be deleted" in cli.fails(
        ExitCode.USAGE, "secure-channel-listener", "delete", "api", "--at", "blue"
    )


def test_a_policy_admits_a_listed_identity_and_refuses_others(cli: Cli) -> None:
    for node in ("blue", "yellow", "green"):
        cli.ok("node", "create", node)
    cli.ok(
        "policy",
        "create",
        "--at",
        "blue",
        "--resource",
        "uppercase",
        "--allow",
        cli.node_id("yellow"),
    )

    def through_channel(sender: str) -> str:
        return cli.ok(
            "secure-channel", "create", "--from", sender, "--to", "/node/blue/service/api"
        ).strip()

    allowed = through_channel("yellow")
    assert (
        cli.ok("message", "send", "ok", "--from", "yellow", "--to", f"{allowed}/service/uppercase")
        == "OK\n"
    )
    other = through_channel("green")
    assert "not allowed to use 'uppercase'" in cli.fails(
        ExitCode.REFUSED,
        "message",
        "send",
        "no",
        "--from",
        "green",
        "--to",
        f"{other}/service/uppercase",
    )
    assert "only accepts messages through a secure channel" in cli.fails(
        ExitCode.REFUSED, "message", "send", "no", "--to", "/node/blue/service/uppercase"
    )
    assert "event=message.refused" in cli.log("blue")
    assert cli.ok("message", "send", "open", "--to", "/node/blue/service/echo") == "open\n"
    # Policies outlive a restart; deleting one opens the service again.
    cli.ok("node", "stop", "blue")
    cli.ok("node", "start", "blue")
    assert [p["resource"] for p in cli.json("policy", "list", "--at", "blue")] == ["uppercase"]
    cli.ok("policy", "delete", "--at", "blue", "--resource", "uppercase")
    assert cli.ok("message", "send", "x", "--to", "/node/blue/service/uppercase") == "X\n"


def test_channel_commands_and_errors(cli: Cli) -> None:
    cli.ok("node", "create", "blue")
    cli.ok("node", "create", "yellow")
    channel = cli.json(
        "secure-channel", "create", "--from", "yellow", "--to", "/node/blue/service/api"
    )
    assert channel["peer"] == cli.node_id("blue") and channel["state"] == "open"
    shown = cli.json("secure-channel", "show", channel["address"], "--at", "yellow")
    assert shown["role"] == "initiator"
    assert {c["node"] for c in cli.json("secure-channel", "list")} == {"blue", "yellow"}
    assert "is a secure channel listener" in cli.fails(
        ExitCode.USAGE, "message", "send", "garbage", "--to", "/node/blue/service/api"
    )
    assert "no service 'nope'" in cli.fails(
        ExitCode.NOT_FOUND,
        "secure-channel",
        "create",
        "--from",
        "yellow",
        "--to",
        "/node/blue/service/nope",
    )
    cli.ok("secure-channel", "delete", channel["address"], "--at", "yellow")
    assert "no service" in cli.fails(
        ExitCode.NOT_FOUND,
        "message",
        "send",
        "x",
        "--from",
        "yellow",
        "--to",
        f"{channel['address']}/service/echo",
    )
    # The peer was told: its end is closed too.
    cli.wait_for(
        lambda: all(
            c["state"] == "closed" for c in cli.json("secure-channel", "list", "--at", "blue")
        ),
        "blue's end to close",
    )


def test_a_channel_whose_peer_leaves_says_so_and_can_be_re_established(cli: Cli) -> None:
    cli.ok("node", "create", "blue")
    cli.ok("node", "create", "yellow")
    create = ("secure-channel", "create", "--from", "yellow", "--to", "/node/blue/service/api")

    def send(channel: str) -> tuple[str, ...]:
        return (
            "message",
            "send",
            "x",
            "--from",
            "yellow",
            "--to",
            f"{channel}/service/echo",
            "--timeout",
            "3s",
        )

    channel = cli.ok(*create).strip()
    assert cli.ok(*send(channel)) == "x\n"
    # A node that stops tells its channels' peers why.
    cli.ok("node", "stop", "blue")
    assert "closed by the peer: node shutting down" in cli.fails(
        ExitCode.UNREACHABLE, *send(channel)
    )
    cli.ok("node", "start", "blue")
    channel = cli.ok(*create).strip()
    assert cli.ok(*send(channel)) == "x\n"

    # A node that dies says nothing: the channel's next send is followed by a sealed ping,
    # and when no answer comes the send fails (exit 5, not the full timeout, 6) saying why.
    os.kill(cli.json("node", "show", "blue")["pid"], signal.SIGKILL)
    failed = cli.fails(ExitCode.UNREACHABLE, *send(channel)[:-1], "10s")
    assert "did not answer" in failed or "cannot connect" in failed
    shown = cli.json("secure-channel", "show", channel)
    assert shown["state"] == "unreachable" and shown["error"]
    # Once the node is back, the same channel re-handshakes (it lost its session) and works.
    cli.ok("node", "start", "blue")
    cli.wait_for(lambda: cli.run(*send(channel)).stdout == "x\n", "the channel to reconnect")
    shown = cli.json("secure-channel", "show", channel)
    assert (shown["state"], shown["reconnects"], shown["error"]) == ("open", 1, None)
