"""One portal session, sans-IO: a TCP connection's bytes, both ways, over an unreliable path.

(Over 600 lines on purpose: one machine whose halves already live in
:mod:`~meshkey.portal.send_half` and :mod:`~meshkey.portal.receive_half`; an eighth of it is
this theory of operation.)

One TCP connection is one session between an **opener** (the inlet's side, which allocates
the session id) and an **acceptor** (the outlet's side, which connects to the TCP server).
The core takes the application's bytes and the peer's frames (:mod:`meshkey.wire.portal`)
with ``now``, and hands out commands to drain: frames to send and what to do to the local
socket. It holds no socket and no timer; the glue asks :meth:`PortalSession.next_deadline`.

Why it is more than a pipe
--------------------------
Hops are reliable, but the path under a session is not: a path switch or a relay that dies
loses or reorders messages in flight, and a secure channel's replay window drops what
arrives too late. So each direction numbers its bytes (a DATA frame's offset is the offset
of its first byte), the receiver acknowledges cumulatively (ACK ``acked``: everything before
it arrived) and says which later ranges it holds, and the sender keeps every unacknowledged
byte and sends it again after a retransmission timeout. Duplicates are acknowledged and
dropped; data past a gap is held (bounded) until the gap fills. In-order data is
acknowledged every quarter window at once, otherwise within :data:`ACK_DELAY` or with the
next frame this end sends (a reply carries it); gaps, duplicates, FIN and PING are
acknowledged at once. The timeout is RFC 6298's:
``RTO = SRTT + 4·RTTVAR`` from RTT samples (Karn: none from resent data), doubled on each
expiry, between :attr:`SessionLimits.min_rto` and :attr:`SessionLimits.max_rto`.

Flow control is credit: the receiver grants a window (ACK ``window``: bytes it takes beyond
``acked``), whose right edge is ``consumed + window`` where ``consumed`` is what the local
socket accepted (:meth:`app_consumed`). The sender never sends past the right edge. When
the local application is slow the right edge stops moving, the peer's sender stops, its
send buffer fills, and its core tells its glue to stop reading its socket (``PauseReading``;
``ResumeReading`` once half of it is acknowledged). No congestion control: each hop's QUIC
or TCP does that (DESIGN.md decision 13).

What a session holds is credit too (DESIGN.md decision 20). The window it grants and the
send buffer it fills start small (``SessionLimits.initial_window``, ``initial_send_buffer``:
64 KiB) and double, up to ``receive_window`` and ``send_buffer``, only while the far side
reads: a window grows when the local socket consumed a whole one within a second, a send
buffer when the peer's window moved on by a whole buffer (its reader consumed that much)
while the buffer had filled. Each growth is drawn from the session's
:class:`~meshkey.portal.budget.Credit` (the node's budget, which may grant less), and the
session gives it all back when it ends. So an OPEN costs little until someone reads, and a
peer cannot make a node hold more than the budget allows.

States and transitions
----------------------
::

    opener:   OPENING --OPEN_OK (or an ACK)--> OPEN
    acceptor: ACCEPTING --accept()--> OPEN          ACCEPTING --refuse()--> FAILED
    OPEN --both FINs delivered and acknowledged--> CLOSED (lingers, then finished)
    any --RST, OPEN_REFUSED, a protocol error, silence, a broken route, app_reset()--> FAILED

Each direction half-closes on its own: :meth:`app_eof` sends FIN after the last byte; the
peer's FIN becomes ``ShutdownAppWrite`` once every byte before it was written, and the other
direction keeps flowing. ``CLOSED`` and ``FAILED`` are terminal and say why
(:attr:`PortalSession.outcome`, :attr:`PortalSession.reason`). A ``CLOSED`` session lingers
for :attr:`SessionLimits.linger` to acknowledge a FIN again if the peer did not hear the
last ACK; then :attr:`PortalSession.finished` is true and the owner forgets it.

Liveness: while the session waits for the peer (unacknowledged data, FIN, OPEN, or a
keepalive PING), silence for :attr:`SessionLimits.peer_timeout` fails it. An idle opener
sends a PING every :attr:`SessionLimits.keepalive_interval` (20 s: below the ~25-30 s after
which NAT mappings and idle hops go away, and one tiny frame per 20 s is cheap); an idle
acceptor that hears nothing for :attr:`SessionLimits.idle_timeout` (3 keepalives) fails.
A route error (a node on the route could not deliver a frame) is not authenticated, so it
does not fail the session at once: if nothing arrives from the peer within
:attr:`SessionLimits.route_grace`, the session fails with the route's reason. While
opening, route errors retry OPEN on a bounded, backed-off :class:`~meshkey.retry.RetrySchedule`.

Errors: which input each state takes is one table,
:data:`~meshkey.portal.transitions.TRANSITIONS`. Calling an input the state does not allow
raises :class:`PortalLocalError` and changes nothing. A peer that breaks the protocol (a
frame the state does not take, or one that contradicts what was said) gets an RST and the
session fails with a :class:`PortalPeerError` as :attr:`PortalSession.error`; no input
raises for what the peer did. After every input: drain :meth:`commands` and :meth:`events`,
then re-read :meth:`next_deadline`.

Where the parts live: each direction is its own machine,
:class:`~meshkey.portal.send_half.SendHalf` (with the RTO,
:class:`~meshkey.portal.send_half.RetransmitTimer`) and
:class:`~meshkey.portal.receive_half.ReceiveHalf`; this module holds the session's state,
its liveness timers, and what ties the two directions together.
"""

