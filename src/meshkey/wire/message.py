"""The routing message: what travels along a route, hop by hop.

Layout (version 1)::

    u8 version | u8 kind | u8 n_onward | address* | u8 n_return | address* | payload...

An address is ``u8 kind | u8 length | value``; the payload is the rest of the frame.
Kinds of address and the layout of their values are defined here; their meaning (and the
text form users type) lives in :mod:`meshkey.routing.address`.

An ERROR message's payload is ``u8 ErrorCode | UTF-8 text``. The text is for people, with one
exception: a NO_SUCH_SERVICE text ends with the missing service's name, quoted
(:func:`no_such_service_text`), so that the sender of a secure channel can tell "the peer no
longer has this channel" from "a relay on the way is gone" (:func:`missing_service`).
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass
from typing import NamedTuple

from meshkey.wire.errors import MalformedError, OversizeError, UnsupportedVersionError
from meshkey.wire.frames import MAX_FRAME
from meshkey.wire.reader import Reader, u16

MESSAGE_VERSION = 1
MAX_ROUTE_LENGTH = 32
MAX_ADDRESS_VALUE = 255
MAX_ERROR_TEXT = 1024


class AddressKind(enum.IntEnum):
    LOCAL = 0  # a worker on the node that holds the message; value: UTF-8 name
    TCP = 1  # value: endpoint
    UDP = 2  # value: endpoint
    PEER = 3  # value: 32-byte NodeId (virtual hop, resolved by the holder)


class MessageKind(enum.IntEnum):
    DATA = 0
    ERROR = 1  # payload: u8 ErrorCode | UTF-8 text; never answered by another error


class ErrorCode(enum.IntEnum):
    NO_SUCH_SERVICE = 1
    UNREACHABLE = 2
    AUTH_FAILED = 3
    TIMEOUT = 4
    REFUSED = 5
    MALFORMED = 6
    # 7 was ROUTE_TOO_LONG, never sent: no node can answer for a route over the limit (see
    # MAX_ROUTE_LENGTH's checks: parse_route refuses it before sending, the encoders raise
    # OversizeError to the sender's own node, and a received message whose return route is
    # full has no room for the hop that would carry an answer back). Not to be reused.
    INTERNAL = 8
    UNSUPPORTED = 9
    TOO_LARGE = 10
    BUSY = 11  # the next hop is not reading: the message was refused rather than queued


class WireAddress(NamedTuple):
    kind: int
    value: bytes


@dataclass(frozen=True, slots=True)
class WireMessage:
    onward: tuple[WireAddress, ...]
    return_route: tuple[WireAddress, ...]
    payload: bytes
    kind: int = MessageKind.DATA


def encode_message(message: WireMessage) -> bytes:
    header, payload = encode_message_parts(message)
    return header + payload


def encode_message_parts(message: WireMessage) -> tuple[bytes, bytes]:
    """The encoded message as (everything before the payload, the payload): a sender can
    frame and send the two without copying the payload into one buffer."""
    parts = [bytes([MESSAGE_VERSION, message.kind])]
    for route in (message.onward, message.return_route):
        if len(route) > MAX_ROUTE_LENGTH:
            raise OversizeError(f"route of {len(route)} addresses (limit {MAX_ROUTE_LENGTH})")
        parts.append(bytes([len(route)]))
        for kind, value in route:
            if len(value) > MAX_ADDRESS_VALUE:
                raise OversizeError(f"address value of {len(value)} bytes")
            parts.append(bytes([kind, len(value)]))
            parts.append(value)
    header = b"".join(parts)
    size = len(header) + len(message.payload)
    if size > MAX_FRAME:
        raise OversizeError(f"message of {size} bytes is over the {MAX_FRAME}-byte limit")
    return header, message.payload


def decode_message(data: bytes | memoryview) -> WireMessage:
    if len(data) > MAX_FRAME:
        raise OversizeError(f"message of {len(data)} bytes is over the {MAX_FRAME}-byte limit")
    reader = Reader(data, "message")
    version = reader.u8()
    if version != MESSAGE_VERSION:
        raise UnsupportedVersionError(f"message version {version} (expected {MESSAGE_VERSION})")
    kind = reader.u8()
    if kind not in _MESSAGE_KINDS:
        raise MalformedError(f"unknown message kind {kind}")
    onward = _read_route(reader)
    return_route = _read_route(reader)
    return WireMessage(onward, return_route, reader.rest(), kind)


_MESSAGE_KINDS = frozenset(int(k) for k in MessageKind)
_ADDRESS_KINDS = frozenset(int(k) for k in AddressKind)


def _read_route(reader: Reader) -> tuple[WireAddress, ...]:
    count = reader.u8()
    if count > MAX_ROUTE_LENGTH:
        raise OversizeError(f"route of {count} addresses (limit {MAX_ROUTE_LENGTH})")
    route = []
    for _ in range(count):
        kind = reader.u8()
        if kind not in _ADDRESS_KINDS:
            raise MalformedError(f"unknown address kind {kind}")
        route.append(WireAddress(kind, reader.take(reader.u8())))
    return tuple(route)


def encode_error(code: ErrorCode, text: str) -> bytes:
    return bytes([code]) + text.encode("utf-8")[:MAX_ERROR_TEXT]


def no_such_service_text(node: str, service: str) -> str:
    """The text of a NO_SUCH_SERVICE error from ``node`` (a label) about ``service``."""
    return f"node {node}: no service {service!r}"


_MISSING_SERVICE = re.compile(r": no service (?:'(?P<single>[^'\\]*)'|\"(?P<double>[^\"\\]*)\")\Z")


def missing_service(code: ErrorCode, text: str) -> str | None:
    """The service a NO_SUCH_SERVICE error says is missing (None for any other error, or a
    text not written by :func:`no_such_service_text`). Unauthenticated, like every error."""
    if code != ErrorCode.NO_SUCH_SERVICE:
        return None
    match = _MISSING_SERVICE.search(text)
    if match is None:
        return None
    return match["single"] if match["single"] is not None else match["double"]


def decode_error(payload: bytes) -> tuple[ErrorCode, str]:
    reader = Reader(payload, "error payload")
    raw = reader.u8()
    try:
        code = ErrorCode(raw)
    except ValueError:
        code = ErrorCode.INTERNAL
    return code, reader.rest()[:MAX_ERROR_TEXT].decode("utf-8", errors="replace")


# -- endpoint values (TCP and UDP addresses) ---------------------------------------------

HOST_IP4 = 4
HOST_IP6 = 6
HOST_DNS = 0x64


class WireEndpoint(NamedTuple):
    host_kind: int
    host: str  # canonical text: dotted quad, compressed IPv6, or lower-case DNS name
    port: int
    node_id: bytes | None


def encode_endpoint(endpoint: WireEndpoint) -> bytes:
    host_kind, host, port, node_id = endpoint
    if host_kind == HOST_IP4:
        host_bytes = ipaddress.IPv4Address(host).packed
    elif host_kind == HOST_IP6:
        host_bytes = ipaddress.IPv6Address(host).packed
    elif host_kind == HOST_DNS:
        name = host.encode("ascii")
        host_bytes = bytes([len(name)]) + name
    else:
        raise ValueError(f"unknown host kind {host_kind}")
    out = bytes([host_kind]) + host_bytes + u16(port)
    if node_id is not None:
        out += node_id
    return out


def decode_endpoint(value: bytes) -> WireEndpoint:
    reader = Reader(value, "endpoint")
    host_kind = reader.u8()
    if host_kind == HOST_IP4:
        host = str(ipaddress.IPv4Address(reader.take(4)))
    elif host_kind == HOST_IP6:
        host = str(ipaddress.IPv6Address(reader.take(16)))
    elif host_kind == HOST_DNS:
        host = reader.text(reader.u8())
        if not host or not host.isascii():
            raise MalformedError("endpoint: DNS name must be non-empty ASCII")
    else:
        raise MalformedError(f"endpoint: unknown host kind {host_kind}")
    port = reader.u16()
    node_id: bytes | None = None
    if reader.remaining:
        node_id = reader.take(32)
    reader.end()
    return WireEndpoint(host_kind, host, port, node_id)
