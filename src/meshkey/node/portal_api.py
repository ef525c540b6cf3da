"""The portal part of :class:`~meshkey.node.core.Node`'s API: TCP inlets and outlets, portal
streams and ``/secure/`` routes, delegating to :class:`~meshkey.node.portals.NodePortals`.

A mixin, so that ``node.create_tcp_inlet(...)`` and friends stay methods of ``Node`` (public
API, used by the daemon and by programs) while node/core.py stays the composition root; the
node's other parts only call ``_start_portals``, ``_stop_portals`` and ``resolve_secure``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from meshkey.channel.manager import SecureChannels
from meshkey.identity.node_id import NodeId, node_ids
from meshkey.node.portals import NodePortals
from meshkey.node.state import Home, resolve_route
from meshkey.node.store import NodeStore
from meshkey.portal import DEFAULT_OUTLET
from meshkey.portal.portals import InletEntry, OutletEntry, Portals
from meshkey.routing.address import Route, TransportAddress, parse_route
from meshkey.routing.router import Router


class PortalMethods:
    """What :class:`~meshkey.node.core.Node` offers for portals (see the module docstring)."""

    _home: Home | None
    _store: NodeStore | None

    @property
    def router(self) -> Router:
        raise NotImplementedError

    @property
    def channels(self) -> SecureChannels:
        raise NotImplementedError

    @property
    def addresses(self) -> list[TransportAddress]:
        raise NotImplementedError

    def _require(self, component: Any) -> Any:
        raise NotImplementedError

    _portal_part: NodePortals | None = None

    @property
    def _portals(self) -> NodePortals:
        part: NodePortals = self._require(self._portal_part)
        return part

    @property
    def portals(self) -> Portals:
        return self._portals.portals

    async def resolve_secure(
        self,
        route: str | Route,
        *,
        authorized: Iterable[NodeId | str] | None = None,
        timeout: float = 10.0,
    ) -> Route:
        """:meth:`resolve`, and every ``/secure/X`` replaced by a secure channel to the
        listener X on the node reached so far (an open one is reused), so the rest of the
        route travels inside it; ``authorized`` applies to the last channel."""
        portals = self._portals
        parsed = parse_route(route) if isinstance(route, str) else route
        allowed = node_ids(authorized) if authorized else None
        return await portals.resolve_secure(parsed, authorized=allowed, timeout=timeout)

    async def create_tcp_outlet(
        self,
        to: str,
        *,
        name: str = DEFAULT_OUTLET,
        alias: str | None = None,
        allow: Iterable[NodeId | str] | None = None,
        insecure: bool = False,
    ) -> OutletEntry:
        """A worker ``/service/NAME`` that opens a TCP connection to ``to`` (``HOST:PORT``,
        or a port on 127.0.0.1) for each portal session; only ``allow`` may use it (anyone
        whose identity is authenticated end to end, if not given). ``insecure`` serves
        sessions that crossed other nodes without a secure channel."""
        return await self._portals.create_tcp_outlet(
            to, name=name, alias=alias, allow=node_ids(allow) if allow else None, insecure=insecure
        )

    def tcp_outlets(self) -> list[OutletEntry]:
        return self._portals.tcp_outlets()

    def tcp_outlet(self, alias: str) -> OutletEntry:
        """By alias or address; PortalNotFound (a KeyError) if there is none."""
        return self._portals.tcp_outlet(alias)

    async def delete_tcp_outlet(self, alias: str) -> OutletEntry:
        return await self._portals.delete_tcp_outlet(alias)

    async def create_tcp_inlet(
        self,
        listen: str = "127.0.0.1:0",
        *,
        route: str | Route,
        authorized: Iterable[NodeId | str] | None = None,
        alias: str | None = None,
        insecure: bool = False,
        timeout: float = 10.0,
    ) -> InletEntry:
        """A TCP listener on ``listen``; each connection becomes a portal session to the
        outlet at ``route``, which must be end to end (a ``/secure/`` channel, a channel's
        address, or one hop) unless ``insecure``. Its route is resolved (and its secure
        channels opened) now, for up to ``timeout``: a route that does not answer yet is
        no error, its reason is the inlet's ``last_error``, and clients that connect later
        try again."""
        return await self._portals.create_tcp_inlet(
            listen,
            route=route,
            authorized=node_ids(authorized) if authorized else None,
            alias=alias,
            insecure=insecure,
            timeout=timeout,
        )

    def tcp_inlets(self) -> list[InletEntry]:
        return self._portals.tcp_inlets()

    def tcp_inlet(self, alias: str) -> InletEntry:
        """By alias or listen address; PortalNotFound (a KeyError) if there is none."""
        return self._portals.tcp_inlet(alias)

    async def delete_tcp_inlet(self, alias: str) -> InletEntry:
        return await self._portals.delete_tcp_inlet(alias)

    async def open_portal_stream(
        self,
        route: str | Route,
        *,
        authorized: Iterable[NodeId | str] | None = None,
        insecure: bool = False,
        timeout: float = 30.0,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """One portal session to the outlet at ``route`` as an asyncio stream pair, with no
        local listener (the route as for an inlet). ConnectionRefusedError when the outlet
        refuses, ConnectionError when the route fails, TimeoutError after ``timeout``."""
        given = parse_route(route) if isinstance(route, str) else route
        allowed = node_ids(authorized) if authorized else None
        return await self._portals.open_portal_stream(
            given, authorized=allowed, insecure=insecure, timeout=timeout
        )

    async def _start_portals(self, store: NodeStore | None) -> None:
        """Portals, and those the store kept (inlets listen again where they listened)."""
        self._portal_part = NodePortals(
            self.router,
            self.channels,
            resolve_names=lambda route: resolve_route(route, self._home),
            store=store,
            listening=lambda: bool(self.addresses),
        )
        await self._portal_part.restore()

    async def _stop_portals(self) -> None:
        if self._portal_part is not None:
            await self._portal_part.close()
