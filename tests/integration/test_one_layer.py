"""One encryption layer on a direct path (DESIGN decision 19, issue 21), between real nodes on
loopback: a TCP portal through a secure channel whose path goes direct -> relay -> direct in
the middle of a 64 MiB transfer arrives sha256-exact; on the direct hop the channel's DATA goes
PLAIN (not sealed again), and what crosses the relay node never holds plaintext, before,
during or after the switches, resent messages included.

The path manager's say is forced (:class:`Switch` answers ``direct_route``), and each switch
is announced to both ends as the path service does (``path_switched``: the last few seconds
of messages go again on the new path). A worker on the relay node (green) sees every channel
payload that crosses it, as the relay could.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from meshkey import Node
from meshkey.channel.record import Channel, PathHooks
from meshkey.identity.node_id import NodeId
from meshkey.portal import Inlet, Outlet
from meshkey.routing.address import Route, ServiceAddress, TransportAddress, parse_route
from meshkey.routing.message import Message
from meshkey.wire.channel import ChannelKind, peek_kind

from .test_portal import digest_then_reply, tcp_server

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
TOTAL = 64 * MiB
BLOCK = 4096
#: Starts every block of the stream: a capture holding plaintext would hold this.
MARKER = b"MESHKEY-PLAINTEXT-MARKER:"


@dataclass
class Watch:
    """On green, on the channel's relayed route both ways: passes everything on, keeping
    each channel payload (kind and bytes)."""

    node: Node
    seen: list[tuple[ChannelKind | None, bytes]] = field(default_factory=list)

    async def handle(self, message: Message) -> None:
        onward = message.step().with_return(ServiceAddress("watch"))
        self.seen.append((peek_kind(onward.payload), bytes(onward.payload)))
        await self.node.router.route(onward)

    def count(self, kind: ChannelKind) -> int:
        return sum(1 for seen_kind, _ in self.seen if seen_kind is kind)


class Switch:
    """A node's path manager with its direct path forced on or off: ``direct_route`` names a
    hop pinned to the peer's NodeId while ``direct``, else None (the relay); the rest is the
    node's own path service."""

    def __init__(self, real: PathHooks, hop: TransportAddress) -> None:
        self.real = real
        self.hop = hop
        self.direct = True

    def direct_route(self, peer: NodeId) -> Route | None:
        return (self.hop,) if self.direct and peer == self.hop.node_id else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def stream() -> bytes:
    """TOTAL bytes in blocks that each start with MARKER and a counter, then random bytes."""
    body = os.urandom(BLOCK)
    return b"".join((MARKER + b"%08d:" % i + body)[:BLOCK] for i in range(TOTAL // BLOCK))


@dataclass
class Lab:
    green: Node
    blue: Node
    yellow: Node
    watch: Watch
    switches: tuple[Switch, Switch]
    port: int
    channel: Channel  # yellow's
    #: (plain messages yellow sent, DATA the relay carried) at each switch
    marks: list[tuple[int, int]] = field(default_factory=list)

    async def switch(self, *, direct: bool) -> None:
        self.marks.append((self.channel.plain_sent, self.watch.count(ChannelKind.DATA)))
        for switch in self.switches:
            switch.direct = direct
        self.yellow.channels.path_switched(self.blue.node_id)
        self.blue.channels.path_switched(self.yellow.node_id)
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def lab() -> AsyncIterator[Lab]:
    async with (
        tcp_server(digest_then_reply) as server_port,
        Node(name="green") as green,
        Node(tcp=None, name="blue") as blue,
        Node(tcp=None, name="yellow") as yellow,
    ):
        watch = Watch(green)
        green.register_worker("watch", watch.handle)
        g = str(green.addresses[0])
        await blue.create_relay("blue", g)
        outlet = Outlet(blue.router, "127.0.0.1", server_port)
        blue_udp = next(a for a in blue.addresses if a.protocol == "udp")
        yellow_udp = next(a for a in yellow.addresses if a.protocol == "udp")
        assert yellow.channels.paths is not None and blue.channels.paths is not None
        switches = (
            Switch(yellow.channels.paths, blue_udp),
            Switch(blue.channels.paths, yellow_udp),
        )
        yellow.channels.paths, blue.channels.paths = switches
        listener = parse_route(f"{g}/service/watch/service/forward_to_blue/service/api")
        channel = await yellow.channels.create(listener)
        inlet = Inlet(yellow.router, parse_route(f"/service/{channel.address}/service/outlet"))
        _, port = await inlet.listen()
        try:
            yield Lab(green, blue, yellow, watch, switches, port, channel)
        finally:
            await inlet.close()
            await outlet.close()


async def send_with_switches(lab: Lab, data: bytes) -> bytes:
    """Writes ``data`` to the inlet, switching direct -> relay at 16 MiB and back at 40 MiB;
    returns the outlet side's answer ("COUNT SHA256")."""
    reader, writer = await asyncio.open_connection("127.0.0.1", lab.port)
    view = memoryview(data)
    step = 256 * 1024
    for start in range(0, len(data), step):
        if start == 16 * MiB:
            await lab.switch(direct=False)
        elif start == 40 * MiB:
            await lab.switch(direct=True)
        writer.write(view[start : start + step])
        await writer.drain()
    writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), 120)
    writer.close()
    return answer


async def test_a_portal_across_direct_relay_direct_is_exact_and_the_relay_sees_no_plaintext() -> (
    None
):
    data = stream()
    async with lab() as running:
        yellow_channel = next(c for c in running.yellow.channels.channels() if c.initiator)
        blue_channel = next(c for c in running.blue.channels.channels() if not c.initiator)
        answer = await send_with_switches(running, data)
        relayed_data = running.watch.count(ChannelKind.DATA)
        (plain_at_first, relayed_at_first), (plain_at_second, _) = running.marks

    assert answer == f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode()
    # The direct hop carried DATA plain both ways (the portal's bytes one way, its acks back).
    assert yellow_channel.plain_sent > 0 and blue_channel.plain_received > 0
    assert blue_channel.plain_sent > 0 and yellow_channel.plain_received > 0
    # Plain before the first switch, and again after the way back.
    assert plain_at_first > 0 and yellow_channel.plain_sent > plain_at_second
    # The relay carried the middle of the transfer, sealed: the capture is real...
    assert relayed_data - relayed_at_first > 16
    # ...and holds no plaintext: no PLAIN payload, and no block's marker in any payload.
    assert running.watch.count(ChannelKind.PLAIN) == 0
    assert not [kind for kind, payload in running.watch.seen if MARKER in payload]
