"""``meshkey.Node``: a node embedded in a Python program, and the heart of the daemon.

async with meshkey.Node() as node:
    reply = await node.send("/ip4/127.0.0.1/tcp/4000/service/uppercase", b"hello")
"""

from __future__ import annotations

import asyncio
import inspect
import secrets
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from meshkey.channel.manager import DEFAULT_LISTENER, SecureChannels
from meshkey.channel.policy import RELAY_RESOURCE, Policies
from meshkey.dht.peers import PeerGraph, parse_seed
from meshkey.dht.records import RecordContent
from meshkey.dht.service import DhtService
from meshkey.identity.keys import Identity
from meshkey.identity.node_id import NodeId, node_ids
from meshkey.log import EventLogger
from meshkey.nat.reflexive import ReflexiveAddressService
from meshkey.nat.strategy import MESHKEY, PunchConfig
from meshkey.node.autorelay import AutoRelays
from meshkey.node.events import EventBus
from meshkey.node.policy_api import PolicyMethods
from meshkey.node.portal_api import PortalMethods
from meshkey.node.record import behind_nat, record_content, relay_routes
from meshkey.node.services import install_builtin_services
from meshkey.node.state import Home, NodeStateError, listen_default, parse_listen, resolve_route
from meshkey.node.store import NodeStore
from meshkey.paths.service import PathService
from meshkey.relay.client import Relay, RelayClient
from meshkey.relay.registry import RelayRegistry
from meshkey.routing.address import (
    Route,
    RouteError,
    SecureAddress,
    ServiceAddress,
    TransportAddress,
    check_destination,
    format_route,
)
from meshkey.routing.errors import RemoteError
from meshkey.routing.message import Message
from meshkey.routing.router import Handler, Router
from meshkey.transport.interfaces import concrete_endpoints
from meshkey.transport.tcp import TcpTransport
from meshkey.transport.udp import QuicTransport
from meshkey.wire.dht import Mode
from meshkey.wire.frames import MAX_PAYLOAD
from meshkey.wire.message import ErrorCode
from meshkey.wire.net import Endpoint

log = EventLogger("node")

ServiceFunction = Callable[[bytes], bytes | Awaitable[bytes]]

__all__ = ["Node", "RemoteError"]


RELAY_WATCH_INTERVAL = 2.0


def _udp_endpoint(text: str, home: Home | None = None) -> tuple[str, int]:
    """``HOST:PORT``, ``/ip4/A/udp/P`` (or ``/node/NAME``, with a home) -> (host, port)."""
    if text.startswith("/"):
        route = resolve_route(text, home)
        address = route[0] if len(route) == 1 else None
        if not isinstance(address, TransportAddress) or address.protocol != "udp":
            raise RouteError(f"{text}: an observer is one UDP address, e.g. /ip4/A/udp/P")
        return address.endpoint
    return parse_listen(text)