from __future__ import annotations

import math
import random

from meshkey.portal.budget import Credit, unlimited_credit
from meshkey.portal.contract import (
    DEFAULT_LIMITS,
    AppCommand,
    CloseApp,
    Closed,
    Command,
    Event,
    Opened,
    Outcome,
    PauseReading,
    PortalLocalError,
    PortalPeerError,
    ResumeReading,
    Role,
    SendFrames,
    SessionLimits,
    SessionStats,
    ShutdownAppWrite,
    State,
    WriteToApp,
    violation,
)
from meshkey.portal.receive_half import ACK_DELAY, ReceiveHalf
from meshkey.portal.send_half import RetransmitTimer, SendHalf
from meshkey.portal.transitions import TRANSITIONS, Input, Local, refusal
from meshkey.retry import RetrySchedule
from meshkey.wire.portal import (
    Ack,
    Data,
    Fin,
    Frame,
    Open,
    OpenOk,
    OpenRefused,
    Ping,
    Pong,
    RefuseReason,
    Reset,
    ResetReason,
    frame_kind,
)

#: Keepalive deadlines are rounded up to a multiple of this (seconds).
KEEPALIVE_GRID = 2.0

__all__ = [
    "ACK_DELAY",
    "AppCommand",
    "CloseApp",
    "Closed",
    "Command",
    "DEFAULT_LIMITS",
    "Event",
    "Opened",
    "Outcome",
    "PauseReading",
    "PortalLocalError",
    "PortalPeerError",
    "PortalSession",
    "ResumeReading",
    "Role",
    "SendFrames",
    "SessionLimits",
    "SessionStats",
    "ShutdownAppWrite",
    "State",
    "WriteToApp",
]


