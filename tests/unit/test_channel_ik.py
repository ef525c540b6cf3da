"""Dialling with the responder's key known (issue 20): the IK handshake, its fallback to XX,
its replay guard, and the early data hooks, in the session core and in the glue (a fake clock
and a fake network of real routers, from test_channel_fakes)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkey.channel.freshness import MAX_PER_PEER, WINDOW_NS, ReplayGuard, Timestamps
from meshkey.channel.keys import ChannelError, ReplayedMessage
from meshkey.channel.liveness import HANDSHAKE_TIMEOUT
from meshkey.channel.manager import ChannelState, SecureChannels
from meshkey.channel.session import (
    ChannelUseError,
    Phase,
    SecureSession,
    State,
    StaticKey,
    UseXXInstead,
)
from meshkey.identity import Identity
from meshkey.identity.node_id import NodeId
from meshkey.routing.address import Route, ServiceAddress
from meshkey.routing.errors import RemoteError
from meshkey.routing.message import Message
from meshkey.wire.channel import (
    MAX_EARLY_DATA,
    MAX_HANDSHAKE,
    ChannelKind,
    Handshake,
    HandshakePayload,
    IdentityProof,
    Refuse,
    UseXX,
    decode_channel,
    decode_handshake_payload,
    encode_channel,
    encode_handshake_payload,
    peek_kind,
)
from meshkey.wire.errors import WireError
from meshkey.wire.message import ErrorCode

from .test_channel_fakes import FakeClockLoop, FakeNet, FakeNode, advance, run, settle

ALICE, BOB, MALLORY = Identity.generate(), Identity.generate(), Identity.generate()
BOB_KEY = StaticKey(BOB)
T0 = 1_700_000_000 * 10**9  # a wall clock, in ns


@dataclass
class Hooks:
    """A fake path manager: PathHooks, plus the early data hooks, giving ``give`` and
    recording every call in order."""

    give: bytes = b""
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def handshake_payload(self, peer: NodeId | None, initiator: bool) -> bytes:
        self.calls.append(("ask", peer, initiator))
        return self.give

    def on_handshake_payload(self, peer: NodeId, data: bytes, initiator: bool) -> None:
        self.calls.append(("got", peer, data, initiator))

    def direct_route(self, peer: NodeId) -> Route | None:
        return None

    def is_direct_link(self, worker: str, peer: NodeId) -> bool:
        return False

    def heard_from(self, peer: NodeId, worker: str | None) -> None:
        pass

    def channel_opened(self, peer: NodeId, address: str, no_direct: bool) -> None:
        self.calls.append(("opened", peer))

    def path_info(self, peer: NodeId) -> dict[str, Any] | None:
        return None

    def channel_closed(self, peer: NodeId, address: str) -> None:
        return None

    async def peer_key(self, peer: NodeId) -> bytes | None:
        return None


def _reply(session: SecureSession, data: bytes) -> bytes:
    reply = session.receive(data).reply
    assert reply is not None
    return reply


def ik_pair(
    *,
    key: bytes | None = None,
    bob: StaticKey = BOB_KEY,
    alice_allows: frozenset[NodeId] | None = None,
    bob_allows: frozenset[NodeId] | None = None,
    alice_hooks: Hooks | None = None,
    bob_hooks: Hooks | None = None,
    guard: ReplayGuard | None = None,
) -> tuple[SecureSession, SecureSession]:
    alice = SecureSession(
        True,
        StaticKey(ALICE),
        authorized=alice_allows,
        responder_key=key if key is not None else BOB_KEY.public,
        hooks=alice_hooks,
    )
    responder = SecureSession(
        False, bob, authorized=bob_allows, hooks=bob_hooks, replay_guard=guard
    )
    return alice, responder


# -- the session core ------------------------------------------------------------------------


def test_ik_opens_the_initiator_after_one_round_trip_and_the_responder_at_its_first_message() -> (
    None
):
    alice, bob = ik_pair(alice_allows=frozenset({BOB.node_id}))
    hello = alice.start(timestamp=T0)
    assert peek_kind(hello) is ChannelKind.IK_HELLO
    answer = bob.receive(hello)
    assert answer.reply is not None and peek_kind(answer.reply) is ChannelKind.IK_REPLY
    assert not answer.opened and bob.phase is Phase.SENT_IK_REPLY
    assert bob.peer == ALICE.node_id  # authenticated by IK_HELLO, but not yet proven live
    with pytest.raises(ChannelUseError):
        bob.seal(b"not before the initiator proved it is there")
    opened = alice.receive(answer.reply)
    assert opened.opened and alice.state is State.OPEN and alice.peer == BOB.node_id
    assert opened.reply is not None and peek_kind(opened.reply) is ChannelKind.CONFIRM
    assert alice.pattern == "IK" and alice.fell_back is None
    assert alice.peer_static == BOB_KEY.public
    data = alice.seal(b"sent in the same breath")
    assert bob.receive(opened.reply).opened
    assert bob.receive(data).plaintext == b"sent in the same breath"
    assert alice.receive(bob.seal(b"and back")).plaintext == b"and back"


def test_the_initiators_data_overtaking_its_confirm_opens_the_responder_too() -> None:
    alice, bob = ik_pair()
    confirm = _reply(alice, _reply(bob, alice.start(timestamp=T0)))
    first = bob.receive(alice.seal(b"first"))
    assert first.opened and first.plaintext == b"first" and bob.state is State.OPEN
    late = bob.receive(confirm)  # harmless once open
    assert not late.opened and bob.state is State.OPEN


def test_a_stale_key_is_answered_use_xx_and_the_initiator_goes_on_with_xx() -> None:
    """The record named a key Bob no longer holds (he restarted with a new one)."""
    old = StaticKey(BOB)
    alice, bob = ik_pair(key=old.public)
    with pytest.raises(UseXXInstead, match="stale") as info:
        bob.receive(alice.start(timestamp=T0))
    assert bob.peer is None and bob.state is State.CLOSED  # it learnt nothing of Alice
    restarted = alice.receive(encode_channel(UseXX(info.value.reason)))
    assert restarted.restarted is not None and "stale" in restarted.restarted
    assert restarted.reply is not None and peek_kind(restarted.reply) is ChannelKind.HELLO
    assert alice.phase is Phase.SENT_HELLO and alice.pattern == "XX"
    xx_bob = SecureSession(False, BOB_KEY)
    confirm = _reply(xx_bob, _reply(alice, _reply(xx_bob, restarted.reply)))
    assert alice.receive(confirm).opened
    assert alice.peer == BOB.node_id and alice.fell_back == restarted.restarted


def test_a_responder_without_the_key_cannot_pose_as_its_owner() -> None:
    """Mallory answers the dial for Bob: she cannot read the IK_HELLO, and over XX she can
    only prove her own identity, which Alice does not accept."""
    alice, mallory = ik_pair(alice_allows=frozenset({BOB.node_id}), bob=StaticKey(MALLORY))
    with pytest.raises(UseXXInstead) as info:
        mallory.receive(alice.start(timestamp=T0))
    hello = _reply(alice, encode_channel(UseXX(info.value.reason)))
    reply = _reply(SecureSession(False, StaticKey(MALLORY)), hello)
    with pytest.raises(ChannelError, match=r"responder .* not among the authorized") as refused:
        alice.receive(reply)
    assert not refused.value.refuse and alice.state is State.CLOSED


def test_the_holder_of_the_key_is_still_held_to_its_identity() -> None:
    """Mallory holds Bob's X25519 key (stolen) but not his identity: her proof names her."""
    stolen = StaticKey(MALLORY, private=BOB_KEY.private)
    alice, mallory = ik_pair(alice_allows=frozenset({BOB.node_id}), bob=stolen)
    reply = _reply(mallory, alice.start(timestamp=T0))
    with pytest.raises(ChannelError, match=r"responder .* not among the authorized"):
        alice.receive(reply)
    # And a proof of Bob's identity does not attest Mallory's own key.
    impostor = StaticKey(MALLORY)
    impostor.proof = BOB_KEY.proof
    alice, mallory = ik_pair(key=impostor.public, bob=impostor)
    reply = _reply(mallory, alice.start(timestamp=T0))
    with pytest.raises(ChannelError, match="did not attest"):
        alice.receive(reply)


