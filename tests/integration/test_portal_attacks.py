"""Attacks on portals (issue 19), mounted with real nodes on loopback.

The confused deputy: an outlet created with ``allow`` must serve the identity that is
authenticated end to end, never the node a stranger routed through. Each route shape an
allowed node uses is served; each way a stranger can make an allowed node carry its packets
(forwarding with an empty return route, through its ``hop`` service, out of a secure channel
the stranger opened to it, into a secure channel it has to the outlet) is refused, and the
private server never sees a connection for the stranger.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from meshkey import Node
from meshkey.portal import Outlet
from meshkey.routing.address import Route, ServiceAddress, parse_route
from meshkey.routing.message import Message
from meshkey.wire.errors import WireError
from meshkey.wire.portal import (
    Data,
    Frame,
    Open,
    OpenOk,
    OpenRefused,
    RefuseReason,
    decode_packet,
    encode_packet,
)

from .conftest import Cli

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
BANNER = b"SSH-2.0-private-server\r\n"


@dataclass
class Server:
    """A private TCP server that greets every connection with a banner, then echoes."""

    port: int = 0
    connections: int = 0


@contextlib.asynccontextmanager
async def private_server() -> AsyncIterator[Server]:
    server = Server()

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        writer.write(BANNER)
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    listening = await asyncio.start_server(greet, "127.0.0.1", 0)
    server.port = int(listening.sockets[0].getsockname()[1])
    try:
        yield server
    finally:
        listening.close()


def udp(node: Node) -> str:
    return str(next(a for a in node.addresses if a.protocol == "udp"))


@dataclass
class Mesh:
    outlet_node: Node  # next to the private server; its outlet allows only `allowed`
    allowed: Node
    relay: Node  # the outlet node keeps a relay here (forward_to_outlet)
    stranger: Node
    server: Server
    outlet: Outlet

    @property
    def via_relay(self) -> str:
        return f"{udp(self.relay)}/service/forward_to_outlet"


@contextlib.asynccontextmanager
async def mesh(*, insecure: bool = False) -> AsyncIterator[Mesh]:
    async with (
        private_server() as server,
        Node(tcp=None, name="outlet") as outlet_node,
        Node(tcp=None, name="allowed") as allowed,
        Node(tcp=None, name="relay") as relay,
        Node(tcp=None, name="stranger") as stranger,
    ):
        await outlet_node.create_relay("outlet", udp(relay))
        outlet = Outlet(
            outlet_node.router,
            "127.0.0.1",
            server.port,
            allow=frozenset([allowed.node_id]),
            insecure=insecure,
        )
        try:
            yield Mesh(outlet_node, allowed, relay, stranger, server, outlet)
        finally:
            await outlet.close()


async def served(node: Node, route: Route | str, *, insecure: bool = False) -> bytes:
    """Opens a session from ``node`` and returns the banner it read (raises if refused)."""
    resolved = await node.resolve_secure(route)
    reader, writer = await node.open_portal_stream(resolved, insecure=insecure, timeout=10)
    banner = await asyncio.wait_for(reader.readexactly(len(BANNER)), 10)
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
    writer.close()
    return banner


# -- what an allowed node does is served, by every route shape ----------------------------


async def test_an_allowed_node_is_served_over_a_direct_hop() -> None:
    async with mesh() as m:
        assert await served(m.allowed, f"{udp(m.outlet_node)}/service/outlet") == BANNER


async def test_an_allowed_node_is_served_through_a_secure_channel() -> None:
    async with mesh() as m:
        route = f"{udp(m.outlet_node)}/secure/api/service/outlet"
        assert await served(m.allowed, route) == BANNER


async def test_an_allowed_node_is_served_through_a_secure_channel_through_a_relay() -> None:
    async with mesh() as m:
        assert await served(m.allowed, f"{m.via_relay}/secure/api/service/outlet") == BANNER


async def test_an_allowed_node_is_served_through_nested_secure_channels() -> None:
    async with mesh() as m:
        route = f"{udp(m.relay)}/secure/api{udp(m.outlet_node)}/secure/api/service/outlet"
        assert await served(m.allowed, route) == BANNER
        assert len([c for c in m.allowed.channels.channels() if c.initiator]) == 2


async def test_through_a_relay_without_a_channel_nobody_is_authenticated_so_allow_refuses() -> None:
    """The relay saw the bytes and could have sent them itself: with ``allow``, even an
    ``insecure`` outlet has no identity to check, so it refuses."""
    for insecure in (False, True):
        async with mesh(insecure=insecure) as m:
            with pytest.raises(ConnectionRefusedError, match=r"not allowed|no identity"):
                await served(m.allowed, f"{m.via_relay}/service/outlet", insecure=True)
            assert m.server.connections == 0


# -- what a stranger does through an allowed node is refused ------------------------------


@dataclass
class Catcher:
    """The portal frames that come back to the stranger's node (replies with an empty onward
    route, or to its own portal worker), whatever route they took."""

    node: Node
    worker: str = field(default_factory=lambda: f"_portal.{secrets.token_hex(8)}")
    frames: list[Frame] = field(default_factory=list)
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    sent_bytes: int = 0  # on the wire, routing header included
    received_bytes: int = 0

    def __post_init__(self) -> None:
        self.node.router.capture = self._capture

        async def ignore(message: Message) -> None:
            pass

        self.node.router.register(self.worker, ignore, inline=True)

    def _capture(self, message: Message) -> None:
        if message.local.hop_peer is None and message.local.channel_peer is None:
            return  # the stranger's own sends
        if message.onward and message.onward[0] != ServiceAddress(self.worker):
            return  # channel handshakes and the like
        try:
            frames = decode_packet(message.payload)
        except WireError:
            return
        self.received_bytes += len(message.to_wire())
        self.frames += frames
        if any(isinstance(f, OpenOk | OpenRefused) for f in frames):
            self.answered.set()

    async def open(
        self, onward: Route, return_route: Route = (), *, sessions: int = 1
    ) -> list[Frame]:
        """Sends OPENs (one packet) along ``onward``; returns what came back within 5 s."""
        payload = encode_packet([Open(s, 1 << 20) for s in range(1, sessions + 1)])
        message = Message(onward, return_route, payload)
        self.sent_bytes += len(message.to_wire())
        await self.node.router.route(message)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.answered.wait(), 5)
        await asyncio.sleep(0.2)  # a banner would follow the OPEN_OK
        return self.frames


def assert_refused(m: Mesh, frames: list[Frame]) -> None:
    assert not any(isinstance(f, OpenOk | Data) for f in frames), frames
    assert any(
        isinstance(f, OpenRefused) and f.reason is RefuseReason.NOT_ALLOWED for f in frames
    ), frames
    assert m.server.connections == 0
    assert m.outlet.describe()["sessions_total"] == 0


async def test_a_stranger_dialling_the_outlet_directly_is_refused() -> None:
    async with mesh() as m:
        frames = await Catcher(m.stranger).open(parse_route(f"{udp(m.outlet_node)}/service/outlet"))
        assert_refused(m, frames)


async def test_a_stranger_routing_through_an_allowed_node_is_refused() -> None:
    """The deputy: through the allowed node (forwarding is open by default) with an empty
    return route, the outlet saw two return addresses and took the hop's peer for the
    sender; it got OPEN_OK and the private server's banner."""
    async with mesh() as m:
        route = parse_route(f"{udp(m.allowed)}{udp(m.outlet_node)}/service/outlet")
        assert_refused(m, await Catcher(m.stranger).open(route))


