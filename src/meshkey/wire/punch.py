"""Punch signalling: what two nodes say to each other, end to end inside a secure channel,
to punch a direct path (DESIGN.md decision 11).

These messages travel as the plaintext of secure-channel DATA, usually through a relay; the
channel encrypts and authenticates them, so the relay can neither read nor forge a
candidate address, a NAT class or the key share from which the probes' MAC key is derived.

msgpack maps, one per message, at most :data:`MAX_PUNCH_MESSAGE` bytes::

    CONNECT  {"v": 1, "t": "connect", "id": bytes(16), "reply": bool, "share": bytes(32),
              "class": NAT class, "local": [[host, port], ...], "reflexive": [...],
              "tcp": [...], "caps": [str, ...], "start_in": float (optional, replies only)}
    SYNC     {"v": 1, "t": "sync", "id": bytes(16)}
    RESULT   {"v": 1, "t": "result", "id": bytes(16), "remote": [host, port]}
    ABORT    {"v": 1, "t": "abort", "id": bytes(16), "reason": reason, "detail": str,
              "retry_after": float}
    CREDIT   {"v": 1, "t": "credit", "id": bytes(16), "pad": bytes(n)}

The initiator sends CONNECT (``reply`` false) and times it; the responder answers with its
own CONNECT (``reply`` true); the initiator sends SYNC and both start probing together
(libp2p DCUtR). A *timed start* saves the SYNC: an initiator that offers the
``timed-start`` capability lets a responder that knows the round trip of the signalling path
put ``start_in`` in its reply — the seconds after sending it at which the responder starts
probing (its estimate of the reply's one-way time) — and the initiator starts at the same
moment, on its own measurement of that one-way time; no SYNC is sent. ``start_in`` is optional
(absent: the SYNC exchange as before; older peers ignore the field and the capability), at
most :data:`MAX_START_IN`, and only in a reply. RESULT says which address of the peer
answered first; ABORT ends the punch with a reason either side can show a user.

CREDIT pays for probes (DESIGN.md decision 20): a node sends, on a peer's say-so, at most
three times the bytes that peer sent it for the punch (:mod:`meshkey.nat.allowance`). A plain
punch pays for itself (the peer's own probes do), a birthday punch does not: the side that
asks for thousands of packets (the endpoint-dependent side, for the spray; the sprayer, for
the openers of 256 sockets) sends padding, at most :data:`MAX_CREDIT_PAD` bytes a message,
worth a third of what it asks for. The padding is zeros: the channel encrypts it.

Addresses are IP literals (never names: a name would make a node resolve what a peer told it)
with ports 1-65535, at most :data:`MAX_CANDIDATES` per list. Unknown capabilities are ignored
(a newer peer may offer more); unknown NAT classes and reasons are errors.
"""

from __future__ import annotations

import enum
import ipaddress
import math
from dataclasses import dataclass, field
from typing import Any

from meshkey.wire.errors import MalformedError
from meshkey.wire.maps import decode_map, encode_map
from meshkey.wire.net import Endpoint, NatClass

PUNCH_VERSION = 1
#: A punch message travels as a path signal (:mod:`meshkey.wire.paths`, 4,096 bytes with
#: its header): a CREDIT is padded up to this.
MAX_PUNCH_MESSAGE = 4000
#: The padding one CREDIT carries at most (the rest of the message is at most 40 bytes).
MAX_CREDIT_PAD = 3900
PUNCH_ID_SIZE = 16
KEY_SHARE_SIZE = 32
MAX_CANDIDATES = 8
MAX_CAPABILITIES = 16
MAX_CAPABILITY = 32
MAX_DETAIL = 256
MAX_RETRY_AFTER = 86400.0
#: A timed start further away than this is not a synchronised punch (a signalling path of
#: 10 s round trip would time the punch out anyway): refused.
MAX_START_IN = 5.0


class Capability(enum.StrEnum):
    BIRTHDAY = "birthday"  # can open the extra sockets, or spray random ports
    LOW_TTL = "low-ttl"  # sends a low-TTL opener before its probes
    TCP_DIAL = "tcp-dial"  # can dial a TCP hop (UDP blocked, peer public)
    TIMED_START = "timed-start"  # an initiator that starts on a reply's ``start_in``, no SYNC


