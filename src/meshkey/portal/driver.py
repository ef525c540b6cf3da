"""Asyncio glue for one :class:`~meshkey.portal.mux.Multiplexer`: a worker, a sender, a timer.

A :class:`MuxDriver` registers an inline worker (``/service/_portal.<hex>``) that decodes
each portal packet and hands its frames to the multiplexer, so a packet is handled in the
task that delivered it and never waits: nothing the worker does blocks (writes to local
sockets are buffered by their transports, bounded by the session windows). Commands for
local sockets are applied at once; packets are pulled by one sender task, which packs the
next one only when ``router.route`` took the last, so a slow hop makes only this driver's
sender wait, and what waits meanwhile is frames sharing the sessions' own bytes (bounded by
their credit), not packed copies. One :class:`~meshkey.timing.DeadlineTimer` follows the
multiplexer's deadline (re-armed only when it changes, never fired early).

The local end of each session is an :class:`AppEnd`: a TCP socket
(:class:`~meshkey.portal.socket_end.SocketEnd`) or an in-process stream
(:mod:`meshkey.portal.stream`). Socket ends keep water marks: the transport's write buffer
pauses at :data:`~meshkey.portal.socket_end.WRITE_HIGH_WATER`, and bytes count as consumed
(opening the session's window) only once they left that buffer, so a slow local reader
closes the window instead of growing a buffer; reading stops when the session says
``PauseReading`` (its send buffer is full) and resumes with ``ResumeReading``. A socket end
reads into a buffer shared by every socket end of the thread (a read is copied out in the
callback that filled it), up to :data:`READ_SIZE` but never more than the session's send
buffer has room for (at least :data:`SMALL_READ`): large reads make fewer, larger messages
(the per-message cost of routing and the hop is what limits throughput), and the room limit
keeps a session's buffer within its capacity + :data:`SMALL_READ`.

When sessions end, what they held is freed, and :func:`meshkey.portal.memory.give_back_soon`
asks the allocator to return it to the system (glibc keeps freed heap pages otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

from meshkey.log import EventLogger
from meshkey.portal.budget import PortalBudget
from meshkey.portal.memory import give_back_soon
from meshkey.portal.mux import (
    MAX_SESSIONS,
    Multiplexer,
    SessionEvent,
    SessionRequested,
    ToApp,
)
from meshkey.portal.session import (
    DEFAULT_LIMITS,
    CloseApp,
    Closed,
    Opened,
    Outcome,
    PauseReading,
    PortalLocalError,
    ResumeReading,
    Role,
    SessionLimits,
    ShutdownAppWrite,
    WriteToApp,
)
from meshkey.routing.address import Address, Route, ServiceAddress
from meshkey.routing.message import Message
from meshkey.routing.router import Router
from meshkey.timing import DeadlineTimer
from meshkey.wire.errors import WireError
from meshkey.wire.portal import RefuseReason, ResetReason, decode_packet

log = EventLogger("portal")

#: Every multiplexer's worker is ``/service/_portal.<hex>``: a node's own plumbing (no user
#: service may take a name starting with ``_``), and the only worker that sends portal packets.
PORTAL_WORKER_PREFIX = "_portal."


def is_portal_worker(address: Address) -> bool:
    """Is ``address`` a portal multiplexer's worker (on whichever node it names)?"""
    return isinstance(address, ServiceAddress) and address.name.startswith(PORTAL_WORKER_PREFIX)


class AppEnd(Protocol):
    """The local end of one session, as the driver drives it."""

    def deliver(self, data: bytes) -> None:
        """Bytes from the peer, in order; report consumption through the driver."""

    def end_of_data(self) -> None:
        """The peer's direction ended (half-close)."""

    def terminate(self, outcome: Outcome, reason: str, abort: bool) -> None:
        """The session ended (``outcome``, ``reason``): close gracefully, or abort (reset)."""

    def hold_input(self) -> None:
        """Stop producing bytes for the session (its send buffer is full)."""

    def release_input(self) -> None:
        """Produce bytes again."""

    def opened(self) -> None:
        """The session is open (the far end accepted it)."""


@dataclass
class PortalCounters:
    sessions_total: int = 0
    sessions_failed: int = 0
    bytes_out: int = 0  # from local sockets into sessions
    bytes_in: int = 0  # from sessions into local sockets
    bad_packets: int = 0
    sessions_refused: int = 0  # OPENs refused because a bound was reached (TOO_MANY)
    last_error: str | None = None


