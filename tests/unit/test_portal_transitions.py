"""The session's table of allowed inputs (meshkey.portal.transitions), walked pair by pair.

Every (role, state, input) the table leaves out is tried on a real session in that state:
a local call must raise PortalLocalError and change nothing, a peer's frame must fail the
session with a PortalPeerError (PROTOCOL_ERROR). Every pair the table holds must be taken
and leave the session in one of the states the table names.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import pytest

from meshkey.portal.session import (
    Outcome,
    PortalLocalError,
    PortalPeerError,
    PortalSession,
    Role,
    SendFrames,
    State,
)
from meshkey.portal.transitions import ALL_INPUTS, TRANSITIONS, Input, Local
from meshkey.wire.portal import (
    MAX_WINDOW,
    Ack,
    Data,
    Fin,
    Frame,
    FrameKind,
    Open,
    OpenOk,
    OpenRefused,
    Ping,
    Pong,
    RefuseReason,
    Reset,
    ResetReason,
)

SESSION = 7
NOW = 1.0


def frames_of(session: PortalSession) -> list[Frame]:
    return [f for c in session.commands() if isinstance(c, SendFrames) for f in c.frames]


def exchange(a: PortalSession, b: PortalSession, now: float) -> None:
    """Delivers what each side says to the other until both are quiet."""
    while True:
        to_b, to_a = frames_of(a), frames_of(b)
        if not to_a and not to_b:
            return
        for frame in to_b:
            b.frame_received(frame, now)
        for frame in to_a:
            a.frame_received(frame, now)


def open_pair() -> tuple[PortalSession, PortalSession]:
    opener = PortalSession(Role.OPENER, SESSION, 0.0, rng=random.Random(1))
    acceptor = PortalSession(Role.ACCEPTOR, SESSION, 0.0, peer_window=MAX_WINDOW)
    acceptor.accept(0.0)
    exchange(opener, acceptor, 0.0)
    assert opener.state is State.OPEN and acceptor.state is State.OPEN
    return opener, acceptor


def closed_pair() -> tuple[PortalSession, PortalSession]:
    opener, acceptor = open_pair()
    opener.app_eof(0.5)
    acceptor.app_eof(0.5)
    exchange(opener, acceptor, 0.5)
    assert opener.state is State.CLOSED and acceptor.state is State.CLOSED
    return opener, acceptor


def session_in(role: Role, state: State) -> PortalSession:
    """A session of ``role`` brought to ``state`` the ordinary way, its output drained."""
    index = 0 if role is Role.OPENER else 1
    if state is State.OPENING:
        session = PortalSession(Role.OPENER, SESSION, 0.0, rng=random.Random(1))
    elif state is State.ACCEPTING:
        session = PortalSession(Role.ACCEPTOR, SESSION, 0.0, peer_window=MAX_WINDOW)
    elif state is State.OPEN:
        session = open_pair()[index]
    elif state is State.CLOSED:
        session = closed_pair()[index]
    else:
        session = open_pair()[index]
        session.app_reset(0.5, "the client went away")
    assert session.role is role and session.state is state
    session.commands()
    session.events()
    return session


FRAMES: dict[FrameKind, Frame] = {
    FrameKind.OPEN: Open(SESSION, MAX_WINDOW),
    FrameKind.OPEN_OK: OpenOk(SESSION, MAX_WINDOW),
    FrameKind.OPEN_REFUSED: OpenRefused(SESSION, RefuseReason.REFUSED, "connection refused"),
    FrameKind.DATA: Data(SESSION, 0, b"x"),
    FrameKind.ACK: Ack(SESSION, 0, MAX_WINDOW),
    FrameKind.FIN: Fin(SESSION, 0),
    FrameKind.RST: Reset(SESSION, ResetReason.APP_RESET, "the server went away"),
    FrameKind.PING: Ping(SESSION, 1),
    FrameKind.PONG: Pong(SESSION, 1),
}

LOCAL_CALLS: dict[Local, Callable[[PortalSession], None]] = {
    Local.APP_DATA: lambda s: s.app_data(b"x", NOW),
    Local.APP_EOF: lambda s: s.app_eof(NOW),
    Local.APP_RESET: lambda s: s.app_reset(NOW, "reset"),
    Local.APP_CONSUMED: lambda s: s.app_consumed(0, NOW),
    Local.ACCEPT: lambda s: s.accept(NOW),
    Local.REFUSE: lambda s: s.refuse(RefuseReason.REFUSED, "refused", NOW),
    Local.SHUT_DOWN: lambda s: s.shut_down("shutting down", NOW),
    Local.ROUTE_ERROR: lambda s: s.route_error("no route", NOW),
    Local.TIMER: lambda s: s.on_timer(NOW),
}

STATES_OF = {
    Role.OPENER: {State.OPENING, State.OPEN, State.CLOSED, State.FAILED},
    Role.ACCEPTOR: {State.ACCEPTING, State.OPEN, State.CLOSED, State.FAILED},
}

PAIRS = [
    (role, state, the_input)
    for role, states in STATES_OF.items()
    for state, the_input in itertools.product(sorted(states, key=lambda s: s.value), ALL_INPUTS)
]
REFUSED = [p for p in PAIRS if p[2] not in TRANSITIONS[p[0]][p[1]]]
ALLOWED = [p for p in PAIRS if p[2] in TRANSITIONS[p[0]][p[1]]]


def apply(session: PortalSession, the_input: Input) -> None:
    if isinstance(the_input, Local):
        LOCAL_CALLS[the_input](session)
    else:
        session.frame_received(FRAMES[the_input], NOW)


def pair_id(pair: tuple[Role, State, Input]) -> str:
    role, state, the_input = pair
    return f"{role.value}-{state.value}-{the_input.name}"


def test_the_table_names_every_state_of_each_role_and_every_input() -> None:
    for role, states in STATES_OF.items():
        assert set(TRANSITIONS[role]) == states
        for targets in TRANSITIONS[role].values():
            assert all(t <= states for t in targets.values())  # never another role's state
    assert set(ALL_INPUTS) == set(Local) | set(FrameKind)
    assert set(LOCAL_CALLS) == set(Local) and set(FRAMES) == set(FrameKind)
    # What a test can only pass by walking: the refusals the protocol relies on are there.
    assert (Role.OPENER, State.OPEN, FrameKind.OPEN) in REFUSED
    assert (Role.ACCEPTOR, State.OPEN, FrameKind.OPEN_OK) in REFUSED
    assert (Role.ACCEPTOR, State.ACCEPTING, FrameKind.DATA) in REFUSED
    assert (Role.ACCEPTOR, State.ACCEPTING, Local.APP_DATA) in REFUSED
    assert (Role.OPENER, State.FAILED, Local.APP_EOF) in REFUSED
    assert len(REFUSED) + len(ALLOWED) == len(PAIRS) == 2 * 4 * len(ALL_INPUTS)


@pytest.mark.parametrize("pair", REFUSED, ids=pair_id)
def test_every_input_the_table_leaves_out_is_refused_with_a_typed_error(
    pair: tuple[Role, State, Input],
) -> None:
    role, state, the_input = pair
    session = session_in(role, state)
    assert not session.allows(the_input)
    if isinstance(the_input, Local):
        before = (session.state, session.outcome, session.next_deadline(), session.buffered_to_send)
        with pytest.raises(PortalLocalError):
            apply(session, the_input)
        after = (session.state, session.outcome, session.next_deadline(), session.buffered_to_send)
        assert after == before  # and nothing changed
        assert session.commands() == [] and session.events() == []
        return
    apply(session, the_input)  # never raises for the peer's doing
    assert session.state is State.FAILED and session.outcome is Outcome.PROTOCOL_ERROR
    assert isinstance(session.error, PortalPeerError)
    assert session.error.code is ResetReason.PROTOCOL_ERROR
    assert the_input.name in session.error.reason
    resets = [f for f in frames_of(session) if isinstance(f, Reset)]
    if state is State.ACCEPTING:
        assert resets == []  # nothing was accepted: the outlet refuses or forgets it
    else:
        assert [r.reason for r in resets] == [ResetReason.PROTOCOL_ERROR]


@pytest.mark.parametrize("pair", ALLOWED, ids=pair_id)
def test_every_input_the_table_holds_is_taken_and_leads_where_it_says(
    pair: tuple[Role, State, Input],
) -> None:
    role, state, the_input = pair
    session = session_in(role, state)
    assert session.allows(the_input)
    apply(session, the_input)
    assert session.state in TRANSITIONS[role][state][the_input]
    if session.outcome is Outcome.PROTOCOL_ERROR:
        pytest.fail(f"an allowed {the_input.name} was a protocol error: {session.reason}")