class AbortReason(enum.StrEnum):
    BOTH_ENDPOINT_DEPENDENT = "both-endpoint-dependent"
    UDP_BLOCKED = "udp-blocked"
    NO_CAPABILITY = "no-capability"  # the strategy needs a capability the peer lacks
    BIRTHDAY_BUSY = "birthday-busy"  # one birthday punch at a time per node
    DIRECT_DISABLED = "direct-disabled"  # --no-direct on either side
    NO_CANDIDATES = "no-candidates"
    TIMEOUT = "timeout"  # probing found no path in time
    SIGNALLING_TIMEOUT = "signalling-timeout"
    SUPERSEDED = "superseded"  # a newer punch with this peer replaced it
    CANCELLED = "cancelled"
    PROTOCOL_ERROR = "protocol-error"


@dataclass(frozen=True, slots=True)
class Connect:
    punch_id: bytes
    reply: bool
    key_share: bytes
    nat_class: NatClass
    local: tuple[Endpoint, ...] = ()
    reflexive: tuple[Endpoint, ...] = ()
    tcp: tuple[Endpoint, ...] = ()
    capabilities: frozenset[str] = field(default_factory=frozenset)
    #: Replies only: the responder starts probing this many seconds after sending the reply
    #: (a timed start, no SYNC); None: it waits for SYNC.
    start_in: float | None = None


@dataclass(frozen=True, slots=True)
class Sync:
    punch_id: bytes


@dataclass(frozen=True, slots=True)
class Result:
    punch_id: bytes
    remote: Endpoint  # the peer's address that answered first, as the sender saw it


@dataclass(frozen=True, slots=True)
class Abort:
    punch_id: bytes
    reason: AbortReason
    detail: str = ""
    retry_after: float = 0.0  # seconds the sender asks the peer to wait before trying again


@dataclass(frozen=True, slots=True)
class Credit:
    """``padding`` zero bytes, sent only to be counted (see the module docstring)."""

    punch_id: bytes
    padding: int


PunchMessage = Connect | Sync | Result | Abort | Credit


def _check_address(address: Any, what: str) -> Endpoint:
    if (
        not isinstance(address, list | tuple)
        or len(address) != 2
        or not isinstance(address[0], str)
        or not isinstance(address[1], int)
        or isinstance(address[1], bool)
    ):
        raise MalformedError(f"{what}: an address is [host, port]")
    host, port = address
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise MalformedError(f"{what}: {host!r} is not an IP address") from None
    if not 1 <= port <= 0xFFFF:
        raise MalformedError(f"{what}: port {port} out of range")
    return str(ip), port


def _check_addresses(value: Any, what: str) -> tuple[Endpoint, ...]:
    if not isinstance(value, list | tuple):
        raise MalformedError(f"{what} is not a list")
    if len(value) > MAX_CANDIDATES:
        raise MalformedError(f"{what}: {len(value)} addresses (at most {MAX_CANDIDATES})")
    return tuple(_check_address(item, what) for item in value)


def _check_bytes(value: Any, size: int, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise MalformedError(f"{what} must be {size} bytes")
    return value


def _check_start_in(value: Any) -> float | None:
    if value is None:
        return None
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not 0 <= value <= MAX_START_IN
    ):
        raise MalformedError(f"connect: start_in out of range (0 to {MAX_START_IN:g} s)")
    return float(value)


def _enum(kind: type[enum.StrEnum], value: Any, what: str) -> Any:
    if not isinstance(value, str):
        raise MalformedError(f"{what} is not a string")
    try:
        return kind(value)
    except ValueError:
        raise MalformedError(f"unknown {what} {value[:40]!r}") from None


