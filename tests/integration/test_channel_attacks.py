"""A hostile node on a secure channel's route cannot make the far end accept anything it
should not: flipped bits, replays, reordering beyond the window, drops. Garbage closes only
the channel it hits; the node keeps serving."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from meshkey import Node, RemoteError
from meshkey.channel.keys import REPLAY_WINDOW
from meshkey.identity.node_id import NodeId
from meshkey.routing.address import ServiceAddress, parse_route
from meshkey.routing.message import Message
from meshkey.wire.channel import ChannelKind

pytestmark = pytest.mark.integration


def is_data(message: Message) -> bool:
    return message.payload[:2] == bytes([1, ChannelKind.DATA])


@dataclass
class Evil:
    """A worker on green that passes channel traffic on, like ``hop``, but misbehaves."""

    node: Node
    tamper: Callable[[Evil, Message], list[Message]]
    held: list[Message] = field(default_factory=list)
    seen: int = 0

    async def handle(self, message: Message) -> None:
        onward = message.step().with_return(ServiceAddress("evil"))
        outgoing = self.tamper(self, onward) if is_data(onward) else [onward]
        if is_data(onward):
            self.seen += 1
        for each in outgoing:
            await self.node.router.route(each)


@dataclass
class Network:
    green: Node
    blue: Node
    yellow: Node
    received: list[tuple[bytes, NodeId | None]]
    channel: str

    async def post(self, payload: bytes) -> None:
        """Sends through the channel to blue's recorder, expecting no reply."""
        route = parse_route(f"{self.channel}/service/recorder")
        await self.yellow.router.route(Message(route, (), payload))

    async def settle(self, expected: int, predicate: Callable[[], bool] | None = None) -> None:
        """Waits until ``expected`` messages arrived (and ``predicate`` holds), then a little
        longer, so that anything wrongly delivered late would show."""
        deadline = asyncio.get_running_loop().time() + 10
        while len(self.received) < expected or (predicate is not None and not predicate()):
            assert asyncio.get_running_loop().time() < deadline, "the network did not settle"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)


@pytest.fixture
async def network(request: pytest.FixtureRequest) -> AsyncIterator[Network]:
    tamper = request.param
    async with (
        Node(name="green") as green,
        Node(tcp=None, name="blue") as blue,
        Node(tcp=None, name="yellow") as yellow,
    ):
        evil = Evil(green, tamper)
        green.register_worker("evil", evil.handle)
        received: list[tuple[bytes, NodeId | None]] = []

        async def record(message: Message) -> None:
            received.append((message.payload, message.local.channel_peer))

        blue.register_worker("recorder", record)
        g = str(green.addresses[0])
        await blue.create_relay("blue", g)
        # no_direct: on loopback the nodes would punch a direct path at once and leave the
        # evil worker behind; these tests are about what it can do while it carries traffic.
        channel = await yellow.create_secure_channel(
            f"{g}/service/evil/service/forward_to_blue/service/api", no_direct=True
        )
        yield Network(green, blue, yellow, received, channel)


def flip(evil: Evil, message: Message) -> list[Message]:
    payload = bytearray(message.payload)
    payload[-1] ^= 0x01
    return [Message(message.onward, message.return_route, bytes(payload), message.kind)]


def replay(evil: Evil, message: Message) -> list[Message]:
    return [message, message]


def hold_first(evil: Evil, message: Message) -> list[Message]:
    if evil.seen == 0:
        evil.held.append(message)
        return []
    if evil.seen == REPLAY_WINDOW + 4:
        return [message, *evil.held]  # released far too late
    return [message]


def drop_every_third(evil: Evil, message: Message) -> list[Message]:
    return [] if evil.seen % 3 == 2 else [message]


@pytest.mark.parametrize("network", [flip], indirect=True)
async def test_flipped_bits_are_rejected_and_close_the_channel(network: Network) -> None:
    await network.post(b"tampered")
    await network.settle(0, lambda: network.blue.channels.channels()[0].state == "closed")
    assert network.received == []
    # Blue's end closed. (Yellow's end then learns blue no longer knows the channel and may
    # re-handshake: a new session, as protected as the first, so the tamperer gains nothing.)
    blue_end = network.blue.channels.channels()[0]
    assert blue_end.state == "closed"
    assert "failed authentication" in (blue_end.error or "")
    # Blue keeps serving: a fresh channel that avoids the evil worker works.
    g = str(network.green.addresses[0])
    fresh = await network.yellow.create_secure_channel(f"{g}/service/forward_to_blue/service/api")
    assert await network.yellow.send(f"{fresh}/service/uppercase", b"ok") == b"OK"


@pytest.mark.parametrize("network", [replay], indirect=True)
async def test_replayed_messages_are_delivered_once(network: Network) -> None:
    for index in range(10):
        await network.post(b"m%d" % index)
    await network.settle(10)
    assert [p for p, _ in network.received] == [b"m%d" % i for i in range(10)]
    assert {peer for _, peer in network.received} == {network.yellow.node_id}
    assert network.blue.channels.channels()[0].state == "open"


@pytest.mark.parametrize("network", [hold_first], indirect=True)
async def test_a_message_held_back_beyond_the_window_is_dropped(network: Network) -> None:
    count = REPLAY_WINDOW + 5
    for index in range(count):
        await network.post(b"m%d" % index)
    await network.settle(count - 1)
    assert [p for p, _ in network.received] == [b"m%d" % i for i in range(1, count)]


@pytest.mark.parametrize("network", [drop_every_third], indirect=True)
async def test_dropped_messages_are_just_missing(network: Network) -> None:
    for index in range(30):
        await network.post(b"m%d" % index)
    await network.settle(20)
    assert [p for p, _ in network.received] == [b"m%d" % i for i in range(30) if i % 3 != 2]
    assert network.blue.channels.channels()[0].state == "open"


async def test_garbage_and_malformed_handshakes_close_only_their_channel() -> None:
    async with Node(name="green") as green, Node(tcp=None) as yellow, Node(tcp=None) as other:
        g = str(green.addresses[0])
        good = await yellow.create_secure_channel(f"{g}/service/api")
        await other.create_secure_channel(f"{g}/service/api")
        victim_end = next(c for c in green.channels.channels() if c.session.peer == other.node_id)
        # Garbage straight at the victim channel's decryptor on green.
        with pytest.raises(RemoteError):
            await other.send(
                f"{g}/service/{victim_end.decryptor}",
                b"\x01\x05" + bytes(8) + b"junk" * 8,
                timeout=0.5,
            )
        await asyncio.sleep(0.1)
        assert victim_end.state == "closed"
        assert "failed authentication" in (victim_end.error or "")
        # A half-open handshake fed a malformed FINISH is dropped too.
        hello = await other.request(
            Message(parse_route(f"{g}/service/api"), (), b"\x01\x01" + b"\x11" * 32), timeout=2
        )
        assert hello.payload[:2] == bytes([1, ChannelKind.HELLO_REPLY])
        half_open = hello.return_route[-1]
        assert isinstance(half_open, ServiceAddress)
        with pytest.raises(RemoteError):
            await other.send(f"{g}/service/{half_open.name}", b"\x01\x03short", timeout=0.5)
        # Green still serves everyone else.
        assert await yellow.send(f"{good}/service/uppercase", b"fine") == b"FINE"
        assert await other.send(f"{g}/service/echo", b"echo") == b"echo"
