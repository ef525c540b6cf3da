"""TCP portals between embedded nodes over real sockets: inlets, outlets, streams.

Each test runs real nodes (``meshkey.Node``) in this process, a real asyncio TCP server next
to the outlet, and real TCP clients at the inlet; bytes are checked with sha256.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from meshkey import Node
from meshkey.portal import Inlet, InsecureRouteError, Outlet, SessionLimits, open_portal_stream
from meshkey.portal.budget import BudgetLimits, PortalBudget
from meshkey.portal.stream import PortalTransport
from meshkey.routing.address import Route, parse_route

from .udp_forwarder import LossyForwarder

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
    writer.close()


async def digest_then_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads to EOF, then answers with the sha256 of what it read (a half-close test)."""
    hasher, count = hashlib.sha256(), 0
    while data := await reader.read(256 * 1024):
        hasher.update(data)
        count += len(data)
    writer.write(f"{count} {hasher.hexdigest()}".encode())
    await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def tcp_server(handler: Handler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, backlog=1024)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


def single_hop(node: Node, protocol: str, service: str = "outlet") -> Route:
    address = next(a for a in node.addresses if a.protocol == protocol)
    return parse_route(f"{address}/service/{service}")


async def pump_through(host: str, port: int, payload: bytes) -> bytes:
    """Sends ``payload`` to host:port while reading what comes back, until EOF."""
    reader, writer = await asyncio.open_connection(host, port)

    async def send() -> None:
        view = memoryview(payload)
        for start in range(0, len(payload), 256 * 1024):
            writer.write(view[start : start + 256 * 1024])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.ensure_future(send())
    received = bytearray()
    while data := await reader.read(1 << 20):
        received += data
    await sender
    writer.close()
    return bytes(received)