def encode_punch_message(message: PunchMessage) -> bytes:
    """Raises ValueError (a local mistake) for fields the peer would refuse."""
    body: dict[str, Any]
    match message:
        case Connect():
            _check_bytes(message.key_share, KEY_SHARE_SIZE, "key share")
            lists = {"local": message.local, "reflexive": message.reflexive, "tcp": message.tcp}
            for name, addresses in lists.items():
                _check_addresses(list(addresses), name)
            caps = sorted(message.capabilities)
            if len(caps) > MAX_CAPABILITIES or any(len(c) > MAX_CAPABILITY for c in caps):
                raise ValueError("too many or too long capabilities")
            if message.start_in is not None and (
                not message.reply or not 0 <= message.start_in <= MAX_START_IN
            ):
                raise ValueError("start_in is for replies, 0 to MAX_START_IN seconds")
            body = {
                "t": "connect",
                "reply": message.reply,
                "share": message.key_share,
                "class": message.nat_class.value,
                **{name: [list(a) for a in addresses] for name, addresses in lists.items()},
                "caps": caps,
            }
            if message.start_in is not None:
                body["start_in"] = float(message.start_in)
        case Sync():
            body = {"t": "sync"}
        case Result():
            _check_address(message.remote, "remote")
            body = {"t": "result", "remote": list(message.remote)}
        case Abort():
            if not 0 <= message.retry_after <= MAX_RETRY_AFTER:
                raise ValueError("retry_after out of range")
            body = {
                "t": "abort",
                "reason": message.reason.value,
                "detail": message.detail[:MAX_DETAIL],
                "retry_after": float(message.retry_after),
            }
        case Credit():
            if not 0 <= message.padding <= MAX_CREDIT_PAD:
                raise ValueError(f"a CREDIT carries 0 to {MAX_CREDIT_PAD} bytes of padding")
            body = {"t": "credit", "pad": bytes(message.padding)}
        case _:
            raise TypeError(f"not a punch message: {message!r}")
    _check_bytes(message.punch_id, PUNCH_ID_SIZE, "punch id")
    body["id"] = message.punch_id
    return encode_map(body, PUNCH_VERSION, MAX_PUNCH_MESSAGE, "punch message")


def decode_punch_message(data: bytes) -> PunchMessage:
    body = decode_map(data, PUNCH_VERSION, MAX_PUNCH_MESSAGE, "punch message")
    punch_id = _check_bytes(body.get("id"), PUNCH_ID_SIZE, "punch id")
    kind = body.get("t")
    if kind == "connect":
        reply = body.get("reply")
        if not isinstance(reply, bool):
            raise MalformedError("connect: reply is not a boolean")
        caps = body.get("caps", [])
        if (
            not isinstance(caps, list)
            or len(caps) > MAX_CAPABILITIES
            or not all(isinstance(c, str) and len(c) <= MAX_CAPABILITY for c in caps)
        ):
            raise MalformedError("connect: capabilities are not a short list of names")
        start_in = _check_start_in(body.get("start_in"))
        if start_in is not None and not reply:
            raise MalformedError("connect: start_in in a CONNECT that is not a reply")
        return Connect(
            punch_id=punch_id,
            reply=reply,
            key_share=_check_bytes(body.get("share"), KEY_SHARE_SIZE, "key share"),
            nat_class=_enum(NatClass, body.get("class"), "NAT class"),
            local=_check_addresses(body.get("local", []), "local"),
            reflexive=_check_addresses(body.get("reflexive", []), "reflexive"),
            tcp=_check_addresses(body.get("tcp", []), "tcp"),
            capabilities=frozenset(caps),
            start_in=start_in,
        )
    if kind == "sync":
        return Sync(punch_id)
    if kind == "result":
        return Result(punch_id, _check_address(body.get("remote"), "remote"))
    if kind == "abort":
        detail = body.get("detail", "")
        retry_after = body.get("retry_after", 0.0)
        if not isinstance(detail, str) or len(detail) > MAX_DETAIL:
            raise MalformedError("abort: detail is not a short string")
        if (
            not isinstance(retry_after, int | float)
            or isinstance(retry_after, bool)
            or not math.isfinite(retry_after)
            or not 0 <= retry_after <= MAX_RETRY_AFTER
        ):
            raise MalformedError("abort: retry_after out of range")
        reason = _enum(AbortReason, body.get("reason"), "abort reason")
        return Abort(punch_id, reason, detail, float(retry_after))
    if kind == "credit":
        pad = body.get("pad")
        if not isinstance(pad, bytes) or len(pad) > MAX_CREDIT_PAD:
            raise MalformedError(f"credit: pad is not at most {MAX_CREDIT_PAD} bytes")
        return Credit(punch_id, len(pad))
    raise MalformedError(f"unknown punch message type {str(kind)[:40]!r}")
