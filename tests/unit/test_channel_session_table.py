"""The secure-channel session's table of allowed transitions, walked pair by pair: every
(phase, input) it lists does what it says, and every pair it does not list is refused with a
typed error (UnexpectedMessage from the peer, ChannelUseError from the owner)."""

from __future__ import annotations

import itertools

import pytest

from meshkey.channel.keys import ChannelError, ReplayedMessage
from meshkey.channel.session import (
    TRANSITIONS,
    ChannelUseError,
    Input,
    Local,
    Phase,
    SecureSession,
    State,
    StaticKey,
    UnexpectedMessage,
)
from meshkey.identity import Identity
from meshkey.wire.channel import (
    ChannelKind,
    Handshake,
    Plain,
    Refuse,
    Sealed,
    UseXX,
    encode_channel,
)

ALICE, BOB = Identity.generate(), Identity.generate()
BOB_KEY = StaticKey(BOB)
HANDSHAKE = (
    ChannelKind.HELLO,
    ChannelKind.HELLO_REPLY,
    ChannelKind.FINISH,
    ChannelKind.IK_HELLO,
    ChannelKind.IK_REPLY,
)
INPUTS: list[Input] = [*ChannelKind, *Local]
IK_PHASES = (Phase.SENT_IK_HELLO, Phase.SENT_IK_REPLY)


def _reply(session: SecureSession, data: bytes) -> bytes:
    reply = session.receive(data).reply
    assert reply is not None
    return reply


def at(
    phase: Phase, what: Input | None = None
) -> tuple[SecureSession, SecureSession, dict[ChannelKind, bytes]]:
    """A new session in ``phase``, its peer, and the peer's genuine handshake message that the
    phase waits for (if any). The handshake is IK in the IK phases, and for START_IK."""
    ik = phase in IK_PHASES or (phase is Phase.START and what is Local.START_IK)
    alice = SecureSession(True, StaticKey(ALICE), responder_key=BOB_KEY.public if ik else None)
    bob = SecureSession(False, BOB_KEY)
    if phase is Phase.START:
        return alice, bob, {}
    if ik:
        ik_hello = alice.start()
        ik_reply = _reply(bob, ik_hello)
        if phase is Phase.SENT_IK_HELLO:
            return alice, bob, {ChannelKind.IK_REPLY: ik_reply}
        return bob, alice, {ChannelKind.CONFIRM: _reply(alice, ik_reply)}  # SENT_IK_REPLY
    hello = alice.start()
    if phase is Phase.AWAIT_HELLO:
        ik_alice = SecureSession(True, StaticKey(ALICE), responder_key=BOB_KEY.public)
        return bob, alice, {ChannelKind.HELLO: hello, ChannelKind.IK_HELLO: ik_alice.start()}
    if phase is Phase.SENT_HELLO:
        return alice, bob, {ChannelKind.HELLO_REPLY: _reply(bob, hello)}
    reply = _reply(bob, hello)
    finish = _reply(alice, reply)
    if phase is Phase.SENT_REPLY:
        return bob, alice, {ChannelKind.FINISH: finish}
    confirm = _reply(bob, finish)
    if phase is Phase.SENT_FINISH:
        return alice, bob, {ChannelKind.CONFIRM: confirm}
    alice.receive(confirm)
    if phase is Phase.CLOSED:
        alice.close("done here")
    return alice, bob, {}


def payload(
    kind: ChannelKind,
    session: SecureSession,
    peer: SecureSession,
    genuine: dict[ChannelKind, bytes],
) -> bytes:
    """The peer's message of ``kind``: genuine where one exists, authentically sealed when the
    session holds keys (so that only the table can refuse it), else well-formed filler."""
    if kind in genuine:
        return bytes(genuine[kind])
    if kind is ChannelKind.REFUSE:
        return encode_channel(Refuse("not wanted"))
    if kind is ChannelKind.USE_XX:
        return encode_channel(UseXX("no such key here"))
    if kind in HANDSHAKE:
        return encode_channel(Handshake(kind, b"\x00" * 48))
    sender = peer._sender
    if kind is ChannelKind.PLAIN:  # as it comes over a direct hop (see act)
        nonce = sender.take_nonce() if session._receiver is not None and sender else 0
        return encode_channel(Plain(nonce, peer._plain_tag or bytes(8), b"data"))
    if session._receiver is not None and sender is not None:
        return encode_channel(sender.seal(kind, b""))
    return encode_channel(Sealed(kind, 0, b"\x00" * 32))


