"""meshkey's own packets on a node's UDP socket, beside QUIC.

The socket tells them apart by the first byte: QUIC packets always have bit 0x40 set (RFC
9000, section 17; meshkey never negotiates greasing it), meshkey control packets start with
a kind below 0x40::

    u8 kind | u8 version | body

WHOAMI_REQUEST   16-byte transaction id, zero padding to :data:`WHOAMI_REQUEST_SIZE` bytes
WHOAMI_RESPONSE  16-byte transaction id | u8 family (4 or 6) | address (4 or 16) | u16 port

A request is padded so that a response is never larger than the request that caused it: the
socket cannot be used to amplify traffic towards a spoofed source.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from meshkey.wire.errors import MalformedError, OversizeError, UnsupportedVersionError
from meshkey.wire.reader import Reader, u16

CONTROL_VERSION = 1
QUIC_BIT = 0x40
MAX_CONTROL_SIZE = 1200
TXID_SIZE = 16
WHOAMI_REQUEST_SIZE = 64


class ControlKind(enum.IntEnum):
    WHOAMI_REQUEST = 0x01
    WHOAMI_RESPONSE = 0x02


def is_control_packet(data: bytes) -> bool:
    return bool(data) and data[0] < QUIC_BIT


@dataclass(frozen=True, slots=True)
class WhoamiRequest:
    txid: bytes


@dataclass(frozen=True, slots=True)
class WhoamiResponse:
    txid: bytes
    host: str
    port: int


ControlPacket = WhoamiRequest | WhoamiResponse


def encode_control_packet(packet: ControlPacket) -> bytes:
    if isinstance(packet, WhoamiRequest):
        body = bytes([ControlKind.WHOAMI_REQUEST, CONTROL_VERSION]) + packet.txid
        return body.ljust(WHOAMI_REQUEST_SIZE, b"\x00")
    ip = ipaddress.ip_address(packet.host)
    return (
        bytes([ControlKind.WHOAMI_RESPONSE, CONTROL_VERSION])
        + packet.txid
        + bytes([ip.version])
        + ip.packed
        + u16(packet.port)
    )


def decode_control_packet(data: bytes) -> ControlPacket:
    if len(data) > MAX_CONTROL_SIZE:
        raise OversizeError(f"control packet of {len(data)} bytes")
    reader = Reader(data, "control packet")
    raw_kind = reader.u8()
    try:
        kind = ControlKind(raw_kind)
    except ValueError:
        raise MalformedError(f"unknown control packet kind 0x{raw_kind:02x}") from None
    version = reader.u8()
    if version != CONTROL_VERSION:
        raise UnsupportedVersionError(f"control packet version {version}")
    txid = reader.take(TXID_SIZE)
    if kind == ControlKind.WHOAMI_REQUEST:
        if len(data) != WHOAMI_REQUEST_SIZE:
            raise MalformedError(f"whoami request of {len(data)} bytes, not {WHOAMI_REQUEST_SIZE}")
        return WhoamiRequest(txid)
    family = reader.u8()
    if family == 4:
        host = str(ipaddress.IPv4Address(reader.take(4)))
    elif family == 6:
        host = str(ipaddress.IPv6Address(reader.take(16)))
    else:
        raise MalformedError(f"unknown address family {family}")
    port = reader.u16()
    reader.end()
    return WhoamiResponse(txid, host, port)
