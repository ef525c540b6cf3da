"""An in-process simulated path between two portal multiplexers, with a fake clock.

Packets are encoded and decoded with the real wire format on the way, and the path loses,
duplicates and reorders them as told (seeded). Each session end has a simulated local
socket: a writer that feeds its bytes while not paused, and a reader that consumes at a
given rate (or at once). The tests of the session core and the multiplexer use it; the tests
at the end check the simulation itself, so a lenient simulator cannot hide a bug.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from meshkey.portal.budget import PortalBudget
from meshkey.portal.mux import Multiplexer, SendPacket, SessionEvent, SessionRequested, ToApp
from meshkey.portal.session import (
    CloseApp,
    Closed,
    Opened,
    PauseReading,
    ResumeReading,
    Role,
    SessionLimits,
    ShutdownAppWrite,
    WriteToApp,
)
from meshkey.wire.portal import RefuseReason, decode_packet

READ_SIZE = 64 * 1024  # what one simulated socket read yields
TICK = 0.001


@dataclass
class SimApp:
    """One end's local socket."""

    outgoing: bytes = b""
    eof_after: bool = True  # half-close after the last byte
    consume_rate: float | None = None  # bytes/s the local reader takes; None: at once
    echo: bool = False  # write back what arrives (a TCP echo server)
    position: int = 0
    received: bytearray = field(default_factory=bytearray)
    unconsumed: int = 0
    paused: bool = False
    eof_sent: bool = False
    peer_eof: bool = False
    closed: CloseApp | None = None
    opened: bool = False
    outcome: Closed | None = None
    max_unconsumed: int = 0
    credit: float = 0.0  # bytes the reader may still take this tick (fractions carry over)

    def wants_to_write(self) -> bool:
        eof_due = self.eof_after and not self.eof_sent and (not self.echo or self.peer_eof)
        pending = self.position < len(self.outgoing) or eof_due
        return pending and not self.paused and self.closed is None

    def busy(self) -> bool:
        reading = self.unconsumed > 0 and bool(self.consume_rate) and self.closed is None
        return self.wants_to_write() or reading


