"""A secure channel knows its route's round trip from its handshake, before any PING: both
ends (the initiator from its first message to the answer, the responder from its answer to
the last message). The path service times a punch's start with it."""

from __future__ import annotations

import asyncio

import pytest

from meshkey import Node

pytestmark = pytest.mark.integration


async def test_both_ends_of_a_relayed_channel_measure_the_handshake() -> None:
    loop = asyncio.get_running_loop()
    async with (
        Node(name="green") as green,
        Node(tcp=None, name="blue") as blue,
        Node(tcp=None, name="yellow") as yellow,
    ):
        await blue.create_relay("blue", str(green.addresses[0]))
        route = f"{green.addresses[0]}/service/forward_to_blue/secure/api/service/uppercase"
        began = loop.time()
        assert await yellow.send(route, b"hello") == b"HELLO"
        span = loop.time() - began
        (initiator,) = [c for c in yellow.channels.channels() if c.initiator]
        (responder,) = [c for c in blue.channels.channels() if not c.initiator]
        for channel in (initiator, responder):
            assert channel.handshake_rtt is not None
            # Measured inside the exchange: never more than the whole send took.
            assert 0.0 <= channel.handshake_rtt <= span
            assert channel.handshake_sent_at is None  # answered: nothing awaits
