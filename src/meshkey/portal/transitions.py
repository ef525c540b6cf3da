"""Which input a portal session takes in which state, and where each may lead: one table.

Modelled on h11's ``_state.py``: :data:`TRANSITIONS` maps a role and a state to the inputs
that state takes, and each input to the states it may leave the session in (which one
depends on the input's content: an ACK that acknowledges the last FIN closes, one that
acknowledges bytes never sent is a protocol error and fails). An input missing from the
table is refused: a local call raises :class:`~meshkey.portal.contract.PortalLocalError`
and changes nothing; a frame from the peer is a protocol violation (RST, FAILED, with a
:class:`~meshkey.portal.contract.PortalPeerError` as the session's ``error``).

The role is part of the key because OPEN is shared: an opener reaches it by OPEN_OK, an
acceptor by ``accept()``, and each then refuses the other side's opening frames. Closed
and failed sessions take every frame (a closed one that lingers acknowledges a repeated
FIN; the rest is ignored, since frames still in flight when a session ends are normal) and
the local inputs that may come after the end (the socket reporting its loss, a timer, the
owner shutting down); they refuse new data, EOF, accept and refuse.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from meshkey.portal.contract import Role, State
from meshkey.wire.portal import FrameKind


class Local(enum.Enum):
    """A local input of :class:`~meshkey.portal.session.PortalSession` (its method's name)."""

    APP_DATA = "app_data"
    APP_EOF = "app_eof"
    APP_RESET = "app_reset"
    APP_CONSUMED = "app_consumed"
    ACCEPT = "accept"
    REFUSE = "refuse"
    SHUT_DOWN = "shut_down"
    ROUTE_ERROR = "route_error"
    TIMER = "on_timer"


#: Every input: a local call, or a frame from the peer (by its kind).
Input = Local | FrameKind
ALL_INPUTS: tuple[Input, ...] = (*Local, *FrameKind)

_OPENING, _ACCEPTING, _OPEN = State.OPENING, State.ACCEPTING, State.OPEN
_CLOSED, _FAILED = State.CLOSED, State.FAILED


def _to(*states: State) -> frozenset[State]:
    return frozenset(states)


def _after_end(state: State) -> dict[Input, frozenset[State]]:
    """A terminal state: every frame and the late local inputs, all leaving it as it is."""
    late = (Local.APP_RESET, Local.APP_CONSUMED, Local.SHUT_DOWN, Local.ROUTE_ERROR, Local.TIMER)
    return {the_input: _to(state) for the_input in (*late, *FrameKind)}


#: Inputs an open session takes whatever its role (both directions flow).
_OPEN_EITHER_ROLE: dict[Input, frozenset[State]] = {
    Local.APP_DATA: _to(_OPEN),
    Local.APP_EOF: _to(_OPEN),
    Local.APP_RESET: _to(_FAILED),
    Local.APP_CONSUMED: _to(_OPEN),
    Local.SHUT_DOWN: _to(_FAILED),
    Local.ROUTE_ERROR: _to(_OPEN),
    Local.TIMER: _to(_OPEN, _FAILED),
    FrameKind.DATA: _to(_OPEN, _CLOSED, _FAILED),
    FrameKind.ACK: _to(_OPEN, _CLOSED, _FAILED),
    FrameKind.FIN: _to(_OPEN, _CLOSED, _FAILED),
    FrameKind.PING: _to(_OPEN),
    FrameKind.PONG: _to(_OPEN),
    FrameKind.RST: _to(_FAILED),
}

TRANSITIONS: Mapping[Role, Mapping[State, Mapping[Input, frozenset[State]]]] = {
    Role.OPENER: {
        _OPENING: {
            # The application may write (and end) before the acceptor answered: bytes wait.
            Local.APP_DATA: _to(_OPENING),
            Local.APP_EOF: _to(_OPENING),
            Local.APP_RESET: _to(_FAILED),
            Local.APP_CONSUMED: _to(_OPENING),
            Local.SHUT_DOWN: _to(_FAILED),
            Local.ROUTE_ERROR: _to(_OPENING, _FAILED),  # retried, until the retries run out
            Local.TIMER: _to(_OPENING, _FAILED),
            # The acceptor may speak first and its OPEN_OK may be lost: its DATA is taken,
            # and its ACK proves it accepted.
            FrameKind.DATA: _to(_OPENING, _FAILED),
            FrameKind.ACK: _to(_OPEN, _FAILED),
            FrameKind.FIN: _to(_OPENING, _FAILED),
            FrameKind.PING: _to(_OPENING),
            FrameKind.PONG: _to(_OPENING),
            FrameKind.RST: _to(_FAILED),
            FrameKind.OPEN_OK: _to(_OPEN),
            FrameKind.OPEN_REFUSED: _to(_FAILED),
        },
        _OPEN: {
            **_OPEN_EITHER_ROLE,
            FrameKind.OPEN_OK: _to(_OPEN),  # a repeated one (our ACK of it was lost)
        },
        _CLOSED: _after_end(_CLOSED),
        _FAILED: _after_end(_FAILED),
    },
    Role.ACCEPTOR: {
        _ACCEPTING: {
            # No application yet (the outlet is connecting): no data either way.
            Local.APP_RESET: _to(_FAILED),
            Local.APP_CONSUMED: _to(_ACCEPTING),
            Local.ACCEPT: _to(_OPEN),
            Local.REFUSE: _to(_FAILED),
            Local.SHUT_DOWN: _to(_FAILED),
            Local.ROUTE_ERROR: _to(_ACCEPTING),
            Local.TIMER: _to(_ACCEPTING, _FAILED),
            FrameKind.PING: _to(_ACCEPTING),
            FrameKind.PONG: _to(_ACCEPTING),
            FrameKind.RST: _to(_FAILED),
            FrameKind.OPEN: _to(_ACCEPTING),  # repeated while the outlet connects
        },
        _OPEN: {
            **_OPEN_EITHER_ROLE,
            FrameKind.OPEN: _to(_OPEN),  # a repeated one: our OPEN_OK was lost
        },
        _CLOSED: _after_end(_CLOSED),
        _FAILED: _after_end(_FAILED),
    },
}


def refusal(role: Role, state: State, the_input: Input, reason: str | None = None) -> str:
    """Why ``the_input`` is refused in ``state`` (the text of the error)."""
    if isinstance(the_input, FrameKind):
        if state is State.ACCEPTING:
            return f"{the_input.name} before the session was accepted"
        return f"{the_input.name} sent to the {role.value} in state {state.value}"
    name = the_input.value
    if the_input in (Local.APP_DATA, Local.APP_EOF):  # the application's own calls
        if state in (State.CLOSED, State.FAILED):
            return f"{name}: the session is {state.value} ({reason})"
        if state is State.ACCEPTING:
            return f"{name} before accept()"
    return f"{name}() in state {state.value}"
