"""``node.peers``: the node graph as the Python API (and so the CLI's ``peer`` commands).

Every method is a thin call into :class:`~meshkey.dht.service.DhtService`; this class only
turns user input (NodeId text, ``HOST:PORT`` or ``/ip4/H/udp/P`` addresses) into typed
values and results into plain dictionaries ready for ``--output json``.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any, Protocol

from meshkey.dht.service import DhtService, FindResult
from meshkey.errors import MeshkeyError
from meshkey.identity.node_id import NodeId
from meshkey.routing.address import RouteError, TransportAddress, parse_address
from meshkey.routing.errors import RemoteError
from meshkey.wire.message import ErrorCode
from meshkey.wire.net import Endpoint


def parse_peer_address(text: str | Endpoint | TransportAddress) -> Endpoint:
    """``HOST:PORT``, ``[V6]:PORT`` or ``/ip4/H/udp/P`` -> (host, port); RouteError if not."""
    if isinstance(text, tuple):
        return text
    if isinstance(text, TransportAddress):
        address = text
    elif text.startswith("/"):
        parsed = parse_address(text)
        if not isinstance(parsed, TransportAddress):
            raise RouteError(f"{text!r} is not a transport address")
        address = parsed
    else:
        host, sep, port = text.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise RouteError(f"invalid peer address {text!r}: expected HOST:PORT")
        return host, int(port)
    if address.protocol != "udp":
        raise RouteError(f"{text}: the node graph holds UDP addresses")
    return address.host, address.port


class PeerNotFoundError(MeshkeyError):
    """No node of the network has that NodeId (a lookup converged without it)."""

    default_kind = "not_found"


def parse_seed(text: str | tuple[NodeId, Endpoint]) -> tuple[NodeId, Endpoint]:
    """``NODEID@HOST:PORT`` (or ``NODEID@/ip4/H/udp/P``) -> (NodeId, (host, port)):
    a seed is named by its NodeId, so the hop to it is pinned and a wrong one never joins."""
    if isinstance(text, tuple):
        return text
    node_id, sep, address = text.strip().partition("@")
    if not sep or not node_id or not address:
        raise RouteError(f"invalid seed {text!r}: expected NODEID@HOST:PORT")
    try:
        peer = NodeId.parse(node_id)
    except ValueError as exc:
        raise RouteError(f"invalid seed {text!r}: {exc}") from exc
    return peer, parse_peer_address(address)


class Transport(Protocol):
    """Whose live hops ``peer connections`` lists (the node's UDP and TCP transports)."""

    def connections(self) -> builtins.list[dict[str, Any]]: ...


def _node_id(value: str | NodeId) -> NodeId:
    return value if isinstance(value, NodeId) else NodeId.parse(value)


class PeerGraph:
    def __init__(self, service: DhtService, transports: Sequence[Transport] | None = None):
        self.service = service
        self.transports = transports if transports is not None else [service.udp]

    async def add(
        self,
        node_id: str | NodeId,
        address: str | Endpoint | TransportAddress,
        *,
        force: bool = False,
        ping: bool = True,
    ) -> dict[str, Any]:
        peer, endpoint = _node_id(node_id), parse_peer_address(address)
        entry = await self.service.add(peer, endpoint, force=force, ping=ping)
        if ping and entry is None:
            raise RemoteError(
                ErrorCode.REFUSED, f"{peer} answered but its bucket is full (use --force)"
            )
        return {"node_id": str(peer), "added": entry is not None, "pinged": ping}

    async def find(self, node_id: str | NodeId, *, timeout: float = 30.0) -> FindResult:
        """A lookup; ``found`` False (not an exception) when the network has no such node."""
        return await self.service.find(_node_id(node_id), timeout=timeout)

    def list(self) -> list[dict[str, Any]]:
        return self.service.peers()

    async def ping(self, node_id: str | NodeId, *, timeout: float = 30.0) -> dict[str, Any]:
        """An authenticated round trip; a peer that is not in the graph is looked up first."""
        peer = _node_id(node_id)
        address = None
        if not self.service.knows(peer) and self.service.live_link(peer) is None:
            found = await self.service.find(peer, timeout=timeout)
            if not found.found or not found.addresses:
                raise PeerNotFoundError(
                    f"peer {peer} not found (the lookup asked {found.stats.nodes_asked} nodes)"
                )
            address = found.addresses[0]
        rtt = await self.service.ping(peer, address)
        link = self.service.live_link(peer)
        return {
            "node_id": str(peer),
            "success": True,
            "rtt_ms": round(rtt * 1000, 3),
            "path": link.describe() if link is not None else None,
        }

    def connections(self) -> builtins.list[dict[str, Any]]:
        return [c for t in self.transports for c in t.connections() if c.get("peer")]

    def remove(self, node_id: str | NodeId) -> bool:
        return self.service.remove(_node_id(node_id))