def test_an_unwanted_initiator_is_refused_at_its_ik_hello() -> None:
    alice, bob = ik_pair(bob_allows=frozenset({MALLORY.node_id}))
    with pytest.raises(ChannelError, match=r"initiator .* not among") as info:
        bob.receive(alice.start(timestamp=T0))
    assert info.value.refuse and not isinstance(info.value, UseXXInstead)
    with pytest.raises(ChannelError, match="refused by the listener"):
        alice.receive(encode_channel(Refuse(info.value.reason)))


def test_a_replayed_ik_hello_never_opens_and_is_answered_use_xx_when_a_guard_remembers() -> None:
    guard = ReplayGuard()
    alice, bob = ik_pair(guard=guard)
    hello = alice.start(timestamp=T0)
    confirm = _reply(alice, _reply(bob, hello))
    assert bob.receive(confirm).opened
    # The same IK_HELLO again, to a new session of the same node: refused as a replay.
    with pytest.raises(UseXXInstead, match="replayed"):
        SecureSession(False, BOB_KEY, replay_guard=guard).receive(hello)
    # Without the guard (say the node restarted) it is read and answered, but the replayer
    # cannot finish it: the answer's keys need Alice's ephemeral private key, and even her own
    # CONFIRM (from the first session) fails there.
    forgetful = SecureSession(False, BOB_KEY)
    assert forgetful.receive(hello).reply is not None
    assert forgetful.phase is Phase.SENT_IK_REPLY
    with pytest.raises(ChannelError, match="failed authentication"):
        forgetful.receive(confirm)
    assert forgetful.state is State.CLOSED


