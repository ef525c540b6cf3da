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
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

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

pytestmark = pytest.mark.integration

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
        self.frames += frames
        if any(isinstance(f, OpenOk | OpenRefused) for f in frames):
            self.answered.set()

    async def open(self, onward: Route, return_route: Route = ()) -> list[Frame]:
        """Sends an OPEN along ``onward`` and returns what came back within 5 s."""
        payload = encode_packet([Open(1, 1 << 20)])
        await self.node.router.route(Message(onward, return_route, payload))
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