class Node(PortalMethods, PolicyMethods):
    """A meshkey node: identity, router, transports, services, secure channels and relays.

    ``udp`` and ``tcp`` are listen addresses (``"127.0.0.1:0"`` lets the OS choose a port;
    ``None`` listens on none; ``"auto"``, the default, is all interfaces when a seed is on
    another machine, else loopback). The UDP socket is the node's only one: its QUIC hops and its
    reflexive-address requests all leave from it. ``home`` lets routes name local daemons
    with ``/node/NAME``.
    ``store`` (a daemon's) keeps relays, policies and listeners across restarts.
    """

    def __init__(
        self,
        *,
        identity: Identity | None = None,
        tcp: str | None = "auto",
        udp: str | None = "auto",
        udp_batching: bool = True,
        home: Home | Path | str | None = None,
        name: str | None = None,
        idle_timeout: float = 300.0,
        keepalive_interval: float = 20.0,
        store: NodeStore | None = None,
        observers: Iterable[str] = (),
        direct: bool = True,
        punch: PunchConfig = MESHKEY,
        seeds: Iterable[str | tuple[NodeId, Endpoint]] = (),
        dht_mode: Mode | None = None,
        auto_relay: bool = True,
    ) -> None:
        """``observers``: UDP addresses (``HOST:PORT`` or ``/ip4/A/udp/P``) of public nodes
        that may tell this node how its NAT maps its socket (besides the relay nodes it uses).
        ``direct=False``: traffic to peers stays on the relays (no hole punching).
        ``seeds``: ``NODEID@HOST:PORT`` of the nodes this node joins the node graph through;
        ``dht_mode`` None finds out whether the node is reachable (a server) by dial-backs;
        ``auto_relay``: a node nobody outside can reach keeps a relay on a reachable node
        (its seeds first, then servers by round trip) and names it in its peer record."""
        self.identity = identity or Identity.generate()
        self._observers = [_udp_endpoint(text) for text in observers]
        self._seeds = [parse_seed(seed) for seed in seeds]
        self._dht_mode = dht_mode
        self._dht: DhtService | None = None
        self._peers: PeerGraph | None = None
        self._direct = direct
        self._punch = punch
        self._auto_relay = auto_relay
        self._auto_relays: AutoRelays | None = None
        self.name = name
        self.events = EventBus()
        default = listen_default(host for _, (host, _) in self._seeds)
        self._tcp_listen = parse_listen(default if tcp == "auto" else tcp) if tcp else None
        self._udp_listen = parse_listen(default if udp == "auto" else udp) if udp else None
        self._udp_batching = udp_batching
        self._home = home if isinstance(home, Home) or home is None else Home(home)
        self._idle_timeout = idle_timeout
        self._keepalive_interval = keepalive_interval
        self._store = store
        self._router: Router | None = None
        self._tcp: TcpTransport | None = None
        self._udp: QuicTransport | None = None
        self._reflexive: ReflexiveAddressService | None = None
        self._channels: SecureChannels | None = None
        self._relays: RelayClient | None = None
        self._registry: RelayRegistry | None = None
        self._paths: PathService | None = None
        self.policies = Policies()
        self._started = False

    @property
    def node_id(self) -> NodeId:
        return self.identity.node_id

    def _require(self, component: Any) -> Any:
        if component is None:
            raise RuntimeError("the node is not started")
        return component

    @property
    def router(self) -> Router:
        router: Router = self._require(self._router)
        return router

    @property
    def tcp(self) -> TcpTransport:
        tcp: TcpTransport = self._require(self._tcp)
        return tcp

    @property
    def udp(self) -> QuicTransport:
        udp: QuicTransport = self._require(self._udp)
        return udp

    @property
    def channels(self) -> SecureChannels:
        channels: SecureChannels = self._require(self._channels)
        return channels

    @property
    def relays(self) -> RelayClient:
        relays: RelayClient = self._require(self._relays)
        return relays

    @property
    def relay_registry(self) -> RelayRegistry:
        registry: RelayRegistry = self._require(self._registry)
        return registry

    @property
    def graph(self) -> DhtService:
        """The node graph's service (``peers`` is its user-facing API)."""
        graph: DhtService = self._require(self._dht)
        return graph

    @property
    def peers(self) -> PeerGraph:
        """The node graph: ``await node.peers.find(NODEID)``, ``node.peers.list()``..."""
        peers: PeerGraph = self._require(self._peers)
        return peers

    @property
    def addresses(self) -> list[TransportAddress]:
        """Where this node listens: UDP first (what ``/node/NAME`` means), then TCP; a
        socket on all interfaces as one address per interface (loopback first)."""
        found = []
        for transport in (self._udp, self._tcp):
            if transport is None or transport.address is None:
                continue
            bound = transport.address
            for host, port in concrete_endpoints(bound.endpoint):
                found.append(
                    TransportAddress.from_socket(bound.protocol, host, port, bound.node_id)
                )
        return found

    async def start(self) -> Node:
        store = self._store
        router = self._router = Router(self.node_id, label=self.name)
        settings: dict[str, Any] = {
            "on_event": self.events.publish,
            "idle_timeout": self._idle_timeout,
            "keepalive_interval": self._keepalive_interval,
        }
        self._tcp = TcpTransport(self.identity, router, **settings)
        self._udp = QuicTransport(self.identity, router, batching=self._udp_batching, **settings)
        # A TCP listener on any port takes the UDP one's number when free: the one HOST:PORT
        # a node is known by (a seed's) then reaches it over both (a UDP-blocked node's way in).
        udp_transport = self._udp
        self._tcp.port_hint = lambda: (
            udp_transport.address.port if udp_transport.address is not None else None
        )
        router.add_transport(self._tcp)
        router.add_transport(self._udp)
        self._reflexive = ReflexiveAddressService(self._udp)
        self.policies = Policies(store.policies() if store else [])
        router.admission = self.policies.admit
        install_builtin_services(router)
        self._channels = SecureChannels(self.identity, router)
        self._channels.add_listener(DEFAULT_LISTENER)
        for listener, authorized in store.listeners() if store else []:
            self._channels.add_listener(listener, authorized)
        self._registry = RelayRegistry(
            router,
            claims=store.relay_claims() if store else {},
            admit=lambda owner: self.policies.admit(RELAY_RESOURCE, owner),
            address_of=self._udp.remote_of,
            **self._claim_persistence(store),
        )
        self._relays = RelayClient(self.identity, router, self._resolve_for_relay, self._watch)
        self._paths = PathService(
            router,
            self._udp,
            self._tcp,
            self._channels,
            self._reflexive,
            # Seeds are public nodes this node talks to anyway: they tell it its mapping too.
            observers=list(dict.fromkeys([*self._observers, *(a for _, a in self._seeds)])),
            no_direct=not self._direct,
            punch=self._punch,
        )
        self.events.subscribe(self._paths.on_transport_event)
        self._dht = DhtService(
            router,
            self.identity,
            self._udp,
            tcp=self._tcp,
            store=store.graph_store() if store else None,
            mode=self._dht_mode,
            behind_nat=self._behind_nat,
        )
        self.events.subscribe(self._dht.on_transport_event)
        self._paths.graph = self._dht
        registry = self._registry
        self._paths.engine.observed_elsewhere = lambda peer: tuple(registry.addresses_of(peer))
        router.known_destination = self._known_destination
        self._paths.network_listeners.append(self._dht.record_changed)
        await self._dht.start()
        self._peers = PeerGraph(self._dht, [self._udp, self._tcp])
        router.peer_resolver = self._resolve_peer
        if self._udp_listen is not None:
            await self._udp.listen(*self._udp_listen)
        if self._tcp_listen is not None:
            await self._tcp.listen(*self._tcp_listen)
        for relay, at in store.relays() if store else []:
            await self._relays.create(relay, at, wait=False)
        if self._udp.address is not None:
            self.announce_restart()
            self._paths.wake()
            self.join_graph()
        self._auto_relays = AutoRelays(
            self.node_id,
            self._relays,
            self._dht,
            seeds=self._seeds,
            classification=lambda: self.path_service.classification,
            local=self._local_udp_endpoints,
            tcp_only=self._tcp_only,
            enabled=self._auto_relay,
        )
        if self._udp.address is not None:
            self._auto_relays.start()
        await self._start_portals(store)
        self._started = True
        log.info("node.started", name=self.name or "-", node_id=self.node_id)
        return self

    @property
    def auto_relays(self) -> AutoRelays:
        auto: AutoRelays = self._require(self._auto_relays)
        return auto

    def _tcp_only(self) -> bool:
        """Every hop this node holds is a TCP one (and it holds one): UDP gets nowhere here,
        most likely, while no classification says so yet."""

        def any_open(transport: TcpTransport | QuicTransport | None) -> bool:
            links = transport.links if transport is not None else ()
            return any(link.core.is_open and not link.closed for link in links)

        return any_open(self._tcp) and not any_open(self._udp)

    def _local_udp_endpoints(self) -> list[Endpoint]:
        address = self._udp.address if self._udp is not None else None
        return concrete_endpoints(address.endpoint) if address is not None else []

    def announce_restart(self) -> None:
        """Owners of relays hosted here hold connections this process no longer has: tell
        them (from the node's UDP port, once it listens), so they register again within a
        second instead of at their next keepalive."""
        if self._store is not None:
            for address in self._store.relay_owner_addresses():
                self.udp.send_restarted(address)

    @staticmethod
    def _claim_persistence(store: NodeStore | None) -> dict[str, Any]:
        """Claims are written in a thread: an fsync per claim must not stall the loop."""
        if store is None:
            return {}

        async def on_claim(name: str, owner: NodeId) -> None:
            await asyncio.to_thread(store.claim_relay, name, owner)

        async def on_release(name: str) -> None:
            await asyncio.to_thread(store.release_relay, name)

        async def on_address(name: str, address: tuple[str, int]) -> None:
            await asyncio.to_thread(store.save_relay_owner_address, name, address)

        return {"on_claim": on_claim, "on_release": on_release, "on_address": on_address}

    def join_graph(self) -> None:
        """Joins the node graph in the background, once the UDP socket listens: through the
        seeds, or from the graph restored from the state database (seeds may be down then),
        retried until someone answers; then the graph keeps this node's mode and signed
        record (:meth:`record_content`) up to date. A node with neither seeds nor a graph is
        the first of its network: it answers DHT queries at once (others check that claim
        before they hand it out). The upkeep is the node graph's own
        (:meth:`DhtService.maintain`); calling this again does nothing."""
        if self._dht is None:
            return
        self._dht.maintain(self._seeds, record=self.record_content)

    async def _resolve_peer(self, peer: NodeId) -> Route | None:
        """``/peer/NODEID``: resolved by the path service (paths/resolver.py's ladder)."""
        return await self.path_service.resolve_peer(peer)

    def _known_destination(self, address: TransportAddress) -> bool:
        """Whether this node may open a connection to ``address`` for another node (the
        router's rule for strangers): a node of this home, or one its graph dialled there."""
        peer = address.node_id
        if peer is None:
            return False
        if self._dht is not None and self._dht.reached_at(peer) == address.endpoint:
            return True
        if self._home is None:
            return False
        for name in self._home.node_names():
            try:
                if self._home.resolve_node(name, address.protocol).node_id == peer:
                    return True
            except NodeStateError:
                continue
        return False

    def _behind_nat(self) -> bool | None:
        return behind_nat(self._paths.classification if self._paths is not None else None)

    def record_content(self) -> RecordContent:
        """What this node's signed peer record says (node/record.py)."""
        return record_content(
            self.udp.address,
            self.graph.mode,
            self._paths.classification if self._paths is not None else None,
            self._relay_routes(),
            self.channels.static.public,
            self.graph.observed,
        )

    def _relay_routes(self) -> tuple[str, ...]:
        return relay_routes(self.relays.relays(), self.resolve)

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        await self._stop_portals()
        if self._auto_relays is not None:
            await self._auto_relays.close()
        if self._paths is not None:
            await self._paths.close()
        await self.relays.close()
        await self.channels.close_all()
        await self.graph.close()
        await self.udp.close()
        await self.tcp.close()
        await self.router.close()
        log.info("node.stopped", name=self.name or "-")

    async def __aenter__(self) -> Node:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- workers ----------------------------------------------------------------------

    def register_worker(self, name: str, handler: Handler, *, inline: bool = False) -> str:
        """Registers a full worker: ``handler(message)`` gets every Message sent to it."""
        return str(self.router.register(name, handler, inline=inline))

    def register_service(self, name: str, function: ServiceFunction) -> str:
        """Registers a request/reply service: ``function(payload)`` returns the reply payload."""
        router = self.router

        async def handle(message: Message) -> None:
            if message.is_error:  # an error about one of our replies: never answered
                return
            result = function(message.payload)
            if inspect.isawaitable(result):
                result = await result
            await router.reply(message, result)

        return self.register_worker(name, handle)

    # -- sending ----------------------------------------------------------------------

    def resolve(self, route: str | Route) -> Route:
        """Parses route text and replaces ``/node/NAME`` with that node's pinned address
        (``/secure/`` needs a channel: :meth:`resolve_secure`)."""
        resolved = resolve_route(route, self._home)
        for address in resolved:
            if isinstance(address, SecureAddress):
                raise RouteError(f"{address} is not supported here (only where traffic starts)")
        return resolved

    def _watch(self, address: TransportAddress) -> asyncio.Future[str]:
        """The hop to a relay node: a relay that died is noticed within seconds (a PING every
        RELAY_WATCH_INTERVAL, each expecting its answer), so its clients move on quickly."""
        transport = self.udp if address.protocol == "udp" else self.tcp
        return transport.watch(address, interval=RELAY_WATCH_INTERVAL)

    async def whoami(self, via: str | Route, *, timeout: float = 3.0) -> TransportAddress:
        """This node's UDP socket as the node at ``via`` (a UDP address) sees it."""
        route = self.resolve(via)
        target = route[0] if len(route) == 1 else None
        if not isinstance(target, TransportAddress) or target.protocol != "udp":
            raise RemoteError(
                ErrorCode.UNSUPPORTED, f"--via must be one UDP address or node, not {via}"
            )
        reflexive: ReflexiveAddressService = self._require(self._reflexive)
        return await reflexive.whoami(target, timeout=timeout)

    def _resolve_for_relay(self, route: str) -> Route:
        return self.resolve(route)

    async def send(self, route: str | Route, payload: bytes, *, timeout: float = 10.0) -> bytes:
        """Sends ``payload`` along ``route`` and returns the reply's payload.

        Raises RemoteError when the message cannot be delivered (the error comes back along
        the return route from the node where it failed) or no reply comes within ``timeout``.
        """
        if len(payload) > MAX_PAYLOAD:
            raise RemoteError(
                ErrorCode.TOO_LARGE, f"payload of {len(payload)} bytes (limit {MAX_PAYLOAD})"
            )
        text = route if isinstance(route, str) else None
        resolved = check_destination(await self.resolve_secure(route), text)
        shown = route if isinstance(route, str) else format_route(route)
        reply = await self.request(Message(resolved, (), payload), timeout=timeout, describe=shown)
        if reply.is_error:
            code, text = reply.error()
            raise RemoteError(code, text)
        return reply.payload

    async def request(self, message: Message, *, timeout: float, describe: str = "") -> Message:
        """Routes ``message`` with a one-shot reply address and returns whatever comes back."""
        router = self.router
        slot = f"_reply.{secrets.token_hex(8)}"
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

        async def receive(reply: Message) -> None:
            if not future.done():
                future.set_result(reply)

        router.register(slot, receive, inline=True)
        try:
            await router.route(
                Message(
                    message.onward,
                    (ServiceAddress(slot), *message.return_route),
                    message.payload,
                    message.kind,
                )
            )
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise RemoteError(
                ErrorCode.TIMEOUT, f"no reply from {describe or 'the route'} within {timeout:g}s"
            ) from None
        finally:
            router.unregister(slot)

    # -- relays, secure channels, policies ----------------------------------------------

    async def create_relay(self, name: str, at: str) -> Relay:
        """Registers ``forward_to_NAME`` on the node at route ``at`` and keeps it registered."""
        relay = await self.relays.create(name, at)
        if self._store:
            self._store.save_relay(name, at)
        return relay

    async def delete_relay(self, name: str) -> None:
        await self.relays.delete(name)
        if self._store:
            self._store.delete_relay(name)

    async def create_secure_channel(
        self,
        route: str | Route,
        *,
        authorized: Iterable[NodeId | str] | None = None,
        timeout: float = 10.0,
        no_direct: bool = False,
    ) -> str:
        """Opens a secure channel to the listener at the end of ``route``; returns its local
        address (``/service/<hex>``): send to ``THAT/service/X`` to reach X on the far node."""
        allowed = node_ids(authorized) if authorized else None
        channel = await self.channels.create(
            await self.resolve_secure(route, timeout=timeout),
            authorized=allowed,
            timeout=timeout,
            no_direct=no_direct,
        )
        return f"/service/{channel.address}"

    def add_listener(self, name: str, authorized: Iterable[NodeId | str] | None = None) -> None:
        allowed = node_ids(authorized) if authorized else None
        self.channels.add_listener(name, allowed)
        if self._store:
            self._store.save_listener(name, allowed)

    def remove_listener(self, name: str) -> None:
        if name == DEFAULT_LISTENER:
            raise ValueError(f"the default listener /service/{DEFAULT_LISTENER} cannot be deleted")
        self.channels.remove_listener(name)
        if self._store:
            self._store.delete_listener(name)

    @property
    def path_service(self) -> PathService:
        paths: PathService = self._require(self._paths)
        return paths

    def nat_info(self) -> dict[str, Any]:
        """The NAT class of the node's UDP socket and what each observer saw."""
        return self.path_service.describe_nat(direct=self._direct)

    async def classify_nat(
        self, via: Iterable[str] = (), *, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Runs a NAT classification now (asking ``via`` and the known observers)."""
        extra = [_udp_endpoint(text, self._home) for text in via]
        observers = list(dict.fromkeys(extra + self.path_service.known_observers()))
        await asyncio.wait_for(self.path_service.classify(observers), timeout)
        return self.nat_info()

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "node_id": str(self.node_id),
            "addresses": [str(a) for a in self.addresses],
            "services": [
                n for n in self.router.worker_names(internal=False) if not self.channels.get(n)
            ],
            "connections": self.udp.connections() + self.tcp.connections(),
            "udp_stats": dict(self.udp.endpoint.stats),
            "nat": self.nat_info(),
            "graph": {
                "state": self.graph.join_status(),
                "mode": self.graph.mode.name.lower(),
                "peers": self.graph.size,
                "seeds": [f"{n}@{h}:{p}" for n, (h, p) in self._seeds],
            },
            "unauthenticated": {
                "udp": sum(self.udp.unauthenticated.values()),
                "tcp": sum(self.tcp.unauthenticated.values()),
            },
        }