def test_use_xx_after_the_ik_reply_and_ik_reply_after_use_xx_are_dropped() -> None:
    """A replayed IK_HELLO is answered USE_XX, which goes back to the genuine initiator:
    whichever order the answers come in, the initiator carries on."""
    alice, bob = ik_pair()
    reply = _reply(bob, alice.start(timestamp=T0))
    assert alice.receive(reply).opened
    with pytest.raises(ReplayedMessage):
        alice.receive(encode_channel(UseXX("a replay")))
    assert alice.state is State.OPEN
    alice, bob = ik_pair()
    reply = _reply(bob, alice.start(timestamp=T0))
    alice.receive(encode_channel(UseXX("a replay's answer, first")))
    with pytest.raises(ReplayedMessage):
        alice.receive(reply)
    assert alice.phase is Phase.SENT_HELLO  # and on with XX


def test_the_replay_guard_accepts_each_timestamp_once_within_a_window() -> None:
    guard = ReplayGuard()
    peer = ALICE.node_id.raw
    assert guard.accept(peer, T0)
    assert not guard.accept(peer, T0)  # the same again
    assert guard.accept(peer, T0 - 1)  # crossed on the route: still new, and in the window
    assert guard.accept(peer, T0 + WINDOW_NS + 5)  # moves the floor up
    assert not guard.accept(peer, T0 + 4)  # now older than the window
    assert guard.accept(MALLORY.node_id.raw, T0)  # per initiator
    assert not guard.accept(BOB.node_id.raw, 0)  # no timestamp is never fresh


def test_the_replay_guard_is_bounded_per_peer_and_in_peers() -> None:
    guard = ReplayGuard(max_peers=3)
    peer = ALICE.node_id.raw
    for offset in range(MAX_PER_PEER + 10):
        assert guard.accept(peer, T0 + offset)
    assert not guard.accept(peer, T0 + 5)  # forgotten to stay bounded: refused, never accepted
    for index in range(5):
        guard.accept(bytes([index]) * 32, T0)
    assert len(guard) == 3


def test_timestamps_increase_strictly_even_when_the_clock_does_not() -> None:
    stamps = Timestamps()
    assert [stamps.next(T0), stamps.next(T0), stamps.next(T0 - 50)] == [T0, T0 + 1, T0 + 2]
    assert stamps.next(T0 + 100) == T0 + 100


