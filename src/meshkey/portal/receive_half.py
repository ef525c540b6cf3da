"""The receiving direction of a portal session, sans-IO: in-order delivery, a window, ACKs.

:class:`ReceiveHalf` delivers the peer's bytes to the local application in order
(``WriteToApp``), holds what arrives past a gap (at most :data:`MAX_HELD_SEGMENTS`
segments, never beyond the window) until the gap fills, drops duplicates, and turns the
peer's FIN into ``ShutdownAppWrite`` once every byte before it was written. It grants the
window: the right edge is ``consumed + window``, where ``consumed`` is what the local socket
accepted. The window starts at ``limits.first_window`` and doubles (up to
``receive_window``) each time the local socket consumed a whole window within
:data:`GROWTH_PERIOD`: growth follows a reader that keeps up with a fast sender (a reader
that stops, or a trickle, leaves the window as it is), is drawn from the session's
:class:`~meshkey.portal.budget.Credit` (which may grant less, or nothing), and never shrinks
(the right edge already promised stays promised).

ACK policy: in-order data is acknowledged every quarter (current) window at once, otherwise
within :data:`ACK_DELAY` or with the next frame the session sends; gaps, duplicates, FIN and
PING are acknowledged at once; a window that opened by a quarter (or from almost shut) is
announced at once. Commands go to ``app`` (the session's list); :meth:`ack_frame` builds
the ACK when the session sends one (see :mod:`meshkey.portal.session`).
"""

from __future__ import annotations

from meshkey.portal.budget import Credit, unlimited_credit
from meshkey.portal.contract import (
    AppCommand,
    PortalLocalError,
    SessionLimits,
    SessionStats,
    ShutdownAppWrite,
    WriteToApp,
    violation,
)
from meshkey.wire.portal import MAX_CHUNK, MAX_SACK_RANGES, Ack, Data, Fin

#: The longest an in-order DATA waits for its ACK (hoping to ride on a reply). Senders need
#: ACKs only to free their buffers and move their windows, and they get one every quarter
#: window at once, so a few milliseconds cost a bulk transfer nothing, and spare a
#: request/response exchange one message each way.
ACK_DELAY = 0.005
#: Out-of-order segments a receiver holds at most (bytes are bounded by the window anyway).
MAX_HELD_SEGMENTS = 64
#: A window consumed whole within this many seconds doubles. Whether the window is what
#: holds the sender back cannot be seen from here (a window-limited sender turns it over
#: about once per round trip, one that has little to send far more slowly), so the rate
#: decides: at 64 KiB it takes a flow of 64 KB/s to grow, at 512 KiB one of 512 KB/s. A
#: flow that grows without needing to costs budget, never correctness: the budget bounds it.
GROWTH_PERIOD = 1.0


