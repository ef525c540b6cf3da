"""The control API's node-graph operations (``peer add|find|list|ping|connections|remove``)
and :func:`describe_hops`, the words for the way a route takes to its far end."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from meshkey.dht.peers import PeerNotFoundError
from meshkey.identity.node_id import NodeId
from meshkey.node.control_args import control_errors, text_arg, timeout_arg
from meshkey.node.control_client import ControlError
from meshkey.relay.registry import PREFIX as RELAY_PREFIX
from meshkey.routing.address import PeerAddress, ServiceAddress, TransportAddress, parse_route
from meshkey.routing.errors import RemoteError
from meshkey.routing.message import Message
from meshkey.transport.link import HopLink

if TYPE_CHECKING:
    from meshkey.node.core import Node


class PeerHandlers:
    """The ``peer.*`` operations; mixed into :class:`~meshkey.node.handlers.ControlHandlers`,
    which provides the node and the names of local nodes."""

    if TYPE_CHECKING:

        @property
        def _node(self) -> Node: ...

        def _local_name(self, node_id: NodeId) -> str | None: ...

    async def _peer_add(self, args: dict[str, Any]) -> dict[str, Any]:
        with control_errors():
            return await self._node.peers.add(
                text_arg(args, "node_id"),
                text_arg(args, "address"),
                force=bool(args.get("force")),
                ping=not args.get("no_ping"),
            )

    async def _peer_find(self, args: dict[str, Any]) -> dict[str, Any]:
        with control_errors():
            result = await self._node.peers.find(
                text_arg(args, "node_id"), timeout=timeout_arg(args)
            )
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
        timeout = timeout_arg(args)
        with control_errors():
            peer = NodeId.parse(text_arg(args, "node_id"))
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
                kind="direct", description=info["now"], punched=bool(info.get("punched"))
            )
        return described

    async def _peer_connections(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return self._node.peers.connections()

    async def _peer_remove(self, args: dict[str, Any]) -> dict[str, Any]:
        node_id = text_arg(args, "node_id")
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
