"""The node graph's wire formats: DHT RPCs, contacts and signed peer records.

RPCs travel as the payload of a routing message to ``/service/dht`` over an authenticated
hop (so the transport, not these bytes, says who sent them). Each is a versioned msgpack
map with short keys::

    {"v": 1, "k": RpcKind, "tx": bytes(8), "m": Mode, ...}

``tx`` matches an answer to its request; ``m`` is the sender's own mode (server: reachable,
answers DHT queries; client: behind a NAT). A claim of server mode is only a claim: the
receiver decides what to believe (see :mod:`meshkey.dht.table`).

=============== ===================================== ========================================
kind            request fields                        answer
=============== ===================================== ========================================
PING            ``n``: optional nonce (16)            PONG ``o``: the sender's observed address
FIND_NODE       ``t``: target NodeId (32)             NODES ``c``: up to k contacts
FIND_VALUE      ``t``: key = the record owner's id    VALUE ``r``: record or nil, ``c``: contacts
STORE           ``r``: signed peer record             STORED
DIAL_BACK       ``n``: nonce (16), ``c``: [target],   DIAL_BACK_RESULT ``ok``, ``h``: helper
                ``p``: optional zero padding
(any)                                                 ERROR ``e``: DhtErrorCode, ``s``: reason
=============== ===================================== ========================================

A contact is ``[node id (32), mode, [endpoint, ...]]`` with at most
:data:`MAX_ADDRESSES` endpoints; an endpoint is 4 or 16 bytes of IP address then a
big-endian u16 port (6 or 18 bytes).

A **peer record** is a fixed binary layout, not msgpack, because it is signed: its bytes must
be one and the same for the signer and every verifier, whatever the msgpack library does
with map order or integer widths::

    u8 version (1) | node id (32) | u64 sequence | u64 expiry (unix seconds) | u8 NAT class
    | u8 n | endpoint{n}   direct addresses        endpoint = u8 family (4|6) | ip | u16 port
    | u8 n | endpoint{n}   reflexive addresses
    | u8 n | (u8 len | UTF-8 route){n}   relay routes
    | signature (64)      Ed25519 over RECORD_DOMAIN + everything before it

Limits: :data:`MAX_PEER_RECORD` bytes for a record (it is stored by strangers),
:data:`MAX_DHT_MESSAGE` for an RPC (k contacts of 5 IPv6 endpoints plus one record fit with
room to spare), :data:`MAX_CONTACTS` per answer. Every parser raises
:class:`~meshkey.wire.errors.WireError` subclasses only.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Any

from meshkey.wire.errors import MalformedError, OversizeError, UnsupportedVersionError
from meshkey.wire.maps import decode_map, encode_map
from meshkey.wire.net import Endpoint, NatClass
from meshkey.wire.reader import Reader, u16, u64

DHT_VERSION = 1
RECORD_VERSION = 2  # 2 added the channel key and local addresses
CHANNEL_KEY_SIZE = 32
MAX_DHT_MESSAGE = 8192
MAX_PEER_RECORD = 1024
TXID_SIZE = 8
NONCE_SIZE = 16
NODE_ID_SIZE = 32
SIGNATURE_SIZE = 64
MAX_CONTACTS = 20
MAX_ADDRESSES = 5
MAX_RELAY_ROUTES = 4
MAX_RELAY_ROUTE = 200
MAX_REASON = 200
#: What a record signature covers before the record's bytes: a signature made for anything
#: else (a hop proof, an attestation) can never pass for a record.
RECORD_DOMAIN = b"meshkey peer record v1\x00"


class Mode(enum.IntEnum):
    CLIENT = 0  # behind a NAT: reachable only over its own connections or its relay
    SERVER = 1  # reachable at its address; answers DHT queries


#: The peer record's one-byte codes for :class:`~meshkey.wire.net.NatClass`.
NAT_CLASS_CODES: dict[NatClass, int] = {
    NatClass.UNKNOWN: 0,
    NatClass.PUBLIC: 1,
    NatClass.ENDPOINT_INDEPENDENT: 2,
    NatClass.ENDPOINT_DEPENDENT: 3,
    NatClass.UDP_BLOCKED: 4,
}
_NAT_CLASS_BY_CODE = {code: nat for nat, code in NAT_CLASS_CODES.items()}


class RpcKind(enum.IntEnum):
    PING = 1
    PONG = 2
    FIND_NODE = 3
    NODES = 4
    FIND_VALUE = 5
    VALUE = 6
    STORE = 7
    STORED = 8
    DIAL_BACK = 9
    DIAL_BACK_RESULT = 10
    ERROR = 11


class DhtErrorCode(enum.IntEnum):
    MALFORMED = 1
    RATE_LIMITED = 2
    NOT_SERVER = 3  # this node is a client: it answers no DHT queries
    BAD_RECORD = 4  # signature, size or expiry wrong
    STALE_RECORD = 5  # a record with this or a higher sequence is held
    UNSUPPORTED = 6
    UNAVAILABLE = 7  # e.g. no helper for a dial-back
    INTERNAL = 8


_ERROR_CODES = frozenset(int(c) for c in DhtErrorCode)
REQUEST_KINDS = frozenset(
    {RpcKind.PING, RpcKind.FIND_NODE, RpcKind.FIND_VALUE, RpcKind.STORE, RpcKind.DIAL_BACK}
)


@dataclass(frozen=True, slots=True)
class WireContact:
    node_id: bytes
    mode: Mode
    addresses: tuple[Endpoint, ...]


# -- RPCs -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    txid: bytes
    mode: Mode
    nonce: bytes | None = None


@dataclass(frozen=True, slots=True)
class Pong:
    txid: bytes
    mode: Mode
    observed: Endpoint | None


@dataclass(frozen=True, slots=True)
class FindNode:
    txid: bytes
    mode: Mode
    target: bytes


@dataclass(frozen=True, slots=True)
class Nodes:
    txid: bytes
    mode: Mode
    contacts: tuple[WireContact, ...]


@dataclass(frozen=True, slots=True)
class FindValue:
    txid: bytes
    mode: Mode
    key: bytes


@dataclass(frozen=True, slots=True)
class Value:
    txid: bytes
    mode: Mode
    record: bytes | None
    contacts: tuple[WireContact, ...]


@dataclass(frozen=True, slots=True)
class Store:
    txid: bytes
    mode: Mode
    record: bytes


@dataclass(frozen=True, slots=True)
class Stored:
    txid: bytes
    mode: Mode


@dataclass(frozen=True, slots=True)
class DialBack:
    """Asks the receiver to open a *new* hop to the requester's observed address and ping it
    with ``nonce``. With ``target`` set, the requester is a node asking on behalf of
    ``target`` (a helper dial: it comes from an address ``target`` never sent to); such an
    ask carries ``padding`` zero bytes, so that the dial it causes (to an address the helper
    never observed) costs the helper no more than a small multiple of what the asker sent."""

    txid: bytes
    mode: Mode
    nonce: bytes
    target: WireContact | None = None
    padding: int = 0


@dataclass(frozen=True, slots=True)
class DialBackResult:
    txid: bytes
    mode: Mode
    ok: bool
    helper: bool  # True when a third node dialled, not the one asked
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DhtError:
    txid: bytes
    mode: Mode
    code: DhtErrorCode
    reason: str


Request = Ping | FindNode | FindValue | Store | DialBack
Answer = Pong | Nodes | Value | Stored | DialBackResult | DhtError
Rpc = Request | Answer

_KIND_OF: dict[type[Any], RpcKind] = {
    Ping: RpcKind.PING,
    Pong: RpcKind.PONG,
    FindNode: RpcKind.FIND_NODE,
    Nodes: RpcKind.NODES,
    FindValue: RpcKind.FIND_VALUE,
    Value: RpcKind.VALUE,
    Store: RpcKind.STORE,
    Stored: RpcKind.STORED,
    DialBack: RpcKind.DIAL_BACK,
    DialBackResult: RpcKind.DIAL_BACK_RESULT,
    DhtError: RpcKind.ERROR,
}


def kind_of(rpc: Rpc) -> RpcKind:
    return _KIND_OF[type(rpc)]


def is_request(rpc: Rpc) -> bool:
    return kind_of(rpc) in REQUEST_KINDS


# -- endpoints and contacts -----------------------------------------------------------


def encode_endpoint(endpoint: Endpoint) -> bytes:
    host, port = endpoint
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not in 1-65535")
    return ipaddress.ip_address(host).packed + u16(port)


def decode_endpoint(value: Any) -> Endpoint:
    if not isinstance(value, bytes) or len(value) not in (6, 18):
        raise MalformedError("an endpoint is 6 or 18 bytes (IP address and port)")
    ip = ipaddress.ip_address(value[:-2])
    port = int.from_bytes(value[-2:], "big")
    if port == 0:
        raise MalformedError("endpoint port 0")
    return str(ip), port


def _contact_body(contact: WireContact) -> list[Any]:
    if len(contact.node_id) != NODE_ID_SIZE:
        raise ValueError("a contact's NodeId is 32 bytes")
    if len(contact.addresses) > MAX_ADDRESSES:
        raise ValueError(f"a contact has at most {MAX_ADDRESSES} addresses")
    return [contact.node_id, int(contact.mode), [encode_endpoint(a) for a in contact.addresses]]


def _contact(value: Any) -> WireContact:
    if not isinstance(value, list) or len(value) != 3:
        raise MalformedError("a contact is [node id, mode, addresses]")
    node_id, mode, addresses = value
    if not isinstance(node_id, bytes) or len(node_id) != NODE_ID_SIZE:
        raise MalformedError("a contact's NodeId is 32 bytes")
    if not isinstance(addresses, list) or len(addresses) > MAX_ADDRESSES:
        raise MalformedError(f"a contact has a list of at most {MAX_ADDRESSES} addresses")
    return WireContact(node_id, _mode(mode), tuple(decode_endpoint(a) for a in addresses))


def _contacts(value: Any) -> tuple[WireContact, ...]:
    if not isinstance(value, list):
        raise MalformedError("contacts must be a list")
    if len(value) > MAX_CONTACTS:
        raise OversizeError(f"{len(value)} contacts (limit {MAX_CONTACTS})")
    return tuple(_contact(item) for item in value)


def _mode(value: Any) -> Mode:
    if value not in (0, 1) or isinstance(value, bool):
        raise MalformedError(f"mode {value!r} (expected 0 or 1)")
    return Mode(value)


def _bytes(body: dict[str, Any], key: str, size: int, what: str) -> bytes:
    value = body.get(key)
    if not isinstance(value, bytes) or len(value) != size:
        raise MalformedError(f"{what} must be {size} bytes")
    return value


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key, "")
    if not isinstance(value, str) or len(value) > MAX_REASON:
        raise MalformedError(f"{key!r} must be text of at most {MAX_REASON} characters")
    return value


# -- encode / decode RPCs -------------------------------------------------------------


def encode_rpc(rpc: Rpc) -> bytes:
    """The wire form of ``rpc``; ValueError (OversizeError) for values it cannot carry."""
    if len(rpc.txid) != TXID_SIZE:
        raise ValueError(f"a transaction id is {TXID_SIZE} bytes")
    body: dict[str, Any] = {"k": int(_KIND_OF[type(rpc)]), "tx": rpc.txid, "m": int(rpc.mode)}
    if isinstance(rpc, Ping):
        if rpc.nonce is not None:
            body["n"] = rpc.nonce
    elif isinstance(rpc, Pong):
        body["o"] = encode_endpoint(rpc.observed) if rpc.observed else None
    elif isinstance(rpc, FindNode):
        body["t"] = rpc.target
    elif isinstance(rpc, FindValue):
        body["t"] = rpc.key
    elif isinstance(rpc, Nodes):
        body["c"] = [_contact_body(c) for c in rpc.contacts[:MAX_CONTACTS]]
    elif isinstance(rpc, Value):
        body["r"] = rpc.record
        body["c"] = [_contact_body(c) for c in rpc.contacts[:MAX_CONTACTS]]
    elif isinstance(rpc, Store):
        body["r"] = rpc.record
    elif isinstance(rpc, DialBack):
        body["n"] = rpc.nonce
        body["c"] = [] if rpc.target is None else [_contact_body(rpc.target)]
        if rpc.padding:
            body["p"] = bytes(rpc.padding)
    elif isinstance(rpc, DialBackResult):
        body["ok"], body["h"], body["s"] = rpc.ok, rpc.helper, rpc.reason[:MAX_REASON]
    elif isinstance(rpc, DhtError):
        body["e"], body["s"] = int(rpc.code), rpc.reason[:MAX_REASON]
    return encode_map(body, DHT_VERSION, MAX_DHT_MESSAGE, "DHT message")


def decode_rpc(data: bytes) -> Rpc:
    """Parses one DHT message; only WireError subclasses on bad input."""
    body = decode_map(data, DHT_VERSION, MAX_DHT_MESSAGE, "DHT message")
    raw_kind = body.get("k")
    if not isinstance(raw_kind, int) or isinstance(raw_kind, bool):
        raise MalformedError("DHT message without a kind")
    try:
        kind = RpcKind(raw_kind)
    except ValueError:
        raise MalformedError(f"unknown DHT message kind {raw_kind}") from None
    txid = _bytes(body, "tx", TXID_SIZE, "transaction id")
    mode = _mode(body.get("m"))
    if kind == RpcKind.PING:
        nonce = body.get("n")
        if nonce is not None and (not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE):
            raise MalformedError(f"a ping nonce is {NONCE_SIZE} bytes")
        return Ping(txid, mode, nonce)
    if kind == RpcKind.PONG:
        observed = body.get("o")
        return Pong(txid, mode, None if observed is None else decode_endpoint(observed))
    if kind == RpcKind.FIND_NODE:
        return FindNode(txid, mode, _bytes(body, "t", NODE_ID_SIZE, "target"))
    if kind == RpcKind.FIND_VALUE:
        return FindValue(txid, mode, _bytes(body, "t", NODE_ID_SIZE, "key"))
    if kind == RpcKind.NODES:
        return Nodes(txid, mode, _contacts(body.get("c")))
    if kind == RpcKind.VALUE:
        record = body.get("r")
        if record is not None and (not isinstance(record, bytes) or len(record) > MAX_PEER_RECORD):
            raise MalformedError(f"a record is at most {MAX_PEER_RECORD} bytes")
        return Value(txid, mode, record, _contacts(body.get("c")))
    if kind == RpcKind.STORE:
        record = body.get("r")
        if not isinstance(record, bytes) or len(record) > MAX_PEER_RECORD:
            raise MalformedError(f"a STORE carries a record of at most {MAX_PEER_RECORD} bytes")
        return Store(txid, mode, record)
    if kind == RpcKind.STORED:
        return Stored(txid, mode)
    if kind == RpcKind.DIAL_BACK:
        targets = _contacts(body.get("c", []))
        if len(targets) > 1:
            raise MalformedError("a dial-back names at most one target")
        nonce = _bytes(body, "n", NONCE_SIZE, "dial-back nonce")
        padding = body.get("p", b"")
        if not isinstance(padding, bytes):
            raise MalformedError("a dial-back's padding is bytes")
        return DialBack(txid, mode, nonce, targets[0] if targets else None, len(padding))
    if kind == RpcKind.DIAL_BACK_RESULT:
        ok, helper = body.get("ok"), body.get("h")
        if not isinstance(ok, bool) or not isinstance(helper, bool):
            raise MalformedError("a dial-back result needs booleans ok and h")
        return DialBackResult(txid, mode, ok, helper, _text(body, "s"))
    raw_code = body.get("e")
    # An unknown code (a newer peer's) is still an error, with its reason.
    code = DhtErrorCode.INTERNAL
    if isinstance(raw_code, int) and raw_code in _ERROR_CODES:
        code = DhtErrorCode(raw_code)
    return DhtError(txid, mode, code, _text(body, "s"))


# -- peer records ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WirePeerRecord:
    """A peer record's fields as they are signed (the signature is kept beside them)."""

    node_id: bytes
    sequence: int
    expiry: int  # unix seconds
    nat_class: NatClass = NatClass.UNKNOWN
    direct: tuple[Endpoint, ...] = ()
    reflexive: tuple[Endpoint, ...] = ()
    relays: tuple[str, ...] = ()
    signature: bytes = b""
    #: The X25519 static key of the node's secure channels (what a Noise IK dial needs:
    #: DESIGN.md decision 18), or empty.
    channel_key: bytes = b""
    #: The node's own addresses (behind a NAT: its LAN addresses), so a peer on the same
    #: network reaches it there, even before any relay exists (issue 18).
    local: tuple[Endpoint, ...] = ()