def test_ik_early_data_crosses_both_ways_and_each_side_reads_before_it_answers() -> None:
    alice_hooks, bob_hooks = Hooks(b"alice's candidates"), Hooks(b"bob's candidates")
    alice, bob = ik_pair(
        alice_allows=frozenset({BOB.node_id}), alice_hooks=alice_hooks, bob_hooks=bob_hooks
    )
    hello = alice.start(timestamp=T0)
    assert alice_hooks.calls == [("ask", BOB.node_id, True)]  # the one authorized identity
    confirm = _reply(alice, _reply(bob, hello))
    assert bob_hooks.calls == [
        ("got", ALICE.node_id, b"alice's candidates", False),
        ("ask", ALICE.node_id, False),
    ]
    assert alice_hooks.calls[1:] == [("got", BOB.node_id, b"bob's candidates", True)]
    bob.receive(confirm)
    assert len(bob_hooks.calls) == 2 and len(alice_hooks.calls) == 2  # once each way


def test_xx_early_data_rides_the_second_and_third_messages() -> None:
    alice_hooks, bob_hooks = Hooks(b"a" * MAX_EARLY_DATA), Hooks(b"b")
    alice = SecureSession(True, StaticKey(ALICE), hooks=alice_hooks)
    bob = SecureSession(False, BOB_KEY, hooks=bob_hooks)
    hello = alice.start()
    assert alice_hooks.calls == []  # the first XX message is not encrypted: it carries none
    reply = _reply(bob, hello)
    assert bob_hooks.calls == [("ask", None, False)]  # it does not know yet who dials
    finish = _reply(alice, reply)
    assert alice_hooks.calls == [("got", BOB.node_id, b"b", True), ("ask", BOB.node_id, True)]
    assert len(finish) <= MAX_HANDSHAKE + 2  # the largest handshake message still fits
    assert bob.receive(finish).opened
    assert bob_hooks.calls[1:] == [("got", ALICE.node_id, b"a" * MAX_EARLY_DATA, False)]


def test_no_early_data_costs_nothing() -> None:
    """Hooks that return b"" leave every handshake message as it is without hooks."""
    for hooks in (Hooks(b""), None):
        alice = SecureSession(True, StaticKey(ALICE), hooks=hooks)
        bob = SecureSession(False, BOB_KEY, hooks=hooks)
        reply = _reply(bob, alice.start())
        assert len(reply) == 2 + 32 + 48 + 97 + 16  # version 1 identity proof, as before
        finish = _reply(alice, reply)
        assert len(finish) == 2 + 48 + 97 + 16
    with pytest.raises(ChannelUseError, match="early data"):
        SecureSession(True, StaticKey(ALICE), hooks=Hooks(b"x" * (MAX_EARLY_DATA + 1)),
                      responder_key=BOB_KEY.public).start(timestamp=T0)  # fmt: skip


def test_handshake_payloads_round_trip_and_stay_within_their_limits() -> None:
    proof = IdentityProof(b"\x01" * 32, b"\x02" * 64)
    for payload in (
        HandshakePayload(proof),
        HandshakePayload(proof, timestamp=T0),
        HandshakePayload(proof, early_data=b"x" * MAX_EARLY_DATA),
    ):
        assert decode_handshake_payload(encode_handshake_payload(payload)) == payload
    assert encode_handshake_payload(HandshakePayload(proof))[0] == 1  # the old format
    with pytest.raises(ValueError, match="early data"):
        encode_handshake_payload(HandshakePayload(proof, early_data=b"x" * (MAX_EARLY_DATA + 1)))
    too_long = bytearray(encode_handshake_payload(HandshakePayload(proof, timestamp=1)))
    too_long[-2:] = (MAX_EARLY_DATA + 1).to_bytes(2, "big")
    with pytest.raises(WireError, match="early data"):
        decode_handshake_payload(bytes(too_long) + b"x" * (MAX_EARLY_DATA + 1))
    assert decode_channel(encode_channel(UseXX("stale key"))) == UseXX("stale key")
    hello = encode_channel(Handshake(ChannelKind.IK_HELLO, b"\x00" * MAX_HANDSHAKE))
    assert isinstance(decode_channel(hello), Handshake)
    with pytest.raises(WireError):
        decode_channel(hello + b"\x00")


