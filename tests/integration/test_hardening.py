"""Attacks a peer (or one unlucky timeout) could mount on a node, each against real daemons:
the node stays responsive, keeps what it holds bounded, and keeps serving everyone else."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import ssl
import struct
import threading
import time
from pathlib import Path

import pytest

from meshkey import Node
from meshkey.cli.errors import ExitCode
from meshkey.identity import Identity
from meshkey.routing.address import ServiceAddress, TransportAddress, parse_address, parse_route
from meshkey.routing.message import Message
from meshkey.transport.blocking import BlockingHop
from meshkey.transport.tls import SERVER_NAME, client_context

from .conftest import Cli

pytestmark = pytest.mark.integration


def captured_messages(path: Path) -> int:
    """How many messages a daemon started with MESHKEY_CAPTURE=path has routed."""
    if not path.exists():
        return 0
    data, count, offset = path.read_bytes(), 0, 0
    while offset + 4 <= len(data):
        offset += 4 + struct.unpack("!I", data[offset : offset + 4])[0]
        count += 1
    return count


def settled_count(paths: list[Path], quiet: float = 1.0, limit: float = 15.0) -> list[int]:
    """Waits until none of the captures grew for ``quiet`` seconds; the counts then."""
    deadline = time.monotonic() + limit
    last = [captured_messages(p) for p in paths]
    while True:
        time.sleep(quiet)
        now = [captured_messages(p) for p in paths]
        if now == last:
            return now
        assert time.monotonic() < deadline, f"messages never stopped flowing: {now}"
        last = now


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def captured(cli: Cli, tmp_path: Path) -> tuple[Cli, Path, Path]:
    a, b = tmp_path / "a.capture", tmp_path / "b.capture"
    cli.ok("node", "create", "a", env={"MESHKEY_CAPTURE": str(a)})
    cli.ok("node", "create", "b", env={"MESHKEY_CAPTURE": str(b)})
    return cli, a, b


def test_a_timed_out_request_does_not_start_an_endless_exchange(
    captured: tuple[Cli, Path, Path],
) -> None:
    """The reply arrives after the requester gave up: its error goes back to the service,
    which must not answer it (they used to bounce forever, at 98 % CPU)."""
    cli, a, b = captured
    big = "x" * 90_000
    result = cli.run(
        "message",
        "send",
        big,
        "--from",
        "a",
        "--to",
        "/node/b/service/uppercase",
        "--timeout",
        "1ms",
    )
    assert result.returncode == ExitCode.TIMEOUT, result.stderr
    counts = settled_count([a, b])
    assert sum(counts) < 20, counts  # a request, a reply, an error: not thousands
    for node in ("a", "b"):  # and both still answer at once
        assert cli.ok("message", "send", "ok", "--from", node, "--to", "/node/b/service/echo") == (
            "ok\n"
        )


def test_a_peer_that_leaves_with_replies_queued_starts_no_exchange(
    captured: tuple[Cli, Path, Path],
) -> None:
    cli, _, b = captured
    address = parse_address(cli.address("b", "tcp"))
    assert isinstance(address, TransportAddress)
    hop = BlockingHop(Identity.generate(), address, timeout=5)
    payload = b"y" * 65536
    for _ in range(200):  # replies pile up on b's side of this connection
        hop.send(Message((ServiceAddress("echo"),), (ServiceAddress("me"),), payload).to_wire())
    hop.sock.close()  # gone, without reading a single reply
    [count] = settled_count([b])
    assert count < 1000, count
    assert cli.ok("message", "send", "ok", "--to", "/node/b/service/echo") == "ok\n"


def test_a_relay_name_cannot_be_registered_through_its_owner(cli: Cli) -> None:
    for node in ("blue", "green", "mallory", "yellow"):
        cli.ok("node", "create", node)
    cli.ok("relay", "create", "blue", "--at", "/node/green", "--to", "/node/blue")
    # The confused deputy: mallory's registration travels through blue.
    refused = cli.fails(
        ExitCode.REFUSED,
        "relay",
        "create",
        "blue",
        "--at",
        "/node/blue/node/green",
        "--to",
        "mallory",
    )
    assert "belongs to another node" in refused
    channel = cli.ok(
        "secure-channel",
        "create",
        "--from",
        "yellow",
        "--to",
        "/node/green/service/forward_to_blue/service/api",
    ).strip()
    shown = cli.json("secure-channel", "show", channel)
    assert shown["peer"] == cli.node_id("blue")  # the channel ends at blue, not mallory
    [hosted] = cli.json("relay", "list", "--to", "blue")
    assert hosted["status"] == "active"


def test_forwarding_is_a_policy_and_failed_dials_all_look_alike(cli: Cli) -> None:
    for node in ("green", "mallory", "yellow"):
        cli.ok("node", "create", node)
    # A port that refuses, and one where something that is not meshkey resets connections.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused_port = closed.getsockname()[1]
    resetter = socket.socket()
    resetter.bind(("127.0.0.1", 0))
    resetter.listen(8)

    def reset_all() -> None:
        while True:
            try:
                conn, _ = resetter.accept()
            except OSError:
                return
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    threading.Thread(target=reset_all, daemon=True).start()
    errors = []
    for port in (refused_port, resetter.getsockname()[1]):
        route = f"/node/green/ip4/127.0.0.1/tcp/{port}/service/echo"
        errors.append(
            cli.fails(
                ExitCode.UNREACHABLE, "message", "send", "x", "--from", "mallory", "--to", route
            )
        )
    resetter.close()
    assert errors[0].replace(str(refused_port), "P") == errors[1].replace(
        str(errors[1].split("/tcp/")[1].split("/")[0]), "P"
    ), errors
    yellow = cli.node_id("yellow")
    cli.ok("policy", "create", "--at", "green", "--resource", "forward", "--allow", yellow)
    via_green = "/node/green/node/yellow/service/echo"
    assert "does not forward" in cli.fails(
        ExitCode.REFUSED, "message", "send", "x", "--from", "mallory", "--to", via_green
    )
    assert cli.ok("message", "send", "x", "--from", "yellow", "--to", via_green) == "x\n"


def junk_initial(rng: random.Random) -> bytes:
    """What a QUIC v1 Initial looks like from outside, with garbage inside."""
    dcid, scid = rng.randbytes(8), rng.randbytes(8)
    header = bytes([0xC3]) + b"\x00\x00\x00\x01" + bytes([8]) + dcid + bytes([8]) + scid + b"\x00"
    body = rng.randbytes(1200 - len(header) - 2)
    return header + struct.pack("!H", 0x4000 | len(body)) + body


def test_a_flood_of_junk_initials_does_not_stop_new_quic_connections(cli: Cli) -> None:
    cli.ok("node", "create", "blue")
    cli.ok("node", "create", "green")
    address = parse_address(cli.address("blue", "udp"))
    assert isinstance(address, TransportAddress)
    rng = random.Random(5)
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(64)]
    for index in range(5000):  # ~6 MB of junk, from 64 source ports
        senders[index % 64].sendto(junk_initial(rng), address.endpoint)
    # A fresh node dials blue over QUIC right away (blue asks it to prove its address first).
    assert (
        cli.ok(
            "message",
            "send",
            "ok",
            "--from",
            "green",
            "--to",
            "/node/blue/service/echo",
            "--timeout",
            "10s",
        )
        == "ok\n"
    )
    status = cli.json("node", "show", "blue")
    assert status["unauthenticated"]["udp"] <= 64 + 32
    cli.wait_for(
        lambda: cli.json("node", "show", "blue")["unauthenticated"]["udp"] == 0,
        "half-open QUIC connections to be reaped",
    )
    for sock in senders:
        sock.close()


def test_unauthenticated_connections_cannot_fill_memory(cli: Cli) -> None:
    cli.ok("node", "create", "blue")
    address = parse_address(cli.address("blue", "tcp"))
    assert isinstance(address, TransportAddress)
    pid = cli.json("node", "show", "blue")["pid"]
    before = rss_kib(pid)
    context = client_context()
    sockets = []
    announce = struct.pack("!I", 2 * 1024 * 1024)  # a 2 MiB frame, before logging in
    for _ in range(300):
        try:
            raw = socket.create_connection(address.endpoint, timeout=5)
            tls = context.wrap_socket(raw, server_hostname=SERVER_NAME)
            tls.sendall(announce + os.urandom(1024 * 1024))
            sockets.append(tls)
        except (OSError, ssl.SSLError):
            continue  # refused: over the limit of strangers
    time.sleep(1)
    grown_mib = (rss_kib(pid) - before) / 1024
    for sock in sockets:
        sock.close()
    assert grown_mib < 150, f"RSS grew by {grown_mib:.0f} MiB"
    assert cli.ok("message", "send", "ok", "--to", "/node/blue/service/echo") == "ok\n"


async def test_a_handshake_flood_from_one_identity_does_not_stop_another(cli: Cli) -> None:
    cli.ok("node", "create", "blue")
    blue = cli.address("blue", "udp")
    async with Node(tcp=None) as mallory, Node(tcp=None) as yellow:
        hello = Message(parse_route(f"{blue}/service/api"), (), b"\x01\x01" + os.urandom(32))
        stop = asyncio.Event()

        async def flood() -> None:
            while not stop.is_set():
                for _ in range(30):
                    await mallory.router.route(hello)
                await asyncio.sleep(0.1)  # ~300 message 1s per second

        flooding = asyncio.create_task(flood())
        await asyncio.sleep(1.0)
        opened = [await yellow.create_secure_channel(f"{blue}/service/api") for _ in range(5)]
        stop.set()
        await flooding
        assert len(opened) == 5
        for channel in opened:
            assert await yellow.send(f"{channel}/service/echo", b"hi") == b"hi"


def test_one_slow_reader_does_not_stop_a_service_for_everyone(cli: Cli) -> None:
    cli.ok("node", "create", "blue")
    address = parse_address(cli.address("blue", "tcp"))
    assert isinstance(address, TransportAddress)
    slow = BlockingHop(Identity.generate(), address, timeout=5)
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    request = Message((ServiceAddress("echo"),), (ServiceAddress("me"),), b"z" * 65536).to_wire()
    for _ in range(700):  # ~45 MB of replies that are never read
        slow.send(request)
    for _ in range(3):
        assert (
            cli.ok("message", "send", "ok", "--to", "/node/blue/service/echo", "--timeout", "5s")
            == "ok\n"
        )
    slow.sock.close()
