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
from meshkey.channel.policy import RELAY_RESOURCE, Policies, Policy
from meshkey.identity.keys import Identity
from meshkey.identity.node_id import NodeId
from meshkey.log import EventLogger
from meshkey.nat.reflexive import ReflexiveAddressService
from meshkey.node.events import EventBus
from meshkey.node.services import install_builtin_services
from meshkey.node.state import Home, NodeStateError, parse_listen, resolve_route
from meshkey.node.store import NodeStore
from meshkey.relay.client import Relay, RelayClient
from meshkey.relay.registry import RelayRegistry
from meshkey.routing.address import Route, ServiceAddress, TransportAddress
from meshkey.routing.errors import RemoteError
from meshkey.routing.message import Message
from meshkey.routing.router import Handler, Router
from meshkey.transport.tcp import TcpTransport
from meshkey.transport.udp import QuicTransport
from meshkey.wire.frames import MAX_PAYLOAD
from meshkey.wire.message import ErrorCode

log = EventLogger("node")

ServiceFunction = Callable[[bytes], bytes | Awaitable[bytes]]

__all__ = ["Node", "RemoteError"]


class Node:
    """A meshkey node: identity, router, transports, services, secure channels and relays.

    ``udp`` and ``tcp`` are listen addresses (``"127.0.0.1:0"`` lets the OS choose a port;
    ``None`` listens on none). The UDP socket is the node's only one: its QUIC hops and its
    reflexive-address requests all leave from it. ``home`` lets routes name local daemons
    with ``/node/NAME``.
    ``store`` (a daemon's) keeps relays, policies and listeners across restarts.
    """

    def __init__(
        self,
        *,
        identity: Identity | None = None,
        tcp: str | None = "127.0.0.1:0",
        udp: str | None = "127.0.0.1:0",
        udp_batching: bool = True,
        home: Home | Path | str | None = None,
        name: str | None = None,
        idle_timeout: float = 300.0,
        keepalive_interval: float = 20.0,
        store: NodeStore | None = None,
    ) -> None:
        self.identity = identity or Identity.generate()
        self.name = name
        self.events = EventBus()
        self._tcp_listen = parse_listen(tcp) if tcp else None
        self._udp_listen = parse_listen(udp) if udp else None
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
    def addresses(self) -> list[TransportAddress]:
        """Where this node listens: UDP first (what ``/node/NAME`` means), then TCP."""
        return [t.address for t in (self._udp, self._tcp) if t is not None and t.address]

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
            **self._claim_persistence(store),
        )
        self._relays = RelayClient(self.identity, router, self._resolve_for_relay, self._watch)
        if self._udp_listen is not None:
            await self._udp.listen(*self._udp_listen)
        if self._tcp_listen is not None:
            await self._tcp.listen(*self._tcp_listen)
        for relay, at in store.relays() if store else []:
            await self._relays.create(relay, at, wait=False)
        self._started = True
        log.info("node.started", name=self.name or "-", node_id=self.node_id)
        return self

    @staticmethod
    def _claim_persistence(store: NodeStore | None) -> dict[str, Any]:
        """Claims are written in a thread: an fsync per claim must not stall the loop."""
        if store is None:
            return {}

        async def on_claim(name: str, owner: NodeId) -> None:
            await asyncio.to_thread(store.claim_relay, name, owner)

        async def on_release(name: str) -> None:
            await asyncio.to_thread(store.release_relay, name)

        return {"on_claim": on_claim, "on_release": on_release}

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        await self.relays.close()
        await self.channels.close_all()
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
        """Parses route text and replaces ``/node/NAME`` with that node's pinned address."""
        return resolve_route(route, self._home)

    def _watch(self, address: TransportAddress) -> asyncio.Future[str]:
        return (self.udp if address.protocol == "udp" else self.tcp).watch(address)

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
        try:
            return self.resolve(route)
        except NodeStateError as exc:
            raise RemoteError(ErrorCode.UNREACHABLE, str(exc)) from exc

    async def send(self, route: str | Route, payload: bytes, *, timeout: float = 10.0) -> bytes:
        """Sends ``payload`` along ``route`` and returns the reply's payload.

        Raises RemoteError when the message cannot be delivered (the error comes back along
        the return route from the node where it failed) or no reply comes within ``timeout``.
        """
        if len(payload) > MAX_PAYLOAD:
            raise RemoteError(
                ErrorCode.TOO_LARGE, f"payload of {len(payload)} bytes (limit {MAX_PAYLOAD})"
            )
        resolved = self.resolve(route)
        reply = await self.request(
            Message(resolved, (), payload), timeout=timeout, describe=str(route)
        )
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
        authorized: Iterable[NodeId] | None = None,
        timeout: float = 10.0,
    ) -> str:
        """Opens a secure channel to the listener at the end of ``route``; returns its local
        address (``/service/<hex>``): send to ``THAT/service/X`` to reach X on the far node."""
        allowed = frozenset(authorized) if authorized else None
        channel = await self.channels.create(
            self.resolve(route), authorized=allowed, timeout=timeout
        )
        return f"/service/{channel.address}"

    def add_listener(self, name: str, authorized: Iterable[NodeId] | None = None) -> None:
        allowed = frozenset(authorized) if authorized else None
        self.channels.add_listener(name, allowed)
        if self._store:
            self._store.save_listener(name, allowed)

    def remove_listener(self, name: str) -> None:
        if name == DEFAULT_LISTENER:
            raise ValueError(f"the default listener /service/{DEFAULT_LISTENER} cannot be deleted")
        self.channels.remove_listener(name)
        if self._store:
            self._store.delete_listener(name)

    def set_policy(self, resource: str, allow: Iterable[NodeId]) -> Policy:
        policy = Policy(resource, frozenset(allow))
        if not policy.allow:
            raise ValueError("a policy needs at least one allowed identity")
        self.policies.set(policy)
        if self._store:
            self._store.save_policy(policy)
        return policy

    def delete_policy(self, resource: str) -> None:
        if not self.policies.delete(resource):
            raise KeyError(resource)
        if self._store:
            self._store.delete_policy(resource)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "node_id": str(self.node_id),
            "addresses": [str(a) for a in self.addresses],
            "services": [
                n
                for n in self.router.worker_names()
                if not n.startswith("_") and not self.channels.get(n)
            ],
            "connections": self.udp.connections() + self.tcp.connections(),
            "udp_stats": dict(self.udp.endpoint.stats),
            "unauthenticated": {
                "udp": sum(self.udp.unauthenticated.values()),
                "tcp": sum(self.tcp.unauthenticated.values()),
            },
        }
