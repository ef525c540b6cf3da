"""meshkey's own packets on a node's UDP socket, beside QUIC.

The socket tells them apart by the first byte: QUIC packets always have bit 0x40 set (RFC
9000, section 17; meshkey never negotiates greasing it), meshkey control packets start with
a kind below 0x40::

    u8 kind | u8 version | body

WHOAMI_REQUEST   16-byte transaction id, zero padding to :data:`WHOAMI_REQUEST_SIZE` bytes
WHOAMI_RESPONSE  16-byte transaction id | u8 family (4 or 6) | address (4 or 16) | u16 port
                 [| u16 alternate port]  (STUN's OTHER-ADDRESS, DESIGN.md decision 16: the
                 observer also answers WHOAMI on this port of the same IP, so a node with one
                 rendezvous can compare two mappings; absent or 0: none)

PUNCH_PROBE      16-byte punch id | u8 sender role | u32 counter | 16-byte MAC
                 | zero padding to :data:`PUNCH_PROBE_SIZE` bytes
PUNCH_ACK        16-byte punch id | u8 sender role | u32 counter of the probe answered
                 | u8 family | address | u16 port (where that probe came from) | 16-byte MAC

A request is padded so that its answer is never larger than the request that caused it: the
socket cannot be used to amplify traffic towards a spoofed source. A WHOAMI response is at
most 40 bytes (52 over IPv6) against a 64-byte request; a PUNCH_ACK at most 58 bytes against
a 64-byte probe.
Both sizes are exact: a parser refuses any other length, so nobody can make a node answer a
short probe.

Punch packets are bound to the secure channel that signalled the punch: the MAC is
HMAC-SHA256 (truncated to 16 bytes) over :func:`punch_mac_input` — every byte before the MAC,
so the punch id, the sender's role, the counter and, in an ACK, the address the answered probe
came from — keyed by a secret only the two channel ends hold (:mod:`meshkey.nat.token`
derives it and computes the MAC; this module only lays out the bytes). The role stops a
probe from being reflected back at its sender as if the peer had sent it; the counter is a
nonce, and an ACK names the counter it answers, so an ACK counts only for a probe that was
really sent. The ACK echoes the probe's source address (as STUN's XOR-MAPPED-ADDRESS does),
which tells an endpoint-dependent side which public port its NAT gave that flow.

Two nudges tell a peer that a connection it holds is gone here, so it checks at once
instead of at its next keepalive (they are unauthenticated, so they only ever make the
receiver *ask* its QUIC peer, with a hop PING, whether it is there):

STALE            8-byte connection ID: a QUIC packet came for this connection ID, and no
                 connection has it (this node restarted, or dropped the connection). The
                 answer to a short-header packet of at least 1 + 8 + 16 bytes: never larger.
RESTARTED        32-byte NodeId: sent once at start-up to the addresses of the nodes that
                 held relays here, from the same port: "whatever you held with me is gone".

Everything else on the socket is QUIC. :func:`classify` reads a datagram's first bytes and says
which of the two it is and, for QUIC, which connection it is for (short header: the 8-byte
destination connection ID meshkey's connections use; long header: the ID it names) and whether
it may open a connection; :func:`gro_runs` does the same for a GRO buffer. Both are pure: the
socket's glue (:mod:`meshkey.transport.udp`) looks the connection up and does the I/O.

There is no KEEPALIVE packet: once a punch has picked an address pair, a QUIC hop runs over it
from the same socket, and the hop's own PINGs travel on exactly that 5-tuple, which is all a
NAT's mapping timer looks at (:mod:`meshkey.paths` schedules them below the NAT timeout).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass

from meshkey.wire.errors import MalformedError, OversizeError, UnsupportedVersionError
from meshkey.wire.net import Endpoint
from meshkey.wire.reader import Reader, u16, u32

CONTROL_VERSION = 1
QUIC_BIT = 0x40  # set in every QUIC packet (RFC 9000, 17.2 and 17.3)
LONG_HEADER_BIT = 0x80  # a long header: handshake packets, Retry, version negotiation
#: The length of meshkey's QUIC connection IDs: a short header does not say how long its
#: destination ID is, the receiver must know.
CID_LENGTH = 8
#: A client's Initial is padded to at least this (RFC 9000, 14.1): only such may open a
#: connection, so an answer to a spoofed Initial is never much larger than it.
MIN_INITIAL_SIZE = 1200
QUIC_V1 = b"\x00\x00\x00\x01"
#: A short-header packet this long (header, connection ID, the AEAD tag) may be answered with
#: a STALE, which is smaller.
MIN_STALE_TRIGGER = 1 + CID_LENGTH + 16
MAX_CONTROL_SIZE = 1200
TXID_SIZE = 16
WHOAMI_REQUEST_SIZE = 64
PUNCH_ID_SIZE = 16
PUNCH_MAC_SIZE = 16
PUNCH_PROBE_SIZE = 64
MAX_COUNTER = 2**32 - 1


class ControlKind(enum.IntEnum):
    WHOAMI_REQUEST = 0x01
    WHOAMI_RESPONSE = 0x02
    PUNCH_PROBE = 0x03
    PUNCH_ACK = 0x04
    STALE = 0x05
    RESTARTED = 0x06


class PunchRole(enum.IntEnum):
    """Which end of the punch sent the packet: the side that asked for it, or the other."""

    INITIATOR = 0
    RESPONDER = 1

    @property
    def other(self) -> PunchRole:
        return PunchRole.RESPONDER if self is PunchRole.INITIATOR else PunchRole.INITIATOR


@dataclass(frozen=True, slots=True)
class WhoamiRequest:
    txid: bytes


@dataclass(frozen=True, slots=True)
class WhoamiResponse:
    txid: bytes
    host: str
    port: int
    alternate_port: int = 0  # the observer answers WHOAMI on this port too (0: no)


@dataclass(frozen=True, slots=True)
class PunchProbe:
    punch_id: bytes
    role: PunchRole
    counter: int
    mac: bytes


@dataclass(frozen=True, slots=True)
class PunchAck:
    punch_id: bytes
    role: PunchRole
    counter: int
    observed: Endpoint  # where the answered probe came from, as the answering side saw it
    mac: bytes


@dataclass(frozen=True, slots=True)
class Stale:
    connection_id: bytes


@dataclass(frozen=True, slots=True)
class Restarted:
    node_id: bytes


STALE_CID_SIZE = CID_LENGTH
NUDGE_NODE_ID_SIZE = 32

ControlPacket = WhoamiRequest | WhoamiResponse | PunchProbe | PunchAck | Stale | Restarted


def _address_bytes(address: Endpoint) -> bytes:
    try:
        ip = ipaddress.ip_address(address[0])
    except ValueError as exc:
        raise ValueError(f"not an IP address: {address[0]!r}") from exc
    if not 0 <= address[1] <= 0xFFFF:
        raise ValueError(f"port {address[1]} out of range")
    return bytes([ip.version]) + ip.packed + u16(address[1])


def _read_address(reader: Reader) -> Endpoint:
    family = reader.u8()
    if family == 4:
        host = str(ipaddress.IPv4Address(reader.take(4)))
    elif family == 6:
        host = str(ipaddress.IPv6Address(reader.take(16)))
    else:
        raise MalformedError(f"unknown address family {family}")
    return host, reader.u16()


def _check_punch_fields(punch_id: bytes, counter: int) -> None:
    if len(punch_id) != PUNCH_ID_SIZE:
        raise ValueError(f"a punch id is {PUNCH_ID_SIZE} bytes")
    if not 0 <= counter <= MAX_COUNTER:
        raise ValueError(f"punch counter {counter} out of range")


def punch_mac_input(packet: PunchProbe | PunchAck) -> bytes:
    """The bytes a punch packet's MAC covers: everything the packet carries before it."""
    _check_punch_fields(packet.punch_id, packet.counter)
    if isinstance(packet, PunchProbe):
        head = bytes([ControlKind.PUNCH_PROBE, CONTROL_VERSION])
        return head + packet.punch_id + bytes([packet.role]) + u32(packet.counter)
    head = bytes([ControlKind.PUNCH_ACK, CONTROL_VERSION])
    return (
        head
        + packet.punch_id
        + bytes([packet.role])
        + u32(packet.counter)
        + _address_bytes(packet.observed)
    )


