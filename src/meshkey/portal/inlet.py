"""The TCP inlet: a local listener whose every accepted connection is a session to an outlet.

The route names the outlet and must be end to end (DESIGN.md decision 13): either it starts
at a local worker (a secure channel's address, ``/service/<hex>/service/outlet``) or it is a
single hop (``/ip4/A/udp/P/id/N/service/outlet``: the hop is mutually authenticated TLS or
QUIC between the two nodes). Anything else would show the bytes to the nodes in the middle
and is refused unless ``insecure`` says otherwise.

All sessions of an inlet share one multiplexer on its route. When the route breaks, its
sessions fail within bounded time with the reason logged, each client's connection is
closed, and the inlet keeps listening: a new connection tries again (its OPEN retries are
bounded and backed off by the session core), so nothing loops while the route is down.

An inlet may be given its route as text to **resolve** (``resolve``: ``/node/NAME`` looked
up, ``/secure/X`` turned into a secure channel; see :mod:`meshkey.portal.secure_routes`).
The resolved route is kept while it is good (its first address is a channel that is still
open, and no session failed since); otherwise the next connection resolves it again, with
its socket not read until then. When the resolved route changes, a new multiplexer takes the
new connections and the old one retires once its sessions are over. A resolution that fails
closes that client's connection (with a reset) and logs why; connections in the next
backed-off interval (0.5 s growing to 5 s, reset by a success) are closed at once with the
same reason, so a route that is down costs one attempt per interval, not one per client.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from meshkey.channel.manager import ChannelState, SecureChannels
from meshkey.log import EventLogger
from meshkey.portal.budget import PortalBudget
from meshkey.portal.driver import MuxDriver, PortalCounters
from meshkey.portal.mux import MAX_SESSIONS
from meshkey.portal.session import DEFAULT_LIMITS, PortalLocalError, Role, SessionLimits
from meshkey.portal.socket_end import SocketEnd
from meshkey.retry import RetrySchedule
from meshkey.routing.address import (
    NodeNameAddress,
    Route,
    SecureAddress,
    ServiceAddress,
    TransportAddress,
    format_route,
)
from meshkey.routing.router import Router
from meshkey.transport.errors import describe_error

log = EventLogger("portal")

#: Connections the kernel queues before the inlet accepts them (asyncio's default, 100, is
#: too few for a burst of clients; the kernel caps it at net.core.somaxconn).
BACKLOG = 1024


#: A secure channel's address (its encryptor's worker name): 16 random bytes in hex.
CHANNEL_ADDRESS = re.compile(r"[0-9a-f]{32}")
#: Failed resolutions of an inlet's route: connections within the interval fail at once.
RESOLVE_RETRY_FIRST = 0.5
RESOLVE_RETRY_MAX = 5.0
_LINGER_ZERO = struct.pack("ii", 1, 0)

#: Resolves an inlet's route (names, ``/secure/``) to one it can send along.
RouteResolver = Callable[[], Awaitable[Route]]


class InsecureRouteError(ValueError):
    """A route to an outlet that crosses other nodes without a secure channel."""


def check_end_to_end(
    route: Route, router: Router | None = None, channels: SecureChannels | None = None
) -> None:
    """Raises InsecureRouteError unless ``route`` reaches its outlet end to end: through a
    secure channel of this node (``/service/<channel>/...``, or a ``/secure/X`` to resolve),
    over a single hop (a transport address or ``/node/NAME``), or on this node itself.
    Channels are recognised by ``channels`` when given, else by their address (32 hex
    digits) and the router having that worker."""
    if not route or not isinstance(route[-1], ServiceAddress):
        raise InsecureRouteError(f"{format_route(route)} does not end at an outlet service")
    first = route[0]
    if len(route) == 1:
        return  # an outlet on this node: nothing in between
    if any(isinstance(address, SecureAddress) for address in route):
        return  # resolved into a secure channel by the node before any byte is sent
    if isinstance(first, ServiceAddress):
        if router is not None and not router.has_worker(first.name):
            raise InsecureRouteError(f"{first} is not a worker on this node")
        is_channel = (
            channels.get(first.name) is not None
            if channels is not None
            else CHANNEL_ADDRESS.fullmatch(first.name) is not None
        )
        if is_channel:
            return
    elif isinstance(first, TransportAddress | NodeNameAddress) and len(route) == 2:
        return
    suggestion = f"{format_route(route[:-1])}/secure/api{route[-1]}"
    raise InsecureRouteError(
        f"{format_route(route)} crosses other nodes without a secure channel, so they would "
        f"see the bytes: add one to the outlet's node, e.g. {suggestion} (or use a channel's "
        "address, /service/<channel>/service/outlet), or, to send them in the clear, "
        "--insecure (insecure=True)"
    )


class Inlet:
    def __init__(
        self,
        router: Router,
        route: Route,
        *,
        insecure: bool = False,
        limits: SessionLimits = DEFAULT_LIMITS,
        max_sessions: int = MAX_SESSIONS,
        rng: random.Random | None = None,
        channels: SecureChannels | None = None,
        resolve: RouteResolver | None = None,
        budget: PortalBudget | None = None,
    ) -> None:
        """``channels`` (the node's) lets the route check know its secure channels exactly;
        ``insecure`` allows a route whose middle nodes see the bytes. With ``resolve``,
        ``route`` is the route as given (it may hold ``/node/NAME`` and ``/secure/X``) and
        ``resolve()`` gives the route to send along (see the module's docstring).
        ``budget``: the node's, which admits the inlet's sessions and bounds what they
        hold together (one of the inlet's own if not given)."""
        if not insecure:
            check_end_to_end(route, router if resolve is None else None, channels)
        self.router = router
        self.route = route
        self.insecure = insecure
        self.counters = PortalCounters()
        self._limits = limits
        self._max_sessions = max_sessions
        self._budget = budget if budget is not None else PortalBudget()
        self._rng = rng or random.Random()
        self._channels = channels
        self._resolve = resolve
        self._driver: MuxDriver | None = None
        self._draining: set[MuxDriver] = set()  # drivers on an old route, until idle
        self._server: asyncio.Server | None = None
        self._resolving: asyncio.Task[Route] | None = None
        self._failures_seen = 0  # sessions_failed when the route was last resolved
        self._retry = RetrySchedule(RESOLVE_RETRY_FIRST, RESOLVE_RETRY_MAX, rng=self._rng)
        self._retry_at = 0.0
        self._resolve_error: str | None = None
        self._pending: set[SocketEnd] = set()  # clients waiting for the route
        self._attaching: set[asyncio.Task[None]] = set()
        self.host = ""
        self.port = 0

    @property
    def driver(self) -> MuxDriver:
        """The multiplexer new sessions go to (made now for a fixed route)."""
        if self._driver is None:
            if self._resolve is not None:
                raise PortalLocalError("the inlet's route is not resolved yet")
            self._driver = self._new_driver(self.route)
        return self._driver

    def _new_driver(self, route: Route) -> MuxDriver:
        return MuxDriver(
            self.router,
            Role.OPENER,
            route=route,
            label=f"inlet {self.host}:{self.port}",
            limits=self._limits,
            max_sessions=self._max_sessions,
            counters=self.counters,
            rng=self._rng,
            route_keepalive=True,  # an idle inlet keeps its route, and hears if it breaks
            budget=self._budget,
            owner=self,  # its clients are local: bounded together, by the node's counts
        )

    @property
    def resolved_route(self) -> Route | None:
        """The route sessions go along now (None before a resolvable route is resolved)."""
        if self._resolve is None:
            return self.route
        return self._driver.route if self._driver is not None else None

    async def listen(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Starts listening; returns the bound address (port 0: the OS chooses)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._new_end, host, port, backlog=BACKLOG)
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port = str(sockname[0]), int(sockname[1])
        if self._resolve is None:
            self.driver.label = f"inlet {self.host}:{self.port}"  # starts the route keepalive
        log.info(
            "portal.inlet_listening",
            address=f"{self.host}:{self.port}",
            route=format_route(self.route),
        )
        return self.host, self.port

    async def prepare(self) -> str | None:
        """Resolves the route now (opening its secure channels and starting its keepalive)
        rather than at the first connection; returns why it failed, or None."""
        if self._resolve is None:
            return None
        try:
            await self._current_route()
        except Exception as exc:  # already counted and logged
            return self._resolve_error or str(exc)
        return None

    # -- connections --------------------------------------------------------------------

    def _new_end(self) -> SocketEnd:
        route = self._usable_route()
        if route is not None:
            return SocketEnd(self._driver_for(route), self._connected)
        return SocketEnd(None, self._connected_early, self._pending.discard)

    def _connected(self, end: SocketEnd) -> None:
        assert end.transport is not None
        try:
            end.session = end.driver.open_session(end)
        except PortalLocalError as exc:
            log.warning("portal.inlet_full", address=f"{self.host}:{self.port}", reason=str(exc))
            self.counters.last_error = str(exc)
            end.transport.abort()

    def _connected_early(self, end: SocketEnd) -> None:
        """A client while the route needs resolving: not read until a session takes it."""
        assert end.transport is not None
        end.transport.pause_reading()
        self._pending.add(end)
        task = asyncio.get_running_loop().create_task(self._attach(end))
        self._attaching.add(task)
        task.add_done_callback(self._attaching.discard)

    def _usable_route(self) -> Route | None:
        """The route new sessions may take at once, without resolving it again."""
        driver = self._driver
        if self._resolve is None:
            return self.route
        if driver is None or driver.closed or self.counters.sessions_failed != self._failures_seen:
            return None
        first = driver.route[0] if driver.route else None
        if self._channels is not None and isinstance(first, ServiceAddress):
            channel = self._channels.get(first.name)
            if channel is not None and channel.state is not ChannelState.OPEN:
                return None
            if channel is None and CHANNEL_ADDRESS.fullmatch(first.name):
                return None  # a channel that was deleted
        return driver.route

    def _driver_for(self, route: Route) -> MuxDriver:
        current = self._driver
        if current is not None and not current.closed and current.route == route:
            return current
        if current is not None:
            self._draining.add(current)
            current.retire_when_idle(self._draining.discard)
        self._driver = self._new_driver(route)
        return self._driver

    async def _current_route(self) -> Route:
        """The resolved route: kept, or resolved again (one resolution at a time)."""
        route = self._usable_route()
        if route is not None:
            return route
        loop = asyncio.get_running_loop()
        if self._resolving is None:
            if loop.time() < self._retry_at and self._resolve_error is not None:
                raise ConnectionError(self._resolve_error)
            self._resolving = loop.create_task(self._resolve_once())
        task = self._resolving
        return await asyncio.shield(task)

    async def _resolve_once(self) -> Route:
        assert self._resolve is not None
        failures = self.counters.sessions_failed
        try:
            route = await self._resolve()
        except Exception as exc:
            text = getattr(exc, "text", None) or describe_error(exc)
            self._resolve_error = f"route {format_route(self.route)}: {text}"
            self.counters.last_error = self._resolve_error
            delay = self._retry.next_delay() or RESOLVE_RETRY_MAX
            self._retry_at = asyncio.get_running_loop().time() + delay
            log.warning(
                "portal.inlet_route_failed",
                address=f"{self.host}:{self.port}",
                route=format_route(self.route),
                reason=text,
                retry_in=round(delay, 2),
            )
            raise ConnectionError(self._resolve_error) from exc
        finally:
            self._resolving = None
        self._retry.reset()
        self._resolve_error = None
        self._failures_seen = failures
        if self._driver is None or self._driver.route != route:
            log.info(
                "portal.inlet_route",
                address=f"{self.host}:{self.port}",
                route=format_route(self.route),
                resolved=format_route(route),
            )
        self._driver_for(route)
        return route

    async def _attach(self, end: SocketEnd) -> None:
        """Resolves the route for a client that connected meanwhile, then hands its socket
        to a session (or resets it, saying why in the log and the counters)."""
        transport = end.transport
        assert transport is not None
        try:
            route = await self._current_route()
        except Exception:
            self.counters.sessions_total += 1
            self.counters.sessions_failed += 1
            self._failures_seen = self.counters.sessions_failed
            self._pending.discard(end)
            _reset(transport)
            return
        if end not in self._pending:
            return  # the client left meanwhile (or the inlet closed)
        self._pending.discard(end)
        end.driver = self._driver_for(route)
        self._connected(end)
        if end.session is not None:
            end.start()

    def describe(self) -> dict[str, Any]:
        drivers = [d for d in (self._driver, *self._draining) if d is not None]
        resolved = self.resolved_route
        return {
            "kind": "inlet",
            "address": f"{self.host}:{self.port}",
            "route": format_route(self.route),
            "resolved_route": format_route(resolved) if resolved is not None else None,
            "insecure": self.insecure,
            "sessions_open": sum(d.mux.active for d in drivers) + len(self._pending),
            "sessions_total": self.counters.sessions_total,
            "sessions_failed": self.counters.sessions_failed,
            "bytes_to_outlet": self.counters.bytes_out,
            "bytes_from_outlet": self.counters.bytes_in,
            "last_error": self.counters.last_error,
        }

    async def close(self, reason: str = "the inlet was deleted") -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._resolving is not None:
            self._resolving.cancel()
        for task in list(self._attaching):
            task.cancel()
        for pending in list(self._pending):
            if pending.transport is not None:
                _reset(pending.transport)
        self._pending.clear()
        drivers = [d for d in (self._driver, *self._draining) if d is not None]
        self._driver = None
        self._draining.clear()
        for driver in drivers:
            with contextlib.suppress(Exception):
                await driver.close(reason)


def _reset(transport: asyncio.Transport) -> None:
    """Closes a client's connection with RST: it did not get what it connected for."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    transport.abort()
