"""A secure channel knows its route's round trip from its handshake, before any PING: both
ends (the initiator from its first message to the answer, the responder from its answer to
the last message). The path service times a punch's start with it, so it must be one round
trip over the route: here it is compared with round trips measured independently, by plain
messages over the same route, on a link slow enough (a forwarder that holds every datagram)
for the comparison to mean something on a busy machine."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from meshkey import Node

from .udp_forwarder import LossyForwarder

pytestmark = pytest.mark.integration

#: Each way, between yellow and green: a round trip over the route is at least twice this.
ONE_WAY = 0.1


@dataclass
class DelayingForwarder(LossyForwarder):
    """Holds every datagram for ``delay`` seconds before passing it on (order kept)."""

    delay: float = 0.0
    closed: bool = False

    def relay(self, direction: str, data: bytes, send: Callable[[bytes], None]) -> None:
        self.passed += 1
        asyncio.get_running_loop().call_later(self.delay, self._pass, send, data)

    def _pass(self, send: Callable[[bytes], None], data: bytes) -> None:
        if not self.closed:
            send(data)

    def close(self) -> None:
        self.closed = True
        super().close()


async def test_both_ends_of_a_relayed_channel_measure_one_round_trip_of_its_route() -> None:
    loop = asyncio.get_running_loop()
    async with (
        Node(name="green") as green,
        Node(tcp=None, name="blue") as blue,
        Node(tcp=None, name="yellow") as yellow,
    ):
        await blue.create_relay("blue", str(green.addresses[0]))
        target = next(a for a in green.addresses if a.protocol == "udp")
        forwarder = DelayingForwarder((target.host, target.port), delay=ONE_WAY)
        host, port = await forwarder.start()
        try:
            to_blue = f"/ip4/{host}/udp/{port}/id/{green.node_id}/service/forward_to_blue"
            # The hop to green exists before the channel: its handshake is not in the measure.
            assert await yellow.send(f"{to_blue}/service/uppercase", b"warm") == b"WARM"
            assert await yellow.send(f"{to_blue}/secure/api/service/uppercase", b"hi") == b"HI"
            (initiator,) = [c for c in yellow.channels.channels() if c.initiator]
            (responder,) = [c for c in blue.channels.channels() if not c.initiator]
            plain = []
            for _ in range(5):  # the same route, yellow -> green -> blue and back
                began = loop.time()
                assert await yellow.send(f"{to_blue}/service/uppercase", b"x") == b"X"
                plain.append(loop.time() - began)
        finally:
            forwarder.close()
    round_trip = min(plain)
    assert round_trip >= 2 * ONE_WAY
    for channel in (initiator, responder):
        assert channel.handshake_sent_at is None  # answered: nothing awaits
        assert channel.handshake_rtt is not None
        # One round trip, not half of one, not two (the initiator's HELLO to the CONFIRM),
        # and not the hop's own handshake: generous bounds, about a round trip each way.
        ratio = channel.handshake_rtt / round_trip
        assert 0.5 <= ratio <= 1.6, (channel.initiator, channel.handshake_rtt, plain)