def _record_endpoint(endpoint: Endpoint) -> bytes:
    packed = encode_endpoint(endpoint)
    return bytes([4 if len(packed) == 6 else 6]) + packed


def record_body(record: WirePeerRecord) -> bytes:
    """Everything the signature covers after :data:`RECORD_DOMAIN`, in its one byte form."""
    if len(record.node_id) != NODE_ID_SIZE:
        raise ValueError("a record's NodeId is 32 bytes")
    if not 0 <= record.sequence < 2**64 or not 0 <= record.expiry < 2**64:
        raise ValueError("sequence and expiry are unsigned 64-bit integers")
    parts = [bytes([RECORD_VERSION]), record.node_id, u64(record.sequence), u64(record.expiry)]
    parts.append(bytes([NAT_CLASS_CODES[record.nat_class]]))
    for endpoints in (record.direct, record.reflexive):
        if len(endpoints) > MAX_ADDRESSES:
            raise ValueError(f"a record lists at most {MAX_ADDRESSES} addresses of each kind")
        parts.append(bytes([len(endpoints)]))
        parts.extend(_record_endpoint(e) for e in endpoints)
    if len(record.relays) > MAX_RELAY_ROUTES:
        raise ValueError(f"a record lists at most {MAX_RELAY_ROUTES} relay routes")
    parts.append(bytes([len(record.relays)]))
    for route in record.relays:
        raw = route.encode("utf-8")
        if not raw or len(raw) > MAX_RELAY_ROUTE:
            raise ValueError(f"a relay route is 1-{MAX_RELAY_ROUTE} bytes")
        parts.append(bytes([len(raw)]) + raw)
    if record.channel_key and len(record.channel_key) != CHANNEL_KEY_SIZE:
        raise ValueError(f"a channel key is {CHANNEL_KEY_SIZE} bytes")
    parts.append(bytes([len(record.channel_key)]) + record.channel_key)
    if len(record.local) > MAX_ADDRESSES:
        raise ValueError(f"a record lists at most {MAX_ADDRESSES} addresses of each kind")
    parts.append(bytes([len(record.local)]))
    parts.extend(_record_endpoint(e) for e in record.local)
    body = b"".join(parts)
    if len(body) + SIGNATURE_SIZE > MAX_PEER_RECORD:
        raise OversizeError(f"peer record of {len(body) + SIGNATURE_SIZE} bytes")
    return body


