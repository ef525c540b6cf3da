"""One UDP socket per node: QUIC hops, the reflexive-address service on the same port, bad
datagrams, loss, a peer that goes away, and the batching socket layer."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time

import pytest

from meshkey import Node, RemoteError
from meshkey.cli.errors import ExitCode
from meshkey.identity import Identity
from meshkey.routing.message import Message
from meshkey.transport.events import HopClosed
from meshkey.transport.udp import QuicTransport
from meshkey.wire.message import ErrorCode
from meshkey.wire.udp import ControlKind, WhoamiRequest, encode_control_packet

from .conftest import Cli
from .udp_forwarder import LossyForwarder

pytestmark = pytest.mark.integration


# -- through daemons and the CLI ---------------------------------------------------------


def test_routes_over_quic_hops_and_mixed_routes(blue_green: Cli) -> None:
    cli = blue_green
    send = ("message", "send", "hello")
    assert cli.ok(*send, "--from", "green", "--to", "/node/blue/service/uppercase") == "HELLO\n"
    assert (
        cli.ok(*send, "--from", "blue", "--to", "/node/green/node/blue/service/uppercase")
        == "HELLO\n"
    )
    transports = {c["transport"] for c in cli.json("node", "show", "green")["connections"]}
    assert transports == {"udp"}  # /node/NAME is the UDP address: every hop above was QUIC
    green_tcp, blue_tcp = cli.address("green", "tcp"), cli.address("blue", "tcp")
    # A TCP hop then a UDP hop, and the other way round.
    assert (
        cli.ok(*send, "--from", "blue", "--to", f"{green_tcp}/node/blue/service/uppercase")
        == "HELLO\n"
    )
    assert (
        cli.ok(*send, "--from", "green", "--to", f"/node/blue{blue_tcp}/service/uppercase")
        == "HELLO\n"
    )


def test_whoami_is_answered_on_the_nodes_one_socket(blue_green: Cli) -> None:
    cli = blue_green
    answer = cli.json("node", "whoami", "blue", "--via", "/node/green")
    blue_udp = cli.address("blue", "udp")
    # What green saw is exactly the socket blue's QUIC traffic uses.
    assert answer["observed"] == blue_udp.split("/id/")[0]
    assert answer["local"] == blue_udp
    assert (
        cli.ok("node", "whoami", "blue", "--via", cli.address("green", "udp")).strip()
        == (answer["observed"])
    )
    assert "one UDP address" in cli.fails(
        ExitCode.USAGE, "node", "whoami", "blue", "--via", cli.address("green", "tcp")
    )


def test_whoami_without_an_answer_times_out(blue_green: Cli) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # bound, so no ICMP: it just never answers
        port = silent.getsockname()[1]
        message = blue_green.fails(
            ExitCode.TIMEOUT,
            "node",
            "whoami",
            "blue",
            "--via",
            f"/ip4/127.0.0.1/udp/{port}",
            "--timeout",
            "500ms",
        )
    assert "no reflexive-address answer" in message


def test_whoami_where_nothing_listens_fails_at_once_on_the_icmp_answer(blue_green: Cli) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once closed: the kernel answers ICMP there
    message = blue_green.fails(
        ExitCode.UNREACHABLE,
        "node",
        "whoami",
        "blue",
        "--via",
        f"/ip4/127.0.0.1/udp/{port}",
        "--timeout",
        "60s",
    )
    assert "nothing listens" in message and "(ICMP)" in message


def test_bad_datagrams_do_not_disturb_a_node(blue_green: Cli) -> None:
    cli = blue_green
    port = int(cli.address("blue", "udp").split("/")[4])
    target = ("127.0.0.1", port)
    rng = random.Random(3)
    real_initial = _quic_initial(target)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for first in range(256):  # every first byte, many sizes
            for size in (1, 2, 7, 21, 64, 1199, 1200, 1500):
                sock.sendto(bytes([first]) + rng.randbytes(size - 1), target)
        for cut in (1, 5, 6, 20, 100, 600, len(real_initial) - 1):
            sock.sendto(real_initial[:cut], target)  # truncated QUIC
        for _ in range(5):
            sock.sendto(real_initial, target)  # replayed QUIC
        request = encode_control_packet(WhoamiRequest(b"t" * 16))
        for bad in (
            request[:2],
            request[:40],
            request + b"x",
            bytes([ControlKind.WHOAMI_RESPONSE]) + b"\x01" + b"t" * 16 + b"\x09",
            bytes([ControlKind.WHOAMI_REQUEST, 7]),
        ):
            sock.sendto(bad, target)
        sock.sendto(request, target)
        sock.settimeout(5)
        # The one good request is answered. Before it may come only STALE nudges (for the
        # random short-header packets, whose connection IDs are unknown), each smaller than
        # them, and QUIC's answer to the real Initial.
        answer, _ = sock.recvfrom(2048)
        while answer[0] == ControlKind.STALE or answer[0] & 0x40:
            assert answer[0] & 0x40 or len(answer) == 10
            answer, _ = sock.recvfrom(2048)
    assert answer[0] == ControlKind.WHOAMI_RESPONSE
    assert (
        cli.ok("message", "send", "ok", "--from", "green", "--to", "/node/blue/service/uppercase")
        == "OK\n"
    )
    log = cli.log("blue")
    assert "Traceback" not in log and "level=error" not in log


def _quic_initial(target: tuple[str, int]) -> bytes:
    from qh3.quic.connection import QuicConnection

    from meshkey.identity import Identity
    from meshkey.routing.router import Router

    transport = QuicTransport(Identity.generate(), Router(Identity.generate().node_id))
    quic = QuicConnection(configuration=transport.client_configuration)
    quic.connect(target, time.monotonic())
    datagram: bytes = quic.datagrams_to_send(time.monotonic())[0][0]
    return datagram


# -- embedded nodes over real sockets ----------------------------------------------------


async def test_messages_arrive_whole_through_ten_percent_loss() -> None:
    async with Node(tcp=None) as server, Node(tcp=None, udp=None) as client:
        target = server.addresses[0]
        forwarder = LossyForwarder((target.host, target.port), drop=0.10)
        host, port = await forwarder.start()
        try:
            route = f"/ip4/{host}/udp/{port}/id/{server.node_id}/service/echo"
            payloads = [os.urandom(size) for size in (1, 100, 1500, 20_000, 300_000, 1_048_576)]
            for payload in payloads * 2:
                assert await client.send(route, payload, timeout=30) == payload
            concurrent = [os.urandom(4000) for _ in range(40)]
            replies = await asyncio.gather(*(client.send(route, p, timeout=30) for p in concurrent))
            assert replies == concurrent
        finally:
            forwarder.close()
        assert forwarder.dropped > 0.05 * (forwarder.dropped + forwarder.passed)


async def test_replayed_packets_are_ignored() -> None:
    async with Node(tcp=None) as server, Node(tcp=None, udp=None) as client:
        target = server.addresses[0]
        forwarder = LossyForwarder((target.host, target.port))
        host, port = await forwarder.start()
        route = f"/ip4/{host}/udp/{port}/id/{server.node_id}/service/echo"
        seen: list[bytes] = []

        async def count(message: Message) -> None:
            seen.append(message.payload)

        server.register_worker("count", count)
        counted = f"/ip4/{host}/udp/{port}/id/{server.node_id}/service/count"
        await client.router.route(Message(client.resolve(counted), (), b"once"))
        assert await client.send(route, b"sync") == b"sync"
        assert forwarder.replay_up() > 3
        await asyncio.sleep(0.3)
        assert seen == [b"once"]  # QUIC dropped the replays: delivered exactly once
        assert await client.send(route, b"still fine") == b"still fine"
        forwarder.close()


async def test_a_silent_peer_times_out_and_the_next_message_reconnects() -> None:
    async with Node(tcp=None) as server, Node(tcp=None, udp=None, idle_timeout=1.0) as client:
        target = server.addresses[0]
        forwarder = LossyForwarder((target.host, target.port))
        host, port = await forwarder.start()
        route = f"/ip4/{host}/udp/{port}/id/{server.node_id}/service/echo"
        assert await client.send(route, b"one") == b"one"
        forwarder.blackhole = True  # no packets, no ICMP: only QUIC's idle timer can tell
        closed = asyncio.ensure_future(
            client.events.wait_for(lambda e: isinstance(e, HopClosed), 10)
        )
        with pytest.raises(RemoteError) as info:
            await client.send(route, b"lost", timeout=0.5)
        assert info.value.code == ErrorCode.TIMEOUT
        await closed
        assert client.udp.connections() == []  # cleaned up
        forwarder.blackhole = False
        assert await client.send(route, b"again") == b"again"  # a new connection
        forwarder.close()


async def test_batching_and_its_fallback_carry_the_same_traffic() -> None:
    big = os.urandom(1_048_576)
    for batching in (True, False):
        async with (
            Node(tcp=None, udp_batching=batching) as server,
            Node(tcp=None, udp=None, udp_batching=batching) as client,
        ):
            route = f"{server.addresses[0]}/service/echo"
            assert await client.send(route, big) == big
            stats, endpoint = client.udp.endpoint.stats, client.udp.endpoint
            if batching and endpoint.gso:
                assert stats["datagrams_out"] > 2 * stats["syscalls_out"]  # GSO coalesced
            if not batching:
                assert stats["datagrams_out"] == stats["syscalls_out"]
                assert not endpoint.gro and not endpoint.gso


async def test_a_peer_presenting_another_node_id_is_refused_over_quic() -> None:
    async with Node(tcp=None) as server, Node(tcp=None, udp=None) as client:
        impostor = server.addresses[0].with_node_id(Identity.generate().node_id)
        with pytest.raises(RemoteError) as info:
            await client.send(f"{impostor}/service/echo", b"x")
        assert info.value.code == ErrorCode.AUTH_FAILED
        assert f"presented NodeId {server.node_id}" in info.value.text
