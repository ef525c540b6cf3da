"""A node's TCP inlets and outlets by name: create, list, show, delete, restore.

:class:`Portals` is what ``Node.create_tcp_inlet`` and ``Node.create_tcp_outlet`` (and so
the control API and the CLI) work through. Each portal has an **alias** (its name in lists
and commands); an outlet also has its worker address, ``/service/NAME`` (default
``outlet``), which is what inlets' routes end at. Persistence is the node's: it saves what
:meth:`OutletEntry.record` and :meth:`InletEntry.record` say and gives them back to
:meth:`Portals.restore_outlet` / :meth:`Portals.restore_inlet` after a restart.

Inlets keep their route as given (``/node/green/service/forward_to_blue/secure/api/service/
outlet``) and resolve it through :class:`~meshkey.portal.secure_routes.SecureRoutes` when a
client connects (see :mod:`meshkey.portal.inlet`), so a restarted node, or one whose
neighbours moved to new ports, finds its way again by name. ``authorized`` says which
identities may be at the far end: the last ``/secure/`` channel's peer (checked during its
handshake), the peer of a channel address the route starts with, or the node at the other
end of a single hop (pinned to it).

An inlet restored after a restart whose address is taken (another program listens there)
is kept, not listening, with the reason; ``delete`` removes it. Each node holds at most
:data:`MAX_PORTALS` inlets and as many outlets.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import re
from dataclasses import dataclass
from typing import Any

from meshkey.channel.manager import SecureChannels
from meshkey.errors import MeshkeyError
from meshkey.identity.node_id import NodeId
from meshkey.log import EventLogger
from meshkey.portal.budget import PortalBudget
from meshkey.portal.inlet import Inlet, InsecureRouteError, check_end_to_end
from meshkey.portal.outlet import DEFAULT_OUTLET, Outlet
from meshkey.portal.secure_routes import SecureRoutes, has_secure
from meshkey.portal.session import DEFAULT_LIMITS, SessionLimits
from meshkey.routing.address import (
    NodeNameAddress,
    Route,
    ServiceAddress,
    TransportAddress,
    format_route,
    parse_route,
)
from meshkey.routing.router import Router
from meshkey.transport.errors import describe_error

log = EventLogger("portal")

MAX_PORTALS = 1024
#: How long an inlet's secure channel handshake may take when a client connects.
HANDSHAKE_TIMEOUT = 10.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class PortalError(MeshkeyError, ValueError):
    """A portal that cannot be made as asked (bad address, name or route)."""

    default_kind = "invalid"


class PortalConflict(PortalError):
    """The alias, worker address or listen address is taken."""

    default_kind = "conflict"


class PortalNotFound(MeshkeyError, KeyError):
    default_kind = "not_found"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"


class PortalRefused(MeshkeyError, ConnectionRefusedError):
    """The far end of an inlet's route is not one of its ``authorized`` identities."""

    default_kind = "refused"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def parse_endpoint(text: str, *, what: str, any_port: bool = False) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or a bare ``PORT`` (meaning 127.0.0.1:PORT); port 0
    only where ``any_port`` (a listener: the OS chooses)."""
    value = str(text).strip()
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    host = host.strip("[]")
    lowest = 0 if any_port else 1
    if not host or not port.isdigit() or not lowest <= int(port) <= 65535:
        raise PortalError(
            f"invalid {what} {text!r}: expected HOST:PORT or a port "
            f"({lowest}-65535), e.g. 127.0.0.1:5432 or 5432"
        )
    return host, int(port)


def _check_alias(alias: str, what: str) -> str:
    if not _NAME.fullmatch(alias):
        raise PortalError(
            f"invalid {what} alias {alias!r}: 1-64 letters, digits, '_', '.', '-' (not "
            "starting with '_', '.' or '-')"
        )
    return alias


def _sorted_ids(ids: frozenset[NodeId] | None) -> list[str] | None:
    return sorted(str(n) for n in ids) if ids is not None else None


@dataclass
class OutletEntry:
    alias: str
    outlet: Outlet
    created_at: str

    def describe(self) -> dict[str, Any]:
        """One schema for create, list and show."""
        counters = self.outlet.describe()
        return {
            "alias": self.alias,
            "address": self.outlet.address,
            "to": counters["target"],
            "allow": counters["allow"],
            "insecure": self.outlet.insecure,
            "inlets": counters["remotes"],
            "sessions_open": counters["sessions_open"],
            "sessions_total": counters["sessions_total"],
            "sessions_failed": counters["sessions_failed"],
            "bytes_to_server": counters["bytes_to_server"],
            "bytes_from_server": counters["bytes_from_server"],
            "refused": counters["refused"],
            "last_error": counters["last_error"],
            "created_at": self.created_at,
        }

    def record(self) -> dict[str, Any]:
        """What a restart needs."""
        outlet = self.outlet
        return {
            "alias": self.alias,
            "name": outlet.name,
            "to": f"{outlet.host}:{outlet.port}",
            "allow": _sorted_ids(outlet.allow),
            "insecure": outlet.insecure,
            "created_at": self.created_at,
        }


@dataclass
class InletEntry:
    alias: str
    host: str
    port: int
    route: Route  # as given: may hold /node/NAME and /secure/X
    authorized: frozenset[NodeId] | None
    insecure: bool
    inlet: Inlet
    created_at: str
    error: str | None = None  # why it does not listen

    @property
    def listening(self) -> bool:
        return self.error is None

    def describe(self) -> dict[str, Any]:
        """One schema for create, list and show."""
        counters = self.inlet.describe()
        return {
            "alias": self.alias,
            "address": f"{self.host}:{self.port}",
            "to": format_route(self.route),
            "route": counters["resolved_route"],
            "authorized": _sorted_ids(self.authorized),
            "insecure": self.insecure,
            "status": "listening" if self.listening else "not listening",
            "sessions_open": counters["sessions_open"],
            "sessions_total": counters["sessions_total"],
            "sessions_failed": counters["sessions_failed"],
            "bytes_to_outlet": counters["bytes_to_outlet"],
            "bytes_from_outlet": counters["bytes_from_outlet"],
            "last_error": self.error or counters["last_error"],
            "created_at": self.created_at,
        }

    def record(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "listen": f"{self.host}:{self.port}",
            "route": format_route(self.route),
            "authorized": _sorted_ids(self.authorized),
            "insecure": self.insecure,
            "created_at": self.created_at,
        }


class Portals:
    def __init__(
        self,
        router: Router,
        channels: SecureChannels,
        routes: SecureRoutes,
        *,
        limits: SessionLimits = DEFAULT_LIMITS,
        budget: PortalBudget | None = None,
    ) -> None:
        """``budget``: what the node's portal sessions may hold, shared by every inlet,
        outlet and stream (:class:`~meshkey.portal.budget.PortalBudget`)."""
        self.router = router
        self.channels = channels
        self.routes = routes
        self.limits = limits
        self.budget = budget if budget is not None else PortalBudget()
        self._outlets: dict[str, OutletEntry] = {}
        self._inlets: dict[str, InletEntry] = {}

    # -- outlets ----------------------------------------------------------------------

    def outlets(self) -> list[OutletEntry]:
        return [self._outlets[a] for a in sorted(self._outlets)]

    def outlet(self, alias: str) -> OutletEntry:
        """By alias, or by worker address (``/service/NAME`` or ``NAME``)."""
        entry = self._outlets.get(alias)
        if entry is None:
            name = alias.removeprefix("/service/")
            entry = next((e for e in self._outlets.values() if e.outlet.name == name), None)
        if entry is None:
            raise PortalNotFound(f"this node has no TCP outlet {alias!r}")
        return entry

    def create_outlet(
        self,
        to: str,
        *,
        name: str = DEFAULT_OUTLET,
        alias: str | None = None,
        allow: frozenset[NodeId] | None = None,
        insecure: bool = False,
        created_at: str | None = None,
    ) -> OutletEntry:
        host, port = parse_endpoint(to, what="outlet target")
        name = name.removeprefix("/service/")
        if not _NAME.fullmatch(name):
            raise PortalError(
                f"invalid outlet address /service/{name}: 1-64 letters, digits, '_', '.', '-'"
            )
        alias = _check_alias(alias or name, "outlet")
        if alias in self._outlets:
            raise PortalConflict(f"a TCP outlet named {alias!r} exists on this node")
        if self.router.has_worker(name):
            raise PortalConflict(f"/service/{name} is in use on this node: choose another --from")
        if len(self._outlets) >= MAX_PORTALS:
            raise PortalConflict(f"this node has {MAX_PORTALS} TCP outlets, the most it keeps")
        if allow is not None and not allow:
            raise PortalError("--allow needs at least one identity (or none: anyone)")
        outlet = Outlet(
            self.router,
            host,
            port,
            name=name,
            allow=allow,
            insecure=insecure,
            limits=self.limits,
            budget=self.budget,
        )
        entry = OutletEntry(alias, outlet, created_at or _now())
        self._outlets[alias] = entry
        return entry

    async def delete_outlet(self, alias: str) -> OutletEntry:
        entry = self.outlet(alias)
        del self._outlets[entry.alias]
        await entry.outlet.close()
        log.info("portal.outlet_deleted", alias=entry.alias, service=entry.outlet.name)
        return entry

    # -- inlets -----------------------------------------------------------------------

    def inlets(self) -> list[InletEntry]:
        return [self._inlets[a] for a in sorted(self._inlets)]

    def inlet(self, alias: str) -> InletEntry:
        """By alias, or by listen address (``HOST:PORT`` or a port)."""
        entry = self._inlets.get(alias)
        if entry is None:
            with contextlib.suppress(PortalError):
                host, port = parse_endpoint(alias, what="inlet address")
                entry = next(
                    (e for e in self._inlets.values() if (e.host, e.port) == (host, port)), None
                )
        if entry is None:
            raise PortalNotFound(f"this node has no TCP inlet {alias!r}")
        return entry

    async def create_inlet(
        self,
        listen: str,
        route: str | Route,
        *,
        alias: str | None = None,
        authorized: frozenset[NodeId] | None = None,
        insecure: bool = False,
        created_at: str | None = None,
        keep_if_taken: bool = False,
    ) -> InletEntry:
        """Listens on ``listen`` and sends every connection to the outlet at ``route``.

        PortalError (or InsecureRouteError, a ValueError) for a route that is not end to
        end without ``insecure``, PortalConflict when the alias or the address is taken
        (``keep_if_taken``: keep the inlet, not listening, saying why: a restore)."""
        host, port = parse_endpoint(listen, what="inlet address", any_port=True)
        given = parse_route(route) if isinstance(route, str) else route
        if alias is not None:
            _check_alias(alias, "inlet")
            if alias in self._inlets:
                raise PortalConflict(f"a TCP inlet named {alias!r} exists on this node")
        if len(self._inlets) >= MAX_PORTALS:
            raise PortalConflict(f"this node has {MAX_PORTALS} TCP inlets, the most it keeps")
        if not insecure:
            check_end_to_end(given, None, self.channels)
        check_authorizable(given, authorized, insecure)

        async def resolve() -> Route:
            return await self.resolve(given, authorized)

        inlet = Inlet(
            self.router,
            given,
            insecure=True,  # checked above, on the route as given
            limits=self.limits,
            channels=self.channels,
            resolve=resolve,
            budget=self.budget,
        )
        error = None
        try:
            host, port = await inlet.listen(host, port)
        except OSError as exc:
            error = f"cannot listen on {host}:{port}: {describe_error(exc)}"
            if not keep_if_taken:
                raise PortalConflict(error) from exc
            log.warning("portal.inlet_not_listening", address=f"{host}:{port}", reason=error)
        alias = alias or f"inlet-{port}"
        if alias in self._inlets:
            await inlet.close()
            raise PortalConflict(f"a TCP inlet named {alias!r} exists on this node")
        entry = InletEntry(
            alias, host, port, given, authorized, insecure, inlet, created_at or _now(), error
        )
        self._inlets[alias] = entry
        return entry

    async def delete_inlet(self, alias: str) -> InletEntry:
        entry = self.inlet(alias)
        del self._inlets[entry.alias]
        await entry.inlet.close()
        log.info("portal.inlet_deleted", alias=entry.alias, address=f"{entry.host}:{entry.port}")
        return entry

    async def resolve(self, route: Route, authorized: frozenset[NodeId] | None = None) -> Route:
        """The route an inlet's (or a stream's) session goes along now: names and
        ``/secure/`` resolved, and its far end checked against ``authorized``."""
        resolved = await self.routes.resolve(
            route, authorized=authorized, timeout=HANDSHAKE_TIMEOUT
        )
        if authorized is not None and not has_secure(route):
            resolved = self._authorized_route(resolved, authorized)
        return resolved

    def _authorized_route(self, route: Route, authorized: frozenset[NodeId]) -> Route:
        first = route[0]
        if len(route) == 1:
            peer: NodeId | None = self.router.node_id
        elif isinstance(first, ServiceAddress):
            channel = self.channels.get(first.name)
            peer = channel.peer if channel is not None else None
        elif isinstance(first, TransportAddress) and len(route) == 2:
            if first.node_id is None and len(authorized) == 1:
                return (first.with_node_id(next(iter(authorized))), *route[1:])
            peer = first.node_id
        else:
            peer = None
        if peer is None or peer not in authorized:
            who = peer.short() if peer is not None else "an unknown identity"
            raise PortalRefused(
                f"the far end of {format_route(route)} is {who}, not one of --authorized"
            )
        return route

    async def close(self) -> None:
        """Stops every inlet and outlet (their sessions are reset; the peers hear it)."""
        inlets, outlets = list(self._inlets.values()), list(self._outlets.values())
        self._inlets.clear()
        self._outlets.clear()
        await asyncio.gather(
            *(e.inlet.close("the node is stopping") for e in inlets),
            *(e.outlet.close("the node is stopping") for e in outlets),
            return_exceptions=True,
        )


def check_authorizable(route: Route, authorized: frozenset[NodeId] | None, insecure: bool) -> None:
    """PortalError when ``authorized`` cannot be checked along ``route``."""
    if authorized is None:
        return
    if not authorized:
        raise PortalError("--authorized needs at least one identity (or none: any)")
    if has_secure(route) or len(route) == 1 or isinstance(route[0], ServiceAddress):
        return
    first = route[0]
    if len(route) == 2 and isinstance(first, TransportAddress | NodeNameAddress):
        pinned = first.node_id if isinstance(first, TransportAddress) else None
        if pinned is None and len(authorized) > 1 and isinstance(first, TransportAddress):
            raise PortalError(
                f"{first} is not pinned to a NodeId: give one --authorized identity, or pin "
                f"the hop ({first}/id/NODEID)"
            )
        return
    raise PortalError(
        f"--authorized cannot be checked along {format_route(route)}: nothing authenticates "
        "its far end; add a secure channel (/secure/api before the outlet's service)"
        + (" (--insecure does not change that)" if insecure else "")
    )


__all__ = [
    "HANDSHAKE_TIMEOUT",
    "MAX_PORTALS",
    "InletEntry",
    "InsecureRouteError",
    "OutletEntry",
    "PortalConflict",
    "PortalError",
    "PortalNotFound",
    "PortalRefused",
    "Portals",
    "check_authorizable",
    "parse_endpoint",
]
