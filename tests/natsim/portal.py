"""Portals in the simulator: two :class:`~meshkey.portal.mux.Multiplexer` cores (the daemon's
own) on two hosts of the simulator's WAN, each session end with a simulated local socket.

The route between the multiplexers is a pair of UDP sockets on two public hosts of a
:class:`~tests.natsim.net.SimNet`: packets are encoded and decoded with the real wire format
(:mod:`meshkey.wire.portal`), take 5 ms one way (2.5 ms per WAN port), and the WAN loses,
duplicates and reorders them (jitter up to ``reorder`` seconds) as told, from the
simulation's seeded rng. :attr:`PortalRoute.blocked` loses everything (a dead relay, which
nobody reports).

The glue is :class:`~meshkey.portal.driver.MuxDriver`'s, on the simulator's clock: after
every input the multiplexer is drained the way the driver drains it (commands for the local
sockets and events first, then packets, one :meth:`~meshkey.portal.mux.Multiplexer.next_packet`
at a time), and one :class:`~meshkey.timing.DeadlineTimer` per multiplexer follows its
deadline. An acceptor answers on the route the packets came by (the driver follows the return
route; here there is one route).

Each session end has a :class:`SimApp`: a writer that feeds its bytes (at most
:data:`READ_SIZE` per read) while not paused, and a reader that consumes at a given rate (or
at once). While any of them has something to do, the apps act every :data:`TICK` simulated
seconds; otherwise no event is scheduled for them, so a long idle stretch costs nothing.

Not simulated (decided in the driver's socket glue, :class:`~meshkey.portal.driver.SocketEnd`):
the write buffer's water marks (bytes count as consumed when they left it) and read sizes
bounded by the session's send room.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from meshkey.portal.budget import PortalBudget
from meshkey.portal.contract import State
from meshkey.portal.mux import Multiplexer, SessionEvent, SessionRequested, ToApp
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
from tests.natsim.net import Host, Packet, SimHandle, SimNet, SimSocket

READ_SIZE = 64 * 1024  # what one simulated socket read yields
TICK = 0.001  # how often busy apps act
START = 1000.0
PORTAL_PORT = 7000
#: The two hosts of a portal pair (TEST-NET-2: apart from the NAT lab's and the graph's).
HOSTS = ("198.51.100.1", "198.51.100.2")
PORT_DELAY = 0.0025

Side = str  # "a" (the opener, the inlet's node) or "b" (the acceptor, the outlet's)


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


class PortalRoute:
    """The route between the two multiplexers: a socket on each of two public hosts of the
    WAN. Side a's port carries the loss, duplication and jitter (so each packet, either way,
    is lost with probability ``loss`` and so on). ``sent``, ``lost`` and ``duplicated`` count
    this route's packets only (the simulation may carry other scenarios too)."""

    def __init__(
        self,
        net: SimNet,
        *,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        hosts: tuple[str, str] = HOSTS,
    ) -> None:
        self.net = net
        lossy = Host(net, hosts[0], port_delay=PORT_DELAY, loss=loss)
        lossy.duplicate, lossy.jitter = duplicate, reorder
        plain = Host(net, hosts[1], port_delay=PORT_DELAY)
        self.sockets: dict[Side, SimSocket] = {
            "a": lossy.open_socket(PORTAL_PORT),
            "b": plain.open_socket(PORTAL_PORT),
        }
        self.sent = self.lost = self.duplicated = 0
        self.blocked = False  # everything is lost (a dead relay)

    def listen(self, side: Side, receiver: Callable[[bytes], None]) -> None:
        def receive(packet: Packet) -> None:
            receiver(packet.data)

        self.sockets[side].receiver = receive

    def send(self, side: Side, payload: bytes) -> bool:
        """Sends ``payload`` from ``side`` to the other; False when the WAN lost it."""
        self.sent += 1
        if self.blocked:
            self.lost += 1
            return False
        lost, duplicated = self.net.dropped["loss"], self.net.duplicated
        other = self.sockets["b" if side == "a" else "a"]
        self.sockets[side].sendto(payload, other.address)
        self.duplicated += self.net.duplicated - duplicated
        if self.net.dropped["loss"] > lost:
            self.lost += 1
            return False
        return True


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
        net: SimNet | None = None,
        hosts: tuple[str, str] = HOSTS,
    ) -> None:
        """``budget``: one node budget both ends draw from (the opener as a local inlet,
        the acceptor for the peer "a"); none: unbounded. ``net``: the simulation to join,
        else a new one seeded with ``seed`` and starting at :data:`START`."""
        self.net = net or SimNet(seed, start=START)
        self.path = PortalRoute(
            self.net, loss=loss, duplicate=duplicate, reorder=reorder, hosts=hosts
        )
        self.a = Multiplexer(
            Role.OPENER,
            limits=limits or SessionLimits(),
            rng=random.Random(seed),
            budget=budget,
            owner="inlet",
            now=self.net.now,
        )
        self.b = Multiplexer(
            Role.ACCEPTOR,
            limits=acceptor_limits or limits or SessionLimits(),
            max_sessions=max_sessions,
            rng=random.Random(seed + 1),
            budget=budget,
            owner="peer a",
            now=self.net.now,
        )
        self.apps: dict[Side, dict[int, SimApp]] = {"a": {}, "b": {}}
        self.accept = accept
        self.acceptor_app = acceptor_app
        self.max_buffered = 0  # the most any session held, either side, either direction
        self.route_errors = False  # lost packets come back as route errors
        self.track_buffers = True  # record max_buffered (costly with thousands of sessions)
        self._timers = {side: self.net.timer(functools.partial(self._fire, side)) for side in "ab"}
        self._ticker: SimHandle | None = None
        for side in ("a", "b"):
            self.path.listen(side, functools.partial(self._receive, side))

    @property
    def now(self) -> float:
        return self.net.now

    def mux(self, side: Side) -> Multiplexer:
        return self.a if side == "a" else self.b

    def open(self, app: SimApp) -> int:
        session = self.a.open(self.now)
        self.apps["a"][session] = app
        self.pump()
        return session

    # -- inputs -----------------------------------------------------------------------

    def _receive(self, side: Side, payload: bytes) -> None:
        self.mux(side).frames_received(decode_packet(payload), self.now)
        self.pump()

    def _fire(self, side: Side, now: float) -> None:
        self.mux(side).on_timer(now)
        self.pump()

    # -- the glue: MuxDriver's drain, on the simulator's clock ----------------------------

    def pump(self) -> None:
        progress = True
        while progress:
            progress = False
            for side in ("a", "b"):
                mux = self.mux(side)
                for command in mux.app_commands():
                    progress = True
                    self._app_command(side, command)
                for event in mux.events():
                    progress = True
                    self._event(side, event)
                while (payload := mux.next_packet()) is not None:
                    progress = True
                    if not self.path.send(side, payload) and self.route_errors:
                        mux.route_error("the relay is gone", self.now)
            for side in ("a", "b") if self.track_buffers else ():
                for session in self.mux(side).sessions():
                    self.max_buffered = max(
                        self.max_buffered, session.buffered_received, session.buffered_to_send
                    )
        for side in ("a", "b"):
            self._timers[side].follow(self.mux(side).next_deadline())
        if self._ticker is None and self._apps_busy():
            self._ticker = self.net.call_later(TICK, self._tick)

    def _event(self, side: Side, event: SessionEvent | SessionRequested) -> None:
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

    def _app_command(self, side: Side, command: ToApp) -> None:
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

    # -- the local sockets ------------------------------------------------------------

    def _apps_busy(self) -> bool:
        return any(app.busy() for apps in self.apps.values() for app in apps.values())

    def _tick(self) -> None:
        self._ticker = None
        self._tick_apps(TICK)
        self.pump()

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
                if app.paused or (current.state is not State.OPEN and side == "b"):
                    continue
                if app.position < len(app.outgoing):
                    chunk = app.outgoing[app.position : app.position + READ_SIZE]
                    app.position += len(chunk)
                    mux.app_data(session, chunk, self.now)
                elif app.eof_after and not app.eof_sent and (not app.echo or app.peer_eof):
                    app.eof_sent = True
                    mux.app_eof(session, self.now)

    # -- running ----------------------------------------------------------------------

    def run(self, until: Callable[[], bool], limit: float = 600.0) -> None:
        """Runs the simulation event by event until ``until()``; fails when that takes more
        than ``limit`` simulated seconds, or when nothing will ever happen again."""
        end = self.now + limit
        self.pump()
        while not until():
            when = self.net.next_time()
            assert when is not None, "the simulation is stuck: nothing will ever happen again"
            assert when <= end, f"not done within {limit} simulated seconds"
            self.net.step()

    def settle(self, seconds: float) -> None:
        """Runs for ``seconds`` more simulated time (to see nothing wrong happens late)."""
        self.pump()
        self.net.run_for(seconds)