def encode_control_packet(packet: ControlPacket) -> bytes:
    if isinstance(packet, WhoamiRequest):
        body = bytes([ControlKind.WHOAMI_REQUEST, CONTROL_VERSION]) + packet.txid
        return body.ljust(WHOAMI_REQUEST_SIZE, b"\x00")
    if isinstance(packet, WhoamiResponse):
        alternate = u16(packet.alternate_port) if packet.alternate_port else b""
        return (
            bytes([ControlKind.WHOAMI_RESPONSE, CONTROL_VERSION])
            + packet.txid
            + _address_bytes((packet.host, packet.port))
            + alternate
        )
    if isinstance(packet, Stale):
        if len(packet.connection_id) != STALE_CID_SIZE:
            raise ValueError(f"a STALE names an {STALE_CID_SIZE}-byte connection ID")
        return bytes([ControlKind.STALE, CONTROL_VERSION]) + packet.connection_id
    if isinstance(packet, Restarted):
        if len(packet.node_id) != NUDGE_NODE_ID_SIZE:
            raise ValueError("a RESTARTED carries a 32-byte NodeId")
        return bytes([ControlKind.RESTARTED, CONTROL_VERSION]) + packet.node_id
    if len(packet.mac) != PUNCH_MAC_SIZE:
        raise ValueError(f"a punch MAC is {PUNCH_MAC_SIZE} bytes")
    signed = punch_mac_input(packet) + packet.mac
    if isinstance(packet, PunchProbe):
        return signed.ljust(PUNCH_PROBE_SIZE, b"\x00")
    return signed


