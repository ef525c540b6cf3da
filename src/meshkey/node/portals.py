"""A node's portals: TCP inlets and outlets, portal streams and ``/secure/`` routes, and what
the node's store keeps of them.

:class:`NodePortals` is the node's portal part, made when the node starts (it needs the
router and the secure channels) and closed when it stops. It holds the inlets and outlets
by name (:class:`~meshkey.portal.portals.Portals`) and the resolver of ``/secure/`` routes
(:class:`~meshkey.portal.secure_routes.SecureRoutes`), saves every inlet and outlet to the
store as it is created and forgets it as it is deleted, and restores them after a restart.
:class:`~meshkey.node.core.Node` delegates its public portal methods here, turning NodeIds
given as text into NodeIds first; the rest of the node only makes, restores and closes it.

A create whose record cannot be saved is undone, so the store and the node never disagree
about what exists. A restored inlet resolves its route (opening its secure channels) once
the node listens, in the background, rather than at its first client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from meshkey.channel.manager import SecureChannels
from meshkey.identity.node_id import NodeId
from meshkey.log import EventLogger
from meshkey.node.store import NodeStore
from meshkey.portal import DEFAULT_OUTLET, check_end_to_end, open_portal_stream
from meshkey.portal.portals import InletEntry, OutletEntry, Portals, check_authorizable
from meshkey.portal.secure_routes import NameResolver, SecureRoutes
from meshkey.routing.address import Route, RouteError
from meshkey.routing.router import Router

log = EventLogger("node")

#: How long a restored inlet waits for the node to listen before resolving its route anyway.
LISTEN_WAIT = 5.0
_LISTEN_POLL = 0.05


def _record_ids(values: list[str] | None) -> frozenset[NodeId] | None:
    """The identities a store record lists (None: not restricted)."""
    return frozenset(NodeId.parse(value) for value in values) if values else None


class NodePortals:
    def __init__(
        self,
        router: Router,
        channels: SecureChannels,
        *,
        resolve_names: NameResolver,
        store: NodeStore | None,
        listening: Callable[[], bool],
    ) -> None:
        """``resolve_names`` turns a route's ``/node/NAME`` into addresses (the node's
        home); ``listening()`` says whether the node listens yet."""
        self.router = router
        self.channels = channels
        self.routes = SecureRoutes(channels, resolve_names)
        self.portals = Portals(router, channels, self.routes)
        self._store = store
        self._listening = listening
        self._tasks: set[asyncio.Task[None]] = set()

    async def restore(self) -> None:
        """The portals the store kept (inlets listen again where they listened). One that
        cannot be made again is logged and skipped."""
        store = self._store
        if store is None:
            return
        portals = self.portals
        for record in store.tcp_outlets():
            try:
                portals.create_outlet(
                    record["to"],
                    name=record["name"],
                    alias=record["alias"],
                    allow=_record_ids(record["allow"]),
                    insecure=record["insecure"],
                    created_at=record["created_at"],
                )
            except (ValueError, RouteError) as exc:
                log.warning("portal.restore_failed", alias=record["alias"], reason=str(exc))
        for record in store.tcp_inlets():
            try:
                entry = await portals.create_inlet(
                    record["listen"],
                    record["route"],
                    alias=record["alias"],
                    authorized=_record_ids(record["authorized"]),
                    insecure=record["insecure"],
                    created_at=record["created_at"],
                    keep_if_taken=True,
                )
            except (ValueError, RouteError) as exc:
                log.warning("portal.restore_failed", alias=record["alias"], reason=str(exc))
                continue
            if entry.listening:  # opens its channels now, not at the first client
                task = asyncio.get_running_loop().create_task(self._prepare_inlet(entry))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _prepare_inlet(self, entry: InletEntry) -> None:
        """A restored inlet's route, resolved once the node listens (a daemon binds its
        sockets after start(); hops dialled before would fail for nothing)."""
        for _ in range(round(LISTEN_WAIT / _LISTEN_POLL)):
            if self._listening():
                break
            await asyncio.sleep(_LISTEN_POLL)
        await entry.inlet.prepare()

    async def resolve_secure(
        self, route: Route, *, authorized: frozenset[NodeId] | None, timeout: float
    ) -> Route:
        """See :meth:`meshkey.node.core.Node.resolve_secure`."""
        return await self.routes.resolve(route, authorized=authorized, timeout=timeout)

    # -- outlets ------------------------------------------------------------------------

    async def create_tcp_outlet(
        self,
        to: str,
        *,
        name: str = DEFAULT_OUTLET,
        alias: str | None = None,
        allow: frozenset[NodeId] | None = None,
        insecure: bool = False,
    ) -> OutletEntry:
        """See :meth:`meshkey.node.core.Node.create_tcp_outlet`; saved to the store."""
        entry = self.portals.create_outlet(
            to, name=name, alias=alias, allow=allow, insecure=insecure
        )
        if self._store is not None:
            try:
                await asyncio.to_thread(self._store.save_tcp_outlet, entry.record())
            except BaseException:
                await self.portals.delete_outlet(entry.alias)
                raise
        return entry

    def tcp_outlets(self) -> list[OutletEntry]:
        return self.portals.outlets()

    def tcp_outlet(self, alias: str) -> OutletEntry:
        return self.portals.outlet(alias)

    async def delete_tcp_outlet(self, alias: str) -> OutletEntry:
        entry = await self.portals.delete_outlet(alias)
        if self._store is not None:
            await asyncio.to_thread(self._store.delete_tcp_outlet, entry.alias)
        return entry

    # -- inlets -------------------------------------------------------------------------

    async def create_tcp_inlet(
        self,
        listen: str,
        *,
        route: str | Route,
        authorized: frozenset[NodeId] | None = None,
        alias: str | None = None,
        insecure: bool = False,
        timeout: float = 10.0,
    ) -> InletEntry:
        """See :meth:`meshkey.node.core.Node.create_tcp_inlet`; saved to the store, then
        its route resolved for up to ``timeout``."""
        entry = await self.portals.create_inlet(
            listen, route, alias=alias, authorized=authorized, insecure=insecure
        )
        if self._store is not None:
            try:
                await asyncio.to_thread(self._store.save_tcp_inlet, entry.record())
            except BaseException:
                await self.portals.delete_inlet(entry.alias)
                raise
        try:
            await asyncio.wait_for(asyncio.shield(entry.inlet.prepare()), timeout)
        except TimeoutError:
            entry.inlet.counters.last_error = f"the route did not answer within {timeout:g}s"
        return entry

    def tcp_inlets(self) -> list[InletEntry]:
        return self.portals.inlets()

    def tcp_inlet(self, alias: str) -> InletEntry:
        return self.portals.inlet(alias)

    async def delete_tcp_inlet(self, alias: str) -> InletEntry:
        entry = await self.portals.delete_inlet(alias)
        if self._store is not None:
            await asyncio.to_thread(self._store.delete_tcp_inlet, entry.alias)
        return entry

    # -- streams ------------------------------------------------------------------------

    async def open_portal_stream(
        self,
        route: Route,
        *,
        authorized: frozenset[NodeId] | None = None,
        insecure: bool = False,
        timeout: float = 30.0,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """See :meth:`meshkey.node.core.Node.open_portal_stream`."""
        if not insecure:
            check_end_to_end(route, None, self.channels)
        check_authorizable(route, authorized, insecure)
        resolved = await self.portals.resolve(route, authorized)
        return await open_portal_stream(
            self.router,
            resolved,
            insecure=True,
            timeout=timeout,
            channels=self.channels,
            budget=self.portals.budget,
        )

    async def close(self) -> None:
        """Stops every inlet and outlet (their sessions are reset; the peers hear it)."""
        for task in list(self._tasks):
            task.cancel()
        await self.portals.close()
        await self.routes.close()
