"""One portal session, sans-IO: a TCP connection's bytes, both ways, over an unreliable path.

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
``acked``), whose right edge is ``consumed + receive_window`` where ``consumed`` is what the
local socket accepted (:meth:`app_consumed`). The sender never sends past the right edge.
When the local application is slow the right edge stops moving, the peer's sender stops, its
send buffer fills, and its core tells its glue to stop reading its socket (``PauseReading``;
``ResumeReading`` once half of it is acknowledged). No congestion control: each hop's QUIC
or TCP does that (DESIGN.md decision 13).

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

Errors: calling an input the state does not allow raises :class:`PortalLocalError` and
changes nothing. A peer that breaks the protocol gets an RST and the session fails with a
:class:`PortalPeerError` as :attr:`PortalSession.error`; no input raises for what the peer did.
After every input: drain :meth:`commands` and :meth:`events`, then re-read
:meth:`next_deadline`.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field

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
    ShutdownAppWrite,
    State,
    WriteToApp,
)
from meshkey.retry import RetrySchedule
from meshkey.wire.portal import (
    MAX_CHUNK,
    MAX_SACK_RANGES,
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
)

#: Below this many bytes of window, a sender with more to send waits for a wider one
#: (unless nothing is in flight), so a slow reader does not turn the stream into crumbs.
SMALL_SEGMENT = 4096
#: The longest an in-order DATA waits for its ACK (hoping to ride on a reply). Senders need
#: ACKs only to free their buffers and move their windows, and they get one every quarter
#: window at once, so a few milliseconds cost a bulk transfer nothing, and spare a
#: request/response exchange one message each way.
ACK_DELAY = 0.005
#: Keepalive deadlines are rounded up to a multiple of this (seconds).
KEEPALIVE_GRID = 2.0
#: Out-of-order segments a receiver holds at most (bytes are bounded by the window anyway).
MAX_HELD_SEGMENTS = 64
_CLOCK_GRANULARITY = 0.001

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


@dataclass(slots=True)
class _Segment:
    offset: int
    data: bytes
    sent_at: float
    resent: bool = False
    held: bool = False  # the peer said it holds this (an ACK range)

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


@dataclass
class SessionStats:
    bytes_sent: int = 0  # application bytes sent for the first time
    bytes_received: int = 0  # application bytes delivered in order
    bytes_resent: int = 0
    duplicate_bytes: int = 0
    retransmit_timeouts: int = 0
    rtt_samples: list[float] = field(default_factory=list, repr=False)


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
    ) -> None:
        """An opener starts in OPENING with an OPEN to send; an acceptor (made from the
        peer's OPEN, whose window is ``peer_window``) starts in ACCEPTING and waits for
        :meth:`accept` or :meth:`refuse`."""
        self.role = role
        self.session_id = session_id
        self.limits = limits
        self.stats = SessionStats()
        self.outcome: Outcome | None = None
        self.reason: str | None = None
        self.error: PortalPeerError | None = None
        self._frames: list[Frame] = []
        self._app: list[AppCommand] = []
        self._events: list[Event] = []
        # send side
        self._unsent = bytearray()
        self._inflight: deque[_Segment] = deque()
        self._snd_una = 0  # lowest unacknowledged offset
        self._snd_nxt = 0  # next offset sent for the first time
        self._peer_right = 0  # the peer's right edge: we may send bytes below it
        self._eof = False  # app_eof() called
        self._fin_sent = False
        self._fin_acked = False
        self._paused = False
        # receive side
        self._rcv_nxt = 0
        self._consumed = 0
        self._advertised_right = limits.receive_window
        self._held: dict[int, bytes] = {}
        self._held_bytes = 0
        self._peer_final: int | None = None
        self._fin_delivered = False
        self._ack_needed = False
        self._ack_deadline: float | None = None  # a delayed ACK is due then
        self._unacked_bytes = 0  # in-order bytes received since the last ACK
        # timers
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._rto = limits.initial_rto
        self._rto_deadline: float | None = None
        self._timed: tuple[int, float] | None = None  # (end offset, sent at) of an RTT probe
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
            self._frames.append(Open(session_id, limits.receive_window))
            self._arm_rto(now)
        else:
            self.state = State.ACCEPTING
            self._peer_right = peer_window if peer_window is not None else 0
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
        return self._rto

    @property
    def buffered_to_send(self) -> int:
        """Bytes from the application not yet acknowledged (held for resending)."""
        return len(self._unsent) + self._snd_nxt - self._snd_una

    @property
    def buffered_received(self) -> int:
        """Bytes held for the local application: written but not consumed, plus held past a
        gap. Never more than the receive window."""
        return self._rcv_nxt - self._consumed + self._held_bytes

    # -- application inputs -----------------------------------------------------------

    def app_data(self, data: bytes, now: float) -> None:
        """Bytes the local socket produced. Raises PortalLocalError after :meth:`app_eof`,
        on an acceptor before :meth:`accept`, or once terminal. Then drain."""
        self._require_app("app_data")
        if self._eof:
            raise PortalLocalError("app_data after app_eof")
        if not data:
            return
        self._unsent += data
        self._transmit(now)
        if not self._paused and self.buffered_to_send >= self.limits.send_buffer:
            self._paused = True
            self._app.append(PauseReading())

    def app_eof(self, now: float) -> None:
        """The local socket's read side ended: FIN follows the last byte. Raises
        PortalLocalError if called twice or in a state without an application. Then drain."""
        self._require_app("app_eof")
        if self._eof:
            raise PortalLocalError("app_eof called twice")
        self._eof = True
        self._transmit(now)

    def app_reset(self, now: float, reason: str = "the local connection was reset") -> None:
        """The local socket was reset or lost: RST to the peer, the session fails. A no-op
        once terminal (the socket may report its loss after the session ended). Then drain."""
        if self.terminal:
            return
        self._fail(
            Outcome.RESET_LOCALLY, reason, reset=ResetReason.APP_RESET, close_app=False, now=now
        )

    def app_consumed(self, count: int, now: float) -> None:
        """The local socket accepted ``count`` more of the bytes written to it; the window
        moves on. Raises PortalLocalError for more than was written. Then drain."""
        if count < 0 or self._consumed + count > self._rcv_nxt:
            raise PortalLocalError(
                f"app_consumed({count}): only {self._rcv_nxt - self._consumed} bytes unconsumed"
            )
        if self.terminal or not count:
            return
        self._consumed += count
        right = self._right_edge()
        open_before = self._advertised_right - self._rcv_nxt
        if right - self._advertised_right >= self.limits.receive_window // 4 or (
            open_before < MAX_CHUNK and right > self._advertised_right
        ):
            self._ack_needed = True

    def accept(self, now: float) -> None:
        """Acceptor: the TCP connection is up; OPEN_OK goes out and data may flow."""
        if self.state is not State.ACCEPTING:
            raise PortalLocalError(f"accept() in state {self.state.value}")
        self.state = State.OPEN
        self._frames.append(OpenOk(self.session_id, self.limits.receive_window))
        self._events.append(Opened())
        self._last_heard = now
        self._transmit(now)

    def refuse(self, reason: RefuseReason, text: str, now: float) -> None:
        """Acceptor: the session cannot be served (connection refused, not allowed...)."""
        if self.state is not State.ACCEPTING:
            raise PortalLocalError(f"refuse() in state {self.state.value}")
        self._frames.append(OpenRefused(self.session_id, reason, text))
        self._terminate(State.FAILED, Outcome.REFUSED, text, close_app=False, abort=False)

    def shut_down(self, reason: str, now: float) -> None:
        """The owner is going away: RST to the peer, the local socket is aborted."""
        if self.terminal:
            return
        self._fail(Outcome.SHUT_DOWN, reason, reset=ResetReason.SHUTTING_DOWN, now=now)

    def route_error(self, text: str, now: float) -> None:
        """A node on the route reported that it could not deliver a frame of this session.
        Unauthenticated: opening retries on a backed-off schedule; an open session fails
        only if the peer stays silent for ``route_grace``. Then re-read the deadline."""
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
        violation resets and fails the session. Then drain and re-read the deadline."""
        if frame.session != self.session_id:
            raise PortalLocalError(f"frame for session {frame.session} given to {self.session_id}")
        if self.terminal:
            self._after_end(frame)
            return
        self._last_heard = now
        self._route_deadline = None
        try:
            self._handle(frame, now)
        except PortalPeerError as exc:
            self.error = exc
            self._fail(Outcome.PROTOCOL_ERROR, exc.reason, reset=exc.code, now=now)
            return
        if not self.terminal:
            self._check_closed(now)
            self._update_waiting(now)

    def _handle(self, frame: Frame, now: float) -> None:
        acceptor = self.role is Role.ACCEPTOR
        if isinstance(frame, Data):
            if self.state is State.ACCEPTING:
                raise _violation("DATA before the session was accepted")
            self._receive_data(frame, now)
        elif isinstance(frame, Ack):
            if self.state is State.ACCEPTING:
                raise _violation("ACK before the session was accepted")
            if self.state is State.OPENING:
                self._opened(now)  # the OPEN_OK was lost, but the acceptor is talking
            self._receive_ack(frame, now)
        elif isinstance(frame, Fin):
            if self.state is State.ACCEPTING:
                raise _violation("FIN before the session was accepted")
            self._receive_fin(frame)
        elif isinstance(frame, Ping):
            self._frames.append(Pong(self.session_id, frame.nonce))
            if self.state is State.OPEN:
                self._ack_needed = True  # the window, for a sender probing a closed one
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
        elif isinstance(frame, Open):
            if not acceptor:
                raise _violation("OPEN sent to the opener")
            if self.state is State.OPEN:
                # Our OPEN_OK was lost: say it again (the window it grants is unchanged).
                self._frames.append(OpenOk(self.session_id, self.limits.receive_window))
        elif isinstance(frame, OpenOk):
            if acceptor:
                raise _violation("OPEN_OK sent to the acceptor")
            if self.state is State.OPENING:
                self._peer_right = max(self._peer_right, frame.window)
                self._opened(now)
                self._ack_needed = True  # tells the acceptor its OPEN_OK arrived
                self._transmit(now)
        else:  # OpenRefused
            if acceptor or self.state is not State.OPENING:
                raise _violation("OPEN_REFUSED for a session that is not opening")
            self._terminate(
                State.FAILED,
                Outcome.REFUSED,
                f"refused by the outlet ({frame.reason.name.lower()}): {frame.text}",
                close_app=True,
                abort=False,
            )

    def _opened(self, now: float) -> None:
        self.state = State.OPEN
        self._open_retry_at = None
        self._rto_deadline = None
        self._events.append(Opened())

    def _receive_data(self, frame: Data, now: float) -> None:
        end = frame.end
        if self._peer_final is not None and end > self._peer_final:
            raise _violation(f"DATA up to {end} past the FIN at {self._peer_final}")
        if end > self._right_edge():
            raise _violation(f"DATA up to {end} past the window's edge at {self._right_edge()}")
        if end <= self._rcv_nxt:
            self._ack_needed = True  # a resend: the sender missed our ACK
            self.stats.duplicate_bytes += len(frame.data)
            return
        if frame.offset > self._rcv_nxt:
            self._ack_needed = True  # a gap: tell the sender what we hold at once
            self._hold(frame.offset, frame.data)
            return
        # In order: acknowledge every quarter window at once, else within ACK_DELAY, or
        # sooner with whatever we send first (a reply carries the ACK for free).
        self._unacked_bytes += len(frame.data)
        if self._unacked_bytes >= self.limits.receive_window // 4:
            self._ack_needed = True
        elif self._ack_deadline is None:
            self._ack_deadline = now + ACK_DELAY
        data = (
            frame.data[self._rcv_nxt - frame.offset :]
            if frame.offset < self._rcv_nxt
            else frame.data
        )
        self.stats.duplicate_bytes += len(frame.data) - len(data)
        self._deliver(data)
        while self._held:
            start = min(self._held)
            if start > self._rcv_nxt:
                break
            held = self._held.pop(start)
            self._held_bytes -= len(held)
            if start + len(held) > self._rcv_nxt:
                self._deliver(held[self._rcv_nxt - start :])
        self._deliver_fin()

    def _deliver(self, data: bytes) -> None:
        self._rcv_nxt += len(data)
        self.stats.bytes_received += len(data)
        self._app.append(WriteToApp(data))

    def _hold(self, offset: int, data: bytes) -> None:
        """Keeps data past a gap, without overlapping what is already held."""
        end = offset + len(data)
        for start in sorted(self._held):
            stop = start + len(self._held[start])
            if stop <= offset or start >= end:
                continue
            if start <= offset and stop >= end:
                self.stats.duplicate_bytes += len(data)
                return  # already held
            if start <= offset:  # overlaps our head: keep our tail
                data, offset = data[stop - offset :], stop
            elif stop >= end:  # overlaps our tail: keep our head
                data = data[: start - offset]
                end = start
            else:  # inside us: hold our head now, our tail after it
                self._hold(stop, data[stop - offset :])
                data, end = data[: start - offset], start
        if not data or len(self._held) >= MAX_HELD_SEGMENTS:
            return  # dropped: the sender resends it
        self._held[offset] = data
        self._held_bytes += len(data)

    def _receive_fin(self, frame: Fin) -> None:
        final = frame.final
        if self._peer_final is not None and final != self._peer_final:
            raise _violation(f"FIN at {final} after a FIN at {self._peer_final}")
        held_end = max((s + len(d) for s, d in self._held.items()), default=0)
        if final < self._rcv_nxt or final < held_end:
            raise _violation(f"FIN at {final} before data already received")
        if final > self._right_edge():
            raise _violation(f"FIN at {final} past the window's edge")
        self._peer_final = final
        self._ack_needed = True
        self._deliver_fin()

    def _deliver_fin(self) -> None:
        if self._peer_final == self._rcv_nxt and not self._fin_delivered:
            self._fin_delivered = True
            self._app.append(ShutdownAppWrite())

    def _receive_ack(self, frame: Ack, now: float) -> None:
        if frame.acked > self._snd_nxt:
            raise _violation(f"ACK of {frame.acked} bytes, only {self._snd_nxt} were sent")
        if frame.fin and not self._fin_sent:
            raise _violation("ACK of a FIN that was never sent")
        if frame.fin and frame.acked != self._snd_nxt:
            raise _violation("ACK of the FIN before all data was acknowledged")
        progress = frame.acked > self._snd_una
        if progress:
            self._snd_una = frame.acked
            while self._inflight and self._inflight[0].end <= frame.acked:
                self._inflight.popleft()
            if self._inflight and self._inflight[0].offset < frame.acked:
                first = self._inflight[0]
                first.data = first.data[frame.acked - first.offset :]
                first.offset = frame.acked
            if self._timed is not None and self._timed[0] <= frame.acked:
                self._sample_rtt(now - self._timed[1])
                self._timed = None
        if frame.ranges:
            for segment in self._inflight:
                segment.held = any(
                    start <= segment.offset and segment.end <= end for start, end in frame.ranges
                )
        self._peer_right = max(self._peer_right, frame.acked + frame.window)
        if frame.fin and not self._fin_acked:
            self._fin_acked = True
            progress = True
        if progress:
            self._rto = self._computed_rto()  # new acknowledgements end the backoff
            self._rto_deadline = None
            if self._outstanding():
                self._arm_rto(now)
        self._transmit(now)
        if self._paused and self.buffered_to_send <= self.limits.send_buffer // 2:
            self._paused = False
            self._app.append(ResumeReading())

    def _after_end(self, frame: Frame) -> None:
        """A closed session that lingers still acknowledges a FIN the peer sends again."""
        if self.state is not State.CLOSED:
            return
        if isinstance(frame, Fin | Data):
            self._ack_needed = True
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
                self._ack_deadline,
                self._rto_deadline,
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
        if self.state is State.CLOSED:
            if self._linger_until is not None and now >= self._linger_until:
                self._linger_until = None
            return
        if self.terminal:
            return
        if self._ack_deadline is not None and now >= self._ack_deadline:
            self._ack_needed = True
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
            self._frames.append(Open(self.session_id, self.limits.receive_window))
            self._sent(now)
        if self._rto_deadline is not None and now >= self._rto_deadline:
            self._retransmit(now)
        keepalive = self._keepalive_deadline()
        if keepalive is not None and now >= keepalive:
            self._ping(now)
        self._update_waiting(now)

    def _retransmit(self, now: float) -> None:
        self.stats.retransmit_timeouts += 1
        self._rto = min(self._rto * 2, self.limits.max_rto)
        self._timed = None  # Karn: nothing resent is timed
        if self.state is State.OPENING:
            self._frames.append(Open(self.session_id, self.limits.receive_window))
        for segment in self._inflight:
            if not segment.held:
                segment.resent = True
                segment.sent_at = now
                self.stats.bytes_resent += len(segment.data)
                self._frames.append(Data(self.session_id, segment.offset, segment.data))
        if self._fin_sent and not self._fin_acked and not self._unsent:
            self._frames.append(Fin(self.session_id, self._snd_nxt))
        window_closed = self._unsent and self._snd_nxt >= self._peer_right
        if self.state is State.OPEN and (window_closed or self._ping_outstanding):
            self._ping(now)  # probes a closed window (the answer carries an ACK)
        self._sent(now)
        self._rto_deadline = None
        if self._outstanding():
            self._arm_rto(now)

    def _ping(self, now: float) -> None:
        self._ping_nonce += 1
        self._ping_outstanding = True
        self._frames.append(Ping(self.session_id, self._ping_nonce))
        self._sent(now)
        if self._rto_deadline is None:
            self._arm_rto(now)

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
            or self._inflight
            or (self._fin_sent and not self._fin_acked)
            or self._ping_outstanding
            or (self._unsent and self._snd_nxt >= self._peer_right and self.state is State.OPEN)
        )

    def _update_waiting(self, now: float) -> None:
        if self.terminal:
            return
        if self._outstanding():
            if self._waiting_since is None:
                self._waiting_since = now
            if self._rto_deadline is None:
                self._arm_rto(now)
        else:
            self._waiting_since = None
            self._rto_deadline = None

    def _arm_rto(self, now: float) -> None:
        self._rto_deadline = now + self._rto

    def _sample_rtt(self, rtt: float) -> None:
        self.stats.rtt_samples.append(rtt)
        del self.stats.rtt_samples[:-16]
        if self._srtt is None:
            self._srtt, self._rttvar = rtt, rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt

    def _computed_rto(self) -> float:
        if self._srtt is None:
            return self.limits.initial_rto
        rto = self._srtt + max(_CLOCK_GRANULARITY, 4 * self._rttvar)
        return min(max(rto, self.limits.min_rto), self.limits.max_rto)

    # -- sending ----------------------------------------------------------------------

    def _right_edge(self) -> int:
        return self._consumed + self.limits.receive_window

    def _transmit(self, now: float) -> None:
        """Sends new data the peer's window allows, then FIN once everything is out."""
        if self.state is not State.OPEN:
            return
        sent = False
        while self._unsent:
            room = self._peer_right - self._snd_nxt
            size = min(MAX_CHUNK, len(self._unsent), room)
            if size <= 0:
                break
            if size < min(SMALL_SEGMENT, len(self._unsent)) and self._inflight:
                break  # wait for a wider window rather than send crumbs
            with memoryview(self._unsent) as view:
                data = bytes(view[:size])  # one copy (a bytearray slice would make two)
            del self._unsent[:size]
            self._inflight.append(_Segment(self._snd_nxt, data, now))
            self._frames.append(Data(self.session_id, self._snd_nxt, data))
            self._snd_nxt += size
            self.stats.bytes_sent += size
            if self._timed is None:
                self._timed = (self._snd_nxt, now)
            sent = True
        if self._eof and not self._unsent and not self._fin_sent:
            self._fin_sent = True
            self._frames.append(Fin(self.session_id, self._snd_nxt))
            sent = True
        if sent:
            self._sent(now)
            if self._rto_deadline is None:
                self._arm_rto(now)
        self._update_waiting(now)
        self._check_closed(now)

    def _sent(self, now: float) -> None:
        self._last_sent = now

    def _ack_frame(self) -> Ack:
        self._ack_needed = False
        self._ack_deadline = None
        self._unacked_bytes = 0
        right = self._right_edge()
        self._advertised_right = right
        ranges: list[tuple[int, int]] = []
        for start in sorted(self._held):
            end = start + len(self._held[start])
            if ranges and ranges[-1][1] == start:
                ranges[-1] = (ranges[-1][0], end)
            elif len(ranges) < MAX_SACK_RANGES:
                ranges.append((start, end))
            else:
                break
        return Ack(
            self.session_id,
            self._rcv_nxt,
            right - self._rcv_nxt,
            self._fin_delivered,
            tuple(ranges),
        )

    # -- ending -----------------------------------------------------------------------

    def _check_closed(self, now: float) -> None:
        if self.state is State.OPEN and self._fin_acked and self._fin_delivered:
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
        self._rto_deadline = self._route_deadline = self._open_retry_at = None
        self._waiting_since = None
        if state is State.FAILED:
            self._unsent.clear()
            self._inflight.clear()
            self._held.clear()
            self._held_bytes = 0
            self._ack_needed = False
            self._ack_deadline = None
        if close_app:
            self._app.append(CloseApp(reason, abort))
        self._events.append(Closed(outcome, reason))

    def _require_app(self, what: str) -> None:
        if self.terminal:
            raise PortalLocalError(f"{what}: the session is {self.state.value} ({self.reason})")
        if self.state is State.ACCEPTING:
            raise PortalLocalError(f"{what} before accept()")

    # -- outputs ----------------------------------------------------------------------

    def commands(self) -> list[Command]:
        """What to do now: commands for the local socket in order, then frames to send."""
        out: list[Command] = list(self._app)
        self._app.clear()
        if self._wants_ack():
            self._frames.append(self._ack_frame())
        if self._frames:
            out.append(SendFrames(tuple(self._frames)))
            self._frames.clear()
        return out

    def take_frames(self) -> list[Frame]:
        """Only the frames to send (for a multiplexer that packs many sessions' frames)."""
        if self._wants_ack():
            self._frames.append(self._ack_frame())
        frames, self._frames = self._frames, []
        return frames

    def _wants_ack(self) -> bool:
        """An ACK is due now, or one is pending and can ride with frames we send anyway."""
        if self.state is State.FAILED:
            return False
        return self._ack_needed or (self._ack_deadline is not None and bool(self._frames))

    def take_app_commands(self) -> list[AppCommand]:
        commands, self._app = self._app, []
        return commands

    def events(self) -> list[Event]:
        events, self._events = self._events, []
        return events


def _violation(reason: str) -> PortalPeerError:
    return PortalPeerError(ResetReason.PROTOCOL_ERROR, reason)
