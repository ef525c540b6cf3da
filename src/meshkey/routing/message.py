"""Messages as the router sees them: typed routes, payload, and local-only metadata."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from meshkey.identity.node_id import NodeId
from meshkey.routing.address import Address, Route, address_to_wire, route_from_wire
from meshkey.wire.message import (
    ErrorCode,
    MessageKind,
    WireMessage,
    decode_error,
    decode_message,
    encode_error,
    encode_message_parts,
)


@dataclass(frozen=True, slots=True)
class LocalInfo:
    """What the receiving node knows about a message beyond its bytes; never on the wire.

    ``hop_peer`` is the authenticated NodeId of the node the message arrived from (None when
    it was sent locally), ``hop_remote`` where that hop's packets come from; ``channel_peer``
    is the authenticated identity at the far end of the secure channel it came out of (None
    when it did not come through one). Policies decide on ``channel_peer`` only: a hop peer
    may be a relay.
    """

    hop_peer: NodeId | None = None
    channel_peer: NodeId | None = None
    channel_address: str | None = None
    hop_remote: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class Message:
    onward: Route
    return_route: Route
    payload: bytes
    kind: MessageKind = MessageKind.DATA
    local: LocalInfo = field(default=LocalInfo(), compare=False)

    @property
    def is_error(self) -> bool:
        return self.kind == MessageKind.ERROR

    def error(self) -> tuple[ErrorCode, str]:
        return decode_error(self.payload)

    def step(self) -> Message:
        """The message as the next address sees it: first onward address consumed."""
        return replace(self, onward=self.onward[1:])

    def with_return(self, address: Address) -> Message:
        return replace(self, return_route=(address, *self.return_route))

    def with_local(self, local: LocalInfo) -> Message:
        return replace(self, local=local)

    def to_wire(self) -> bytes:
        header, payload = self.to_wire_parts()
        return header + payload

    def to_wire_parts(self) -> tuple[bytes, bytes]:
        """(routing header, payload): what a transport sends without joining the two."""
        return encode_message_parts(
            WireMessage(
                tuple(address_to_wire(a) for a in self.onward),
                tuple(address_to_wire(a) for a in self.return_route),
                self.payload,
                self.kind,
            )
        )

    @classmethod
    def from_wire(cls, data: bytes | memoryview, local: LocalInfo | None = None) -> Message:
        wire = decode_message(data)
        return cls(
            route_from_wire(wire.onward),
            route_from_wire(wire.return_route),
            wire.payload,
            MessageKind(wire.kind),
            local or LocalInfo(),
        )


def error_message(to: Route, code: ErrorCode, text: str) -> Message:
    return Message(to, (), encode_error(code, text), MessageKind.ERROR)