async def test_refusing_a_stranger_never_sends_more_than_it_sent() -> None:
    """However many OPENs a packet holds, the refusals weigh less (decision 20): the reason
    is said once per packet."""
    async with mesh() as m:
        catcher = Catcher(m.stranger)
        route = parse_route(f"{udp(m.allowed)}{udp(m.outlet_node)}/service/outlet")
        frames = await catcher.open(route, sessions=300)
        assert_refused(m, frames)
        assert len([f for f in frames if isinstance(f, OpenRefused)]) == 300
        assert 0 < catcher.received_bytes <= catcher.sent_bytes


async def test_a_stranger_naming_its_portal_worker_through_an_allowed_node_is_refused() -> None:
    async with mesh() as m:
        catcher = Catcher(m.stranger)
        route = parse_route(f"{udp(m.allowed)}{udp(m.outlet_node)}/service/outlet")
        assert_refused(m, await catcher.open(route, (ServiceAddress(catcher.worker),)))


async def test_a_stranger_through_the_allowed_nodes_hop_service_is_refused() -> None:
    async with mesh() as m:
        route = parse_route(f"{udp(m.allowed)}/service/hop{udp(m.outlet_node)}/service/outlet")
        assert_refused(m, await Catcher(m.stranger).open(route))


async def test_a_stranger_forwarded_out_of_its_secure_channel_to_an_allowed_node_is_refused() -> (
    None
):
    """The allowed node decrypts the stranger's message and forwards it: the outlet sees a
    hop from the allowed node, and (that node's channel to the stranger) behind it."""
    async with mesh() as m:
        # The allowed node has a hop to the outlet's node open already (it forwards over open
        # hops for anyone; a new dial it would refuse a stranger before the outlet sees it).
        await m.allowed.send(f"{udp(m.outlet_node)}/service/echo", b"hop")
        channel = await m.stranger.create_secure_channel(f"{udp(m.allowed)}/service/api")
        route = parse_route(f"{channel}{udp(m.outlet_node)}/service/outlet")
        assert_refused(m, await Catcher(m.stranger).open(route))


