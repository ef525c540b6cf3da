"""Addresses and routes: the one place where route text is parsed and printed.

Grammar (segments separated by ``/``)::

    /service/NAME            a worker on the node that holds the message
    /node/NAME               a local node by name (the node layer resolves it to its address)
    /secure/LISTENER         a secure channel to the listener LISTENER on the node reached so
                             far, carrying the rest of the route (resolved by the node that
                             originates traffic; never sent on the wire)
    /ip4/A/tcp/P             a TCP hop; also /ip4/A/udp/P, /ip6/A/tcp/P, /dns/HOST/tcp/P
      [/id/NODEID]           ...optionally pinned to the NodeId the peer must prove it has

A route is a tuple of addresses. ``-`` segments (stdin placeholders) are expanded by
:func:`expand_placeholders` before parsing.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from meshkey.errors import MeshkeyError
from meshkey.identity.errors import InvalidNodeIdError
from meshkey.identity.node_id import NodeId
from meshkey.wire.errors import MalformedError, WireError
from meshkey.wire.message import (
    HOST_DNS,
    HOST_IP4,
    HOST_IP6,
    MAX_ROUTE_LENGTH,
    AddressKind,
    WireAddress,
    WireEndpoint,
    decode_endpoint,
    encode_endpoint,
)


class RouteError(MeshkeyError, ValueError):
    """A route or address in text form that cannot be parsed; the message says why."""

    default_kind = "invalid"


_SERVICE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_PROTOCOLS = {"tcp": AddressKind.TCP, "udp": AddressKind.UDP}
_KIND_PROTOCOL = {kind: name for name, kind in _PROTOCOLS.items()}
_HOST_PREFIX = {HOST_IP4: "ip4", HOST_IP6: "ip6", HOST_DNS: "dns"}


@dataclass(frozen=True, slots=True)
class ServiceAddress:
    """A worker on the node that holds the message (``/service/NAME``)."""

    name: str

    def __str__(self) -> str:
        return f"/service/{self.name}"


@dataclass(frozen=True, slots=True)
class NodeNameAddress:
    """A local node by its name (``/node/NAME``); never sent on the wire."""

    name: str

    def __str__(self) -> str:
        return f"/node/{self.name}"


@dataclass(frozen=True, slots=True)
class TransportAddress:
    """A hop over a transport to ``host:port``, optionally pinned to an expected NodeId."""

    protocol: str  # "tcp" or "udp"
    host_kind: int  # wire.message.HOST_IP4 / HOST_IP6 / HOST_DNS
    host: str
    port: int
    node_id: NodeId | None = None

    def __str__(self) -> str:
        text = f"/{_HOST_PREFIX[self.host_kind]}/{self.host}/{self.protocol}/{self.port}"
        if self.node_id is not None:
            text += f"/id/{self.node_id}"
        return text

    def with_node_id(self, node_id: NodeId | None) -> TransportAddress:
        return TransportAddress(self.protocol, self.host_kind, self.host, self.port, node_id)

    @property
    def endpoint(self) -> tuple[str, int]:
        return self.host, self.port

    @classmethod
    def from_socket(
        cls, protocol: str, host: str, port: int, node_id: NodeId | None = None
    ) -> TransportAddress:
        """The address of a socket as ``getsockname()`` reports it."""
        ip = ipaddress.ip_address(host)
        kind = HOST_IP4 if ip.version == 4 else HOST_IP6
        return cls(protocol, kind, str(ip), port, node_id)


@dataclass(frozen=True, slots=True)
class PeerAddress:
    """``/peer/NODEID``: a virtual hop that the node holding the message resolves to the best
    path to that peer at that moment (direct, punched, or through the peer's relay), so that a
    secure channel or a portal names the peer, never the path (DESIGN.md decision 12)."""

    node_id: NodeId

    def __str__(self) -> str:
        return f"/peer/{self.node_id}"


@dataclass(frozen=True, slots=True)
class SecureAddress:
    """``/secure/LISTENER`` (Ockam's): open, or reuse, a secure channel to the listener
    LISTENER (``/service/LISTENER``) on the node the route has reached so far, and carry the
    rest of the route inside it. Text routes only: the node that originates traffic replaces
    it (with everything before it) by the channel's address, so it is never sent on the wire.
    """

    listener: str

    def __str__(self) -> str:
        return f"/secure/{self.listener}"


Address = ServiceAddress | NodeNameAddress | TransportAddress | PeerAddress | SecureAddress
Route = tuple[Address, ...]


def parse_route(text: str) -> Route:
    """Parses route text into typed addresses; RouteError on anything malformed."""
    if not isinstance(text, str) or not text.strip():
        raise RouteError("empty route: expected something like /node/blue/service/echo")
    stripped = text.strip()
    if not stripped.startswith("/"):
        raise RouteError(f"route {text!r} must start with '/', e.g. /service/echo")
    segments = stripped[1:].split("/")
    if stripped.endswith("/"):
        segments.pop()
    route: list[Address] = []
    position = 0
    while position < len(segments):
        address, position = _parse_address(segments, position, text)
        route.append(address)
    if not route:
        raise RouteError("empty route: expected something like /node/blue/service/echo")
    if len(route) > MAX_ROUTE_LENGTH:
        raise RouteError(
            f"route {text!r} has {len(route)} addresses: the limit is {MAX_ROUTE_LENGTH}"
        )
    return tuple(route)


def check_destination(route: Route, text: str | None = None) -> Route:
    """A route a message is sent along must end at a worker: ``/node/blue`` alone is a node,
    not something that can answer."""
    last = route[-1] if route else None
    if not isinstance(last, ServiceAddress):
        shown = text or format_route(route)
        raise RouteError(
            f"route {shown} ends at a node, not at a service on it: add one, e.g. "
            f"{shown.rstrip('/')}/service/echo"
        )
    return route


def parse_address(text: str) -> Address:
    route = parse_route(text)
    if len(route) != 1:
        raise RouteError(f"{text!r} is a route of {len(route)} addresses, not one address")
    return route[0]


def format_route(route: Iterable[Address]) -> str:
    return "".join(str(address) for address in route)


def _take(segments: list[str], position: int, what: str, text: str) -> str:
    if position >= len(segments) or segments[position] == "":
        raise RouteError(f"invalid route {text!r}: {what}")
    return segments[position]


def _parse_address(segments: list[str], position: int, text: str) -> tuple[Address, int]:
    kind = segments[position]
    if kind == "service":
        name = _take(segments, position + 1, "/service needs a name, e.g. /service/echo", text)
        if not _SERVICE_NAME.fullmatch(name):
            raise RouteError(
                f"invalid route {text!r}: service name {name!r} must be 1-64 letters, digits, "
                "'_', '.', '-'"
            )
        return ServiceAddress(name), position + 2
    if kind == "node":
        name = _take(segments, position + 1, "/node needs a node name, e.g. /node/blue", text)
        if not _NODE_NAME.fullmatch(name):
            raise RouteError(f"invalid route {text!r}: {name!r} is not a valid node name")
        return NodeNameAddress(name), position + 2
    if kind == "secure":
        name = _take(
            segments, position + 1, "/secure needs a listener name, e.g. /secure/api", text
        )
        if not _SERVICE_NAME.fullmatch(name):
            raise RouteError(
                f"invalid route {text!r}: secure channel listener name {name!r} must be 1-64 "
                "letters, digits, '_', '.', '-'"
            )
        return SecureAddress(name), position + 2
    if kind in ("ip4", "ip6", "dns"):
        return _parse_transport(segments, position, text)
    if kind == "peer":
        id_text = _take(segments, position + 1, "/peer needs a NodeId", text)
        try:
            return PeerAddress(NodeId.parse(id_text)), position + 2
        except InvalidNodeIdError as exc:
            raise RouteError(f"invalid route {text!r}: {exc}") from exc
    if kind == "id":
        raise RouteError(f"invalid route {text!r}: /id must follow a transport address")
    if kind == "":
        raise RouteError(f"invalid route {text!r}: empty segment ('//')")
    raise RouteError(
        f"invalid route {text!r}: unknown address type {kind!r} "
        "(expected service, node, peer, secure, ip4, ip6 or dns)"
    )


def _parse_transport(segments: list[str], position: int, text: str) -> tuple[Address, int]:
    kind = segments[position]
    host_text = _take(segments, position + 1, f"/{kind} needs a host", text)
    host_kind, host = _parse_host(kind, host_text, text)
    protocol = _take(
        segments, position + 2, f"/{kind}/{host_text} needs /tcp/PORT or /udp/PORT", text
    )
    if protocol not in _PROTOCOLS:
        raise RouteError(f"invalid route {text!r}: transport {protocol!r} (expected tcp or udp)")
    port_text = _take(segments, position + 3, f"/{protocol} needs a port", text)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise RouteError(f"invalid route {text!r}: port {port_text!r} is not in 1-65535")
    position += 4
    node_id = None
    if position < len(segments) and segments[position] == "id":
        id_text = _take(segments, position + 1, "/id needs a NodeId", text)
        try:
            node_id = NodeId.parse(id_text)
        except InvalidNodeIdError as exc:
            raise RouteError(f"invalid route {text!r}: {exc}") from exc
        position += 2
    return TransportAddress(protocol, host_kind, host, int(port_text), node_id), position


def _parse_host(kind: str, host: str, text: str) -> tuple[int, str]:
    try:
        if kind == "ip4":
            return HOST_IP4, str(ipaddress.IPv4Address(host))
        if kind == "ip6":
            return HOST_IP6, str(ipaddress.IPv6Address(host))
    except ValueError as exc:
        raise RouteError(f"invalid route {text!r}: {host!r} is not an {kind} address") from exc
    name = host.lower().rstrip(".")
    if len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in name.split(".")):
        raise RouteError(f"invalid route {text!r}: {host!r} is not a valid DNS name")
    return HOST_DNS, name


def expand_placeholders(text: str, next_line: Callable[[], str]) -> str:
    """Replaces every ``-`` segment of ``text`` with a route read by ``next_line()``.

    ``-/service/uppercase`` with ``/service/3fa2`` on stdin becomes
    ``/service/3fa2/service/uppercase``.
    """
    segments = text.split("/")
    if "-" not in segments:
        return text
    expanded = []
    for segment in segments:
        if segment == "-":
            line = next_line().strip()
            if not line:
                raise RouteError("a '-' in the route needs a route on standard input, got nothing")
            expanded.append(line.strip("/"))
        else:
            expanded.append(segment)
    joined = "/".join(expanded)
    return joined if joined.startswith("/") else "/" + joined


# -- wire form -------------------------------------------------------------------------


def address_to_wire(address: Address) -> WireAddress:
    if isinstance(address, ServiceAddress):
        return WireAddress(AddressKind.LOCAL, address.name.encode())
    if isinstance(address, PeerAddress):
        return WireAddress(AddressKind.PEER, address.node_id.raw)
    if isinstance(address, TransportAddress):
        endpoint = WireEndpoint(
            address.host_kind,
            address.host,
            address.port,
            address.node_id.raw if address.node_id else None,
        )
        return WireAddress(_PROTOCOLS[address.protocol], encode_endpoint(endpoint))
    if isinstance(address, SecureAddress):
        raise RouteError(
            f"{address} is resolved by the node that sends (it opens the secure channel): "
            "send through a node (e.g. --from NODE), not along a raw route"
        )
    raise RouteError(f"{address} must be resolved before it is sent")


@functools.lru_cache(maxsize=4096)
def address_from_wire(wire: WireAddress) -> Address:
    """Typed address from its wire form; WireError on malformed values. Cached: routes repeat."""
    kind, value = wire
    if kind == AddressKind.LOCAL:
        try:
            name = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedError("local address is not UTF-8") from exc
        if not _SERVICE_NAME.fullmatch(name):
            raise MalformedError(f"invalid local address {name!r}")
        return ServiceAddress(name)
    if kind == AddressKind.PEER:
        if len(value) != 32:
            raise MalformedError("a peer address is a 32-byte NodeId")
        return PeerAddress(NodeId(value))
    if kind in _KIND_PROTOCOL:
        endpoint = decode_endpoint(value)
        if endpoint.port == 0:
            raise MalformedError("endpoint port 0")
        if endpoint.host_kind == HOST_DNS:
            try:
                _parse_host("dns", endpoint.host, endpoint.host)
            except RouteError as exc:
                raise MalformedError(str(exc)) from exc
        return TransportAddress(
            _KIND_PROTOCOL[AddressKind(kind)],
            endpoint.host_kind,
            endpoint.host,
            endpoint.port,
            NodeId(endpoint.node_id) if endpoint.node_id else None,
        )
    raise MalformedError(f"address kind {kind} is not routable by this node")


def route_from_wire(route: Iterable[WireAddress]) -> Route:
    try:
        return tuple(address_from_wire(address) for address in route)
    except WireError:
        raise
    except ValueError as exc:  # e.g. a DNS name with odd characters
        raise MalformedError(str(exc)) from exc
