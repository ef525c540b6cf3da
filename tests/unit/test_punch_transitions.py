"""The punch session's table of transitions (``meshkey.nat.punch_state.TRANSITIONS``), walked
pair by pair: every (role, state, input) the table lists ends in a state it names; every one
it does not list is refused with PunchLocalError (the local caller's start/accept) or ignored
(everything else), and leaves the state, the deadline and the output as they were."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from meshkey.identity.node_id import NodeId
from meshkey.nat.punch import (
    PunchSession,
    SendDatagram,
    SendSignal,
)
from meshkey.nat.punch_state import (
    LOCAL_INPUTS,
    TRANSITIONS,
    PunchInput,
    PunchLocalError,
    PunchState,
)
from meshkey.nat.strategy import MESHKEY
from meshkey.nat.token import PunchKey
from meshkey.wire.net import Endpoint, NatClass
from meshkey.wire.punch import (
    Abort,
    AbortReason,
    Connect,
    Credit,
    PunchMessage,
    Result,
    Sync,
    decode_punch_message,
)
from meshkey.wire.udp import ControlKind, PunchRole, decode_punch_packet
from tests.unit.test_punch_session import EIM_A, EIM_B

PUNCH_ID = b"t" * 16
A_ID, B_ID = NodeId(b"\x01" * 32), NodeId(b"\x02" * 32)  # the initiator dials
A_SEEN_AS, B_SEEN_AS = EIM_A.reflexive[0], EIM_B.reflexive[0]
ROLES = list(PunchRole)
STATES = list(PunchState)


def signals(session: PunchSession) -> list[PunchMessage]:
    return [decode_punch_message(c.data) for c in session.commands() if isinstance(c, SendSignal)]


@dataclass
class Pair:
    """An initiator (a) and a responder (b) for one punch, driven by hand on a fake clock."""

    a: PunchSession = field(
        default_factory=lambda: PunchSession(
            role=PunchRole.INITIATOR,
            local_id=A_ID,
            peer=B_ID,
            me=EIM_A,
            punch_id=PUNCH_ID,
            now=0.0,
            rng=random.Random(1),
        )
    )
    b: PunchSession = field(
        default_factory=lambda: PunchSession(
            role=PunchRole.RESPONDER,
            local_id=B_ID,
            peer=A_ID,
            me=EIM_B,
            punch_id=PUNCH_ID,
            now=0.0,
            rng=random.Random(2),
        )
    )
    connect: Connect | None = None
    reply: Connect | None = None
    key: PunchKey = field(default_factory=lambda: PunchKey(b"k" * 32, PUNCH_ID))

    def start(self) -> None:
        self.a.start()
        (connect,) = signals(self.a)
        assert isinstance(connect, Connect)
        self.connect = connect

    def accept(self, rtt: float | None) -> None:
        assert self.connect is not None
        self.b.accept(self.connect, 0.04, signalling_rtt=rtt)
        (reply,) = signals(self.b)
        assert isinstance(reply, Connect)
        self.reply = reply
        self.key = PunchKey.derive(PUNCH_ID, self.connect.key_share, reply.key_share)

    def answer_initiator(self) -> None:
        assert self.reply is not None
        self.a.on_signal(self.reply, 0.08)
        self.a.commands()  # the SYNC, if any: delivered by hand where a test needs it

    def win(self, winner: PunchSession, now: float) -> None:
        """One of ``winner``'s probes reaches the other side; its ACK comes back."""
        loser = self.b if winner is self.a else self.a
        probe = next(
            c
            for c in winner.commands()
            if isinstance(c, SendDatagram) and c.data[0] == ControlKind.PUNCH_PROBE
        )
        source = A_SEEN_AS if winner is self.a else B_SEEN_AS
        loser.on_probe(source, decode_punch_packet(probe.data), now)  # type: ignore[arg-type]
        ack = next(
            c
            for c in loser.commands()
            if isinstance(c, SendDatagram) and c.data[0] == ControlKind.PUNCH_ACK
        )
        winner.on_ack(probe.destination, decode_punch_packet(ack.data), now, socket=probe.socket)  # type: ignore[arg-type]


def reach(role: PunchRole, state: PunchState) -> tuple[PunchSession, Pair]:
    """A session of ``role`` in ``state`` (with its output drained), and its pair."""
    pair = Pair()
    me = pair.a if role is PunchRole.INITIATOR else pair.b
    if state is not PunchState.NEW:
        pair.start()
    if role is PunchRole.INITIATOR:
        if state is PunchState.FAILED:
            me.cancel(AbortReason.CANCELLED, 0.01)
        elif state not in (PunchState.NEW, PunchState.SIGNALLING):
            pair.accept(rtt=0.2)  # b starts 0.1 after its reply (0.04): at 0.14
            pair.answer_initiator()  # a measured 0.08: it waits until 0.14 too
            if state is not PunchState.WAITING:
                me.on_timer(0.14)
            if state in (PunchState.WON, PunchState.CLOSED):
                pair.win(me, 0.16)
            if state is PunchState.CLOSED:
                me.on_timer(0.16 + MESHKEY.linger)
    elif state is not PunchState.NEW:
        pair.accept(rtt=0.2 if state is PunchState.WAITING else None)
        if state is PunchState.FAILED:
            me.cancel(AbortReason.CANCELLED, 0.05)
        if state in (PunchState.PROBING, PunchState.WON, PunchState.CLOSED):
            pair.answer_initiator()  # a sends SYNC (no start_in) and waits for RTT/2
            me.on_signal(Sync(PUNCH_ID), 0.12)
        if state in (PunchState.WON, PunchState.CLOSED):
            pair.win(me, 0.13)
        if state is PunchState.CLOSED:
            me.on_timer(0.13 + MESHKEY.linger)
    assert me.state is state
    me.commands()
    me.events()
    return me, pair


