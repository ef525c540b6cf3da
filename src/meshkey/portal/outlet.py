"""The TCP outlet: a worker that opens a TCP connection to HOST:PORT for each portal session.

``/service/NAME`` (default ``outlet``) on the node next to the TCP server. Each remote inlet
(an authenticated identity and the inlet's portal worker) gets its own multiplexer, created
on its first packet and retired when its last session is gone, so sessions of different
inlets never share ids or windows. Who may use the outlet is decided per packet, before any
state is created, on the identity authenticated end to end (:func:`end_to_end_identity`):

* the secure channel's peer, or the hop's peer, or this node, only for a packet that
  provably started there: its return route is exactly (that channel or hop, the sender's
  portal worker). A node that forwarded the packet for someone else shows in the return
  route (its link or channel to that someone), so an allowed node cannot be made a deputy;
* a packet without such an identity (it crossed other nodes without a secure channel, or
  was forwarded) is refused unless the outlet was created ``insecure`` (its bytes were
  visible on the way);
* with ``allow``, only those identities are served (never a packet without an identity).

A refused OPEN is answered with OPEN_REFUSED (NOT_ALLOWED) saying why, and logged.

What the sessions may hold is the node's :class:`~meshkey.portal.budget.PortalBudget`'s to
say, by identity: at most 64 sessions per identity (an OPEN beyond is refused, TOO_MANY, and
no connection to the server is made for it) and 768 for all peers of the node, each starting
with 64 KiB of buffer each way and growing only while its far side reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

from meshkey.identity.node_id import NodeId
from meshkey.log import EventLogger
from meshkey.portal.budget import PortalBudget
from meshkey.portal.driver import MuxDriver, PortalCounters, is_portal_worker
from meshkey.portal.mux import MAX_SESSIONS, ROUTE_SESSION
from meshkey.portal.session import DEFAULT_LIMITS, PortalLocalError, Role, SessionLimits
from meshkey.portal.socket_end import SocketEnd
from meshkey.routing.address import Address, ServiceAddress
from meshkey.routing.message import Message
from meshkey.routing.router import Router
from meshkey.transport.errors import describe_error
from meshkey.wire.errors import WireError
from meshkey.wire.portal import (
    Open,
    OpenRefused,
    Ping,
    Pong,
    RefuseReason,
    decode_packet,
    encode_packet,
)

log = EventLogger("portal")

DEFAULT_OUTLET = "outlet"
#: Remote inlets one outlet serves at once (each with up to MAX_SESSIONS sessions).
MAX_REMOTES = 1024
CONNECT_TIMEOUT = 10.0


def end_to_end_identity(message: Message, own: NodeId) -> NodeId | None:
    """Who sent ``message``, if that is authenticated end to end; None otherwise.

    Every node a message enters records where it came from at the front of its return route:
    a link prepends itself when a message arrives over a hop, a secure channel when one comes
    out of it, a forwarding service (``hop``) when it passes one on, and nothing takes an
    address away. A portal packet's sender names its portal worker as the whole return
    route it starts with. So the packet started at the node that vouches for it (the
    channel's peer, the hop's peer, or this node) only when its return route is exactly
    (that channel or hop, a portal worker), or (a portal worker) when it was sent here. A
    stranger that routes through an allowed node with an empty return route arrives with
    (hop, the allowed node's link to the stranger): two addresses, the hop's peer allowed,
    yet the second is a link, not a portal worker, so it has no identity here. The same
    holds for a packet fed into the allowed node's secure channel by someone else.
    """
    local = message.local
    route = message.return_route
    if not route or not is_portal_worker(route[-1]):
        return None
    if local.channel_peer is not None:
        return local.channel_peer if len(route) == 2 else None
    if local.hop_peer is not None:
        return local.hop_peer if len(route) == 2 else None
    return own if len(route) == 1 else None


class Outlet:
    def __init__(
        self,
        router: Router,
        host: str,
        port: int,
        *,
        name: str = DEFAULT_OUTLET,
        allow: frozenset[NodeId] | None = None,
        insecure: bool = False,
        limits: SessionLimits = DEFAULT_LIMITS,
        max_sessions: int = MAX_SESSIONS,
        connect_timeout: float = CONNECT_TIMEOUT,
        rng: random.Random | None = None,
        budget: PortalBudget | None = None,
    ) -> None:
        """``budget``: the node's (shared by its portals); one of the outlet's own if not
        given, with the default bounds."""
        self.router = router
        self.budget = budget if budget is not None else PortalBudget()
        self.host = host
        self.port = port
        self.name = name
        self.allow = allow
        self.insecure = insecure
        self.limits = limits
        self.max_sessions = max_sessions
        self.connect_timeout = connect_timeout
        self.counters = PortalCounters()
        self.refused_identities = 0
        self._rng = rng or random.Random()
        self._remotes: dict[tuple[NodeId | None, Address], MuxDriver] = {}
        self._connecting: set[asyncio.Task[None]] = set()  # connects and refusals under way
        self.closed = False
        router.register(name, self._receive, inline=True)
        log.info("portal.outlet_created", service=name, target=f"{host}:{port}")

    @property
    def address(self) -> str:
        return f"/service/{self.name}"

    def describe(self) -> dict[str, Any]:
        active = sum(d.mux.active for d in self._remotes.values())
        return {
            "kind": "outlet",
            "address": self.address,
            "target": f"{self.host}:{self.port}",
            "allow": sorted(str(n) for n in self.allow) if self.allow is not None else None,
            "insecure": self.insecure,
            "remotes": len(self._remotes),
            "sessions_open": active,
            "sessions_total": self.counters.sessions_total,
            "sessions_failed": self.counters.sessions_failed,
            "bytes_to_server": self.counters.bytes_in,
            "bytes_from_server": self.counters.bytes_out,
            "refused": self.refused_identities + self.counters.sessions_refused,
            "last_error": self.counters.last_error,
        }

    # -- packets ----------------------------------------------------------------------

    async def _receive(self, message: Message) -> None:
        if message.is_error or not message.return_route or self.closed:
            return
        identity = end_to_end_identity(message, self.router.node_id)
        refusal = self._refusal(identity)
        owner = identity or message.local.hop_peer
        key = (owner, message.return_route[-1])
        driver = self._remotes.get(key)
        if driver is None:
            if refusal is None and len(self._remotes) >= MAX_REMOTES:
                refusal = f"the outlet serves {MAX_REMOTES} inlets already"
            if refusal is None and self._route_ping(message):
                return
            if refusal is not None:
                # Answered from a task of its own: this worker runs inline in the task that
                # delivered the packet, and must not wait for a hop's queue.
                task = asyncio.get_running_loop().create_task(
                    self._refuse(message, identity, refusal)
                )
                self._connecting.add(task)
                task.add_done_callback(self._connecting.discard)
                return
            driver = MuxDriver(
                self.router,
                Role.ACCEPTOR,
                route=message.return_route,
                label=f"{self.name}<-{identity.short() if identity else '?'}",
                limits=self.limits,
                max_sessions=self.max_sessions,
                counters=self.counters,
                on_requested=self._requested,
                on_idle=self._idle,
                rng=self._rng,
                budget=self.budget,
                owner=owner,
            )
            self._remotes[key] = driver
        await driver.receive(message)

    def _route_ping(self, message: Message) -> bool:
        """An idle inlet's route keepalive (PINGs of session 0 only) is answered without
        creating any state for it."""
        try:
            frames = decode_packet(message.payload)
        except WireError:
            return False
        if not all(isinstance(f, Ping) and f.session == ROUTE_SESSION for f in frames):
            return False
        pongs = encode_packet([Pong(ROUTE_SESSION, f.nonce) for f in frames if isinstance(f, Ping)])
        reply = Message(message.return_route, (ServiceAddress(self.name),), pongs)
        task = asyncio.get_running_loop().create_task(self.router.route(reply))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)
        return True

    def _refusal(self, identity: NodeId | None) -> str | None:
        if identity is None and not self.insecure:
            return (
                "no identity is authenticated end to end on the way to this outlet (the route "
                "crosses other nodes without a secure channel, or a node forwarded it for "
                "someone else); open a secure channel to this node and send through it"
            )
        if self.allow is not None and (identity is None or identity not in self.allow):
            return f"{identity.short() if identity else 'an unauthenticated peer'} is not allowed"
        return None

    async def _refuse(self, message: Message, identity: NodeId | None, reason: str) -> None:
        try:
            frames = decode_packet(message.payload)
        except WireError:
            return
        # The reason once per packet: an answer never outweighs the OPENs it answers (13
        # bytes each; an OPEN_REFUSED without text is 11), however many one packet holds.
        refusals = [
            OpenRefused(f.session, RefuseReason.NOT_ALLOWED, "")
            for f in frames
            if isinstance(f, Open)
        ]
        if not refusals:
            return
        refusals[0] = OpenRefused(refusals[0].session, RefuseReason.NOT_ALLOWED, reason)
        self.refused_identities += 1
        self.counters.last_error = reason
        log.warning("portal.refused", service=self.name, peer=identity or "-", reason=reason)
        reply = Message(message.return_route, (ServiceAddress(self.name),), encode_packet(refusals))
        await self.router.route(reply)

    # -- sessions ---------------------------------------------------------------------

    def _requested(self, driver: MuxDriver, session: int) -> None:
        task = asyncio.get_running_loop().create_task(self._connect(driver, session))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, driver: MuxDriver, session: int) -> None:
        loop = asyncio.get_running_loop()
        end = SocketEnd(
            driver, lambda end: end.transport.pause_reading() if end.transport else None
        )
        try:
            async with asyncio.timeout(self.connect_timeout):
                await loop.create_connection(lambda: end, self.host, self.port)
        except ConnectionRefusedError:
            driver.refuse(
                session, RefuseReason.REFUSED, f"connection refused by {self.host}:{self.port}"
            )
            return
        except (OSError, TimeoutError) as exc:
            text = describe_error(exc)
            driver.refuse(
                session, RefuseReason.UNREACHABLE, f"cannot reach {self.host}:{self.port}: {text}"
            )
            return
        assert end.transport is not None
        if driver.mux.session(session) is None:
            end.transport.abort()  # the inlet gave up while we connected
            return
        end.session = session
        driver.attach(session, end)
        try:
            driver.accept(session)
        except PortalLocalError:
            end.transport.abort()
            return
        end.start()  # what the server said already (an SSH banner), then read on

    def _idle(self, driver: MuxDriver) -> None:
        for key, value in list(self._remotes.items()):
            if value is driver:
                del self._remotes[key]
        driver.retire()

    async def close(self, reason: str = "the outlet was deleted") -> None:
        self.closed = True
        self.router.unregister(self.name)
        for task in list(self._connecting):
            task.cancel()
        for driver in list(self._remotes.values()):
            with contextlib.suppress(Exception):
                await driver.close(reason)
        self._remotes.clear()