class MuxDriver:
    """One multiplexer on the router. ``route`` is where packets go (an opener's fixed
    route; an acceptor follows the return route of the latest packet).

    Each input goes to the multiplexer, then :meth:`pump` drains it: commands to the local
    ends and the sender, events to the log and the counters, then the timer follows the
    new deadline. A local end (or a callback) that raises is logged and costs nothing else:
    the rest of the drained output is still handled and the timer still re-armed."""

    def __init__(
        self,
        router: Router,
        role: Role,
        *,
        route: Route = (),
        label: str,
        limits: SessionLimits = DEFAULT_LIMITS,
        max_sessions: int = MAX_SESSIONS,
        counters: PortalCounters | None = None,
        on_requested: Callable[[MuxDriver, int], None] | None = None,
        on_idle: Callable[[MuxDriver], None] | None = None,
        rng: random.Random | None = None,
        route_keepalive: bool = False,
        mux: Multiplexer | None = None,
        budget: PortalBudget | None = None,
        owner: Hashable = None,
    ) -> None:
        """``mux``: the core to drive; made from ``role``, ``limits``, ``max_sessions``,
        ``rng``, ``route_keepalive``, ``budget`` and ``owner`` when not given (a test gives a
        scripted one)."""
        self.router = router
        self.route = route
        self.label = label
        self._loop = asyncio.get_running_loop()
        if mux is None:
            mux = Multiplexer(
                role,
                limits=limits,
                max_sessions=max_sessions,
                rng=rng,
                route_keepalive=limits.keepalive_interval if route_keepalive else None,
                now=self._loop.time(),
                budget=budget,
                owner=owner,
            )
        self.mux = mux
        self.counters = counters or PortalCounters()
        self.worker = f"{PORTAL_WORKER_PREFIX}{secrets.token_hex(8)}"
        self._reply_to = (ServiceAddress(self.worker),)
        self._ends: dict[int, AppEnd] = {}
        self._on_requested = on_requested
        self._on_idle = on_idle
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()  # set whenever no frame waits to be sent
        self._drained.set()
        self._timer = DeadlineTimer(self._fire, self._loop)
        self._pumping = False
        self._again = False
        self.closed = False
        router.register(self.worker, self.receive, inline=True)
        self._sender = self._loop.create_task(self._send_loop(), name=f"{self.worker}:send")
        self._rearm()

    # -- sessions ---------------------------------------------------------------------

    def open_session(self, end: AppEnd) -> int:
        """Opener: a new session for ``end``; PortalLocalError when the route is full."""
        session = self.mux.open(self._loop.time())
        self._ends[session] = end
        self.counters.sessions_total += 1
        self.pump()
        return session

    def attach(self, session: int, end: AppEnd) -> None:
        """Acceptor: the local end of a requested session (before accept())."""
        self._ends[session] = end

    def accept(self, session: int) -> None:
        self.mux.accept(session, self._loop.time())
        self.counters.sessions_total += 1
        self.pump()

    def refuse(self, session: int, reason: RefuseReason, text: str) -> None:
        self._ends.pop(session, None)
        with contextlib.suppress(PortalLocalError):  # the opener gave up meanwhile
            self.mux.refuse(session, reason, text, self._loop.time())
        self.counters.last_error = text
        self.pump()

    def app_data(self, session: int, data: bytes) -> None:
        self.counters.bytes_out += len(data)
        try:
            self.mux.app_data(session, data, self._loop.time())
        except PortalLocalError:
            return  # the session ended while the socket still had bytes in flight
        self.pump()

    def app_eof(self, session: int) -> None:
        with contextlib.suppress(PortalLocalError):
            self.mux.app_eof(session, self._loop.time())
        self.pump()

    def app_reset(self, session: int, reason: str) -> None:
        self.mux.app_reset(session, self._loop.time(), reason)
        self.pump()

    def app_consumed(self, session: int, count: int) -> None:
        self.mux.app_consumed(session, count, self._loop.time())
        self.pump()

    def send_room(self, session: int) -> int:
        """Bytes the session takes before its send buffer is full (its capacity grows)."""
        core = self.mux.session(session)
        return core.send_capacity - core.buffered_to_send if core is not None else 0

    def buffered_to_send(self, session: int) -> int:
        core = self.mux.session(session)
        return core.buffered_to_send if core is not None else 0

    # -- the worker -------------------------------------------------------------------

    async def receive(self, message: Message) -> None:
        """Inline worker: a packet from the peer, or a route error for one we sent."""
        now = self._loop.time()
        if message.is_error:
            _, text = message.error()
            self.counters.last_error = f"route error: {text}"
            log.info("portal.route_error", portal=self.label, reason=text)
            self.mux.route_error(text, now)
            self.pump()
            return
        try:
            frames = decode_packet(message.payload)
        except WireError as exc:
            self.counters.bad_packets += 1
            log.warning("portal.bad_packet", portal=self.label, reason=str(exc))
            return
        self.handle_frames(frames, message.return_route)

    def handle_frames(self, frames: list[Any], return_route: Route | None = None) -> None:
        if return_route is not None and self.mux.role is Role.ACCEPTOR:
            self.route = return_route  # authenticated: follow the path it came by
        too_many = self.mux.too_many
        self.mux.frames_received(frames, self._loop.time())
        if self.mux.too_many > too_many:
            self.counters.sessions_refused += self.mux.too_many - too_many
            self.counters.last_error = self.mux.last_refusal
            log.warning(
                "portal.too_many",
                portal=self.label,
                refused=self.mux.too_many - too_many,
                reason=self.mux.last_refusal,
            )
        self.pump()

    # -- output -----------------------------------------------------------------------

    def pump(self) -> None:
        """Drains the multiplexer (re-entrant calls from app ends just ask for one more round)."""
        if self._pumping:
            self._again = True
            return
        self._pumping = True
        try:
            while True:
                self._again = False
                for command in self.mux.app_commands():
                    try:
                        self._apply(command)
                    except Exception:  # one end's failure must not lose the others' output
                        log.exception("portal.local_end_failed", portal=self.label)
                for event in self.mux.events():
                    try:
                        self._event(event)
                    except Exception:
                        log.exception("portal.event_failed", portal=self.label)
                if not self._again:
                    break
        finally:
            self._pumping = False
            self._rearm()
        if self.mux.has_packets:
            self._drained.clear()
            self._wake.set()  # the sender packs them when the route takes them
        elif not len(self.mux) and self._on_idle is not None:
            self._on_idle(self)

    def _apply(self, command: ToApp) -> None:
        end = self._ends.get(command.session)
        if end is None:
            return
        action = command.command
        if isinstance(action, WriteToApp):
            self.counters.bytes_in += len(action.data)
            end.deliver(action.data)
        elif isinstance(action, ShutdownAppWrite):
            end.end_of_data()
        elif isinstance(action, PauseReading):
            end.hold_input()
        elif isinstance(action, ResumeReading):
            end.release_input()
        elif isinstance(action, CloseApp):
            del self._ends[command.session]
            end.terminate(action.outcome, action.reason, action.abort)

    def _event(self, event: SessionEvent | SessionRequested) -> None:
        if isinstance(event, SessionRequested):
            if self._on_requested is not None:
                self._on_requested(self, event.session)
            return
        if isinstance(event.event, Opened):
            end = self._ends.get(event.session)
            if end is not None:
                end.opened()
            log.debug("portal.session_opened", portal=self.label, session=event.session)
        elif isinstance(event.event, Closed):
            self._ends.pop(event.session, None)
            give_back_soon()  # what the session held is free now
            closed = event.event
            if closed.outcome is Outcome.CLOSED:
                log.debug("portal.session_closed", portal=self.label, session=event.session)
            elif closed.outcome is Outcome.SHUT_DOWN or (
                closed.outcome is Outcome.RESET_BY_PEER
                and closed.peer_reset is ResetReason.SHUTTING_DOWN
            ):
                # An inlet or outlet going away on purpose is not a failure to shout about.
                log.info("portal.session_ended", portal=self.label, reason=closed.reason)
            else:
                self.counters.sessions_failed += 1
                self.counters.last_error = f"{closed.outcome.value}: {closed.reason}"
                log.warning(
                    "portal.session_failed",
                    portal=self.label,
                    session=event.session,
                    outcome=closed.outcome.value,
                    reason=closed.reason,
                )

    def _rearm(self) -> None:
        deadline = self.mux.next_deadline()  # also collects the sessions' output
        self._timer.follow(None if self.closed else deadline)

    def _fire(self, now: float) -> None:
        self.mux.on_timer(now)
        self.pump()

    async def _send_loop(self) -> None:
        while True:
            if self.mux.has_app_output:
                self.pump()  # what a refresh collected for the local sockets goes first
            payload = self.mux.next_packet()
            if payload is None:
                self._drained.set()
                if not self.closed and not len(self.mux) and self._on_idle is not None:
                    self._on_idle(self)  # may retire us
                if self.closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            self._drained.clear()
            if not self.route:
                continue
            try:
                await self.router.route(Message(self.route, self._reply_to, payload))
            except Exception:  # the router answers failures itself; never lose the loop
                log.exception("portal.send_failed", portal=self.label)

    # -- lifecycle --------------------------------------------------------------------

    async def close(self, reason: str, *, flush: float = 0.5) -> None:
        """Resets every session (the peer hears RST), then stops the worker and sender."""
        if self.closed:
            return
        self.mux.shut_down(reason, self._loop.time())
        self.pump()
        self.closed = True
        self._timer.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(flush):
                await self._drained.wait()
        self.retire()

    def retire_when_idle(self, then: Callable[[MuxDriver], None] | None = None) -> None:
        """Stops once its last session is gone (at once if there is none): an inlet whose
        route changed lets the sessions on the old one finish there. ``then(driver)`` runs
        after it retired."""

        def idle(driver: MuxDriver) -> None:
            driver.retire()
            if then is not None:
                then(driver)

        self._on_idle = idle
        if not len(self.mux) and not self.mux.has_packets:
            idle(self)

    def retire(self) -> None:
        """Stops at once (nothing left to say): unregisters the worker, ends the sender."""
        if not self.closed:
            give_back_soon()
        self.closed = True
        self._timer.cancel()
        self.router.unregister(self.worker)
        if self._sender is not asyncio.current_task():
            self._sender.cancel()