def feed(session: PunchSession, pair: Pair, what: PunchInput) -> None:
    """``what`` happens to ``session``: well-formed and, for packets, validly signed."""
    now = 5.0
    peer_role = session.role.other
    peer_seen_as = B_SEEN_AS if session.role is PunchRole.INITIATOR else A_SEEN_AS
    connect = pair.connect or Connect(
        PUNCH_ID, False, b"c" * 32, NatClass.ENDPOINT_INDEPENDENT, reflexive=(A_SEEN_AS,)
    )
    reply = pair.reply or Connect(
        PUNCH_ID, True, b"r" * 32, NatClass.ENDPOINT_INDEPENDENT, reflexive=(B_SEEN_AS,)
    )
    inputs: dict[PunchInput, Callable[[], None]] = {
        PunchInput.START: session.start,
        PunchInput.ACCEPT: lambda: session.accept(connect, now),
        PunchInput.CONNECT: lambda: session.on_signal(connect, now),
        PunchInput.REPLY: lambda: session.on_signal(reply, now),
        PunchInput.SYNC: lambda: session.on_signal(Sync(PUNCH_ID), now),
        PunchInput.RESULT: lambda: session.on_signal(Result(PUNCH_ID, peer_seen_as), now),
        PunchInput.ABORT: lambda: session.on_signal(Abort(PUNCH_ID, AbortReason.TIMEOUT), now),
        PunchInput.CREDIT: lambda: session.on_signal(Credit(PUNCH_ID, 1000), now),
        PunchInput.PROBE: lambda: session.on_probe(
            peer_seen_as, pair.key.probe(peer_role, 50_000), now
        ),
        PunchInput.ACK: lambda: session.on_ack(
            peer_seen_as, pair.key.ack(peer_role, 0, peer_seen_as), now
        ),
        PunchInput.SOCKET_ERROR: lambda: session.on_socket_error(1, now),
        PunchInput.CANCEL: lambda: session.cancel(AbortReason.CANCELLED, now),
        PunchInput.TIMER: lambda: session.on_timer(1000.0),
    }
    assert set(inputs) == set(PunchInput)
    inputs[what]()


def _pairs(listed: bool) -> list[tuple[PunchRole, PunchState, PunchInput]]:
    return [
        (role, state, what)
        for role in ROLES
        for state in STATES
        for what in PunchInput
        if (what in TRANSITIONS[role][state]) is listed
    ]


def _id(case: tuple[PunchRole, PunchState, PunchInput]) -> str:
    return "-".join(part.name.lower() for part in case)


@pytest.mark.parametrize("case", _pairs(listed=False), ids=_id)
def test_an_input_not_in_the_table_is_refused_or_ignored_and_changes_nothing(
    case: tuple[PunchRole, PunchState, PunchInput],
) -> None:
    role, state, what = case
    session, pair = reach(role, state)
    deadline, stats = session.next_deadline(), session.stats.copy()
    if what in LOCAL_INPUTS:
        with pytest.raises(PunchLocalError, match=f"cannot {what.value} when {state.value}"):
            feed(session, pair, what)
    else:
        feed(session, pair, what)
    assert session.state is state
    assert session.commands() == []
    assert session.events() == []
    assert session.next_deadline() == deadline
    if what in (PunchInput.PROBE, PunchInput.ACK):
        stats.ignored += 1  # counted, never answered
    assert session.stats == stats


@pytest.mark.parametrize("case", _pairs(listed=True), ids=_id)
def test_an_input_in_the_table_ends_in_a_state_the_table_names(
    case: tuple[PunchRole, PunchState, PunchInput],
) -> None:
    role, state, what = case
    session, pair = reach(role, state)
    feed(session, pair, what)  # the session checks this itself (AssertionError) ...
    assert session.state in TRANSITIONS[role][state][what]  # ... and so does the test


def test_the_table_covers_every_state_and_only_local_calls_raise() -> None:
    for role in ROLES:
        assert set(TRANSITIONS[role]) == set(PunchState)
        for state, inputs in TRANSITIONS[role].items():
            for what, targets in inputs.items():
                assert targets, (role, state, what)
    # Each role has its first input, and only from NEW.
    assert [s for s, i in TRANSITIONS[PunchRole.INITIATOR].items() if PunchInput.START in i] == [
        PunchState.NEW
    ]
    assert [s for s, i in TRANSITIONS[PunchRole.RESPONDER].items() if PunchInput.ACCEPT in i] == [
        PunchState.NEW
    ]
    assert not any(PunchInput.CONNECT in i for r in ROLES for i in TRANSITIONS[r].values())


def test_the_walk_reaches_the_states_it_claims_with_real_outcomes() -> None:
    """The fixtures are not vacuous: a WON session won by an ACK of one of its probes and
    lingers, still answering the peer's probes (those signed with the punch's key)."""
    for role in ROLES:
        session, pair = reach(role, PunchState.WON)
        won_at = 0.16 if role is PunchRole.INITIATOR else 0.13
        assert session.next_deadline() == pytest.approx(won_at + MESHKEY.linger)
        probe = pair.key.probe(role.other, 7)
        peer: Endpoint = ("198.51.100.7", 9)
        session.on_probe(peer, probe, 1.0)  # lingering: still answers
        (ack,) = session.commands()
        assert isinstance(ack, SendDatagram) and ack.destination == peer