async def test_a_stranger_feeding_the_allowed_nodes_secure_channel_is_refused() -> None:
    """A stranger that learned the address of the allowed node's channel to the outlet sends
    into it: the packet comes out of a channel whose peer is allowed, yet the stranger's
    link stands behind it in the return route."""
    async with mesh() as m:
        channel = await m.allowed.create_secure_channel(f"{udp(m.outlet_node)}/service/api")
        route = parse_route(f"{udp(m.allowed)}{channel}/service/outlet")
        assert_refused(m, await Catcher(m.stranger).open(route))
        # The channel itself still serves its owner.
        assert await served(m.allowed, f"{channel}/service/outlet") == BANNER


async def test_a_stranger_with_its_own_secure_channel_to_the_outlet_is_refused() -> None:
    async with mesh() as m:
        channel = await m.stranger.create_secure_channel(f"{udp(m.outlet_node)}/service/api")
        catcher = Catcher(m.stranger)
        route = parse_route(f"{channel}/service/outlet")
        assert_refused(m, await catcher.open(route, (ServiceAddress(catcher.worker),)))


# -- memory: what a peer can make a portal hold is bounded, and given back ---------------
#
# Real daemons; their RSS is read from /proc/PID/status before, during and after each
# attack. The bounds are generous (loaded machines, allocator noise) yet far below what the
# attacks cost before portals had a budget: 200 clients that never read made the outlet
# grow by 540 MB and keep 330 MB; 1,000 OPENs that read nothing, by 5 GB (3.4 GB kept).

#: What an attack may add to a daemon's RSS while it lasts, and what may stay once the
#: sessions it opened have ended (with the heaps trimmed, RSS returns to within a few MiB).
GROWTH_DURING = 100 * MIB
KEPT_AFTER = 24 * MIB


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Firehose:
    """A TCP server that writes to every connection as fast as it takes it, until it fails
    (threads: the test's event loop, if any, must not carry it)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=2048)
        self.port = int(self.listener.getsockname()[1])
        self.connections = 0
        self._sockets: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        chunk = os.urandom(256 * 1024)
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self._sockets.append(conn)
            threading.Thread(target=self._pour, args=(conn, chunk), daemon=True).start()

    @staticmethod
    def _pour(conn: socket.socket, chunk: bytes) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn.sendall(chunk)

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        for conn in self._sockets:
            with contextlib.suppress(OSError):
                conn.close()


@contextlib.contextmanager
def firehose() -> Iterator[Firehose]:
    server = Firehose()
    try:
        yield server
    finally:
        server.close()


def drink(port: int, size: int = MIB, timeout: float = 20) -> int:
    """A legitimate client: connects to 127.0.0.1:PORT and reads ``size`` bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        got = 0
        while got < size:
            data = sock.recv(min(1 << 16, size - got))
            if not data:
                break
            got += len(data)
    return got


def sessions_open(cli: Cli, kind: str, node: str) -> int:
    return sum(int(p["sessions_open"]) for p in cli.json(kind, "list", "--at", node))


def sample_peak(pids: dict[str, int], seconds: float) -> dict[str, int]:
    peak = dict.fromkeys(pids, 0)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for name, pid in pids.items():
            peak[name] = max(peak[name], rss(pid))
        time.sleep(0.25)
    return peak