class SimPath:
    def __init__(self, seed: int, loss: float, duplicate: float, reorder: float) -> None:
        self.rng = random.Random(seed)
        self.loss = loss
        self.duplicate = duplicate
        self.reorder = reorder  # extra random delay, up to this many seconds
        self.delay = 0.005
        self._queue: list[tuple[float, int, str, bytes]] = []
        self._count = 0
        self.sent = self.lost = self.duplicated = 0
        self.blocked = False  # everything is lost (a dead relay)

    def send(self, destination: str, payload: bytes, now: float) -> None:
        self.sent += 1
        if self.blocked or self.rng.random() < self.loss:
            self.lost += 1
            return
        copies = 2 if self.rng.random() < self.duplicate else 1
        self.duplicated += copies - 1
        for _ in range(copies):
            at = now + self.delay + self.rng.random() * self.reorder
            self._count += 1
            heapq.heappush(self._queue, (at, self._count, destination, payload))

    def next_time(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def due(self, now: float) -> list[tuple[str, bytes]]:
        out = []
        while self._queue and self._queue[0][0] <= now:
            _, _, destination, payload = heapq.heappop(self._queue)
            out.append((destination, payload))
        return out


class Pair:
    """An opener multiplexer ("a", the inlet) and an acceptor ("b", the outlet)."""

    def __init__(
        self,
        *,
        seed: int = 1,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        limits: SessionLimits | None = None,
        acceptor_limits: SessionLimits | None = None,
        max_sessions: int = 4096,
        accept: Callable[[int], tuple[RefuseReason, str] | None] = lambda session: None,
        acceptor_app: Callable[[], SimApp] = lambda: SimApp(echo=True),
        budget: PortalBudget | None = None,
    ) -> None:
        """``budget``: one node budget both ends draw from (the opener as a local inlet,
        the acceptor for the peer "a"); none: unbounded."""
        self.now = 1000.0
        self.path = SimPath(seed, loss, duplicate, reorder)
        self.a = Multiplexer(
            Role.OPENER,
            limits=limits or SessionLimits(),
            rng=random.Random(seed),
            budget=budget,
            owner="inlet",
        )
        self.b = Multiplexer(
            Role.ACCEPTOR,
            limits=acceptor_limits or limits or SessionLimits(),
            max_sessions=max_sessions,
            rng=random.Random(seed + 1),
            budget=budget,
            owner="peer a",
        )
        self.apps: dict[str, dict[int, SimApp]] = {"a": {}, "b": {}}
        self.accept = accept
        self.acceptor_app = acceptor_app
        self.max_buffered = 0  # the most any session held, either side, either direction
        self.route_errors = False  # lost packets come back as route errors
        self.track_buffers = True  # record max_buffered (costly with thousands of sessions)

    def mux(self, side: str) -> Multiplexer:
        return self.a if side == "a" else self.b

    def open(self, app: SimApp) -> int:
        session = self.a.open(self.now)
        self.apps["a"][session] = app
        self.pump()
        return session

    # -- driving ----------------------------------------------------------------------

    def pump(self) -> None:
        progress = True
        while progress:
            progress = False
            for side in ("a", "b"):
                mux = self.mux(side)
                for event in mux.events():
                    progress = True
                    self._event(side, event)
                for command in mux.commands():
                    progress = True
                    if isinstance(command, SendPacket):
                        other = "b" if side == "a" else "a"
                        before = self.path.lost
                        self.path.send(other, command.payload, self.now)
                        if self.route_errors and self.path.lost > before:
                            mux.route_error("the relay is gone", self.now)
                    else:
                        self._app_command(side, command)
            for side in ("a", "b") if self.track_buffers else ():
                mux = self.mux(side)
                for session in mux.sessions():
                    self.max_buffered = max(
                        self.max_buffered, session.buffered_received, session.buffered_to_send
                    )

    def _event(self, side: str, event: SessionEvent | SessionRequested) -> None:
        mux = self.mux(side)
        if isinstance(event, SessionRequested):
            verdict = self.accept(event.session)
            if verdict is None:
                self.apps["b"][event.session] = self.acceptor_app()
                mux.accept(event.session, self.now)
            else:
                mux.refuse(event.session, *verdict, self.now)
            return
        app = self.apps[side].get(event.session)
        if app is None:
            return
        if isinstance(event.event, Opened):
            app.opened = True
        elif isinstance(event.event, Closed):
            app.outcome = event.event

    def _app_command(self, side: str, command: ToApp) -> None:
        app = self.apps[side][command.session]
        mux = self.mux(side)
        action = command.command
        if isinstance(action, WriteToApp):
            assert app.closed is None
            assert not app.peer_eof, "data after the peer's FIN"
            app.received += action.data
            if app.consume_rate is None:
                mux.app_consumed(command.session, len(action.data), self.now)
            else:
                app.unconsumed += len(action.data)
                app.max_unconsumed = max(app.max_unconsumed, app.unconsumed)
            if app.echo:
                app.outgoing += action.data
        elif isinstance(action, ShutdownAppWrite):
            app.peer_eof = True
        elif isinstance(action, CloseApp):
            app.closed = action
        elif isinstance(action, PauseReading):
            app.paused = True
        elif isinstance(action, ResumeReading):
            app.paused = False

    def _tick_apps(self, dt: float) -> None:
        for side in ("a", "b"):
            mux = self.mux(side)
            for session, app in list(self.apps[side].items()):
                if not app.busy():
                    continue
                current = mux.session(session)
                if current is None or current.terminal:
                    continue
                if app.unconsumed and app.consume_rate is not None:
                    app.credit += app.consume_rate * dt
                    take = min(app.unconsumed, int(app.credit))
                    if take:
                        app.credit -= take
                        app.unconsumed -= take
                        mux.app_consumed(session, take, self.now)
                if app.paused or (current.state.value != "open" and side == "b"):
                    continue
                if app.position < len(app.outgoing):
                    chunk = app.outgoing[app.position : app.position + READ_SIZE]
                    app.position += len(chunk)
                    mux.app_data(session, chunk, self.now)
                elif app.eof_after and not app.eof_sent and (not app.echo or app.peer_eof):
                    app.eof_sent = True
                    mux.app_eof(session, self.now)

    def run(
        self, until: Callable[[], bool], limit: float = 600.0, horizon: float | None = None
    ) -> None:
        """Advances the clock event by event until ``until()`` or ``limit`` simulated seconds
        (``horizon``: a time to stop at even when nothing else happens)."""
        end = self.now + limit
        self.pump()
        while not until():
            busy = any(app.busy() for apps in self.apps.values() for app in apps.values())
            times = [
                t
                for t in (
                    self.path.next_time(),
                    self.a.next_deadline(),
                    self.b.next_deadline(),
                    self.now + TICK if busy else None,
                    horizon,
                )
                if t is not None
            ]
            assert times, "the simulation is stuck: nothing will ever happen again"
            self.now = max(self.now, min(times))
            assert self.now <= end, f"not done within {limit} simulated seconds"
            for destination, payload in self.path.due(self.now):
                self.mux(destination).frames_received(decode_packet(payload), self.now)
            self.a.on_timer(self.now)
            self.b.on_timer(self.now)
            self.pump()
            self._tick_apps(TICK)
            self.pump()

    def settle(self, seconds: float) -> None:
        """Runs for ``seconds`` more simulated time (to see nothing wrong happens late)."""
        stop = self.now + seconds
        self.run(lambda: self.now >= stop, limit=seconds + 1, horizon=stop)


# -- the simulation itself -------------------------------------------------------------


def test_the_path_loses_duplicates_and_reorders_as_told() -> None:
    path = SimPath(seed=3, loss=0.1, duplicate=0.1, reorder=0.05)
    for i in range(2000):
        path.send("b", i.to_bytes(4, "big"), now=0.0)
    assert 150 < path.lost < 250
    assert 130 < path.duplicated < 250
    delivered = [int.from_bytes(p, "big") for _, p in path.due(1.0)]
    assert len(delivered) == 2000 - path.lost + path.duplicated
    assert delivered != sorted(delivered)  # reordered


def test_a_perfect_path_keeps_order_and_everything() -> None:
    path = SimPath(seed=3, loss=0.0, duplicate=0.0, reorder=0.0)
    for i in range(100):
        path.send("b", bytes([i]), now=i * 0.001)
    assert [p[0] for _, p in path.due(10.0)] == list(range(100))
