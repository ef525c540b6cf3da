"""``/secure/LISTENER`` routes: open, or reuse, a secure channel and carry the rest inside it.

Ockam's rule, applied by the node that originates traffic (``Node.send``, inlets, portal
streams, ``create_secure_channel``), left to right: at each ``/secure/X``, the route so far
plus ``/service/X`` is the route of a secure channel to the listener X on the node reached
so far. An open initiator channel created with exactly that route is reused; otherwise one
is opened. The prefix and ``/secure/X`` are replaced by the channel's address, so

    /node/green/service/forward_to_blue/secure/api/service/outlet

becomes ``/service/<channel>/service/outlet`` with the channel's route
``/ip4/…/udp/P/id/GREEN/service/forward_to_blue/service/api``. A second ``/secure/`` nests: the
next channel's route starts with the first channel's address, so it runs inside it.

Concurrent resolutions of the same channel share one handshake (many clients of an inlet
connecting at once open one channel, not one each). The resolver remembers the channels it
opened, one per (route, authorized): when that channel stops being open (its route broke,
its peer went away) and a new one opens in its place, the old one is deleted, so an outage
leaves no channel behind pinging a dead route forever. A failed handshake leaves nothing.

It lives in the portal layer because portals are its main user and the channel layer's
manager is kept to channels; it needs nothing from portals (the node uses it for messages).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from meshkey.channel.manager import Channel, ChannelState, SecureChannels
from meshkey.identity.node_id import NodeId
from meshkey.log import EventLogger
from meshkey.routing.address import (
    Address,
    NodeNameAddress,
    Route,
    RouteError,
    SecureAddress,
    ServiceAddress,
    format_route,
)

log = EventLogger("portal")

#: How a route's ``/node/NAME`` addresses become transport addresses (the node's home).
NameResolver = Callable[[Route], Route]

_Key = tuple[Route, frozenset[NodeId] | None]


def has_secure(route: Route) -> bool:
    return any(isinstance(address, SecureAddress) for address in route)


class SecureRoutes:
    def __init__(self, channels: SecureChannels, resolve_names: NameResolver) -> None:
        self.channels = channels
        self._resolve_names = resolve_names
        self._opening: dict[_Key, asyncio.Task[Channel]] = {}
        self._owned: dict[_Key, str] = {}  # channels this resolver opened, by what for

    async def resolve(
        self,
        route: Route,
        *,
        authorized: frozenset[NodeId] | None = None,
        timeout: float = 10.0,
    ) -> Route:
        """``route`` with ``/node/NAME`` resolved and every ``/secure/X`` replaced by a
        channel's address. ``authorized`` applies to the last channel (the one to the node
        that serves the rest of the route). RouteError for a route that ends at
        ``/secure/X``; RemoteError when a channel cannot be opened."""
        route = self._resolve_names(route)
        if not has_secure(route):
            return route
        if isinstance(route[-1], SecureAddress):
            raise RouteError(
                f"{format_route(route)} ends at {route[-1]}: add what the channel carries, "
                f"e.g. {format_route(route)}/service/echo"
            )
        last = max(i for i, a in enumerate(route) if isinstance(a, SecureAddress))
        resolved: list[Address] = []
        for position, address in enumerate(route):
            if isinstance(address, SecureAddress):
                listener_route = (*resolved, ServiceAddress(address.listener))
                peers = authorized if position == last else None
                channel = await self.channel(listener_route, authorized=peers, timeout=timeout)
                resolved = [ServiceAddress(channel.address)]
            else:
                resolved.append(address)
        return tuple(resolved)

    async def channel(
        self,
        listener_route: Route,
        *,
        authorized: frozenset[NodeId] | None = None,
        timeout: float = 10.0,
    ) -> Channel:
        """An open channel created with ``listener_route`` (reused), or a new one."""
        found = self.channels.find_open(listener_route, peers=authorized)
        if found is not None:
            return found
        key = (listener_route, authorized)
        task = self._opening.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._open(key, timeout), name=f"secure-route:{format_route(listener_route)}"
            )
            self._opening[key] = task
            task.add_done_callback(lambda done: self._opened(key, done))
        return await asyncio.shield(task)

    def _opened(self, key: _Key, task: asyncio.Task[Channel]) -> None:
        if self._opening.get(key) is task:
            del self._opening[key]
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have given up

    async def _open(self, key: _Key, timeout: float) -> Channel:
        listener_route, authorized = key
        if any(isinstance(a, NodeNameAddress) for a in listener_route):
            raise RouteError(f"{format_route(listener_route)} has unresolved node names")
        channel = await self.channels.create(listener_route, authorized=authorized, timeout=timeout)
        log.info(
            "portal.secure_route_channel",
            route=format_route(listener_route),
            address=channel.address,
            peer=channel.peer,
        )
        previous = self._owned.get(key)
        self._owned[key] = channel.address
        if previous is not None:
            old = self.channels.get(previous)
            if old is not None and old.state is not ChannelState.OPEN:
                with contextlib.suppress(KeyError):
                    await self.channels.delete(previous)
        return channel

    async def close(self) -> None:
        for task in list(self._opening.values()):
            task.cancel()
        self._opening.clear()