def _control_header(
    data: bytes, kinds: frozenset[ControlKind], what: str
) -> tuple[ControlKind, Reader]:
    if len(data) > MAX_CONTROL_SIZE:
        raise OversizeError(f"control packet of {len(data)} bytes")
    reader = Reader(data, "control packet")
    raw_kind = reader.u8()
    try:
        kind = ControlKind(raw_kind)
    except ValueError:
        raise MalformedError(f"unknown control packet kind 0x{raw_kind:02x}") from None
    if kind not in kinds:
        raise MalformedError(f"control packet kind {kind.name} is not a {what} packet")
    version = reader.u8()
    if version != CONTROL_VERSION:
        raise UnsupportedVersionError(f"control packet version {version}")
    return kind, reader


_WHOAMI_KINDS = frozenset({ControlKind.WHOAMI_REQUEST, ControlKind.WHOAMI_RESPONSE})
_PUNCH_KINDS = frozenset({ControlKind.PUNCH_PROBE, ControlKind.PUNCH_ACK})


def decode_control_packet(data: bytes) -> WhoamiRequest | WhoamiResponse:
    """A WHOAMI request or response (the reflexive-address service's packets)."""
    kind, reader = _control_header(data, _WHOAMI_KINDS, "whoami")
    txid = reader.take(TXID_SIZE)
    if kind == ControlKind.WHOAMI_REQUEST:
        if len(data) != WHOAMI_REQUEST_SIZE:
            raise MalformedError(f"whoami request of {len(data)} bytes, not {WHOAMI_REQUEST_SIZE}")
        return WhoamiRequest(txid)
    host, port = _read_address(reader)
    alternate = reader.u16() if reader.remaining else 0
    reader.end()
    return WhoamiResponse(txid, host, port, alternate)


_NUDGE_KINDS = frozenset({ControlKind.STALE, ControlKind.RESTARTED})


def decode_nudge_packet(data: bytes) -> Stale | Restarted:
    """A STALE or RESTARTED nudge (exact sizes)."""
    kind, reader = _control_header(data, _NUDGE_KINDS, "nudge")
    if kind == ControlKind.STALE:
        nudge: Stale | Restarted = Stale(reader.take(STALE_CID_SIZE))
    else:
        nudge = Restarted(reader.take(NUDGE_NODE_ID_SIZE))
    reader.end()
    return nudge


def decode_punch_packet(data: bytes) -> PunchProbe | PunchAck:
    """A PUNCH_PROBE or PUNCH_ACK; its MAC is not checked here (the punch key does that)."""
    kind, reader = _control_header(data, _PUNCH_KINDS, "punch")
    return _decode_punch(kind, data, reader)