def reset(writer: asyncio.StreamWriter) -> None:
    """Closes with RST (linger 0), as a crashing program's kernel would."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Portal:
    inlet_node: Node
    outlet_node: Node
    inlet: Inlet
    outlet: Outlet
    host: str
    port: int


@contextlib.asynccontextmanager
async def portal(
    protocol: str = "udp",
    handler: Handler = echo,
    *,
    secure: bool = False,
    limits: SessionLimits | None = None,
    allow_self: bool = False,
    budget: PortalBudget | None = None,
) -> AsyncIterator[Portal]:
    async with (
        tcp_server(handler) as server_port,
        Node(name="outlet") as outlet_node,
        Node(tcp=None, name="inlet") as inlet_node,
    ):
        allow = frozenset([inlet_node.node_id]) if allow_self else None
        outlet = Outlet(
            outlet_node.router,
            "127.0.0.1",
            server_port,
            allow=allow,
            limits=limits or SessionLimits(),
            budget=budget,
        )
        route = single_hop(outlet_node, protocol)
        if secure:
            channel = await inlet_node.create_secure_channel(
                single_hop(outlet_node, protocol, "api")
            )
            route = parse_route(f"{channel}/service/outlet")
        inlet = Inlet(inlet_node.router, route, limits=limits or SessionLimits())
        host, port = await inlet.listen()
        try:
            yield Portal(inlet_node, outlet_node, inlet, outlet, host, port)
        finally:
            await inlet.close()
            await outlet.close()


@pytest.mark.parametrize(
    ("protocol", "secure", "size"),
    [("udp", False, 64 * MiB), ("tcp", False, 16 * MiB), ("udp", True, 16 * MiB)],
    ids=["udp-hop-64MiB", "tcp-hop-16MiB", "udp-secure-channel-16MiB"],
)
async def test_bytes_go_through_an_inlet_and_an_outlet_intact(
    protocol: str, secure: bool, size: int
) -> None:
    payload = random.Random(size).randbytes(size)
    async with portal(protocol, secure=secure) as p:
        echoed = await asyncio.wait_for(pump_through(p.host, p.port, payload), 120)
        assert len(echoed) == size and sha(echoed) == sha(payload)
        inlet, outlet = p.inlet.describe(), p.outlet.describe()
        assert inlet["bytes_to_outlet"] == inlet["bytes_from_outlet"] == size
        assert outlet["bytes_to_server"] == outlet["bytes_from_server"] == size
        assert inlet["sessions_total"] == 1 and inlet["last_error"] is None


async def test_half_close_a_client_that_shuts_its_write_side_still_gets_the_reply() -> None:
    payload = os.urandom(3 * MiB)
    async with portal("udp", digest_then_reply) as p:
        reply = await asyncio.wait_for(pump_through(p.host, p.port, payload), 30)
        assert reply == f"{len(payload)} {sha(payload)}".encode()


async def test_a_portal_stream_without_a_local_listener() -> None:
    payload = os.urandom(5 * MiB)
    async with portal("tcp", digest_then_reply) as p:
        reader, writer = await open_portal_stream(p.inlet_node.router, p.inlet.route)
        for start in range(0, len(payload), 100_000):
            writer.write(payload[start : start + 100_000])
            await writer.drain()
        writer.write_eof()
        reply = await asyncio.wait_for(reader.read(), 30)
        assert reply == f"{len(payload)} {sha(payload)}".encode()
        writer.close()
        echoing = await open_portal_stream(p.inlet_node.router, p.inlet.route)
        assert echoing is not None


async def test_closing_a_stream_whose_reader_stopped_reading_ends_the_session() -> None:
    """As a kernel resets a socket closed with unread data: no more data could come to
    reset it later, and the session would stay open, half-closed, while the peer pinged."""

    async def firehose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunk = os.urandom(256 * 1024)
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(chunk)
                await writer.drain()

    async with portal("udp", firehose) as p:
        reader, writer = await open_portal_stream(p.inlet_node.router, p.inlet.route)
        await asyncio.wait_for(reader.readexactly(100_000), 10)
        transport = writer.transport
        assert isinstance(transport, PortalTransport)
        (core,) = transport.driver.mux.sessions()
        async with asyncio.timeout(10):  # the StreamReader filled up and paused reading,
            while transport.is_reading() or core.buffered_received < core.receive_window:
                await asyncio.sleep(0.01)  # and what it holds fills the window: no more comes
        writer.close()
        async with asyncio.timeout(10):
            while p.outlet.describe()["sessions_open"]:
                await asyncio.sleep(0.05)
        assert p.outlet.describe()["sessions_failed"] == 1  # reset, as a socket would be


async def test_reset_reaches_the_other_end_promptly_both_ways() -> None:
    server_saw: asyncio.Queue[str] = asyncio.Queue()

    async def watcher(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        try:
            while await reader.read(65536):
                pass
            server_saw.put_nowait("eof")
        except ConnectionResetError:
            server_saw.put_nowait("reset")
        writer.close()

    async with portal("udp", watcher) as p:
        reader, writer = await asyncio.open_connection(p.host, p.port)
        assert await reader.readexactly(5) == b"hello"
        writer.write(b"x" * 100_000)
        await writer.drain()
        reset(writer)  # the client resets its connection
        assert await asyncio.wait_for(server_saw.get(), 1.0) == "reset"

    async def resetter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(5)
        reset(writer)  # the server resets

    async with portal("udp", resetter) as p:
        reader, writer = await asyncio.open_connection(p.host, p.port)
        writer.write(b"hello")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), 1.0)
        writer.close()


async def test_a_refused_outlet_closes_the_client_within_a_second() -> None:
    async with tcp_server(echo) as free_port:
        pass  # now nothing listens there
    async with Node(name="outlet") as outlet_node, Node(tcp=None) as inlet_node:
        outlet = Outlet(outlet_node.router, "127.0.0.1", free_port)
        inlet = Inlet(inlet_node.router, single_hop(outlet_node, "udp"))
        host, port = await inlet.listen()
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"anyone?")
        assert await asyncio.wait_for(reader.read(), 1.0) == b""  # closed, not hanging
        writer.close()
        assert "connection refused" in (inlet.describe()["last_error"] or "")
        assert "connection refused" in (outlet.describe()["last_error"] or "")
        with pytest.raises(ConnectionRefusedError, match="connection refused"):
            await open_portal_stream(inlet_node.router, inlet.route)
        await inlet.close()
        await outlet.close()


async def test_an_identity_not_in_allow_is_refused_and_an_allowed_one_served() -> None:
    async with (
        tcp_server(echo) as server_port,
        Node(name="outlet") as outlet_node,
        Node(tcp=None) as allowed,
        Node(tcp=None) as stranger,
    ):
        outlet = Outlet(
            outlet_node.router, "127.0.0.1", server_port, allow=frozenset([allowed.node_id])
        )
        route = single_hop(outlet_node, "udp")
        with pytest.raises(ConnectionRefusedError, match="not allowed"):
            await open_portal_stream(stranger.router, route)
        # Through a secure channel, the channel's peer is what counts.
        channel = await stranger.create_secure_channel(single_hop(outlet_node, "udp", "api"))
        with pytest.raises(ConnectionRefusedError, match="not allowed"):
            await open_portal_stream(stranger.router, parse_route(f"{channel}/service/outlet"))
        assert outlet.describe()["refused"] == 2
        reader, writer = await open_portal_stream(allowed.router, route)
        writer.write(b"ping")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b"ping"
        await outlet.close()


async def test_routes_through_other_nodes_need_a_secure_channel() -> None:
    async with Node() as node:
        two_hops = parse_route(f"{node.addresses[1]}/ip4/127.0.0.1/udp/9/service/outlet")
        with pytest.raises(InsecureRouteError, match="secure channel"):
            Inlet(node.router, two_hops)
        with pytest.raises(InsecureRouteError):
            await open_portal_stream(node.router, parse_route("/service/nope/service/outlet"))
        forwarded = parse_route(f"/service/hop{node.addresses[1]}/service/outlet")
        with pytest.raises(InsecureRouteError, match="secure channel"):
            Inlet(node.router, forwarded)  # a local worker, but no channel: in the clear
        Inlet(node.router, two_hops, insecure=True)  # said out loud: allowed


async def test_a_slow_reader_keeps_every_buffer_bounded() -> None:
    size = 24 * MiB

    async def firehose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunk = os.urandom(MiB)
        with contextlib.suppress(ConnectionError):
            for _ in range(size // MiB):
                writer.write(chunk)
                await writer.drain()
            writer.write_eof()
        writer.close()

    async with portal("udp", firehose) as p:
        reader, writer = await asyncio.open_connection(p.host, p.port, limit=64 * 1024)
        peaks = {"outlet_send": 0, "inlet_socket": 0, "inlet_held": 0}
        received = 0
        while received < size:
            data = await asyncio.wait_for(reader.read(64 * 1024), 10)
            assert data
            received += len(data)
            await asyncio.sleep(0.002)  # a slow client: ~30 MB/s at most
            for remote in p.outlet._remotes.values():
                for core in remote.mux.sessions():
                    peaks["outlet_send"] = max(peaks["outlet_send"], core.buffered_to_send)
            for core in p.inlet.driver.mux.sessions():
                peaks["inlet_held"] = max(peaks["inlet_held"], core.buffered_received)
            for end in p.inlet.driver._ends.values():
                transport = getattr(end, "transport", None)
                if transport is not None:
                    size_now = transport.get_write_buffer_size()
                    peaks["inlet_socket"] = max(peaks["inlet_socket"], size_now)
        assert received == size
        window = SessionLimits().receive_window
        assert 0 < peaks["outlet_send"] <= window + 64 * 1024  # + one small socket read
        assert peaks["inlet_held"] <= window
        assert peaks["inlet_socket"] <= window + 64 * 1024
        writer.close()


async def test_bytes_are_exact_through_ten_percent_loss() -> None:
    size = 64 * MiB  # each way: the echo sends it all back
    payload = random.Random(3).randbytes(size)
    async with (
        tcp_server(echo) as server_port,
        Node(tcp=None) as outlet_node,
        Node(tcp=None, udp=None) as inlet_node,
    ):
        target = outlet_node.addresses[0]
        forwarder = LossyForwarder((target.host, target.port), drop=0.10)
        host, port = await forwarder.start()
        try:
            outlet = Outlet(outlet_node.router, "127.0.0.1", server_port)
            route = parse_route(f"/ip4/{host}/udp/{port}/id/{outlet_node.node_id}/service/outlet")
            inlet = Inlet(inlet_node.router, route)
            inlet_host, inlet_port = await inlet.listen()
            echoed = await asyncio.wait_for(pump_through(inlet_host, inlet_port, payload), 300)
            assert sha(echoed) == sha(payload)
            await inlet.close()
            await outlet.close()
        finally:
            forwarder.close()
        assert forwarder.dropped > 0.05 * (forwarder.dropped + forwarder.passed)


async def test_a_relay_killed_mid_transfer_fails_sessions_clearly_and_the_inlet_lives_on() -> None:
    limits = SessionLimits(route_grace=1.0, peer_timeout=5.0)
    async with (
        tcp_server(echo) as server_port,
        # No direct path: on one host the channel would punch one and outlive the relay.
        Node(tcp=None, name="blue", direct=False) as blue,
        Node(tcp=None, name="yellow", direct=False) as yellow,
    ):
        green = await Node(name="green").start()
        try:
            g = str(green.addresses[0])
            await blue.create_relay("blue", g)
            outlet = Outlet(blue.router, "127.0.0.1", server_port, limits=limits)
            channel = await yellow.create_secure_channel(f"{g}/service/forward_to_blue/service/api")
            inlet = Inlet(yellow.router, parse_route(f"{channel}/service/outlet"), limits=limits)
            host, port = await inlet.listen()
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"x" * MiB)
            assert len(await reader.readexactly(MiB)) == MiB  # flowing through the relay
            writer.write(b"y" * MiB)
            await green.stop()  # the relay dies with data in flight
            started = asyncio.get_running_loop().time()
            with contextlib.suppress(ConnectionError):
                while await asyncio.wait_for(reader.read(1 << 20), 15):
                    pass
            assert asyncio.get_running_loop().time() - started < 10  # closed, never hanging
            description = inlet.describe()
            assert description["sessions_failed"] == 1
            assert description["last_error"] is not None
            assert "route" in description["last_error"] or "lost" in description["last_error"]
            # The inlet still listens; a new connection is closed (bounded), not hung.
            reader2, writer2 = await asyncio.open_connection(host, port)
            writer2.write(b"again")
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader2.read(), 15) == b""
            writer2.close()
            await inlet.close()
            await outlet.close()
        finally:
            await green.stop()


async def test_new_connections_work_again_once_the_route_is_back() -> None:
    limits = SessionLimits(route_grace=0.5, peer_timeout=3.0)
    async with tcp_server(echo) as server_port, Node(tcp=None) as inlet_node:
        outlet_node = await Node(tcp=None).start()
        identity, udp = outlet_node.identity, outlet_node.addresses[0]
        Outlet(outlet_node.router, "127.0.0.1", server_port)
        inlet = Inlet(inlet_node.router, single_hop(outlet_node, "udp"), limits=limits)
        host, port = await inlet.listen()
        assert await pump_through(host, port, b"before") == b"before"
        await outlet_node.stop()  # the far node goes away
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"while down")
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, with a reason
        writer.close()
        assert inlet.describe()["last_error"] is not None
        # The node comes back (same identity, same port): the same inlet works again.
        async with Node(identity=identity, tcp=None, udp=f"127.0.0.1:{udp.port}") as back:
            Outlet(back.router, "127.0.0.1", server_port)
            assert await asyncio.wait_for(pump_through(host, port, b"after"), 10) == b"after"
        await inlet.close()


async def test_a_thousand_concurrent_sessions_on_one_secure_channel() -> None:
    # One identity may hold 64 sessions by default (test_portal_attacks shows it): this
    # outlet's node lets it hold all of them.
    budget = PortalBudget(BudgetLimits(sessions=2048, sessions_per_peer=1024))
    async with portal("udp", echo, secure=True, budget=budget) as p:
        payloads = [os.urandom(random.Random(i).randrange(1, 5000)) for i in range(1000)]

        async def one(payload: bytes) -> bytes:
            return await pump_through(p.host, p.port, payload)

        echoed = await asyncio.wait_for(asyncio.gather(*(one(x) for x in payloads)), 120)
        assert echoed == payloads
        assert p.inlet.describe()["sessions_total"] == 1000
        assert p.inlet.describe()["sessions_failed"] == 0


async def test_an_idle_inlet_keeps_its_secure_channel_alive() -> None:
    limits = SessionLimits(keepalive_interval=0.3)
    async with (
        tcp_server(echo) as server_port,
        Node(tcp=None, idle_timeout=1.0) as outlet_node,
        Node(tcp=None, idle_timeout=1.0) as inlet_node,
    ):
        Outlet(outlet_node.router, "127.0.0.1", server_port)
        channel = await inlet_node.create_secure_channel(single_hop(outlet_node, "udp", "api"))
        inlet = Inlet(inlet_node.router, parse_route(f"{channel}/service/outlet"), limits=limits)
        host, port = await inlet.listen()
        await asyncio.sleep(3.0)  # three idle timeouts of the hop, no client at all
        assert await asyncio.wait_for(pump_through(host, port, b"still here"), 10) == b"still here"
        assert inlet.driver.mux.route_answered_at is not None
        await inlet.close()


async def test_an_inlet_and_an_outlet_on_the_same_node() -> None:
    async with tcp_server(echo) as server_port, Node(tcp=None) as node:
        Outlet(node.router, "127.0.0.1", server_port, allow=frozenset([node.node_id]))
        inlet = Inlet(node.router, parse_route("/service/outlet"))  # no hop: end to end
        host, port = await inlet.listen()
        assert await asyncio.wait_for(pump_through(host, port, b"local"), 10) == b"local"
        await inlet.close()