class ReceiveHalf:
    """The peer's direction of a session; commands for the socket go to ``app``."""

    def __init__(
        self,
        limits: SessionLimits,
        stats: SessionStats,
        app: list[AppCommand],
        credit: Credit | None = None,
    ) -> None:
        self.limits = limits
        self.stats = stats
        self._app = app
        self._credit = credit if credit is not None else unlimited_credit()
        self.window = limits.first_window  # what we grant beyond ``consumed`` now
        self._grown_at = 0  # ``consumed`` when the window last grew (or was last refused)
        self._grown_when: float | None = None  # and then (None: before the first byte)
        self.nxt = 0  # every byte before it was delivered
        self.consumed = 0  # what the local socket accepted of it
        self.advertised_right = self.window  # the right edge the peer knows
        self.held: dict[int, bytes] = {}  # past a gap, by offset
        self.held_bytes = 0
        self.peer_final: int | None = None  # where the peer's FIN said its bytes end
        self.fin_delivered = False
        self.ack_needed = False
        self.ack_deadline: float | None = None  # a delayed ACK is due then
        self._unacked_bytes = 0  # in-order bytes received since the last ACK

    @property
    def right_edge(self) -> int:
        return self.consumed + self.window

    @property
    def buffered(self) -> int:
        """Bytes held for the local application: written but not consumed, plus held past a
        gap. Never more than the receive window."""
        return self.nxt - self.consumed + self.held_bytes

    # -- inputs -------------------------------------------------------------------------

    def on_data(self, frame: Data, now: float) -> None:
        """The peer's DATA; PortalPeerError past its FIN or the window."""
        end = frame.end
        if self.peer_final is not None and end > self.peer_final:
            raise violation(f"DATA up to {end} past the FIN at {self.peer_final}")
        if end > self.right_edge:
            raise violation(f"DATA up to {end} past the window's edge at {self.right_edge}")
        if end <= self.nxt:
            self.ack_needed = True  # a resend: the sender missed our ACK
            self.stats.duplicate_bytes += len(frame.data)
            return
        if frame.offset > self.nxt:
            self.ack_needed = True  # a gap: tell the sender what we hold at once
            self._hold(frame.offset, frame.data)
            return
        # In order: acknowledge every quarter window at once, else within ACK_DELAY, or
        # sooner with whatever we send first (a reply carries the ACK for free).
        self._unacked_bytes += len(frame.data)
        if self._unacked_bytes >= self.window // 4:
            self.ack_needed = True
        elif self.ack_deadline is None:
            self.ack_deadline = now + ACK_DELAY
        data = frame.data[self.nxt - frame.offset :] if frame.offset < self.nxt else frame.data
        self.stats.duplicate_bytes += len(frame.data) - len(data)
        self._deliver(data)
        held = self.held
        while held:
            start = min(held)
            if start > self.nxt:
                break
            chunk = held.pop(start)
            self.held_bytes -= len(chunk)
            if start + len(chunk) > self.nxt:
                self._deliver(chunk[self.nxt - start :])
        self._deliver_fin()

    def on_fin(self, frame: Fin) -> None:
        """The peer's FIN; PortalPeerError if it contradicts what arrived or was granted."""
        final = frame.final
        if self.peer_final is not None and final != self.peer_final:
            raise violation(f"FIN at {final} after a FIN at {self.peer_final}")
        held_end = max((s + len(d) for s, d in self.held.items()), default=0)
        if final < self.nxt or final < held_end:
            raise violation(f"FIN at {final} before data already received")
        if final > self.right_edge:
            raise violation(f"FIN at {final} past the window's edge")
        self.peer_final = final
        self.ack_needed = True
        self._deliver_fin()

    def check_consumed(self, count: int) -> None:
        """PortalLocalError unless the socket can have accepted ``count`` more bytes."""
        if count < 0 or self.consumed + count > self.nxt:
            raise PortalLocalError(
                f"app_consumed({count}): only {self.nxt - self.consumed} bytes unconsumed"
            )

    def on_consumed(self, count: int, now: float) -> None:
        """The socket accepted ``count`` more bytes (checked): the window moves on, and
        grows when a whole window was consumed within :data:`GROWTH_PERIOD`."""
        self.consumed += count
        if self._grown_when is None:
            self._grown_when = now
        elif self.consumed - self._grown_at >= self.window:
            if now - self._grown_when <= GROWTH_PERIOD and self.window < self.limits.receive_window:
                wanted = min(self.window, self.limits.receive_window - self.window)
                self.window += self._credit.grow(wanted)
            self._grown_at = self.consumed
            self._grown_when = now
        right = self.right_edge
        open_before = self.advertised_right - self.nxt
        if right - self.advertised_right >= self.window // 4 or (
            open_before < MAX_CHUNK and right > self.advertised_right
        ):
            self.ack_needed = True

    def due(self, now: float) -> None:
        """The delayed ACK's deadline passed (if it did)."""
        if self.ack_deadline is not None and now >= self.ack_deadline:
            self.ack_needed = True

    def wants_ack(self, sending: bool) -> bool:
        """An ACK is due now, or one is pending and can ride with frames sent anyway."""
        return self.ack_needed or (self.ack_deadline is not None and sending)

    def ack_frame(self, session_id: int) -> Ack:
        self.ack_needed = False
        self.ack_deadline = None
        self._unacked_bytes = 0
        right = self.right_edge
        self.advertised_right = right
        ranges: list[tuple[int, int]] = []
        for start in sorted(self.held):
            end = start + len(self.held[start])
            if ranges and ranges[-1][1] == start:
                ranges[-1] = (ranges[-1][0], end)
            elif len(ranges) < MAX_SACK_RANGES:
                ranges.append((start, end))
            else:
                break
        return Ack(session_id, self.nxt, right - self.nxt, self.fin_delivered, tuple(ranges))

    def clear(self) -> None:
        """The session failed: nothing more is held or acknowledged."""
        self.held.clear()
        self.held_bytes = 0
        self.ack_needed = False
        self.ack_deadline = None

    # -- delivery -----------------------------------------------------------------------

    def _deliver(self, data: bytes) -> None:
        self.nxt += len(data)
        self.stats.bytes_received += len(data)
        self._app.append(WriteToApp(data))

    def _deliver_fin(self) -> None:
        if self.peer_final == self.nxt and not self.fin_delivered:
            self.fin_delivered = True
            self._app.append(ShutdownAppWrite())

    def _hold(self, offset: int, data: bytes) -> None:
        """Keeps data past a gap, without overlapping what is already held."""
        end = offset + len(data)
        for start in sorted(self.held):
            stop = start + len(self.held[start])
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
        if not data or len(self.held) >= MAX_HELD_SEGMENTS:
            return  # dropped: the sender resends it
        self.held[offset] = data
        self.held_bytes += len(data)
