"""Share tickets: what ``meshkey share`` prints and ``meshkey connect`` takes.

A ticket names a node by its NodeId, the outlet (``/service/NAME``) it shares, and hints for
reaching it: seeds to join the node graph through (the node itself when others can dial it)
and the relays it keeps; the node signs it, so a ticket that was changed, or mistyped, is
refused rather than followed somewhere else. Text: ``mk1`` and base32 (lowercase, no
padding) of this binary form::

    u8   version (1)
    32   NodeId (Ed25519 public key)
    u8   length, then the outlet's service name (ASCII)
    u8   number of hints (at most 8), each:
         u8  flags (1: a seed, 2: a relay, 4: the ticket's own node: no NodeId follows)
         32  the hinted node's NodeId (unless flag 4)
         u8  4 or 6, then the IPv4 (4 bytes) or IPv6 (16 bytes) address
         u16 UDP port
         u8  length, then the relay's name (ASCII; only with flag 2)
    64   Ed25519 signature by the NodeId, over SIGNATURE_CONTEXT and every byte above

At most :data:`MAX_TICKET` bytes; every parse error is a :class:`TicketError`.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import struct
from dataclasses import dataclass, field

from meshkey.errors import MeshkeyError
from meshkey.node.control_client import TICKET_SIGNATURE_CONTEXT

VERSION = 1
PREFIX = "mk1"
MAX_TICKET = 1024
MAX_HINTS = 8
SIGNATURE_SIZE = 64
SEED, RELAY, SELF = 1, 2, 4
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


class TicketError(MeshkeyError, ValueError):
    """Not a ticket (malformed, truncated, another version) or not signed by its node."""

    default_kind = "invalid"


@dataclass(frozen=True)
class Hint:
    """A node to reach the ticket's node through: a seed, a relay, or both."""

    flags: int
    node_id: bytes | None  # None: the ticket's own node
    host: str
    port: int
    relay: str | None = None

    @property
    def is_seed(self) -> bool:
        return bool(self.flags & SEED)

    def seed_text(self, own: str) -> str:
        """``NODEID@HOST:PORT``, as ``node create --seed`` takes it."""
        from meshkey.identity.node_id import NodeId

        node = str(NodeId(self.node_id)) if self.node_id else own
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{node}@{host}:{self.port}"


@dataclass(frozen=True)
class Ticket:
    node_id: bytes
    service: str
    hints: tuple[Hint, ...] = field(default_factory=tuple)
    signature: bytes = b""

    @property
    def node(self) -> str:
        from meshkey.identity.node_id import NodeId

        return str(NodeId(self.node_id))

    def body(self) -> bytes:
        """Every byte the signature covers (the context is prefixed when signing)."""
        if not _NAME.fullmatch(self.service):
            raise TicketError(f"invalid service name {self.service!r}")
        if len(self.hints) > MAX_HINTS:
            raise TicketError(f"at most {MAX_HINTS} hints")
        out = bytearray([VERSION]) + self.node_id
        out += bytes([len(self.service)]) + self.service.encode()
        out.append(len(self.hints))
        for hint in self.hints:
            flags = hint.flags | (SELF if hint.node_id is None else 0)
            out.append(flags)
            if hint.node_id is not None:
                out += hint.node_id
            address = ipaddress.ip_address(hint.host)
            out.append(address.version)
            out += address.packed + struct.pack("!H", hint.port)
            if flags & RELAY:
                name = (hint.relay or "").encode()
                out += bytes([len(name)]) + name
        return bytes(out)

    def to_text(self) -> str:
        data = self.body() + self.signature
        if len(data) > MAX_TICKET:
            raise TicketError(f"the ticket is over {MAX_TICKET} bytes")
        return PREFIX + base64.b32encode(data).decode().rstrip("=").lower()

    def verify(self) -> None:
        """TicketError unless the NodeId signed the ticket."""
        from meshkey.identity.keys import verify_signature
        from meshkey.identity.node_id import NodeId

        message = TICKET_SIGNATURE_CONTEXT + self.body()
        if not verify_signature(NodeId(self.node_id), message, self.signature):
            raise TicketError(
                "this ticket's signature does not match its node: it was changed or mistyped "
                "(ask for a new one: `meshkey share`)"
            )


def parse_ticket(text: str) -> Ticket:
    """The ticket in ``text`` (signature not checked: :meth:`Ticket.verify`)."""
    cleaned = "".join(text.split()).lower()
    if not cleaned.startswith(PREFIX):
        raise TicketError(f"not a meshkey ticket (a ticket starts with {PREFIX})")
    encoded = cleaned[len(PREFIX) :].upper()
    try:
        data = base64.b32decode(encoded + "=" * (-len(encoded) % 8))
    except ValueError as exc:
        raise TicketError(f"not a meshkey ticket ({exc})") from exc
    if len(data) > MAX_TICKET:
        raise TicketError(f"the ticket is over {MAX_TICKET} bytes")
    if base64.b32encode(data).decode().rstrip("=") != encoded:  # its last letter's spare bits
        raise TicketError("not a meshkey ticket (it was changed or mistyped)")
    return _decode(data)


def _decode(data: bytes) -> Ticket:
    from meshkey.wire.errors import WireError
    from meshkey.wire.reader import Reader

    try:
        reader = Reader(data, "ticket")
        version = reader.u8()
        if version != VERSION:
            raise TicketError(f"a version {version} ticket (this meshkey reads version 1)")
        node_id = reader.take(32)
        service = reader.take(reader.u8()).decode("ascii")
        hints = []
        for _ in range(reader.u8()):
            flags = reader.u8()
            if flags & ~(SEED | RELAY | SELF) or not flags & (SEED | RELAY):
                raise TicketError(f"a hint's flags {flags:#x} are not a seed's or a relay's")
            hinted = None if flags & SELF else reader.take(32)
            family = reader.u8()
            if family not in (4, 6):
                raise TicketError(f"a hint's address family {family} is neither 4 nor 6")
            host = str(ipaddress.ip_address(reader.take(4 if family == 4 else 16)))
            port = reader.u16()
            relay = reader.take(reader.u8()).decode("ascii") if flags & RELAY else None
            hints.append(Hint(flags & (SEED | RELAY), hinted, host, port, relay))
        signed = data[: len(data) - reader.remaining]
        signature = reader.take(SIGNATURE_SIZE)
        if reader.remaining:
            raise TicketError("the ticket has bytes after its signature")
    except (WireError, UnicodeDecodeError) as exc:
        raise TicketError(f"not a whole meshkey ticket ({exc})") from exc
    if not _NAME.fullmatch(service) or len(hints) > MAX_HINTS:
        raise TicketError("not a meshkey ticket (its service name or hints are invalid)")
    ticket = Ticket(node_id, service, tuple(hints), signature)
    if ticket.body() != signed:  # one form per ticket: nothing signed goes unread
        raise TicketError("not a meshkey ticket (it is not in its one encoding)")
    return ticket
