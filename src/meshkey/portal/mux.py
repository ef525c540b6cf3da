"""Many portal sessions over one route, sans-IO: ids, dispatch, packing, one deadline.

A :class:`Multiplexer` is one end of a route between an inlet (the **opener**, which
allocates session ids, so the two ends never collide) and an outlet (the **acceptor**, which
keeps one multiplexer per remote inlet). Each session has its own window, so a slow session
only stops itself: the others' frames keep flowing on the same route.

Inputs take ``now`` and return nothing; outputs are drained: :meth:`Multiplexer.commands`
gives :class:`SendPacket` (a routing payload, frames of any sessions packed up to
:data:`~meshkey.wire.portal.MAX_PACKET`) and :class:`ToApp` (a command for one session's
local socket); :meth:`Multiplexer.events` gives :class:`SessionEvent` and, on an acceptor,
:class:`SessionRequested` (connect, then :meth:`accept` or :meth:`refuse`). A sender that
must wait for its route drains the two apart: :meth:`app_commands` at once, and
:meth:`next_packet` only when it can send, so what waits for a slow route is frames (which
share the bytes the sessions hold anyway), never packed copies. What waits stays bounded
however long the route is stuck and whatever the peer sends meanwhile: a DATA frame a
timeout resends while its first copy still waits is not queued twice; only the latest ACK
and PONG of each session wait (each supersedes the one before); and the multiplexer's own
answers (RSTs for unknown sessions, refused OPENs) wait at most :data:`MAX_ANSWERS` at a
time, later ones are dropped (the peer's timers cover them, as they cover a lossy path).
:meth:`next_deadline` is the earliest of all sessions', kept in a heap so thousands of
sessions cost a logarithm per change, not a scan.

Frames for a session this end does not have are answered with RST (unknown session), at
most once per session per input, and never in answer to RST or OPEN_REFUSED, so two ends
cannot bounce resets forever. An acceptor holds at most ``max_sessions`` sessions per
remote inlet (a peer cannot make it hold more); further OPENs are refused (TOO_MANY).

Every session is admitted by the node's :class:`~meshkey.portal.budget.PortalBudget` for the
multiplexer's ``owner`` (an acceptor's: the remote identity, bounded per peer; an opener's:
its inlet) and holds the :class:`~meshkey.portal.budget.Credit` it got, which its window and
send buffer grow from and which it gives back when it ends. An OPEN the budget does not
admit is refused (TOO_MANY, saying which bound); an opener's :meth:`Multiplexer.open` raises
PortalLocalError.

An opener made with ``route_keepalive`` PINGs its route (session 0) while it has no session,
so an inlet nobody uses keeps its hops, NAT mappings and secure channel alive and learns of
a broken route (a route error) before its next client does.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass

from meshkey.portal.budget import UNLIMITED, BudgetExceeded, PortalBudget
from meshkey.portal.session import (
    DEFAULT_LIMITS,
    AppCommand,
    Event,
    PortalLocalError,
    PortalSession,
    Role,
    SendFrames,
    SessionLimits,
)
from meshkey.wire.portal import (
    MAX_PACKET,
    Ack,
    Data,
    Frame,
    FrameKind,
    Open,
    OpenRefused,
    Ping,
    Pong,
    RefuseReason,
    Reset,
    ResetReason,
    frame_kind,
    pack_frames,
    take_packet,
)

#: Sessions one end holds per route (per remote inlet on an outlet): thousands of TCP
#: connections over one channel, while a peer can make it hold no more than this many
#: windows.
MAX_SESSIONS = 4096
#: The multiplexer's own answers waiting for a stuck route at most (the rest are dropped).
MAX_ANSWERS = 1024
#: Never a session: frames of session 0 are about the route itself (an idle opener's
#: keepalive PING, answered with PONG), so an inlet with no connections keeps its route
#: (hops, NAT mappings, a secure channel's learned path) alive and learns when it breaks.
ROUTE_SESSION = 0


@dataclass(frozen=True, slots=True)
class SendPacket:
    payload: bytes


@dataclass(frozen=True, slots=True)
class ToApp:
    session: int
    command: AppCommand


@dataclass(frozen=True, slots=True)
class SessionEvent:
    session: int
    event: Event


@dataclass(frozen=True, slots=True)
class SessionRequested:
    """Acceptor: the peer opened ``session``; connect, then accept() or refuse()."""

    session: int


MuxCommand = SendPacket | ToApp
MuxEvent = SessionEvent | SessionRequested


class Multiplexer:
    def __init__(
        self,
        role: Role,
        *,
        limits: SessionLimits = DEFAULT_LIMITS,
        max_sessions: int = MAX_SESSIONS,
        max_packet: int = MAX_PACKET,
        rng: random.Random | None = None,
        route_keepalive: float | None = None,
        now: float = 0.0,
        budget: PortalBudget | None = None,
        owner: Hashable = None,
    ) -> None:
        """``route_keepalive`` (an opener's): while no session is open, PING the route
        that often (sessions keep it alive themselves while there are any). ``budget``
        admits sessions for ``owner`` (none given: no bound but ``max_sessions``)."""
        self.role = role
        self.budget = budget if budget is not None else PortalBudget(UNLIMITED)
        self.owner = owner
        self.limits = limits
        self.max_sessions = max_sessions
        self.max_packet = max_packet
        self._rng = rng or random.Random()
        self._sessions: dict[int, PortalSession] = {}
        self._next_id = 1
        self._dirty: dict[int, None] = {}  # sessions that may have output (ordered set)
        self._frames: deque[Frame] = deque()  # to pack, in order: the sessions' frames
        # Packed first: the latest ACK and PONG of each session, and our own answers.
        self._small: dict[tuple[FrameKind, int], Frame] = {}
        self._answers = 0  # RSTs and refusals of ours in _small
        self._queued_data: set[tuple[int, int, int]] = set()  # (session, offset, size) in it
        self._events: list[MuxEvent] = []
        self._pending_app: list[ToApp] = []
        self._deadlines: dict[int, float] = {}
        self._heap: list[tuple[float, int]] = []
        self._route_keepalive = route_keepalive
        self._now = now
        self._idle_since: float | None = now if route_keepalive else None
        self._route_nonce = 0
        self.route_answered_at: float | None = None  # the last PONG on the route
        self.opened = 0  # sessions opened or accepted, ever
        self.refused = 0
        self.too_many = 0  # OPENs refused because a bound was reached (TOO_MANY)
        self.last_refusal: str | None = None
        self.unknown_frames = 0
        self._explained = False  # this packet's own answers said why once already

    # -- sessions ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._sessions)

    def session(self, session_id: int) -> PortalSession | None:
        return self._sessions.get(session_id)

    def sessions(self) -> list[PortalSession]:
        return list(self._sessions.values())

    @property
    def active(self) -> int:
        """Sessions not yet closed or failed."""
        return sum(1 for s in self._sessions.values() if not s.terminal)

    def open(self, now: float) -> int:
        """Opener: a new session (its OPEN is queued). PortalLocalError at ``max_sessions``."""
        if self.role is not Role.OPENER:
            raise PortalLocalError("only the opener opens sessions")
        self._now = now
        if len(self._sessions) >= self.max_sessions:
            raise PortalLocalError(f"{self.max_sessions} portal sessions are open on this route")
        try:
            credit = self.budget.open(self.owner, remote=False)
        except BudgetExceeded as exc:
            raise PortalLocalError(str(exc)) from None
        while self._next_id in self._sessions or self._next_id == 0:
            self._next_id = self._next_id % 0xFFFFFFFF + 1
        session_id = self._next_id
        self._next_id = self._next_id % 0xFFFFFFFF + 1
        self._sessions[session_id] = PortalSession(
            Role.OPENER, session_id, now, limits=self.limits, rng=self._rng, credit=credit
        )
        self.opened += 1
        self._touch(session_id)
        return session_id

    # -- inputs for one session (the session's own contract applies) ------------------

    def app_data(self, session_id: int, data: bytes, now: float) -> None:
        self._now = now
        self._get(session_id).app_data(data, now)
        self._touch(session_id)

    def app_eof(self, session_id: int, now: float) -> None:
        self._now = now
        self._get(session_id).app_eof(now)
        self._touch(session_id)

    def app_reset(self, session_id: int, now: float, reason: str) -> None:
        self._now = now
        session = self._sessions.get(session_id)
        if session is not None:
            session.app_reset(now, reason)
            self._touch(session_id)

    def app_consumed(self, session_id: int, count: int, now: float) -> None:
        self._now = now
        session = self._sessions.get(session_id)
        if session is not None:
            session.app_consumed(count, now)
            self._touch(session_id)

    def accept(self, session_id: int, now: float) -> None:
        self._now = now
        self._get(session_id).accept(now)
        self.opened += 1
        self._touch(session_id)

    def refuse(self, session_id: int, reason: RefuseReason, text: str, now: float) -> None:
        self._now = now
        self._get(session_id).refuse(reason, text, now)
        self.refused += 1
        self._touch(session_id)

    def _get(self, session_id: int) -> PortalSession:
        session = self._sessions.get(session_id)
        if session is None:
            raise PortalLocalError(f"no portal session {session_id}")
        return session

    # -- inputs for the whole route ---------------------------------------------------

    def frames_received(self, frames: list[Frame], now: float) -> None:
        """Frames from the peer (one packet's). Then drain and re-read the deadline.

        What the multiplexer answers on its own (an RST for an unknown session, a refused
        OPEN) says why only once per packet: the answers to one packet never outweigh it,
        however many frames it holds (decision 20)."""
        answered: set[int] = set()
        self._explained = False
        self._now = now
        if self._idle_since is not None:
            self._idle_since = now  # the route just carried something
        for frame in frames:
            if frame.session == ROUTE_SESSION:
                if isinstance(frame, Ping):
                    self._small[(FrameKind.PONG, ROUTE_SESSION)] = Pong(ROUTE_SESSION, frame.nonce)
                elif isinstance(frame, Pong):
                    self.route_answered_at = now
                continue  # nothing about the route is ever answered with RST
            session = self._sessions.get(frame.session)
            if session is not None:
                session.frame_received(frame, now)
                self._touch(frame.session)
            elif isinstance(frame, Open) and self.role is Role.ACCEPTOR:
                self._requested(frame, now)
            elif not isinstance(frame, Reset | OpenRefused) and frame.session not in answered:
                self.unknown_frames += 1
                answered.add(frame.session)
                text = self._explain("no such portal session")
                self._answer(Reset(frame.session, ResetReason.UNKNOWN_SESSION, text))

    def _requested(self, frame: Open, now: float) -> None:
        refusal = None
        if len(self._sessions) >= self.max_sessions:
            refusal = f"the outlet holds {self.max_sessions} sessions for this peer"
        else:
            try:
                credit = self.budget.open(self.owner, remote=True)
            except BudgetExceeded as exc:
                refusal = str(exc)
        if refusal is not None:
            self.refused += 1
            self.too_many += 1
            self.last_refusal = refusal
            text = self._explain(refusal)
            self._answer(OpenRefused(frame.session, RefuseReason.TOO_MANY, text))
            return
        self._sessions[frame.session] = PortalSession(
            Role.ACCEPTOR,
            frame.session,
            now,
            limits=self.limits,
            rng=self._rng,
            peer_window=frame.window,
            credit=credit,
        )
        self._events.append(SessionRequested(frame.session))
        self._touch(frame.session)

    def _answer(self, frame: Reset | OpenRefused) -> None:
        key = (frame_kind(frame), frame.session)
        if key not in self._small:
            if self._answers >= MAX_ANSWERS:
                return  # the route is stuck and the peer keeps asking: it times out instead
            self._answers += 1
        self._small[key] = frame

    def _explain(self, reason: str) -> str:
        """``reason`` for the first of this packet's own answers, nothing for the rest."""
        if self._explained:
            return ""
        self._explained = True
        return reason

    def route_error(self, text: str, now: float) -> None:
        """A node on the route could not deliver one of our packets (which sessions' frames
        it held is unknown): every session hears of it."""
        self._now = now
        for session_id, session in self._sessions.items():
            session.route_error(text, now)
            self._touch(session_id)

    def shut_down(self, reason: str, now: float) -> None:
        self._now = now
        for session_id, session in self._sessions.items():
            session.shut_down(reason, now)
            self._touch(session_id)

    def on_timer(self, now: float) -> None:
        self._now = now
        keepalive = self._route_keepalive
        if self._idle_since is not None and keepalive and now >= self._idle_since + keepalive:
            self._route_nonce += 1
            self._frames.append(Ping(ROUTE_SESSION, self._route_nonce))
            self._idle_since = now
        while self._heap and self._heap[0][0] <= now:
            deadline, session_id = heapq.heappop(self._heap)
            if self._deadlines.get(session_id) != deadline:
                continue  # stale entry
            del self._deadlines[session_id]
            session = self._sessions.get(session_id)
            if session is not None:
                session.on_timer(now)
                self._touch(session_id)

    def next_deadline(self) -> float | None:
        self._refresh()
        route = None
        if self._idle_since is not None and self._route_keepalive:
            route = self._idle_since + self._route_keepalive
        while self._heap:
            deadline, session_id = self._heap[0]
            if self._deadlines.get(session_id) == deadline:
                return deadline if route is None else min(deadline, route)
            heapq.heappop(self._heap)
        return route

    # -- outputs ----------------------------------------------------------------------

    def _touch(self, session_id: int) -> None:
        self._dirty[session_id] = None

    def _refresh(self) -> None:
        """Collects the output of every touched session and re-reads its deadline."""
        if self._route_keepalive:
            if self._sessions:
                self._idle_since = None
            elif self._idle_since is None:
                self._idle_since = self._now
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, {}
        for session_id in dirty:
            session = self._sessions.get(session_id)
            if session is None:
                continue
            for command in session.commands():
                if isinstance(command, SendFrames):
                    self._queue(command.frames)  # packed with other sessions' frames
                else:
                    self._pending_app.append(ToApp(session_id, command))
            self._events.extend(SessionEvent(session_id, e) for e in session.events())
            if session.finished:
                del self._sessions[session_id]
                self._deadlines.pop(session_id, None)
                continue
            deadline = session.next_deadline()
            if deadline is None:
                self._deadlines.pop(session_id, None)
            elif self._deadlines.get(session_id) != deadline:
                self._deadlines[session_id] = deadline
                heapq.heappush(self._heap, (deadline, session_id))
        if self._route_keepalive and not self._sessions and self._idle_since is None:
            self._idle_since = self._now

    def _queue(self, frames: tuple[Frame, ...]) -> None:
        queued = self._queued_data
        for frame in frames:
            if isinstance(frame, Ack | Pong):
                # The latest says all the earlier ones did (an ACK is cumulative; a PONG
                # answers the newest PING): one per session waits, whatever the peer sends.
                self._small[(frame_kind(frame), frame.session)] = frame
                continue
            if isinstance(frame, Data):
                key = (frame.session, frame.offset, len(frame.data))
                if key in queued:
                    continue  # resent while the first copy still waits: the same bytes
                queued.add(key)
            self._frames.append(frame)

    def _waiting(self) -> Iterator[Frame]:
        return itertools.chain(self._small.values(), self._frames)

    def commands(self) -> list[MuxCommand]:
        """Commands for local sockets (in each session's order), then packets to send."""
        out: list[MuxCommand] = list(self.app_commands())
        if self._small or self._frames:
            out.extend(SendPacket(p) for p in pack_frames(self._waiting(), self.max_packet))
            self._small.clear()
            self._answers = 0
            self._frames.clear()
            self._queued_data.clear()
        return out

    def app_commands(self) -> list[ToApp]:
        """Commands for local sockets only, in each session's order (frames stay queued)."""
        self._refresh()
        out, self._pending_app = self._pending_app, []
        return out

    @property
    def has_packets(self) -> bool:
        """Frames wait to be packed (after the sessions' latest output was collected)."""
        self._refresh()
        return bool(self._small or self._frames)

    @property
    def waiting(self) -> int:
        """Frames waiting to be packed (what a stuck route makes this end hold)."""
        self._refresh()
        return len(self._small) + len(self._frames)

    @property
    def has_app_output(self) -> bool:
        """Commands for local sockets or events wait to be drained."""
        self._refresh()
        return bool(self._pending_app or self._events)

    def next_packet(self) -> bytes | None:
        """The next packet to send (the oldest frames that fit in one), or None."""
        self._refresh()
        if not self._small and not self._frames:
            return None
        packet, taken = take_packet(self._waiting(), self.max_packet)
        small = min(taken, len(self._small))
        for key in list(itertools.islice(self._small, small)):
            if key[0] in (FrameKind.RST, FrameKind.OPEN_REFUSED):
                self._answers -= 1
            del self._small[key]
        for _ in range(taken - small):
            frame = self._frames.popleft()
            if isinstance(frame, Data):
                self._queued_data.discard((frame.session, frame.offset, len(frame.data)))
        return packet

    def events(self) -> list[MuxEvent]:
        self._refresh()
        events, self._events = self._events, []
        return events
