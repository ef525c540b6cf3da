"""The secure-channel glue (SecureChannels) on a fake clock and a fake network of real
routers: its timers drive the liveness core exactly at the core's deadlines, what the core
reports is carried out (in-flight senders told, half-open handshakes forgotten, a forgotten
session re-handshaken), and what arrived before a failure is still delivered."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from meshkey.channel.liveness import HANDSHAKE_TIMEOUT, Health, LivenessConfig
from meshkey.channel.manager import HOLD_FOR_PATH, Channel, ChannelState, SecureChannels
from meshkey.channel.session import SecureSession, StaticKey
from meshkey.channel.session import State as SessionState
from meshkey.routing.address import ServiceAddress
from meshkey.routing.message import Message
from meshkey.wire.channel import Sealed, decode_channel, encode_channel
from meshkey.wire.message import ErrorCode

from .test_channel_fakes import FakeClockLoop, FakeNet, advance, advance_to, run, settle

CONFIG = LivenessConfig()  # the defaults: keepalive 20 s, answer within 3 s


@dataclass
class Pair:
    """Green opens channels to blue's listener ``api``; blue has an ``upper`` service, green
    an ``inbox`` that collects what comes back."""

    net: FakeNet = field(default_factory=FakeNet)
    inbox: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.green, self.blue = self.net.node("green"), self.net.node("blue")
        self.green_channels = SecureChannels(self.green.identity, self.green.router)
        self.blue_channels = SecureChannels(self.blue.identity, self.blue.router)
        self.blue_channels.add_listener("api")
        self.upper_seen: list[bytes] = []
        self.upper_told: list[str] = []  # errors about upper's replies

        async def upper(message: Message) -> None:
            if message.is_error:
                self.upper_told.append(message.error()[1])
                return
            self.upper_seen.append(message.payload)
            await self.blue.router.reply(message, message.payload.upper())

        async def inbox(message: Message) -> None:
            self.inbox.append(message)

        self.blue.router.register("upper", upper, inline=True)
        self.green.router.register("inbox", inbox, inline=True)

    async def open(self) -> Channel:
        return await self.green_channels.create((self.blue.address, ServiceAddress("api")))

    async def send(self, channel: Channel, payload: bytes) -> None:
        onward = (ServiceAddress(channel.address), ServiceAddress("upper"))
        await self.green.router.route(Message(onward, (ServiceAddress("inbox"),), payload))

    def sent_to_blue(self, since: float) -> int:
        ports = (self.green.port, self.blue.port)
        return sum(1 for at, *link, _ in self.net.sent if tuple(link) == ports and at > since)


def health(channel: Channel) -> Health:
    """Read through a call: mypy would otherwise keep the first narrowing of the attribute."""
    return channel.liveness.health


def state(channel: Channel) -> ChannelState:
    return channel.state


def test_the_keepalive_timer_fires_the_liveness_core_at_its_deadline() -> None:
    async def main(loop: FakeClockLoop) -> None:
        pair = Pair()
        channel = await pair.open()
        await settle()
        deadline = channel.liveness.next_deadline()
        assert deadline == channel.liveness.last_heard + CONFIG.keepalive_interval
        assert channel.timer.at == deadline  # the glue's timer follows the core
        opened_at = loop.now
        await advance_to(loop, deadline - 0.001)
        assert pair.sent_to_blue(opened_at) == 0  # nothing before the deadline
        await advance_to(loop, deadline)
        assert pair.sent_to_blue(opened_at) == 1  # the PING, at the deadline
        assert channel.liveness.rtt is not None  # its PONG came back and was measured
        assert channel.timer.at == channel.liveness.next_deadline() == deadline + 20.0
        assert channel.state is ChannelState.OPEN

    run(main)


def test_a_silent_peer_is_noticed_at_the_answer_deadline_and_sends_wait_for_the_route() -> None:
    """Issue 18: while a channel is unreachable (a relay replaced, a path fallen back),
    what is sent waits for the route instead of failing; the message sent into the dead
    route goes again once the peer is heard, and both are answered."""

    async def main(loop: FakeClockLoop) -> None:
        pair = Pair()
        channel = await pair.open()
        await pair.send(channel, b"hello")
        await settle()
        assert [m.payload for m in pair.inbox] == [b"HELLO"]
        await advance(loop, 1.0)  # quiet for longer than probe_quiet: the next send probes
        pair.net.link_up(pair.green, pair.blue, False)  # blue vanishes without a word
        sent_at = loop.now
        await pair.send(channel, b"lost")
        await advance_to(loop, sent_at + CONFIG.answer_timeout - 0.001)
        assert health(channel) is Health.OPEN and len(pair.inbox) == 1
        await advance_to(loop, sent_at + CONFIG.answer_timeout)
        assert health(channel) is Health.UNREACHABLE
        assert state(channel) is ChannelState.UNREACHABLE
        assert len(pair.inbox) == 1  # nobody is told yet: the route may come back
        await pair.send(channel, b"again")  # waits, bounded, for the route
        await settle()
        assert len(pair.inbox) == 1 and len(channel.held) == 1
        pair.net.link_up(pair.green, pair.blue, True)
        retry = channel.liveness.next_deadline()
        assert retry is not None and retry < sent_at + CONFIG.answer_timeout + HOLD_FOR_PATH
        await advance_to(loop, retry)  # the retry PING gets its PONG
        await settle()
        assert state(channel) is ChannelState.OPEN
        await advance(loop, 1.0)  # past the peer's reordering hold, if it held one
        assert [m.payload for m in pair.inbox[1:]] == [b"LOST", b"AGAIN"]  # once, in order
        assert not channel.held and channel.held_bytes == 0

    run(main)


def test_senders_hear_why_when_the_route_does_not_come_back_in_time() -> None:
    async def main(loop: FakeClockLoop) -> None:
        pair = Pair()
        channel = await pair.open()
        await advance(loop, 1.0)
        pair.net.link_up(pair.green, pair.blue, False)
        sent_at = loop.now
        await pair.send(channel, b"lost")
        await advance_to(loop, sent_at + CONFIG.answer_timeout)
        assert state(channel) is ChannelState.UNREACHABLE
        await pair.send(channel, b"again")
        await settle()
        held_until = channel.hold_until
        assert held_until is not None
        await advance_to(loop, held_until)
        await settle()
        told = [m for m in pair.inbox if m.is_error]
        assert len(told) == 2  # the one in flight and the one that waited
        for message in told:
            code, text = message.error()
            assert code == ErrorCode.UNREACHABLE and "the peer did not answer" in text
        await pair.send(channel, b"later")  # waiting again (bounded), not refused at once
        await settle()
        assert len(channel.held) == 1

    run(main)


def test_a_half_open_handshake_is_forgotten_at_its_deadline() -> None:
    async def main(loop: FakeClockLoop) -> None:
        pair = Pair()
        hello = SecureSession(True, StaticKey(pair.green.identity)).start()
        await pair.green.router.route(
            Message((pair.blue.address, ServiceAddress("api")), (ServiceAddress("inbox"),), hello)
        )
        await settle()
        [half_open] = pair.blue_channels.channels()
        assert half_open.state is ChannelState.HANDSHAKING
        assert len(pair.blue_channels._half_open) == 1
        assert pair.blue.router.has_worker(half_open.decryptor)
        started = loop.now
        await advance_to(loop, started + HANDSHAKE_TIMEOUT - 0.001)
        assert pair.blue_channels.channels() == [half_open]
        await advance_to(loop, started + HANDSHAKE_TIMEOUT)
        assert pair.blue_channels.channels() == []
        assert len(pair.blue_channels._half_open) == 0  # its slot is free again
        assert not pair.blue.router.has_worker(half_open.decryptor)

    run(main)


def test_a_peer_that_forgot_the_channel_gets_a_new_handshake_on_the_same_address() -> None:
    async def main(loop: FakeClockLoop) -> None:
        pair = Pair()
        channel = await pair.open()
        [blue_end] = pair.blue_channels.channels()
        pair.blue_channels._forget(blue_end)  # as if blue restarted: its decryptor is gone
        await pair.send(channel, b"are you there")
        await advance(loop, 1.0)
        # Blue's router said NO_SUCH_SERVICE for the decryptor: a re-handshake, not a close.
        assert channel.reconnects == 1 and channel.state is ChannelState.OPEN
        await pair.send(channel, b"again")
        await settle()
        assert pair.inbox[-1].payload == b"AGAIN"
        assert [c.state for c in pair.blue_channels.channels()] == [ChannelState.OPEN]

    run(main)


def test_what_arrived_before_a_forgery_is_delivered_and_the_forgery_closes_the_channel() -> None:
    async def main(loop: FakeClockLoop) -> None:
        pair = Pair()
        channel = await pair.open()
        [blue_end] = pair.blue_channels.channels()
        captured: list[Message] = []
        pair.blue.router.capture = captured.append
        await pair.send(channel, b"genuine")
        await settle()
        assert pair.upper_seen == [b"genuine"]
        # Replay the sealed message that carried it, with one bit flipped, to blue's end.
        sealed = next(m for m in captured if m.onward[:1] == (ServiceAddress(blue_end.decryptor),))
        original = decode_channel(sealed.payload)
        assert isinstance(original, Sealed)
        flipped = bytes([original.ciphertext[0] ^ 1]) + original.ciphertext[1:]
        forged = Sealed(original.kind, original.nonce + 1, flipped)
        await pair.blue.router.route(
            Message(sealed.onward, sealed.return_route, encode_channel(forged))
        )
        await settle()
        assert blue_end.state is ChannelState.CLOSED
        assert blue_end.error is not None and "failed authentication" in blue_end.error
        assert pair.upper_seen == [b"genuine"]  # delivered before, and only that
        assert [m.payload for m in pair.inbox] == [b"GENUINE"]
        # Its reply was never acknowledged by green: upper hears why its channel closed.
        assert pair.upper_told == [
            f"secure channel {blue_end.address}: closed: a message failed authentication "
            "(tampered with on the route?)"
        ]

    run(main)


@pytest.mark.parametrize("no_direct", [False, True])
def test_a_channel_is_described_with_its_state_and_route(no_direct: bool) -> None:
    async def main(loop: FakeClockLoop) -> None:
        pair = Pair()
        channel = await pair.green_channels.create(
            (pair.blue.address, ServiceAddress("api")), no_direct=no_direct
        )
        described = pair.green_channels.describe(channel)
        assert described["state"] == "open" and described["role"] == "initiator"
        assert described["peer"] == str(pair.blue.identity.node_id)
        assert described["no_direct"] is no_direct
        assert described["route"].startswith(str(pair.blue.address))
        await pair.green_channels.delete(channel.address)
        await settle()
        assert [c.state for c in pair.blue_channels.channels()] == [ChannelState.CLOSED]
        assert pair.blue_channels.channels()[0].error == "closed by the peer: deleted by its owner"

    run(main)


def test_a_failed_rehandshake_leaves_the_channel_unreachable_until_the_next_one_works() -> None:
    """Not "handshaking" (which refuses sends at once): the channel was open, and waits."""

    async def main(loop: FakeClockLoop) -> None:
        pair = Pair()
        channel = await pair.open()
        await advance(loop, 1.0)
        pair.net.link_up(pair.green, pair.blue, False)
        await pair.send(channel, b"lost")
        for _ in range(200):  # until a re-handshake was tried and timed out
            await advance(loop, 0.5)
            if not channel.reconnecting and channel.session.state is SessionState.HANDSHAKING:
                break
        assert channel.session.state is SessionState.HANDSHAKING and not channel.reconnecting
        assert state(channel) is ChannelState.UNREACHABLE and channel.error
        await pair.send(channel, b"waits")
        await settle()
        assert [m.payload for m in channel.held] == [b"waits"]
        pair.net.link_up(pair.green, pair.blue, True)
        for _ in range(200):
            await advance(loop, 0.5)
            if state(channel) is ChannelState.OPEN:
                break
        assert state(channel) is ChannelState.OPEN and channel.reconnects == 1

    run(main)