@given(st.binary(max_size=300))
def test_the_handshake_payload_parser_raises_only_wire_errors(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_handshake_payload(data)


@given(st.binary(max_size=400))
def test_garbage_ik_messages_raise_only_channel_errors(data: bytes) -> None:
    for kind in (ChannelKind.IK_HELLO, ChannelKind.IK_REPLY, ChannelKind.USE_XX):
        with contextlib.suppress(ChannelError):
            SecureSession(False, BOB_KEY).receive(bytes([1, kind]) + data)
        alice = SecureSession(True, StaticKey(ALICE), responder_key=BOB_KEY.public)
        alice.start(timestamp=T0)
        with contextlib.suppress(ChannelError):
            alice.receive(bytes([1, kind]) + data)


# -- the glue ----------------------------------------------------------------------------------


@dataclass
class Dial:
    """Green dials blue's listener ``api``; every channel payload that crosses the fake net is
    recorded as (sender, kind), so a test can count the handshake's messages."""

    net: FakeNet = field(default_factory=FakeNet)
    crossed: list[tuple[str, ChannelKind | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.green, self.blue = self.net.node("green"), self.net.node("blue")
        self.green_channels = SecureChannels(self.green.identity, self.green.router)
        self.blue_channels = SecureChannels(self.blue.identity, self.blue.router)
        self.blue_channels.add_listener("api")
        carry = self.net.carry

        def tap(source: FakeNode, port: int, message: Message) -> None:
            who = "green" if source is self.green else "blue"
            self.crossed.append((who, peek_kind(message.payload)))
            carry(source, port, message)

        self.net.carry = tap  # type: ignore[method-assign]
        self.upper: list[bytes] = []

        async def upper(message: Message) -> None:
            self.upper.append(message.payload)

        self.blue.router.register("upper", upper, inline=True)

    @property
    def listener(self) -> Route:
        return (self.blue.address, ServiceAddress("api"))

    async def send(self, address: str, payload: bytes) -> None:
        onward = (ServiceAddress(address), ServiceAddress("upper"))
        await self.green.router.route(Message(onward, (), payload))


def test_create_with_the_responders_key_opens_after_one_round_trip() -> None:
    async def main(loop: FakeClockLoop) -> None:
        dial = Dial()
        key = dial.blue_channels.static.public
        channel = await dial.green_channels.create(
            dial.listener, authorized=frozenset({dial.blue.identity.node_id}), responder_key=key
        )
        # What crossed before create() returned: one answer was waited for (XX waits for two);
        # the CONFIRM left as the channel opened.
        assert dial.crossed == [
            ("green", ChannelKind.IK_HELLO),
            ("blue", ChannelKind.IK_REPLY),
            ("green", ChannelKind.CONFIRM),
        ]
        assert channel.handshake == "IK" and channel.peer == dial.blue.identity.node_id
        assert dial.green_channels.describe(channel)["handshake"] == "IK"
        await dial.send(channel.address, b"first")
        await settle()
        assert dial.upper == [b"first"]
        [blue_end] = dial.blue_channels.channels()
        assert blue_end.state is ChannelState.OPEN and blue_end.peer == dial.green.identity.node_id
        assert blue_end.handshake_rtt is not None and channel.handshake_rtt is not None

    run(main)


def test_create_without_a_key_is_xx_and_waits_for_two_answers() -> None:
    async def main(loop: FakeClockLoop) -> None:
        dial = Dial()
        channel = await dial.green_channels.create(dial.listener)
        assert [kind for _, kind in dial.crossed] == [
            ChannelKind.HELLO,
            ChannelKind.HELLO_REPLY,
            ChannelKind.FINISH,
            ChannelKind.CONFIRM,
        ]
        assert channel.handshake == "XX"

    run(main)


def test_a_stale_key_falls_back_to_xx_over_the_same_route_and_connects() -> None:
    async def main(loop: FakeClockLoop) -> None:
        dial = Dial()
        stale = StaticKey(dial.blue.identity).public  # blue's key before it restarted
        channel = await dial.green_channels.create(dial.listener, responder_key=stale, timeout=5)
        assert [kind for _, kind in dial.crossed] == [
            ChannelKind.IK_HELLO,
            ChannelKind.USE_XX,
            ChannelKind.HELLO,
            ChannelKind.HELLO_REPLY,
            ChannelKind.FINISH,
            ChannelKind.CONFIRM,
        ]
        assert channel.handshake.startswith(
            "XX (fell back from IK: this IK handshake cannot be read"
        )
        assert channel.peer == dial.blue.identity.node_id
        await dial.send(channel.address, b"still")
        await settle()
        assert dial.upper == [b"still"]
        assert [c.state for c in dial.blue_channels.channels()] == [ChannelState.OPEN]

    run(main)


def test_a_listener_holding_another_key_is_refused_as_the_identity_it_is() -> None:
    async def main(loop: FakeClockLoop) -> None:
        dial = Dial()  # green believes blue's listener is yellow's, with yellow's key
        yellow = StaticKey(Identity.generate())
        with pytest.raises(RemoteError, match="not among the authorized") as info:
            await dial.green_channels.create(
                dial.listener,
                authorized=frozenset({yellow.identity.node_id}),
                responder_key=yellow.public,
            )
        assert info.value.code == ErrorCode.REFUSED
        assert ChannelKind.USE_XX in [kind for _, kind in dial.crossed]
        assert dial.green_channels.channels() == []

    run(main)


def test_an_unwanted_initiator_hears_refused_at_once() -> None:
    async def main(loop: FakeClockLoop) -> None:
        dial = Dial()
        dial.blue_channels.add_listener("only-mallory", frozenset({MALLORY.node_id}))
        route = (dial.blue.address, ServiceAddress("only-mallory"))
        started = loop.now
        with pytest.raises(RemoteError, match="refused by the listener") as info:
            await dial.green_channels.create(route, responder_key=dial.blue_channels.static.public)
        assert info.value.code == ErrorCode.REFUSED and loop.now == started
        assert [kind for _, kind in dial.crossed] == [ChannelKind.IK_HELLO, ChannelKind.REFUSE]
        assert dial.blue_channels.channels() == []  # nothing half-open was kept

    run(main)


def test_a_replayed_ik_hello_opens_no_second_channel() -> None:
    async def main(loop: FakeClockLoop) -> None:
        dial = Dial()
        hellos: list[Message] = []
        carry = dial.net.carry

        def capture(source: FakeNode, port: int, message: Message) -> None:
            if peek_kind(message.payload) is ChannelKind.IK_HELLO:
                hellos.append(message)
            carry(source, port, message)

        dial.net.carry = capture  # type: ignore[method-assign]
        key = dial.blue_channels.static.public
        channel = await dial.green_channels.create(dial.listener, responder_key=key)
        await settle()
        [hello] = hellos
        dial.net.carry(dial.green, dial.blue.port, hello)  # the route replays it
        await settle()
        assert dial.crossed[-1] == ("blue", ChannelKind.USE_XX)  # answered, not used
        assert [c.state for c in dial.blue_channels.channels()] == [ChannelState.OPEN]
        assert channel.state is ChannelState.OPEN  # the USE_XX it got back was dropped
        await dial.send(channel.address, b"unharmed")
        await settle()
        assert dial.upper == [b"unharmed"]

    run(main)


def test_an_ik_hello_never_confirmed_expires_half_open_and_its_replay_is_refused() -> None:
    """A replayer has IK_HELLO but not the initiator's ephemeral key: what it sent is read and
    answered (the first time), then waits for a CONFIRM that cannot come, until the half-open
    timeout forgets it; sent again, it is refused at once (USE_XX), holding nothing."""

    async def main(loop: FakeClockLoop) -> None:
        dial = Dial()
        session = SecureSession(
            True, StaticKey(dial.green.identity), responder_key=dial.blue_channels.static.public
        )
        hello = session.start(timestamp=T0)
        answers: list[bytes] = []

        async def inbox(message: Message) -> None:
            answers.append(message.payload)

        dial.green.router.register("inbox", inbox, inline=True)
        for _ in range(2):  # the genuine one, never finished, then its replay
            await dial.green.router.route(Message(dial.listener, (ServiceAddress("inbox"),), hello))
            await settle()
        kinds = [kind for _, kind in dial.crossed]
        assert kinds == [
            ChannelKind.IK_HELLO,
            ChannelKind.IK_REPLY,
            ChannelKind.IK_HELLO,
            ChannelKind.USE_XX,
        ]
        assert [peek_kind(answer) for answer in answers] == [
            ChannelKind.IK_REPLY,
            ChannelKind.USE_XX,
        ]
        [half_open] = dial.blue_channels.channels()
        assert half_open.state is ChannelState.HANDSHAKING
        await advance(loop, HANDSHAKE_TIMEOUT)
        assert dial.blue_channels.channels() == []

    run(main)


def test_the_path_managers_early_data_rides_the_ik_handshake_both_ways() -> None:
    async def main(loop: FakeClockLoop) -> None:
        dial = Dial()
        green_hooks, blue_hooks = Hooks(b"green: 192.0.2.1:4000"), Hooks(b"blue: 198.51.100.2:5000")
        dial.green_channels.paths = green_hooks
        dial.blue_channels.paths = blue_hooks
        green_id, blue_id = dial.green.identity.node_id, dial.blue.identity.node_id
        await dial.green_channels.create(
            dial.listener,
            authorized=frozenset({blue_id}),
            responder_key=dial.blue_channels.static.public,
        )
        await settle()
        assert green_hooks.calls == [
            ("ask", blue_id, True),
            ("got", blue_id, b"blue: 198.51.100.2:5000", True),
            ("opened", blue_id),  # the data came before the path manager heard of the channel
        ]
        assert blue_hooks.calls == [
            ("got", green_id, b"green: 192.0.2.1:4000", False),
            ("ask", green_id, False),
            ("opened", green_id),
        ]

    run(main)


def test_failing_or_oversized_hooks_cost_a_log_line_not_the_handshake() -> None:
    class Broken(Hooks):
        def on_handshake_payload(self, peer: NodeId, data: bytes, initiator: bool) -> None:
            raise RuntimeError("a bug in the layer above")

    async def main(loop: FakeClockLoop) -> None:
        dial = Dial()
        dial.green_channels.paths = Hooks(b"x" * (MAX_EARLY_DATA + 1))  # too much: none sent
        broken = Broken(b"y")
        dial.blue_channels.paths = broken
        channel = await dial.green_channels.create(
            dial.listener, responder_key=dial.blue_channels.static.public
        )
        assert channel.state is ChannelState.OPEN
        # Nothing arrived at blue (so its hook never even ran), yet blue's own data went out.
        assert [call[0] for call in broken.calls] == ["ask", "opened"]

    run(main)


def test_a_path_manager_without_the_early_data_hooks_still_fits() -> None:
    class PathsOnly:
        def direct_route(self, peer: NodeId) -> Route | None:
            return None

        def is_direct_link(self, worker: str, peer: NodeId) -> bool:
            return False

        def heard_from(self, peer: NodeId, worker: str | None) -> None:
            pass

        def channel_opened(self, peer: NodeId, address: str, no_direct: bool) -> None:
            pass

        def path_info(self, peer: NodeId) -> dict[str, Any] | None:
            return None

        def channel_closed(self, peer: NodeId, address: str) -> None:
            return None

        async def peer_key(self, peer: NodeId) -> bytes | None:
            return None

    async def main(loop: FakeClockLoop) -> None:
        dial = Dial()
        dial.green_channels.paths = PathsOnly()
        dial.blue_channels.paths = PathsOnly()
        channel = await dial.green_channels.create(
            dial.listener, responder_key=dial.blue_channels.static.public
        )
        assert channel.handshake == "IK"

    run(main)


def test_a_node_can_keep_its_static_key() -> None:
    """The key the signed record names must outlive a restart: a node may pass it in."""

    async def main(loop: FakeClockLoop) -> None:
        dial = Dial()
        kept = StaticKey(dial.blue.identity)
        assert SecureChannels(dial.blue.identity, dial.blue.router, static=kept).static is kept
        with pytest.raises(ValueError, match="another identity"):
            SecureChannels(dial.green.identity, dial.green.router, static=kept)

    run(main)


def test_an_unusable_key_in_a_record_makes_the_dial_xx_from_the_start() -> None:
    async def main(loop: FakeClockLoop) -> None:
        dial = Dial()
        channel = await dial.green_channels.create(dial.listener, responder_key=b"\x00" * 32)
        assert channel.handshake.startswith("XX (fell back from IK: the responder's key is not")
        assert dial.crossed[0] == ("green", ChannelKind.HELLO)
        with pytest.raises(ValueError, match="32-byte"):
            await dial.green_channels.create(dial.listener, responder_key=b"\x01" * 31)

    run(main)
