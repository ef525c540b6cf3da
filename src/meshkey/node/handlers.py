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
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from meshkey.identity.node_id import NodeId
from meshkey.node.control import ControlHandler
from meshkey.node.control_args import control_errors, node_ids_arg, text_arg, timeout_arg
from meshkey.node.control_client import TICKET_SIGNATURE_CONTEXT, ControlError
from meshkey.node.core import Node
from meshkey.node.peer_handlers import PeerHandlers, describe_hops
from meshkey.node.services import uppercase
from meshkey.node.state import NodeStateError, parse_listen, resolve_route
from meshkey.portal.portals import parse_endpoint
from meshkey.routing.address import (
    Route,
    RouteError,
    SecureAddress,
    ServiceAddress,
    TransportAddress,
    parse_address,
    parse_route,
)
from meshkey.routing.message import Message
from meshkey.routing.router import is_internal_worker
from meshkey.wire.hop import CloseCode

if TYPE_CHECKING:
    from meshkey.node.daemon import Daemon


class ControlHandlers(PeerHandlers):
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
                    kind="direct", description=path["now"], punched=bool(path.get("punched"))
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
        kind = text_arg(args, "kind")
        address = text_arg(args, "address").removeprefix("/service/")
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
        text = text_arg(args, "to")
        with control_errors():
            if text.startswith("/"):
                address = parse_address(text)
                if not isinstance(address, TransportAddress) or address.protocol != "tcp":
                    raise ValueError(f"{text}: one TCP address, e.g. /ip4/127.0.0.1/tcp/4000")
            else:
                address = TransportAddress.from_socket("tcp", *parse_listen(text))
            link = self._node.tcp.outbound(address)
            try:
                await asyncio.wait_for(link.settled.wait(), timeout_arg(args))
            except TimeoutError:
                raise ControlError("timeout", f"no TCP hop to {text} within the timeout") from None
            if not link.core.is_open:
                raise ControlError(
                    "unreachable", f"cannot connect to {text}: {link.describe()['state']}"
                )
        return link.describe()

    async def _tcp_connection_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        text = text_arg(args, "address")
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
            peer = NodeId.parse(text_arg(args, "node_id"))
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
        to = text_arg(args, "to")
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
                    target, name=name, alias=name, allow=node_ids_arg(args.get("allow"))
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
        route = text_arg(args, "route")
        payload = args.get("payload")
        if not isinstance(payload, bytes):
            raise ControlError("invalid", "message.send needs a payload")
        started = time.perf_counter()
        with control_errors():
            try:
                reply = await self._node.send(route, payload, timeout=timeout_arg(args))
            except NodeStateError as exc:
                # /node/NAME/.../secure/X with NAME stopped: a channel opened through it may
                # live on (on a direct path); then it carries the message.
                through = self._through_open_channel(route)
                if exc.code != "conflict" or through is None:
                    raise
                reply = await self._node.send(through, payload, timeout=timeout_arg(args))
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
        via = text_arg(args, "via")
        with control_errors():
            observed = await self._node.whoami(via, timeout=timeout_arg(args))
        return {"observed": str(observed), "local": str(self._node.udp.address), "via": via}

    async def _relay_create(self, args: dict[str, Any]) -> dict[str, Any]:
        with control_errors():
            relay = await self._node.create_relay(text_arg(args, "name"), text_arg(args, "at"))
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
        name = text_arg(args, "name")
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
                return await self._node.classify_nat(via, timeout=timeout_arg(args))
            except TimeoutError:
                raise ControlError("timeout", "the NAT classification did not finish") from None

    async def _channel_create(self, args: dict[str, Any]) -> dict[str, Any]:
        with control_errors():
            address = await self._node.create_secure_channel(
                text_arg(args, "route"),
                authorized=node_ids_arg(args.get("authorized")),
                timeout=timeout_arg(args),
                no_direct=bool(args.get("no_direct")),
            )
        channel = self._node.channels.get(address)
        assert channel is not None
        return self._node.channels.describe(channel)

    async def _channel_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [self._node.channels.describe(c) for c in self._node.channels.channels()]

    async def _channel_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        address = text_arg(args, "address")
        try:
            await self._node.channels.delete(address)
        except KeyError:
            raise ControlError("not_found", f"no secure channel at {address}") from None
        return {"deleted": address}

    async def _listener_create(self, args: dict[str, Any]) -> dict[str, Any]:
        name = text_arg(args, "name").removeprefix("/service/")
        with control_errors():
            if not _SERVICE_NAME.fullmatch(name) or is_internal_worker(name):
                raise ValueError(f"invalid listener address /service/{name}")
            if self._node.router.has_worker(name):
                raise ControlError("conflict", f"/service/{name} is already in use on this node")
            self._node.add_listener(name, node_ids_arg(args.get("authorized")))
        return {"address": f"/service/{name}"}

    async def _listener_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [listener.describe() for listener in self._node.channels.listeners()]

    async def _listener_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        name = text_arg(args, "name").removeprefix("/service/")
        try:
            with control_errors():
                self._node.remove_listener(name)
        except KeyError:
            raise ControlError(
                "not_found", f"no secure channel listener at /service/{name}"
            ) from None
        return {"deleted": f"/service/{name}"}

    async def _tcp_listener_create(self, args: dict[str, Any]) -> dict[str, Any]:
        text = text_arg(args, "address")
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
        text = text_arg(args, "address")
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
        resource = text_arg(args, "resource").removeprefix("/service/")
        allow = node_ids_arg(args.get("allow"))
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
        resource = text_arg(args, "resource").removeprefix("/service/")
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
                text_arg(args, "to"),
                name=str(args.get("name") or "outlet"),
                alias=args.get("alias") or None,
                allow=node_ids_arg(args.get("allow")),
                insecure=bool(args.get("insecure")),
            )
        return entry.describe()

    async def _tcp_outlet_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [entry.describe() for entry in self._node.tcp_outlets()]

    async def _tcp_outlet_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        with self._portal_errors():
            entry = await self._node.delete_tcp_outlet(text_arg(args, "alias"))
        return {"deleted": entry.alias}

    async def _tcp_inlet_create(self, args: dict[str, Any]) -> dict[str, Any]:
        with self._portal_errors():
            entry = await self._node.create_tcp_inlet(
                text_arg(args, "from"),
                route=text_arg(args, "to"),
                authorized=node_ids_arg(args.get("authorized")),
                alias=args.get("alias") or None,
                insecure=bool(args.get("insecure")),
                timeout=timeout_arg(args),
            )
        return entry.describe()

    async def _tcp_inlet_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [entry.describe() for entry in self._node.tcp_inlets()]

    async def _tcp_inlet_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        with self._portal_errors():
            entry = await self._node.delete_tcp_inlet(text_arg(args, "alias"))
        return {"deleted": entry.alias}


#: The built-in services ``service start KIND`` starts more of.
STARTABLE_SERVICES = frozenset({"echo", "uppercase", "hop"})

#: The outlets ``meshkey share`` makes are named after it (and a random suffix).
SHARE_PREFIX = "share-"

_SERVICE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def _echo(payload: bytes) -> bytes:
    return payload
