"""``/peer/NODEID`` for :class:`~meshkey.paths.service.PathService`: the glue around the
sans-IO :class:`~meshkey.paths.resolver.PeerResolver` (what the node knows of a peer, the
lookups, watching the first hop of each way so a failed one is skipped), as a mixin so that
paths/service.py keeps to the path engine's commands.
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterable
from dataclasses import replace
from ipaddress import ip_address
from typing import Any

from meshkey.dht.records import PeerRecord
from meshkey.dht.service import DhtService
from meshkey.identity.node_id import NodeId
from meshkey.log import EventLogger
from meshkey.nat.allowance import networks_of
from meshkey.nat.classify import Classification
from meshkey.paths.engine import PathEngine
from meshkey.paths.resolver import Dial, Known, LookUp, PeerResolver, RecordView, UseLink, UseRelay
from meshkey.routing.address import (
    Route,
    RouteError,
    ServiceAddress,
    TransportAddress,
    parse_route,
)
from meshkey.routing.errors import RemoteError
from meshkey.transport.interfaces import interface_networks
from meshkey.transport.link import HopLink
from meshkey.transport.tcp import TcpTransport
from meshkey.transport.udp import QuicTransport
from meshkey.wire.net import Endpoint, NatClass

log = EventLogger("paths")

PEER_LOOKUP_TIMEOUT = 10.0  # a /peer/NODEID route waits at most this long for a lookup


class PeerResolution:
    resolver: PeerResolver
    engine: PathEngine
    graph: DhtService | None
    udp: QuicTransport
    tcp: TcpTransport
    no_direct: bool

    def now(self) -> float:
        raise NotImplementedError

    @property
    def classification(self) -> Classification | None:
        raise NotImplementedError

    def direct_route(self, peer: NodeId) -> Route | None:
        raise NotImplementedError

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        raise NotImplementedError

    async def peer_key(self, peer: NodeId) -> bytes | None:
        record = self.resolver.record(peer)
        if record is None:
            await self._look_up(peer, PEER_LOOKUP_TIMEOUT)
            record = self.resolver.record(peer)
        return record.channel_key or None if record is not None else None

    # -- /peer/NODEID (paths/resolver.py decides) -------------------------------------------

    def _known(self, peer: NodeId) -> Known:
        """What the node knows of ``peer`` now, for the resolver."""
        direct_allowed = not self.no_direct and self.engine.paths.direct_allowed(peer)
        direct = self.direct_route(peer) if direct_allowed else None
        open_links = tuple(
            link.name
            for transport in (self.udp, self.tcp)
            for link in transport.links
            if link.core.peer == peer
            and link.core.is_open
            and not link.closed
            and not self.engine.is_path(link.name)  # a punched path only as the chosen one
        )
        dialled = self.graph.reached_at(peer) if self.graph is not None else None
        first = direct[0] if direct else None
        return Known(
            direct_link=first.name if isinstance(first, ServiceAddress) else None,
            open_links=open_links,
            dialled_at=dialled,
        )

    async def resolve_peer(
        self, peer: NodeId, *, timeout: float = PEER_LOOKUP_TIMEOUT
    ) -> Route | None:
        """``/peer/NODEID``: the way to ``peer`` now (the resolver's ladder), looking it up in
        the node graph when needed; None when there is none."""
        for _ in range(3):
            now = self.now()
            verdict = self.resolver.resolve(peer, self._known(peer), now, relay_only=self.no_direct)
            if isinstance(verdict, LookUp):
                await self._look_up(peer, timeout)
                continue
            if self.resolver.wants_refresh(peer, now):
                self._spawn(self._look_up(peer, timeout))
            log.debug("paths.resolved", peer=peer, way=type(verdict).__name__, why=verdict)
            if isinstance(verdict, UseLink):
                return (ServiceAddress(verdict.link),)
            if isinstance(verdict, Dial):
                host, port = verdict.endpoint
                # Over TCP where UDP is blocked, on the LAN too: what drops UDP may sit
                # between two hosts of one LAN as well (a bridge's firewall, a host's own).
                address = self._over_tcp_if_blocked(
                    TransportAddress.from_socket("udp", host, port, peer)
                )
                self._watch_way(peer, address, None)
                return (address,)
            if isinstance(verdict, UseRelay):
                try:
                    route = parse_route(verdict.route)
                except RouteError:
                    self.resolver.on_relay_failed(peer, verdict.route, now)
                    continue
                first = route[0] if route else None
                if isinstance(first, TransportAddress):
                    first = self._over_tcp_if_blocked(first)
                    route = (first, *route[1:])
                    self._watch_way(peer, first, verdict.route)
                return route
            log.debug("paths.no_path", peer=peer, reason=verdict.reason)
            return None
        return None

    def _over_tcp_if_blocked(self, address: TransportAddress) -> TransportAddress:
        """The first hop of a way, as this node can dial it: a UDP address over TCP at the
        same address where UDP is blocked here (a node's TCP listener takes its UDP port
        number: a peer's record and a relay route name only the UDP one)."""
        if address.protocol != "udp" or not self._udp_blocked():
            return address
        return replace(address, protocol="tcp")

    def _udp_blocked(self) -> bool:
        """UDP is blocked here: the classification says so, or, before it knows, every hop
        this node holds is a TCP one (the node graph's TCP fallback got it in; its first
        seconds, before a classification round ends, are when a user tries it first)."""
        found = self.classification
        if found is not None and found.nat_class is not NatClass.UNKNOWN:
            return found.nat_class is NatClass.UDP_BLOCKED

        def any_open(links: Iterable[HopLink]) -> bool:
            return any(link.core.is_open and not link.closed for link in links)

        return any_open(self.tcp.links) and not any_open(self.udp.links)

    async def _look_up(self, peer: NodeId, timeout: float) -> None:
        record: RecordView | None = None
        if self.graph is not None:
            try:
                found = await self.graph.find(peer, timeout=timeout)
            except RemoteError as exc:
                log.debug("paths.lookup_failed", peer=peer, reason=str(exc))
            else:
                if found.record is not None:
                    record = RecordView(
                        found.record.direct,
                        found.record.relays,
                        self._on_this_lan(found.record),
                        found.record.channel_key,
                    )
        self.resolver.on_record(peer, record, self.now())

    def _on_this_lan(self, record: PeerRecord) -> tuple[Endpoint, ...]:
        """The record's own addresses this node can reach on its LAN: only when both are
        behind the same public IP (the same NAT: the classification's mapping, or where UDP
        is blocked the address the node graph's TCP hops were seen at, which such a peer's
        record names as its reflexive one), and only addresses in this host's networks (two
        homes may both use 10.1.0.0/24)."""
        found = self.classification
        ours = found.public_ip if found is not None else None
        if ours is None and self.graph is not None and self.graph.observed is not None:
            ours = self.graph.observed[0]  # UDP blocked: the public IP a TCP hop showed
        theirs = {host for host, _ in record.reflexive}
        if ours is None or ours not in theirs:
            return ()
        networks = networks_of((), interface_networks())
        return tuple(
            (host, port)
            for host, port in record.local
            if any(ip_address(host) in network for network in networks)
        )

    def _watch_way(self, peer: NodeId, address: TransportAddress, relay: str | None) -> None:
        """Dials the first hop of a way (the router then uses that hop); if it fails, the
        resolver skips that way for a while, so the next message takes the next rung."""
        transport = self.udp if address.protocol == "udp" else self.tcp
        try:
            link = transport.outbound(address)
        except (ValueError, OSError):
            failed_at = self.now()
            if relay is None:
                self.resolver.on_dial_failed(peer, address.endpoint, failed_at)
            else:
                self.resolver.on_relay_failed(peer, relay, failed_at)
            return
        if link.core.is_open:
            return
        self._spawn(self._report_way(peer, link, address, relay))

    async def _report_way(
        self, peer: NodeId, link: HopLink, address: TransportAddress, relay: str | None
    ) -> None:
        await link.settled.wait()
        if link.core.is_open:
            return
        if relay is None:
            self.resolver.on_dial_failed(peer, address.endpoint, self.now())
        else:
            self.resolver.on_relay_failed(peer, relay, self.now())
        log.info("paths.way_failed", peer=peer, way=relay or str(address))