def act(
    session: SecureSession, peer: SecureSession, genuine: dict[ChannelKind, bytes], what: Input
) -> object:
    if what in (Local.START, Local.START_IK):
        return session.start()
    if what is Local.SEAL:
        return session.seal(b"data")
    if what is Local.CLOSE:
        return session.close("closed by its owner")
    assert isinstance(what, ChannelKind)
    # Over a hop to the peer itself: where PLAIN may come from (the table is what refuses).
    return session.receive(payload(what, session, peer, genuine), direct=True)


def test_the_table_covers_every_phase_and_closing_is_always_allowed() -> None:
    assert set(TRANSITIONS) == set(Phase)
    for phase, allowed in TRANSITIONS.items():
        assert allowed[Local.CLOSE] is Phase.CLOSED, phase
        assert set(allowed) <= set(INPUTS)


@pytest.mark.parametrize(
    ("phase", "what"),
    [(p, i) for p, i in itertools.product(Phase, INPUTS) if i not in TRANSITIONS[p]],
    ids=lambda value: value.name,
)
def test_every_pair_not_in_the_table_is_refused_with_a_typed_error(
    phase: Phase, what: Input
) -> None:
    session, peer, genuine = at(phase, what)
    assert session.phase is phase
    if what is ChannelKind.USE_XX and session.initiator and phase is not Phase.CLOSED:
        # Unauthenticated, and what a replay of our IK_HELLO is answered with: dropped.
        with pytest.raises(ReplayedMessage):
            act(session, peer, genuine, what)
        assert session.phase is phase
        return
    expected = ChannelUseError if isinstance(what, Local) else UnexpectedMessage
    with pytest.raises(expected) as info:
        act(session, peer, genuine, what)
    assert str(info.value)  # says why
    if isinstance(what, Local):
        assert session.phase is phase  # the owner's mistake changes nothing
    elif phase.state is State.HANDSHAKING:
        assert session.phase is Phase.CLOSED  # a failed handshake is terminal...
        with pytest.raises(ChannelError, match="the handshake failed"):  # ...and says why
            session.receive(payload(ChannelKind.DATA, session, peer, genuine))
    else:
        assert session.phase is phase  # OPEN stays OPEN (the glue closes), CLOSED stays


@pytest.mark.parametrize(
    ("phase", "what"),
    [(p, i) for p in Phase for i in TRANSITIONS[p]],
    ids=lambda value: value.name,
)
def test_every_pair_in_the_table_leads_where_it_says(phase: Phase, what: Input) -> None:
    session, peer, genuine = at(phase, what)
    if what is ChannelKind.REFUSE:
        # Allowed, and ends the handshake: the refusal is the initiator's answer.
        with pytest.raises(ChannelError, match="refused by the listener") as info:
            act(session, peer, genuine, what)
        assert not isinstance(info.value, UnexpectedMessage)
    else:
        act(session, peer, genuine, what)
    assert session.phase is TRANSITIONS[phase][what]


def test_a_replayed_confirm_is_dropped_as_a_replay_not_refused() -> None:
    """Sealed messages are opened before the table is asked: anyone on the route can replay
    the CONFIRM, and refusing it would close an open channel."""
    alice = SecureSession(True, StaticKey(ALICE))
    bob = SecureSession(False, StaticKey(BOB))
    finish = _reply(alice, _reply(bob, alice.start()))
    confirm = _reply(bob, finish)
    assert alice.receive(confirm).opened
    with pytest.raises(ReplayedMessage):
        alice.receive(confirm)
    assert alice.phase is Phase.OPEN


def test_starting_is_the_initiators_and_happens_once() -> None:
    responder = SecureSession(False, StaticKey(BOB))
    with pytest.raises(ChannelUseError, match="only the initiator"):
        responder.start()
    initiator = SecureSession(True, StaticKey(ALICE))
    initiator.start()
    with pytest.raises(ChannelUseError, match="cannot start a channel that is sent HELLO"):
        initiator.start()
    assert not issubclass(ChannelUseError, ChannelError)  # the owner's bug, not the peer's