def test_clients_that_never_read_through_one_inlet_are_bounded_and_given_back(cli: Cli) -> None:
    """200 TCP clients connect to one inlet and never read while the server behind the
    outlet writes as fast as it can: the outlet serves the inlet's identity 64 sessions,
    each holding what its reader took (nothing) plus 64 KiB each way, and a client of
    another node is still served; when the clients leave, the memory goes back."""
    for node in ("inlet", "outlet", "friend"):
        cli.ok("node", "create", node)
    with firehose() as server:
        cli.ok("tcp-outlet", "create", "--at", "outlet", "--to", f"127.0.0.1:{server.port}")
        ports = {}
        for node in ("inlet", "friend"):
            listening = cli.ok(
                "tcp-inlet", "create", "--at", node, "--to", "/node/outlet/service/outlet"
            )
            ports[node] = int(listening.strip().rpartition(":")[2])
        assert drink(ports["friend"]) == MIB  # warm: every code path has run once
        pids = {node: int(cli.json("node", "show", node)["pid"]) for node in ("inlet", "outlet")}
        before = {node: rss(pid) for node, pid in pids.items()}
        clients = []
        for _ in range(200):
            client = socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.connect(("127.0.0.1", ports["inlet"]))
            clients.append(client)
        peak = sample_peak(pids, 6.0)
        assert drink(ports["friend"]) == MIB  # another identity is still served
        peak = {node: max(peak[node], value) for node, value in sample_peak(pids, 2.0).items()}
        assert server.connections <= 64 + 2  # the inlet's 64, and the friend's two
        for client in clients:
            client.close()
        cli.wait_for(
            lambda: (
                sessions_open(cli, "tcp-outlet", "outlet") == 0
                and sessions_open(cli, "tcp-inlet", "inlet") == 0
            ),
            "the sessions to end",
            30,
        )
        time.sleep(2.0)  # the heaps are trimmed a second after the last session ended
        after = {node: rss(pid) for node, pid in pids.items()}
    for node in pids:
        assert peak[node] - before[node] <= GROWTH_DURING, (node, before, peak)
        assert after[node] - before[node] <= KEPT_AFTER, (node, before, after)


async def test_opens_that_never_read_from_one_allowed_identity_are_bounded_and_given_back(
    cli: Cli,
) -> None:
    """An allowed identity sends 1,000 OPENs (1 MiB windows) and then reads nothing: the
    outlet connects to its server for 64 of them, refuses the rest (TOO_MANY), holds 64 KiB
    for each of the 64 (never the 1 MiB the OPEN offered), serves another allowed identity
    meanwhile, and gives the memory back once the silent sessions time out."""
    async with (
        Node(tcp=None, name="attacker") as attacker,
        Node(tcp=None, name="friend") as friend,
    ):
        await asyncio.to_thread(cli.ok, "node", "create", "outlet")
        with firehose() as server:
            allow = [arg for n in (attacker, friend) for arg in ("--allow", str(n.node_id))]
            await asyncio.to_thread(
                cli.ok, "tcp-outlet", "create", "--at", "outlet",
                "--to", f"127.0.0.1:{server.port}", *allow,
            )  # fmt: skip
            shown = await asyncio.to_thread(cli.json, "node", "show", "outlet")
            pid = int(shown["pid"])
            address = next(a for a in shown["addresses"] if "/udp/" in a)
            route = parse_route(f"{address}/service/outlet")

            async def friend_reads() -> int:
                reader, writer = await friend.open_portal_stream(route, timeout=20)
                data = await asyncio.wait_for(reader.readexactly(MIB), 20)
                writer.close()
                return len(data)

            assert await friend_reads() == MIB  # warm: every code path has run once
            await asyncio.sleep(0.5)
            before = rss(pid)
            catcher = Catcher(attacker)
            opens = [Open(session, 1 << 20) for session in range(1, 1001)]
            for start in range(0, len(opens), 200):
                payload = encode_packet(opens[start : start + 200])
                await attacker.router.route(
                    Message(route, (ServiceAddress(catcher.worker),), payload)
                )
            peak = await asyncio.to_thread(sample_peak, {"outlet": pid}, 6.0)
            assert await friend_reads() == MIB  # another allowed identity is still served
            accepted = sum(isinstance(f, OpenOk) for f in catcher.frames)
            too_many = [
                f
                for f in catcher.frames
                if isinstance(f, OpenRefused) and f.reason is RefuseReason.TOO_MANY
            ]
            assert accepted <= 64 and len(too_many) >= 1000 - 64
            assert "holds 64 portal sessions" in too_many[0].text
            assert server.connections <= 64 + 2  # the attacker's 64, and the friend's two
            (listed,) = await asyncio.to_thread(cli.json, "tcp-outlet", "list", "--at", "outlet")
            assert listed["refused"] >= 1000 - 64  # and the operator sees them
            await asyncio.to_thread(
                cli.wait_for,
                lambda: sessions_open(cli, "tcp-outlet", "outlet") == 0,
                "the silent sessions to time out",
                60,
            )
            await asyncio.sleep(2.0)  # the heaps are trimmed a second after the last session
            after = rss(pid)
    assert peak["outlet"] - before <= GROWTH_DURING, (before, peak)
    assert after - before <= KEPT_AFTER, (before, after)
