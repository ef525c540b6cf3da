"""The sending direction of a portal session, sans-IO: numbered bytes, kept until acknowledged.

:class:`SendHalf` holds what the local application wrote: bytes not yet sent (``unsent``),
and bytes sent and not yet acknowledged (``inflight``, as the DATA segments they went in,
kept for resending). It sends only below the peer's right edge (its window), cuts the
stream into segments of at most :data:`~meshkey.wire.portal.MAX_CHUNK`, and sends FIN
after the last byte once the application ended its direction. An ACK moves the
acknowledged offset and the right edge on; its ranges mark segments the peer holds past a
gap, so a timeout resends only the others. What it holds is bounded by its ``capacity``
(the application is told to pause there): ``limits.first_send_buffer`` at first, doubling
up to ``send_buffer`` each time the peer's window moved on by a whole buffer (its reader
consumed that much) while ours had filled, drawn from the session's
:class:`~meshkey.portal.budget.Credit`; a peer that reads nothing keeps it at its first size.

:class:`RetransmitTimer` is the retransmission timeout: RFC 6298's RTO from a
:class:`~meshkey.timing.RttEstimate` (one segment timed at a time; Karn: nothing resent is
timed), doubled on each expiry up to ``max_rto``, back to the estimate on progress.

Both write into the session's frame list; the session decides when they run (see
:mod:`meshkey.portal.session` for the protocol and its states).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from meshkey.portal.budget import Credit, unlimited_credit
from meshkey.portal.contract import PortalLocalError, SessionLimits, SessionStats, violation
from meshkey.timing import RttEstimate
from meshkey.wire.portal import MAX_CHUNK, Ack, Data, Fin, Frame

#: Below this many bytes of window, a sender with more to send waits for a wider one
#: (unless nothing is in flight), so a slow reader does not turn the stream into crumbs.
SMALL_SEGMENT = 4096
#: RFC 6298's clock granularity G, the least the variance term adds to SRTT.
CLOCK_GRANULARITY = 0.001


@dataclass(slots=True)
class Segment:
    offset: int
    data: bytes
    held: bool = False  # the peer said it holds this (an ACK range)

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


class RetransmitTimer:
    """The RTO and its deadline: RFC 6298 from the samples, doubled on each expiry."""

    __slots__ = ("deadline", "estimate", "limits", "rto")

    def __init__(self, limits: SessionLimits) -> None:
        self.limits = limits
        self.estimate = RttEstimate()
        self.rto = limits.initial_rto
        self.deadline: float | None = None

    def arm(self, now: float) -> None:
        self.deadline = now + self.rto

    def arm_if_idle(self, now: float) -> None:
        if self.deadline is None:
            self.arm(now)

    def disarm(self) -> None:
        self.deadline = None

    def sample(self, rtt: float) -> None:
        self.estimate.add(rtt)

    def progress(self) -> None:
        """New acknowledgements end the backoff."""
        limits = self.limits
        self.rto = self.estimate.timeout(
            default=limits.initial_rto,
            minimum=limits.min_rto,
            maximum=limits.max_rto,
            granularity=CLOCK_GRANULARITY,
        )

    def back_off(self) -> None:
        self.rto = min(self.rto * 2, self.limits.max_rto)


class SendHalf:
    """This end's direction of a session; frames go to ``frames`` (the session's list)."""

    def __init__(
        self,
        session_id: int,
        limits: SessionLimits,
        stats: SessionStats,
        frames: list[Frame],
        credit: Credit | None = None,
    ) -> None:
        self.session_id = session_id
        self.limits = limits
        self.stats = stats
        self._frames = frames
        self._credit = credit if credit is not None else unlimited_credit()
        self.capacity = limits.first_send_buffer  # the application pauses at this
        self._grown_at = 0  # ``peer_right`` when the capacity last grew (or was refused)
        self._filled = False  # the buffer filled since then: it is what limits us
        self.unsent = bytearray()
        self.inflight: deque[Segment] = deque()
        self.una = 0  # lowest unacknowledged offset
        self.nxt = 0  # next offset sent for the first time
        self.peer_right = 0  # the peer's right edge: we may send bytes below it
        self.eof = False  # the application ended its direction
        self.fin_sent = False
        self.fin_acked = False
        self.paused = False  # the application was told to stop (PauseReading)
        self._timed: tuple[int, float] | None = None  # (end offset, sent at) of an RTT probe

    def first_window(self, window: int) -> None:
        """The peer's first grant (its OPEN or OPEN_OK): growth counts from there."""
        self.peer_right = max(self.peer_right, window)
        self._grown_at = self.peer_right

    @property
    def buffered(self) -> int:
        """Bytes from the application not yet acknowledged (held for resending)."""
        return len(self.unsent) + self.nxt - self.una

    @property
    def window_closed(self) -> bool:
        """Bytes wait, and the peer's window has no room for them."""
        return bool(self.unsent) and self.nxt >= self.peer_right

    @property
    def awaiting_ack(self) -> bool:
        """Sent data or a FIN waits for the peer's acknowledgement."""
        return bool(self.inflight) or (self.fin_sent and not self.fin_acked)

    # -- inputs -------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.eof:
            raise PortalLocalError("app_data after app_eof")
        self.unsent += data

    def end(self) -> None:
        if self.eof:
            raise PortalLocalError("app_eof called twice")
        self.eof = True

    def pause_if_full(self) -> bool:
        """True when the application must now stop producing (the buffer is full)."""
        if not self.paused and self.buffered >= self.capacity:
            self.paused = True
            self._filled = True
            return True
        return False

    def resume_if_drained(self) -> bool:
        """True when the application may produce again (half the buffer was acknowledged)."""
        if self.paused and self.buffered <= self.capacity // 2:
            self.paused = False
            return True
        return False

    def send_new(self, now: float) -> bool:
        """Sends new data the peer's window allows, then FIN once everything is out; True
        if anything was sent."""
        sent = False
        unsent = self.unsent
        while unsent:
            size = min(MAX_CHUNK, len(unsent), self.peer_right - self.nxt)
            if size <= 0:
                break
            if size < min(SMALL_SEGMENT, len(unsent)) and self.inflight:
                break  # wait for a wider window rather than send crumbs
            with memoryview(unsent) as view:
                data = bytes(view[:size])  # one copy (a bytearray slice would make two)
            del unsent[:size]
            self.inflight.append(Segment(self.nxt, data))
            self._frames.append(Data(self.session_id, self.nxt, data))
            self.nxt += size
            self.stats.bytes_sent += size
            if self._timed is None:
                self._timed = (self.nxt, now)
            sent = True
        if self.eof and not unsent and not self.fin_sent:
            self.fin_sent = True
            self._frames.append(Fin(self.session_id, self.nxt))
            sent = True
        return sent

    def on_ack(self, frame: Ack, now: float) -> tuple[bool, float | None]:
        """The peer's ACK: whether it acknowledged anything new, and the RTT it measured
        (None if it ended no timed segment). PortalPeerError if it cannot be true."""
        if frame.acked > self.nxt:
            raise violation(f"ACK of {frame.acked} bytes, only {self.nxt} were sent")
        if frame.fin and not self.fin_sent:
            raise violation("ACK of a FIN that was never sent")
        if frame.fin and frame.acked != self.nxt:
            raise violation("ACK of the FIN before all data was acknowledged")
        rtt = None
        progress = frame.acked > self.una
        if progress:
            self.una = frame.acked
            inflight = self.inflight
            while inflight and inflight[0].end <= frame.acked:
                inflight.popleft()
            if inflight and inflight[0].offset < frame.acked:
                first = inflight[0]
                first.data = first.data[frame.acked - first.offset :]
                first.offset = frame.acked
            if self._timed is not None and self._timed[0] <= frame.acked:
                rtt = now - self._timed[1]
                self._timed = None
        if frame.ranges:
            for segment in self.inflight:
                segment.held = any(
                    start <= segment.offset and segment.end <= end for start, end in frame.ranges
                )
        self.peer_right = max(self.peer_right, frame.acked + frame.window)
        self._grow()
        if frame.fin and not self.fin_acked:
            self.fin_acked = True
            progress = True
        return progress, rtt

    def _grow(self) -> None:
        """The peer's window moved on by a whole buffer (its reader consumed that much; an
        acknowledgement alone only says it arrived) while ours had filled: it keeps up, so
        may we."""
        if self.peer_right - self._grown_at < self.capacity:
            return
        if self._filled and self.capacity < self.limits.send_buffer:
            wanted = min(self.capacity, self.limits.send_buffer - self.capacity)
            self.capacity += self._credit.grow(wanted)
        self._grown_at = self.peer_right
        self._filled = False

    def resend(self) -> None:
        """The retransmission timeout expired: every segment the peer does not hold goes
        again, and the FIN if it is unacknowledged."""
        self._timed = None  # Karn: nothing resent is timed
        for segment in self.inflight:
            if not segment.held:
                self.stats.bytes_resent += len(segment.data)
                self._frames.append(Data(self.session_id, segment.offset, segment.data))
        if self.fin_sent and not self.fin_acked and not self.unsent:
            self._frames.append(Fin(self.session_id, self.nxt))

    def clear(self) -> None:
        """The session failed: nothing will be sent again."""
        self.unsent.clear()
        self.inflight.clear()