class PortalSession:
    """One end of one portal session; see the module docstring for the protocol."""

    def __init__(
        self,
        role: Role,
        session_id: int,
        now: float,
        *,
        limits: SessionLimits = DEFAULT_LIMITS,
        rng: random.Random | None = None,
        peer_window: int | None = None,
        credit: Credit | None = None,
    ) -> None:
        """An opener starts in OPENING with an OPEN to send; an acceptor (made from the
        peer's OPEN, whose window is ``peer_window``) starts in ACCEPTING and waits for
        :meth:`accept` or :meth:`refuse`. ``credit``: what the session's window and send
        buffer grow from (unlimited when not given), released when the session ends."""
        self.role = role
        self.session_id = session_id
        self.limits = limits
        self.stats = SessionStats()
        self.outcome: Outcome | None = None
        self.reason: str | None = None
        self.error: PortalPeerError | None = None
        self._allowed = TRANSITIONS[role]
        # Output: the halves write into these lists too (they are never replaced).
        self._frames: list[Frame] = []
        self._app: list[AppCommand] = []
        self._events: list[Event] = []
        self._credit = credit if credit is not None else unlimited_credit()
        self._sending = SendHalf(session_id, limits, self.stats, self._frames, self._credit)
        self._receiving = ReceiveHalf(limits, self.stats, self._app, self._credit)
        self._rtx = RetransmitTimer(limits)
        # liveness
        self._last_heard = now
        self._last_sent = now
        self._waiting_since: float | None = None
        self._ping_nonce = 0
        self._ping_outstanding = False
        self._route_deadline: float | None = None
        self._route_reason = ""
        self._open_retry = RetrySchedule(
            0.25, 2.0, attempts=limits.open_retries, rng=rng or random.Random()
        )
        self._open_retry_at: float | None = None
        self._linger_until: float | None = None
        if role is Role.OPENER:
            self.state = State.OPENING
            self._frames.append(Open(session_id, self._receiving.window))
            self._rtx.arm(now)
        else:
            self.state = State.ACCEPTING
            self._sending.first_window(peer_window if peer_window is not None else 0)
        self._update_waiting(now)

    # -- introspection ----------------------------------------------------------------

    @property
    def terminal(self) -> bool:
        return self.state in (State.CLOSED, State.FAILED)

    @property
    def finished(self) -> bool:
        """True once the owner may forget the session (failed, or closed and lingered)."""
        return self.state is State.FAILED or (
            self.state is State.CLOSED and self._linger_until is None
        )

    @property
    def rto(self) -> float:
        return self._rtx.rto

    @property
    def buffered_to_send(self) -> int:
        """Bytes from the application not yet acknowledged (held for resending)."""
        return self._sending.buffered

    @property
    def send_capacity(self) -> int:
        """What the send buffer holds before the application is told to pause (it grows)."""
        return self._sending.capacity

    @property
    def receive_window(self) -> int:
        """The window this end grants now (it grows)."""
        return self._receiving.window

    @property
    def buffered_received(self) -> int:
        """Bytes held for the local application: written but not consumed, plus held past a
        gap. Never more than the receive window."""
        return self._receiving.buffered

    def allows(self, the_input: Input) -> bool:
        """Does the current state take ``the_input`` (:data:`TRANSITIONS`)?"""
        return the_input in self._allowed[self.state]

    def _check(self, the_input: Local) -> None:
        if the_input not in self._allowed[self.state]:
            raise PortalLocalError(refusal(self.role, self.state, the_input, self.reason))

    # -- application inputs -----------------------------------------------------------

    def app_data(self, data: bytes, now: float) -> None:
        """Bytes the local socket produced. Raises PortalLocalError after :meth:`app_eof`,
        on an acceptor before :meth:`accept`, or once terminal. Then drain."""
        self._check(Local.APP_DATA)
        self._sending.write(data)
        if not data:
            return
        self._transmit(now)
        if self._sending.pause_if_full():
            self._app.append(PauseReading())

    def app_eof(self, now: float) -> None:
        """The local socket's read side ended: FIN follows the last byte. Raises
        PortalLocalError if called twice or in a state without an application. Then drain."""
        self._check(Local.APP_EOF)
        self._sending.end()
        self._transmit(now)

    def app_reset(self, now: float, reason: str = "the local connection was reset") -> None:
        """The local socket was reset or lost: RST to the peer, the session fails. A no-op
        once terminal (the socket may report its loss after the session ended). Then drain."""
        self._check(Local.APP_RESET)
        if self.terminal:
            return
        self._fail(
            Outcome.RESET_LOCALLY, reason, reset=ResetReason.APP_RESET, close_app=False, now=now
        )

    def app_consumed(self, count: int, now: float) -> None:
        """The local socket accepted ``count`` more of the bytes written to it; the window
        moves on. Raises PortalLocalError for more than was written. Then drain."""
        self._check(Local.APP_CONSUMED)
        self._receiving.check_consumed(count)
        if self.terminal or not count:
            return
        self._receiving.on_consumed(count, now)

    def accept(self, now: float) -> None:
        """Acceptor: the TCP connection is up; OPEN_OK goes out and data may flow."""
        self._check(Local.ACCEPT)
        self.state = State.OPEN
        self._frames.append(OpenOk(self.session_id, self._receiving.window))
        self._events.append(Opened())
        self._last_heard = now
        self._transmit(now)

    def refuse(self, reason: RefuseReason, text: str, now: float) -> None:
        """Acceptor: the session cannot be served (connection refused, not allowed...)."""
        self._check(Local.REFUSE)
        self._frames.append(OpenRefused(self.session_id, reason, text))
        self._terminate(State.FAILED, Outcome.REFUSED, text, close_app=False, abort=False)

    def shut_down(self, reason: str, now: float) -> None:
        """The owner is going away: RST to the peer, the local socket is aborted."""
        self._check(Local.SHUT_DOWN)
        if self.terminal:
            return
        self._fail(Outcome.SHUT_DOWN, reason, reset=ResetReason.SHUTTING_DOWN, now=now)

    def route_error(self, text: str, now: float) -> None:
        """A node on the route reported that it could not deliver a frame of this session.
        Unauthenticated: opening retries on a backed-off schedule; an open session fails
        only if the peer stays silent for ``route_grace``. Then re-read the deadline."""
        self._check(Local.ROUTE_ERROR)
        if self.terminal:
            return
        self._route_reason = text
        if self.state is State.OPENING:
            if self._open_retry_at is None:
                delay = self._open_retry.next_delay()
                if delay is None:
                    self._fail(Outcome.ROUTE_BROKEN, f"unreachable: {text}", reset=None, now=now)
                    return
                self._open_retry_at = now + delay
            return
        if self._route_deadline is None:
            self._route_deadline = now + self.limits.route_grace

    # -- peer input -------------------------------------------------------------------

    def frame_received(self, frame: Frame, now: float) -> None:
        """One frame of this session from the peer. Never raises for the peer's doing: a
        frame the state does not take, or a violation, resets and fails the session. Then
        drain and re-read the deadline."""
        if frame.session != self.session_id:
            raise PortalLocalError(f"frame for session {frame.session} given to {self.session_id}")
        kind = frame_kind(frame)
        allowed = kind in self._allowed[self.state]
        if self.terminal:  # takes every frame; a lingering one acknowledges a repeated FIN
            self._after_end(frame)
            return
        self._last_heard = now
        self._route_deadline = None
        try:
            if not allowed:
                raise violation(refusal(self.role, self.state, kind))
            self._handle(frame, now)
        except PortalPeerError as exc:
            self.error = exc
            self._fail(Outcome.PROTOCOL_ERROR, exc.reason, reset=exc.code, now=now)
            return
        if not self.terminal:
            self._check_closed(now)
            self._update_waiting(now)

    def _handle(self, frame: Frame, now: float) -> None:
        """A frame the state takes (the table said so); PortalPeerError for its content."""
        if isinstance(frame, Data):
            self._receiving.on_data(frame, now)
        elif isinstance(frame, Ack):
            if self.state is State.OPENING:
                self._opened(now)  # the OPEN_OK was lost, but the acceptor is talking
            self._receive_ack(frame, now)
        elif isinstance(frame, Fin):
            self._receiving.on_fin(frame)
        elif isinstance(frame, Ping):
            self._frames.append(Pong(self.session_id, frame.nonce))
            if self.state is State.OPEN:
                self._receiving.ack_needed = True  # the window, for a sender probing a closed one
        elif isinstance(frame, Pong):
            if frame.nonce == self._ping_nonce:
                self._ping_outstanding = False
        elif isinstance(frame, Reset):
            self.error = PortalPeerError(frame.reason, frame.text)
            self._fail(
                Outcome.RESET_BY_PEER,
                f"reset by the peer ({frame.reason.name.lower()}): {frame.text}",
                reset=None,
                now=now,
            )
        elif isinstance(frame, Open):  # to an acceptor
            if self.state is State.OPEN:
                # Our OPEN_OK was lost: say it again (the window it grants is unchanged).
                self._frames.append(OpenOk(self.session_id, self._receiving.window))
        elif isinstance(frame, OpenOk):  # to an opener
            if self.state is State.OPENING:
                self._sending.first_window(frame.window)
                self._opened(now)
                self._receiving.ack_needed = True  # tells the acceptor its OPEN_OK arrived
                self._transmit(now)
        else:  # OPEN_REFUSED, to an opener that is opening
            self._terminate(
                State.FAILED,
                Outcome.REFUSED,
                f"refused by the outlet ({frame.reason.name.lower()})"
                + (f": {frame.text}" if frame.text else ""),
                close_app=True,
                abort=False,
            )

    def _opened(self, now: float) -> None:
        self.state = State.OPEN
        self._open_retry_at = None
        self._rtx.disarm()
        self._events.append(Opened())

    def _receive_ack(self, frame: Ack, now: float) -> None:
        progress, rtt = self._sending.on_ack(frame, now)
        if rtt is not None:
            self.stats.rtt_samples.append(rtt)
            del self.stats.rtt_samples[:-16]
            self._rtx.sample(rtt)
        if progress:
            self._rtx.progress()  # new acknowledgements end the backoff
            self._rtx.disarm()
            if self._outstanding():
                self._rtx.arm(now)
        self._transmit(now)
        if self._sending.resume_if_drained():
            self._app.append(ResumeReading())

    def _after_end(self, frame: Frame) -> None:
        """A closed session that lingers still acknowledges a FIN the peer sends again."""
        if self.state is not State.CLOSED:
            return
        if isinstance(frame, Fin | Data):
            self._receiving.ack_needed = True
        elif isinstance(frame, Ping):
            self._frames.append(Pong(self.session_id, frame.nonce))

    # -- timers -----------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` must be called next, or None."""
        if self.state is State.FAILED:
            return None
        if self.state is State.CLOSED:
            return self._linger_until
        candidates = [
            d
            for d in (
                self._receiving.ack_deadline,
                self._rtx.deadline,
                self._route_deadline,
                self._open_retry_at,
                self._silence_deadline(),
                self._keepalive_deadline(),
            )
            if d is not None
        ]
        return min(candidates) if candidates else None

    def on_timer(self, now: float) -> None:
        """Fires whatever is due at ``now`` (early calls do nothing). Then drain."""
        self._check(Local.TIMER)
        if self.state is State.CLOSED:
            if self._linger_until is not None and now >= self._linger_until:
                self._linger_until = None
            return
        if self.terminal:
            return
        self._receiving.due(now)
        silence = self._silence_deadline()
        if silence is not None and now >= silence:
            quiet = now - self._last_heard
            self._fail(
                Outcome.TIMEOUT,
                f"no answer from the peer for {quiet:.1f}s",
                reset=ResetReason.TIMEOUT,
                now=now,
            )
            return
        if self._route_deadline is not None and now >= self._route_deadline:
            self._fail(
                Outcome.ROUTE_BROKEN,
                f"route broken: {self._route_reason}",
                reset=ResetReason.ROUTE_BROKEN,
                now=now,
            )
            return
        if self._open_retry_at is not None and now >= self._open_retry_at:
            self._open_retry_at = None
            self._frames.append(Open(self.session_id, self._receiving.window))
            self._sent(now)
        if self._rtx.deadline is not None and now >= self._rtx.deadline:
            self._retransmit(now)
        keepalive = self._keepalive_deadline()
        if keepalive is not None and now >= keepalive:
            self._ping(now)
        self._update_waiting(now)

    def _retransmit(self, now: float) -> None:
        self.stats.retransmit_timeouts += 1
        self._rtx.back_off()
        if self.state is State.OPENING:
            self._frames.append(Open(self.session_id, self._receiving.window))
        self._sending.resend()
        if self.state is State.OPEN and (self._sending.window_closed or self._ping_outstanding):
            self._ping(now)  # probes a closed window (the answer carries an ACK)
        self._sent(now)
        self._rtx.disarm()
        if self._outstanding():
            self._rtx.arm(now)

    def _ping(self, now: float) -> None:
        self._ping_nonce += 1
        self._ping_outstanding = True
        self._frames.append(Ping(self.session_id, self._ping_nonce))
        self._sent(now)
        self._rtx.arm_if_idle(now)

    def _keepalive_deadline(self) -> float | None:
        if self.role is not Role.OPENER or self.state is not State.OPEN:
            return None
        if self._ping_outstanding or self._outstanding():
            return None
        # On a grid, so the idle sessions of one route ping together: one message carries
        # their PINGs (and one their PONGs) instead of one message per session.
        due = self._last_sent + self.limits.keepalive_interval
        return math.ceil(due / KEEPALIVE_GRID) * KEEPALIVE_GRID

    def _silence_deadline(self) -> float | None:
        if self._waiting_since is not None:
            return max(self._last_heard, self._waiting_since) + self.limits.peer_timeout
        if self.role is Role.ACCEPTOR and self.state is State.OPEN:
            return self._last_heard + self.limits.idle_timeout
        return None

    def _outstanding(self) -> bool:
        """Is something waiting for the peer's answer?"""
        return bool(
            self.state is State.OPENING
            or self._sending.awaiting_ack
            or self._ping_outstanding
            or (self._sending.window_closed and self.state is State.OPEN)
        )

    def _update_waiting(self, now: float) -> None:
        if self.terminal:
            return
        if self._outstanding():
            if self._waiting_since is None:
                self._waiting_since = now
            self._rtx.arm_if_idle(now)
        else:
            self._waiting_since = None
            self._rtx.disarm()

    # -- sending ----------------------------------------------------------------------

    def _transmit(self, now: float) -> None:
        """Sends new data the peer's window allows, then FIN once everything is out."""
        if self.state is not State.OPEN:
            return
        if self._sending.send_new(now):
            self._sent(now)
            self._rtx.arm_if_idle(now)
        self._update_waiting(now)
        self._check_closed(now)

    def _sent(self, now: float) -> None:
        self._last_sent = now

    # -- ending -----------------------------------------------------------------------

    def _check_closed(self, now: float) -> None:
        if self.state is State.OPEN and self._sending.fin_acked and self._receiving.fin_delivered:
            self._terminate(State.CLOSED, Outcome.CLOSED, "closed", close_app=True, abort=False)
            self._linger_until = now + self.limits.linger

    def _fail(
        self,
        outcome: Outcome,
        reason: str,
        *,
        reset: ResetReason | None,
        now: float,
        close_app: bool = True,
    ) -> None:
        if reset is not None and self.state is not State.ACCEPTING:
            self._frames.append(Reset(self.session_id, reset, reason))
        has_app = self.state is not State.ACCEPTING
        self._terminate(State.FAILED, outcome, reason, close_app=close_app and has_app, abort=True)

    def _terminate(
        self, state: State, outcome: Outcome, reason: str, *, close_app: bool, abort: bool
    ) -> None:
        self.state = state
        self.outcome = outcome
        self.reason = reason
        self._rtx.disarm()
        self._route_deadline = self._open_retry_at = None
        self._waiting_since = None
        if state is State.FAILED:
            self._sending.clear()
            self._receiving.clear()
        self._credit.release()  # nothing more will be held past what is buffered now
        if close_app:
            self._app.append(CloseApp(outcome, reason, abort))
        peer_reset = self.error.code if outcome is Outcome.RESET_BY_PEER and self.error else None
        self._events.append(Closed(outcome, reason, peer_reset))

    # -- outputs ----------------------------------------------------------------------

    def commands(self) -> list[Command]:
        """What to do now: commands for the local socket in order, then frames to send."""
        out: list[Command] = list(self._app)
        self._app.clear()
        if self._wants_ack():
            self._frames.append(self._receiving.ack_frame(self.session_id))
        if self._frames:
            out.append(SendFrames(tuple(self._frames)))
            self._frames.clear()
        return out

    def _wants_ack(self) -> bool:
        """An ACK is due now, or one is pending and can ride with frames we send anyway."""
        if self.state is State.FAILED:
            return False
        return self._receiving.wants_ack(bool(self._frames))

    def events(self) -> list[Event]:
        events, self._events = self._events, []
        return events