def signed_bytes(record: WirePeerRecord) -> bytes:
    """The bytes a record's signature is made over (domain separated)."""
    return RECORD_DOMAIN + record_body(record)


def encode_peer_record(record: WirePeerRecord) -> bytes:
    if len(record.signature) != SIGNATURE_SIZE:
        raise ValueError("a record carries a 64-byte signature")
    return record_body(record) + record.signature


def _read_record_endpoints(reader: Reader) -> tuple[Endpoint, ...]:
    count = reader.u8()
    if count > MAX_ADDRESSES:
        raise OversizeError(f"{count} addresses in a record (limit {MAX_ADDRESSES})")
    endpoints = []
    for _ in range(count):
        family = reader.u8()
        if family not in (4, 6):
            raise MalformedError(f"record endpoint family {family}")
        endpoints.append(decode_endpoint(reader.take(6 if family == 4 else 18)))
    return tuple(endpoints)


def decode_peer_record(data: bytes) -> WirePeerRecord:
    """Parses a record (without checking its signature: see ``meshkey.dht.records``)."""
    if len(data) > MAX_PEER_RECORD:
        raise OversizeError(f"peer record of {len(data)} bytes (limit {MAX_PEER_RECORD})")
    reader = Reader(data, "peer record")
    version = reader.u8()
    if version != RECORD_VERSION:
        raise UnsupportedVersionError(f"peer record version {version} (expected {RECORD_VERSION})")
    node_id = reader.take(NODE_ID_SIZE)
    sequence, expiry = reader.u64(), reader.u64()
    raw_class = reader.u8()
    nat_class = _NAT_CLASS_BY_CODE.get(raw_class)
    if nat_class is None:
        raise MalformedError(f"unknown NAT class {raw_class}")
    direct = _read_record_endpoints(reader)
    reflexive = _read_record_endpoints(reader)
    count = reader.u8()
    if count > MAX_RELAY_ROUTES:
        raise OversizeError(f"{count} relay routes in a record (limit {MAX_RELAY_ROUTES})")
    relays = []
    for _ in range(count):
        size = reader.u8()
        if not 1 <= size <= MAX_RELAY_ROUTE:
            raise MalformedError(f"relay route of {size} bytes")
        relays.append(reader.text(size))
    key_size = reader.u8()
    if key_size not in (0, CHANNEL_KEY_SIZE):
        raise MalformedError(f"channel key of {key_size} bytes")
    channel_key = reader.take(key_size)
    local = _read_record_endpoints(reader)
    signature = reader.take(SIGNATURE_SIZE)
    reader.end()
    return WirePeerRecord(
        node_id,
        sequence,
        expiry,
        nat_class,
        direct,
        reflexive,
        tuple(relays),
        signature,
        channel_key,
        local,
    )
