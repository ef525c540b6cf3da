r"""The control API's operations: what ``meshkey`` commands ask a running daemon.

:class:`ControlHandlers` answers each operation (``status``, ``relay.create``,
``tcp_inlet.list``, ``overview``, ``peer.ping``...) from the daemon's node: typed errors of
the node become :class:`ControlError`\ s of a kind the CLI maps to an exit code
(:func:`control_errors`). The daemon (:mod:`meshkey.node.daemon`) owns the process, the
lock and the start-up; this module owns what the control socket may ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from meshkey.dht.peers import PeerNotFoundError
from meshkey.identity.node_id import NodeId
from meshkey.node.control import ControlHandler
from meshkey.node.control_client import TICKET_SIGNATURE_CONTEXT, ControlError
from meshkey.node.core import Node
from meshkey.node.services import uppercase
from meshkey.node.state import NodeStateError, parse_listen, resolve_route
from meshkey.portal.portals import parse_endpoint
from meshkey.relay.registry import PREFIX as RELAY_PREFIX
from meshkey.routing.address import (
    PeerAddress,
    Route,
    RouteError,
    SecureAddress,
    ServiceAddress,
    TransportAddress,
    parse_address,
    parse_route,
)
from meshkey.routing.errors import RemoteError
from meshkey.routing.message import Message
from meshkey.routing.router import is_internal_worker
from meshkey.transport.link import HopLink
from meshkey.wire.hop import CloseCode

if TYPE_CHECKING:
    from meshkey.node.daemon import Daemon


class ControlHandlers:
    """The operations of a daemon's control API, over its node (see the module)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def table(self) -> dict[str, ControlHandler]:
        """Every control operation by name."""
        return {
            "status": self._status,
            "stop": self._request_stop,
            "message.send": self._message_send,
            "udp.whoami": self._whoami,
            "relay.create": self._relay_create,
            "relay.list": self._relay_list,
            "relay.delete": self._relay_delete,
            "nat.classify": self._nat_classify,
            "channel.create": self._channel_create,
            "channel.list": self._channel_list,
            "channel.delete": self._channel_delete,
            "listener.create": self._listener_create,
            "listener.list": self._listener_list,
            "listener.delete": self._listener_delete,
            "tcp_listener.create": self._tcp_listener_create,
            "tcp_listener.list": self._tcp_listener_list,
            "tcp_listener.delete": self._tcp_listener_delete,
            "tcp_connection.list": self._tcp_connection_list,
            "policy.create": self._policy_create,
            "policy.list": self._policy_list,
            "policy.delete": self._policy_delete,
            "tcp_outlet.create": self._tcp_outlet_create,
            "tcp_outlet.list": self._tcp_outlet_list,
            "tcp_outlet.delete": self._tcp_outlet_delete,
            "tcp_inlet.create": self._tcp_inlet_create,
            "tcp_inlet.list": self._tcp_inlet_list,
            "tcp_inlet.delete": self._tcp_inlet_delete,
            "peer.add": self._peer_add,
            "peer.find": self._peer_find,
            "peer.list": self._peer_list,
            "peer.ping": self._peer_ping,
            "peer.connections": self._peer_connections,
            "peer.remove": self._peer_remove,
            "overview": self.overview,
            "share": self._share,
            "peer.progress": self._peer_progress,
            "service.start": self._service_start,
            "tcp_connection.create": self._tcp_connection_create,
            "tcp_connection.delete": self._tcp_connection_delete,
            "ticket.sign": self._ticket_sign,
        }

    @property
    def _node(self) -> Node:
        node = self.daemon.node
        assert node is not None
        return node

    async def _status(self, args: dict[str, Any]) -> dict[str, Any]:
        assert self.daemon.node is not None
        return {
            **self.daemon.node.info(),
            "pid": os.getpid(),
            "started_at": self.daemon.started_at,
            "http_server_address": self.daemon.http_address,
        }

    def _local_name(self, node_id: NodeId) -> str | None:
        """The name of the local node with this NodeId, if there is one."""
        for name in self.daemon.home.node_names():
            try:
                if self.daemon.home.node(name).config().get("node_id") == str(node_id):
                    return name
            except (NodeStateError, OSError):
                continue
        return None

    async def overview(self, args: dict[str, Any]) -> dict[str, Any]:
        """Everything ``meshkey status`` shows of this node, in one answer."""
        node = self._node
        links = [*node.udp.links, *node.tcp.links]
        channels = []
        for channel in node.channels.channels():
            described = node.channels.describe(channel)
            if described["state"] == "closed":
                continue
            way = describe_hops(parse_route(described["route"]), links, self._local_name)
            path = described.get("path") or {}
            if path.get("direct"):
                way.update(
                    kind="direct", description=path["now"], punched="(punched)" in path["now"]
                )
            channels.append({**described, "way": way})
        return {
            **(await self._status(args)),
            "relays": await self._relay_list(args),
            "channels": channels,
            "tcp_inlets": await self._tcp_inlet_list(args),
            "tcp_outlets": await self._tcp_outlet_list(args),
        }

    async def _service_start(self, args: dict[str, Any]) -> dict[str, Any]:
        """Another instance of a built-in service at an address of its own (Ockam's ``service
        start``); not kept across restarts."""
        kind = _text(args, "kind")
        address = _text(args, "address").removeprefix("/service/")
        node = self._node
        with control_errors():
            if kind not in STARTABLE_SERVICES:
                raise ValueError(
                    f"no service kind {kind!r} (one of {', '.join(sorted(STARTABLE_SERVICES))})"
                )
            if not _SERVICE_NAME.fullmatch(address) or is_internal_worker(address):
                raise ValueError(f"invalid service address /service/{address}")
            if node.router.has_worker(address):
                raise ControlError("conflict", f"/service/{address} is already in use on this node")
            if kind == "hop":

                async def hop(message: Message) -> None:
                    here = ServiceAddress(address)
                    await node.router.route(message.step().with_return(here))

                node.register_worker(address, hop, inline=True)
            else:
                node.register_service(address, uppercase if kind == "uppercase" else _echo)
        return {"kind": kind, "address": f"/service/{address}"}

    async def _tcp_connection_create(self, args: dict[str, Any]) -> dict[str, Any]:
        """A TCP hop to ``to`` (HOST:PORT, or a /ip4/.../tcp/... address), authenticated."""
        text = _text(args, "to")
        with control_errors():
            if text.startswith("/"):
                address = parse_address(text)
                if not isinstance(address, TransportAddress) or address.protocol != "tcp":
                    raise ValueError(f"{text}: one TCP address, e.g. /ip4/127.0.0.1/tcp/4000")
            else:
                address = TransportAddress.from_socket("tcp", *parse_listen(text))
            link = self._node.tcp.outbound(address)
            try:
                await asyncio.wait_for(link.settled.wait(), _timeout(args))
            except TimeoutError:
                raise ControlError("timeout", f"no TCP hop to {text} within the timeout") from None
            if not link.core.is_open:
                raise ControlError(
                    "unreachable", f"cannot connect to {text}: {link.describe()['state']}"
                )
        return link.describe()

    async def _tcp_connection_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        text = _text(args, "address")
        with control_errors():
            host, port = parse_listen(text)
        closed = []
        for link in list(self._node.tcp.links):
            if not link.closed and (link.remote[0], link.remote[1]) == (host, port):
                await link.close(CloseCode.NORMAL, "closed by `tcp-connection delete`")
                closed.append(link.name)
        if not closed:
            raise ControlError("not_found", f"TCP connection {text} not found")
        return {"deleted": text, "connections": len(closed)}

    async def _peer_progress(self, args: dict[str, Any]) -> dict[str, Any]:
        """Where reaching a peer stands (for the CLI's progress line): in the graph, a live
        hop to it, the path manager's view."""
        with control_errors():
            peer = NodeId.parse(_text(args, "node_id"))
        node = self._node
        return {
            "in_graph": node.graph.knows(peer),
            "live": node.graph.live_link(peer) is not None,
            "path": node.path_service.path_info(peer),
        }

    async def _share(self, args: dict[str, Any]) -> dict[str, Any]:
        """An outlet to ``to`` for ``meshkey share`` (the one shared before, if there is one
        to the same place), and what a ticket may hint at: this node's seeds, the routes of
        its relays, and its own addresses when others can dial it."""
        to = _text(args, "to")
        node = self._node
        with self._portal_errors():
            host, port = parse_endpoint(to, what="address to share")
            target = f"{host}:{port}"
            entry = next(
                (
                    e
                    for e in node.tcp_outlets()
                    if e.alias.startswith(SHARE_PREFIX) and e.describe()["to"] == target
                ),
                None,
            )
            if entry is None:
                name = f"{SHARE_PREFIX}{secrets.token_hex(3)}"
                entry = await node.create_tcp_outlet(
                    target, name=name, alias=name, allow=_node_ids(args.get("allow"))
                )
        record = node.record_content()
        return {
            "outlet": entry.describe(),
            "node_id": str(node.node_id),
            "seeds": node.info()["graph"]["seeds"],
            "relays": list(record.relays),
            "direct": [f"{h}:{p}" for h, p in record.direct],
        }

    async def _ticket_sign(self, args: dict[str, Any]) -> dict[str, Any]:
        body = args.get("body")
        if not isinstance(body, bytes) or len(body) > 1024:
            raise ControlError("invalid", "ticket.sign needs a body of at most 1024 bytes")
        return {"signature": self._node.identity.sign(TICKET_SIGNATURE_CONTEXT + body)}

    async def _request_stop(self, args: dict[str, Any]) -> dict[str, Any]:
        asyncio.get_running_loop().call_soon(self.daemon.request_stop)
        return {"stopping": True}

    async def _message_send(self, args: dict[str, Any]) -> dict[str, Any]:
        route = _text(args, "route")
        payload = args.get("payload")
        if not isinstance(payload, bytes):
            raise ControlError("invalid", "message.send needs a payload")
        started = time.perf_counter()
        with control_errors():
            try:
                reply = await self._node.send(route, payload, timeout=_timeout(args))
            except NodeStateError as exc:
                # /node/NAME/.../secure/X with NAME stopped: a channel opened through it may
                # live on (on a direct path); then it carries the message.
                through = self._through_open_channel(route)
                if exc.code != "conflict" or through is None:
                    raise
                reply = await self._node.send(through, payload, timeout=_timeout(args))
        return {"payload": reply, "elapsed": time.perf_counter() - started}

    def _through_open_channel(self, text: str) -> Route | None:
        """``text`` with its node names as they were last (stopped nodes too), if its first
        ``/secure/`` hop has an open channel; else None."""
        try:
            route = resolve_route(text, self.daemon.home, last_known=True)
        except (RouteError, NodeStateError):
            return None
        for position, address in enumerate(route):
            if isinstance(address, SecureAddress):
                listener = (*route[:position], ServiceAddress(address.listener))
                return route if self._node.channels.find_open(listener) is not None else None
        return None

    async def _whoami(self, args: dict[str, Any]) -> dict[str, Any]:
        via = _text(args, "via")
        with control_errors():
            observed = await self._node.whoami(via, timeout=_timeout(args))
        return {"observed": str(observed), "local": str(self._node.udp.address), "via": via}

    async def _relay_create(self, args: dict[str, Any]) -> dict[str, Any]:
        with control_errors():
            relay = await self._node.create_relay(_text(args, "name"), _text(args, "at"))
        return relay.describe()

    async def _relay_list(self, args: dict[str, Any]) -> dict[str, Any]:
        auto = self._node.auto_relays
        return {
            "relays": [
                {
                    **r.describe(),
                    "automatic": auto.is_automatic(r.name),
                    "kind": "automatic" if auto.is_automatic(r.name) else "manual",
                }
                for r in self._node.relays.relays()
            ],
            "hosted": self._node.relay_registry.describe(),
            "auto": auto.describe(),
        }

    async def _relay_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        name = _text(args, "name")
        try:
            await self._node.delete_relay(name)
        except KeyError:
            raise ControlError("not_found", f"this node has no relay named {name!r}") from None
        return {"deleted": name}

    async def _nat_classify(self, args: dict[str, Any]) -> dict[str, Any]:
        via = args.get("via") or []
        if not isinstance(via, list) or not all(isinstance(v, str) for v in via):
            raise ControlError("invalid", "via must be a list of UDP addresses")
        with control_errors():
            try:
                return await self._node.classify_nat(via, timeout=_timeout(args))
            except TimeoutError:
                raise ControlError("timeout", "the NAT classification did not finish") from None

    async def _channel_create(self, args: dict[str, Any]) -> dict[str, Any]:
        with control_errors():
            address = await self._node.create_secure_channel(
                _text(args, "route"),
                authorized=_node_ids(args.get("authorized")),
                timeout=_timeout(args),
                no_direct=bool(args.get("no_direct")),
            )
        channel = self._node.channels.get(address)
        assert channel is not None
        return self._node.channels.describe(channel)

    async def _channel_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [self._node.channels.describe(c) for c in self._node.channels.channels()]

    async def _channel_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        address = _text(args, "address")
        try:
            await self._node.channels.delete(address)
        except KeyError:
            raise ControlError("not_found", f"no secure channel at {address}") from None
        return {"deleted": address}

    async def _listener_create(self, args: dict[str, Any]) -> dict[str, Any]:
        name = _text(args, "name").removeprefix("/service/")
        with control_errors():
            if not _SERVICE_NAME.fullmatch(name) or is_internal_worker(name):
                raise ValueError(f"invalid listener address /service/{name}")
            if self._node.router.has_worker(name):
                raise ControlError("conflict", f"/service/{name} is already in use on this node")
            self._node.add_listener(name, _node_ids(args.get("authorized")))
        return {"address": f"/service/{name}"}

    async def _listener_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [listener.describe() for listener in self._node.channels.listeners()]

    async def _listener_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        name = _text(args, "name").removeprefix("/service/")
        try:
            with control_errors():
                self._node.remove_listener(name)
        except KeyError:
            raise ControlError(
                "not_found", f"no secure channel listener at /service/{name}"
            ) from None
        return {"deleted": f"/service/{name}"}

    async def _tcp_listener_create(self, args: dict[str, Any]) -> dict[str, Any]:
        text = _text(args, "address")
        with control_errors():
            host, port = parse_listen(text)
            for address in self._node.tcp.listen_addresses:
                if (address.host, address.port) == (host, port):
                    raise ControlError("conflict", f"this node already listens on TCP {text}")
            try:
                address = await self._node.tcp.listen(host, port)
            except OSError as exc:
                reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
                raise ControlError("conflict", f"cannot listen on TCP {text}: {reason}") from exc
        store = self.daemon.store
        assert store is not None
        await asyncio.to_thread(store.save_tcp_listener, f"{address.host}:{address.port}")
        return self._describe_tcp_listener(address, primary=False)

    def _describe_tcp_listener(self, address: TransportAddress, *, primary: bool) -> dict[str, Any]:
        return {
            "address": f"{address.host}:{address.port}",
            "route": str(address),
            "primary": primary,
        }

    async def _tcp_listener_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        tcp = self._node.tcp
        return [
            self._describe_tcp_listener(address, primary=address == tcp.address)
            for address in tcp.listen_addresses
        ]

    async def _tcp_listener_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        text = _text(args, "address")
        with control_errors():
            host, port = parse_listen(text)
        tcp = self._node.tcp
        for address in tcp.listen_addresses:
            if (address.host, address.port) == (host, port):
                if address == tcp.address:
                    raise ControlError(
                        "conflict", "the node's own TCP listener cannot be deleted (see --tcp)"
                    )
                await tcp.stop_listening(address)
                assert self.daemon.store is not None
                await asyncio.to_thread(self.daemon.store.delete_tcp_listener, text)
                return {"deleted": text}
        raise ControlError("not_found", f"this node has no TCP listener on {text}")

    async def _tcp_connection_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return self._node.tcp.connections()

    async def _policy_create(self, args: dict[str, Any]) -> dict[str, Any]:
        resource = _text(args, "resource").removeprefix("/service/")
        allow = _node_ids(args.get("allow"))
        with control_errors():
            if not allow:
                raise ValueError("a policy needs at least one --allow NODEID")
            policy = self._node.set_policy(resource, allow)
        warning = self._node.policy_warning(resource)
        return {"resource": policy.resource, **policy.document(), "warning": warning}

    async def _policy_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {
                "resource": p.resource,
                **p.document(),
                "warning": self._node.policy_warning(p.resource),
            }
            for p in self._node.policies.list()
        ]

    async def _policy_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        resource = _text(args, "resource").removeprefix("/service/")
        try:
            self._node.delete_policy(resource)
        except KeyError:
            raise ControlError("not_found", f"no policy for {resource!r}") from None
        return {"deleted": resource}

    # -- TCP portals ----------------------------------------------------------------------

    @staticmethod
    @contextlib.contextmanager
    def _portal_errors() -> Iterator[None]:
        """Every typed error (portals' too) as a control error of its kind; the rest as
        everywhere else."""
        from meshkey.errors import MeshkeyError

        with control_errors():
            try:
                yield
            except ControlError:
                raise
            except MeshkeyError as exc:
                raise ControlError(exc.kind, str(exc)) from exc

    async def _tcp_outlet_create(self, args: dict[str, Any]) -> dict[str, Any]:
        with self._portal_errors():
            entry = await self._node.create_tcp_outlet(
                _text(args, "to"),
                name=str(args.get("name") or "outlet"),
                alias=args.get("alias") or None,
                allow=_node_ids(args.get("allow")),
                insecure=bool(args.get("insecure")),
            )
        return entry.describe()

    async def _tcp_outlet_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [entry.describe() for entry in self._node.tcp_outlets()]

    async def _tcp_outlet_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        with self._portal_errors():
            entry = await self._node.delete_tcp_outlet(_text(args, "alias"))
        return {"deleted": entry.alias}

    async def _tcp_inlet_create(self, args: dict[str, Any]) -> dict[str, Any]:
        with self._portal_errors():
            entry = await self._node.create_tcp_inlet(
                _text(args, "from"),
                route=_text(args, "to"),
                authorized=_node_ids(args.get("authorized")),
                alias=args.get("alias") or None,
                insecure=bool(args.get("insecure")),
                timeout=_timeout(args),
            )
        return entry.describe()

    async def _tcp_inlet_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [entry.describe() for entry in self._node.tcp_inlets()]

    async def _tcp_inlet_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        with self._portal_errors():
            entry = await self._node.delete_tcp_inlet(_text(args, "alias"))
        return {"deleted": entry.alias}

    # the node graph
    async def _peer_add(self, args: dict[str, Any]) -> dict[str, Any]:
        with control_errors():
            return await self._node.peers.add(
                _text(args, "node_id"),
                _text(args, "address"),
                force=bool(args.get("force")),
                ping=not args.get("no_ping"),
            )

    async def _peer_find(self, args: dict[str, Any]) -> dict[str, Any]:
        with control_errors():
            result = await self._node.peers.find(_text(args, "node_id"), timeout=_timeout(args))
        return result.describe()

    async def _peer_list(self, args: dict[str, Any]) -> dict[str, Any]:
        graph = self._node.graph
        return {
            "node_id": str(self._node.node_id),
            "mode": graph.mode.name.lower(),
            "peers": self._node.peers.list(),
        }

    async def _peer_ping(self, args: dict[str, Any]) -> dict[str, Any]:
        """One authenticated round trip to the peer's ``echo`` through a secure channel to
        it (``/peer/NODEID/secure/api``: end to end, over whatever path its traffic takes
        now), timed with the performance counter (the loop's clock ticks in milliseconds
        under uvloop); a peer nobody knows is looked up first."""
        timeout = _timeout(args)
        with control_errors():
            peer = NodeId.parse(_text(args, "node_id"))
            node = self._node
            if not node.graph.knows(peer) and node.graph.live_link(peer) is None:
                found = await node.peers.find(peer, timeout=timeout)
                if not found.found:
                    raise PeerNotFoundError(
                        f"peer {peer} not found (the lookup asked {found.stats.nodes_asked} nodes)"
                    )
            route = await node.resolve_secure(
                f"/peer/{peer}/secure/api/service/echo", timeout=timeout
            )
            payload = os.urandom(8)
            started = time.perf_counter()
            reply = await node.request(
                Message(route, (), payload), timeout=timeout, describe=f"peer {peer.short()}"
            )
            rtt = time.perf_counter() - started
            if reply.is_error:
                code, text = reply.error()
                raise RemoteError(code, text)
        return {
            "node_id": str(peer),
            "success": reply.payload == payload,
            "rtt_ms": round(rtt * 1000, 3),
            "path": await self._path_to(peer, route),
        }

    async def _path_to(self, peer: NodeId, route: tuple[Any, ...]) -> dict[str, Any]:
        """How traffic to ``peer`` goes now: the path manager's choice if it has one, else
        the first hop of the channel's route (a hop straight to it, or a relay)."""
        node = self._node
        first = route[0] if route else None
        channel = node.channels.get(first.name) if isinstance(first, ServiceAddress) else None
        hops = parse_route(node.channels.describe(channel)["route"]) if channel else route
        if hops and isinstance(hops[0], PeerAddress):  # where /peer/NODEID leads now
            hops = (*(await node.path_service.resolve_peer(hops[0].node_id) or ()), *hops[1:])
        described = describe_hops(hops, [*node.udp.links, *node.tcp.links], self._local_name)
        info = node.path_service.path_info(peer)
        if info is not None and info["direct"]:  # a direct path under a relayed channel
            described.update(
                kind="direct", description=info["now"], punched="(punched)" in info["now"]
            )
        return described

    async def _peer_connections(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return self._node.peers.connections()

    async def _peer_remove(self, args: dict[str, Any]) -> dict[str, Any]:
        node_id = _text(args, "node_id")
        with control_errors():
            removed = self._node.peers.remove(node_id)
        if not removed:
            raise ControlError("not_found", f"{node_id} is not in this node's graph")
        return {"removed": node_id}


def describe_hops(
    hops: Sequence[Any],
    links: Iterable[HopLink],
    name_of: Callable[[NodeId], str | None] = lambda _: None,
) -> dict[str, Any]:
    """A route's way to its far end in words: through a relay (``via relay green
    (127.0.0.1:4000)``, naming the relay node if it is a local one) or straight there
    (``direct 127.0.0.1:4000``)."""
    first = hops[0] if hops else None
    relay = next(
        (
            a.name.removeprefix(RELAY_PREFIX)
            for a in hops
            if isinstance(a, ServiceAddress) and a.name.startswith(RELAY_PREFIX)
        ),
        None,
    )
    transport = remote = None
    hop_peer: NodeId | None = None
    if isinstance(first, ServiceAddress):
        link = next((each for each in links if each.name == first.name), None)
        if link is not None:
            transport, remote = link.transport.protocol, "{}:{}".format(*link.remote)
            hop_peer = link.core.peer
    elif isinstance(first, TransportAddress):
        transport, remote = first.protocol, f"{first.host}:{first.port}"
        hop_peer = first.node_id
    over = f" over {transport}" if transport == "tcp" else ""
    relay_node = name_of(hop_peer) if relay and hop_peer is not None else None
    if relay_node:
        description = f"via relay {relay_node} ({remote}{over})"
    elif relay:
        description = f"via relay {remote}{over}" if remote else f"via relay {relay}"
    else:
        description = f"direct {remote}{over}"
    return {
        "kind": "relay" if relay else "direct",
        "description": description,
        "transport": transport,
        "remote": remote,
        "relay": relay,
        "relay_node": str(hop_peer) if relay and hop_peer is not None else None,
        "punched": False,
    }


#: The built-in services ``service start KIND`` starts more of.
STARTABLE_SERVICES = frozenset({"echo", "uppercase", "hop"})

#: The outlets ``meshkey share`` makes are named after it (and a random suffix).
SHARE_PREFIX = "share-"

_SERVICE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def _echo(payload: bytes) -> bytes:
    return payload


def _text(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise ControlError("invalid", f"missing {key!r}")
    return value


def _timeout(args: dict[str, Any]) -> float:
    timeout = args.get("timeout", 10.0)
    if not isinstance(timeout, int | float) or not 0 < timeout <= 3600:
        raise ControlError("invalid", "timeout must be between 0 and 3600 seconds")
    return float(timeout)


def _node_ids(values: Any) -> list[NodeId] | None:
    if not values:
        return None
    if not isinstance(values, list):
        raise ControlError("invalid", "expected a list of NodeIds")
    try:
        return [NodeId.parse(str(value)) for value in values]
    except ValueError as exc:
        raise ControlError("invalid", str(exc)) from exc


@contextlib.contextmanager
def control_errors() -> Iterator[None]:
    """Turns the node's typed errors into control errors the CLI maps to exit codes."""
    try:
        yield
    except RouteError as exc:
        raise ControlError("invalid", str(exc)) from exc
    except NodeStateError as exc:
        raise ControlError(exc.code, str(exc)) from exc
    except RemoteError as exc:
        raise ControlError(exc.code.name.lower(), exc.text) from exc
    except PeerNotFoundError as exc:
        raise ControlError(exc.kind, str(exc)) from exc
    except ValueError as exc:
        raise ControlError("conflict" if "already" in str(exc) else "invalid", str(exc)) from exc
