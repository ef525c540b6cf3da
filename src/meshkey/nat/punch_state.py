"""The punch session's states and the table of what each state takes, in h11's manner.

:data:`TRANSITIONS` maps a role and a state to the inputs (:class:`PunchInput`) that state
takes and, for each, the states it may lead to; :class:`~meshkey.nat.punch.PunchSession`
looks every input up here before it acts and checks the state it ended in afterwards. An
input the table does not list changes nothing: the local caller's :attr:`PunchInput.START`
and :attr:`PunchInput.ACCEPT` raise :class:`PunchLocalError`; everything else (the peer's
messages out of turn, probes, ACKs, timers, cancels) is ignored.

The states::

    NEW         made; neither started (initiator) nor accepted (responder); nothing sent
    SIGNALLING  the initiator's CONNECT is out, waiting for the reply; or the responder's
                reply is out, waiting for the SYNC (no timed start)
    WAITING     synchronised: both start probing at the same moment, which is not yet
    PROBING     the probe schedule runs
    WON         a pair answered; lingering, still answering the peer's probes
    CLOSED      the linger is over (won)
    FAILED      refused, timed out, cancelled or aborted by the peer

SIGNALLING, WAITING and PROBING are *live* (:data:`LIVE`): the punch can still win or fail.
"""

from __future__ import annotations

import enum

from meshkey.wire.udp import PunchRole


class PunchState(enum.Enum):
    NEW = "new"  # made; neither started nor accepted, nothing sent
    SIGNALLING = "signalling"
    WAITING = "waiting"
    PROBING = "probing"
    WON = "won"
    FAILED = "failed"
    CLOSED = "closed"


class PunchInput(enum.Enum):
    """Everything that can happen to a session: the local caller's calls, the peer's
    messages (by kind), packets, and time."""

    START = "start"  # start(): the initiator sends its CONNECT
    ACCEPT = "accept"  # accept(): the responder answers the peer's CONNECT
    CONNECT = "connect"  # the peer's CONNECT that is not a reply (the Puncher makes a
    #                      responder of it; a session never takes one)
    REPLY = "reply"  # the peer's CONNECT reply
    SYNC = "sync"
    RESULT = "result"
    ABORT = "abort"
    CREDIT = "credit"  # the peer's CREDIT: padding that pays for what it asks of this side
    PROBE = "probe"
    ACK = "ack"
    SOCKET_ERROR = "socket-error"
    CANCEL = "cancel"
    TIMER = "timer"


class PunchLocalError(RuntimeError):
    """The local caller used the session wrongly (an input its state does not take)."""


_S = PunchState
_I = PunchInput
_f = frozenset
LIVE = _f({_S.SIGNALLING, _S.WAITING, _S.PROBING})
#: Local calls: refused with PunchLocalError when the table does not list them.
LOCAL_INPUTS = _f({_I.START, _I.ACCEPT})


def _live(state: PunchState) -> dict[PunchInput, frozenset[PunchState]]:
    """What every live state takes: the peer's RESULT (a pair it found that one of its
    probes reached us on), ABORT and CREDIT, probes, ACKs (the first valid one wins), a
    cancel, broken sockets."""
    return {
        _I.RESULT: _f({state, _S.WON}),
        _I.ABORT: _f({_S.FAILED}),
        _I.CREDIT: _f({state}),
        _I.PROBE: _f({state}),
        _I.ACK: _f({state, _S.WON}),
        _I.CANCEL: _f({_S.FAILED}),
        _I.SOCKET_ERROR: _f({state}),
    }


#: After winning: lingering, still answering the peer's probes; later ACKs are checked and
#: never win again. The timer ends the linger.
_WON = {
    _I.CREDIT: _f({_S.WON}),
    _I.PROBE: _f({_S.WON}),
    _I.ACK: _f({_S.WON}),
    _I.TIMER: _f({_S.WON, _S.CLOSED}),
    _I.SOCKET_ERROR: _f({_S.WON}),
}
#: Over: only a broken socket is noted (a CLOSED punch may still hold the winner's birthday
#: socket, now the hop's).
_OVER = {
    _S.FAILED: {_I.SOCKET_ERROR: _f({_S.FAILED})},
    _S.CLOSED: {_I.SOCKET_ERROR: _f({_S.CLOSED})},
}

#: role -> state -> input -> the states that input may lead to. An input not listed changes
#: nothing: START and ACCEPT raise PunchLocalError, everything else is ignored. A punch
#: that waits (WAITING, or a responder's SIGNALLING waiting for SYNC) is synchronised, so it
#: is never TCP_DIAL (which needs a public side) and cannot win as it starts.
TRANSITIONS: dict[PunchRole, dict[PunchState, dict[PunchInput, frozenset[PunchState]]]] = {
    PunchRole.INITIATOR: {
        _S.NEW: {_I.START: _f({_S.SIGNALLING})},
        _S.SIGNALLING: {  # CONNECT sent, waiting for the reply
            **_live(_S.SIGNALLING),
            _I.REPLY: _f({_S.WAITING, _S.PROBING, _S.WON, _S.FAILED}),
            _I.TIMER: _f({_S.SIGNALLING, _S.FAILED}),
        },
        _S.WAITING: {**_live(_S.WAITING), _I.TIMER: _f({_S.WAITING, _S.PROBING})},
        _S.PROBING: {**_live(_S.PROBING), _I.TIMER: _f({_S.PROBING, _S.FAILED})},
        _S.WON: _WON,
        **_OVER,
    },
    PunchRole.RESPONDER: {
        _S.NEW: {_I.ACCEPT: _f({_S.SIGNALLING, _S.WAITING, _S.PROBING, _S.WON, _S.FAILED})},
        _S.SIGNALLING: {  # reply sent, waiting for the SYNC
            **_live(_S.SIGNALLING),
            _I.SYNC: _f({_S.PROBING}),
            _I.TIMER: _f({_S.SIGNALLING, _S.FAILED}),
        },
        _S.WAITING: {**_live(_S.WAITING), _I.TIMER: _f({_S.WAITING, _S.PROBING})},
        _S.PROBING: {**_live(_S.PROBING), _I.TIMER: _f({_S.PROBING, _S.FAILED})},
        _S.WON: _WON,
        **_OVER,
    },
}