def _decode_punch(kind: ControlKind, data: bytes, reader: Reader) -> PunchProbe | PunchAck:
    if kind == ControlKind.PUNCH_PROBE and len(data) != PUNCH_PROBE_SIZE:
        # Exact: a shorter probe would make the ACK an amplifier.
        raise MalformedError(f"punch probe of {len(data)} bytes, not {PUNCH_PROBE_SIZE}")
    punch_id = reader.take(PUNCH_ID_SIZE)
    raw_role = reader.u8()
    try:
        role = PunchRole(raw_role)
    except ValueError:
        raise MalformedError(f"unknown punch role {raw_role}") from None
    counter = reader.u32()
    if kind == ControlKind.PUNCH_PROBE:
        mac = reader.take(PUNCH_MAC_SIZE)
        if any(reader.rest()):
            raise MalformedError("punch probe padding is not zero")
        return PunchProbe(punch_id, role, counter, mac)
    observed = _read_address(reader)
    mac = reader.take(PUNCH_MAC_SIZE)
    reader.end()
    return PunchAck(punch_id, role, counter, observed, mac)


# -- demultiplexing: what a datagram on the socket is ----------------------------------------


@dataclass(frozen=True, slots=True)
class ControlDatagram:
    """First byte below 0x40: a meshkey control packet of ``kind`` (not parsed here; the
    handler for its kind does that)."""

    kind: int


@dataclass(frozen=True, slots=True)
class QuicShortHeader:
    """A 1-RTT QUIC packet for the connection that owns ``dcid``."""

    dcid: bytes
    answerable: bool  # long enough (MIN_STALE_TRIGGER) to be answered with a STALE


@dataclass(frozen=True, slots=True)
class QuicLongHeader:
    """A handshake-time QUIC packet (Initial, Handshake, 0-RTT, Retry, version negotiation)
    for the connection that owns ``dcid``."""

    dcid: bytes
    initial: bool  # a full-size QUIC v1 Initial: the only packet that may open a connection


@dataclass(frozen=True, slots=True)
class Garbage:
    """Nothing any handler could use (empty, or cut short before its connection ID)."""

    reason: str


Datagram = ControlDatagram | QuicShortHeader | QuicLongHeader | Garbage


def classify(datagram: bytes) -> Datagram:
    """What ``datagram`` is, from its first bytes alone; never raises."""
    if not datagram:
        return Garbage("an empty datagram")
    first = datagram[0]
    if first < QUIC_BIT:
        return ControlDatagram(first)
    if not first & QUIC_BIT:
        return Garbage(f"first byte 0x{first:02x}: neither QUIC nor a control packet")
    if not first & LONG_HEADER_BIT:
        dcid = datagram[1 : 1 + CID_LENGTH]
        if len(dcid) < CID_LENGTH:
            return Garbage("a short header cut short in its connection ID")
        return QuicShortHeader(dcid, len(datagram) >= MIN_STALE_TRIGGER)
    # A long header: u8 flags | u32 version | u8 dcid length | dcid | ... (RFC 9000, 17.2)
    if len(datagram) < 6 or len(datagram) < 6 + datagram[5]:
        return Garbage("a long header cut short in its connection ID")
    initial = (
        len(datagram) >= MIN_INITIAL_SIZE
        and first & 0xB0 == 0x80  # long header, packet type 0: Initial
        and datagram[1:5] == QUIC_V1
    )
    return QuicLongHeader(datagram[6 : 6 + datagram[5]], initial)


def gro_runs(buffer: bytes, segment: int) -> Iterator[tuple[int, int, Datagram]]:
    """The datagrams of a GRO buffer (each ``segment`` bytes, the last maybe fewer) as
    ``(start, end, what the first is)``. A run of more than one datagram is always
    short-header packets for one connection ID (the bulk of a transfer), to be handed over at
    once; anything else comes one datagram at a time."""
    if segment <= 0:
        raise ValueError(f"GRO segment size {segment}")
    start = 0
    while start < len(buffer):
        end = start + segment
        kind = classify(buffer[start:end])
        if isinstance(kind, QuicShortHeader):
            while (
                end < len(buffer)
                and buffer[end] & (LONG_HEADER_BIT | QUIC_BIT) == QUIC_BIT
                and buffer[end + 1 : end + 1 + CID_LENGTH] == kind.dcid
            ):
                end += segment
        yield start, min(end, len(buffer)), kind
        start = end
