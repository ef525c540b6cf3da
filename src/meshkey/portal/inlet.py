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
"""

from __future__ import annotations

import asyncio
import random
import re
from typing import TYPE_CHECKING, Any

from meshkey.log import EventLogger
from meshkey.portal.driver import MuxDriver, PortalCounters, SocketEnd
from meshkey.portal.mux import MAX_SESSIONS
from meshkey.portal.session import DEFAULT_LIMITS, PortalLocalError, Role, SessionLimits
from meshkey.routing.address import Route, ServiceAddress, TransportAddress, format_route
from meshkey.routing.router import Router

if TYPE_CHECKING:
    from meshkey.channel.manager import SecureChannels

log = EventLogger("portal")

#: Connections the kernel queues before the inlet accepts them (asyncio's default, 100, is
#: too few for a burst of clients; the kernel caps it at net.core.somaxconn).
BACKLOG = 1024


#: A secure channel's address (its encryptor's worker name): 16 random bytes in hex.
CHANNEL_ADDRESS = re.compile(r"[0-9a-f]{32}")


class InsecureRouteError(ValueError):
    """A route to an outlet that crosses other nodes without a secure channel."""


def check_end_to_end(
    route: Route, router: Router | None = None, channels: SecureChannels | None = None
) -> None:
    """Raises InsecureRouteError unless ``route`` reaches its outlet end to end: through a
    secure channel of this node (``/service/<channel>/...``), over a single hop, or on this
    node itself. Channels are recognised by ``channels`` when given, else by their address
    (32 hex digits) and the router having that worker."""
    if not route or not isinstance(route[-1], ServiceAddress):
        raise InsecureRouteError(f"{format_route(route)} does not end at an outlet service")
    first = route[0]
    if len(route) == 1:
        return  # an outlet on this node: nothing in between
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
    elif isinstance(first, TransportAddress) and len(route) == 2:
        return
    raise InsecureRouteError(
        f"{format_route(route)} crosses other nodes without a secure channel: create one "
        "(node.create_secure_channel(ROUTE_TO_THE_OUTLET_NODE/service/api)) and use "
        "CHANNEL/service/outlet, or pass insecure=True to send the bytes in the clear"
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
    ) -> None:
        """``channels`` (the node's) lets the route check know its secure channels exactly;
        ``insecure`` allows a route whose middle nodes see the bytes."""
        if not insecure:
            check_end_to_end(route, router, channels)
        self.router = router
        self.route = route
        self.insecure = insecure
        self.counters = PortalCounters()
        self._limits = limits
        self._max_sessions = max_sessions
        self._rng = rng or random.Random()
        self._driver: MuxDriver | None = None
        self._server: asyncio.Server | None = None
        self.host = ""
        self.port = 0

    @property
    def driver(self) -> MuxDriver:
        if self._driver is None:
            self._driver = MuxDriver(
                self.router,
                Role.OPENER,
                route=self.route,
                label=f"inlet {self.host}:{self.port}",
                limits=self._limits,
                max_sessions=self._max_sessions,
                counters=self.counters,
                rng=self._rng,
                route_keepalive=True,  # an idle inlet keeps its route, and hears if it breaks
            )
        return self._driver

    async def listen(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Starts listening; returns the bound address (port 0: the OS chooses)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._new_end, host, port, backlog=BACKLOG)
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port = str(sockname[0]), int(sockname[1])
        self.driver.label = f"inlet {self.host}:{self.port}"  # starts the route keepalive
        log.info(
            "portal.inlet_listening",
            address=f"{self.host}:{self.port}",
            route=format_route(self.route),
        )
        return self.host, self.port

    def _new_end(self) -> SocketEnd:
        return SocketEnd(self.driver, self._connected)

    def _connected(self, end: SocketEnd) -> None:
        assert end.transport is not None
        try:
            end.session = end.driver.open_session(end)
        except PortalLocalError as exc:
            log.warning("portal.inlet_full", address=f"{self.host}:{self.port}", reason=str(exc))
            self.counters.last_error = str(exc)
            end.transport.abort()

    def describe(self) -> dict[str, Any]:
        driver = self._driver
        return {
            "kind": "inlet",
            "address": f"{self.host}:{self.port}",
            "route": format_route(self.route),
            "insecure": self.insecure,
            "sessions_open": driver.mux.active if driver else 0,
            "sessions_total": self.counters.sessions_total,
            "sessions_failed": self.counters.sessions_failed,
            "bytes_to_outlet": self.counters.bytes_out,
            "bytes_from_outlet": self.counters.bytes_in,
            "last_error": self.counters.last_error,
        }

    async def close(self, reason: str = "the inlet was deleted") -> None:
        if self._server is not None:
            self._server.close()
        if self._driver is not None:
            await self._driver.close(reason)
            self._driver = None
