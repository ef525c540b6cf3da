"""Secure-channel payloads: what travels (as a routing message's payload) between the two ends.

    u8 version | u8 kind | body

kinds: HELLO, HELLO_REPLY, FINISH carry Noise XX handshake messages, IK_HELLO and IK_REPLY
Noise IK's two (the initiator knew the responder's static key); CONFIRM, DATA, CLOSE, PING and
PONG carry ``u64 nonce | AEAD ciphertext`` (PING/PONG: the channel's own liveness, authentic
and replay-protected like data, so no node on the route can fake an answer); PLAIN carries
``u64 nonce | 8-byte session tag | data``: a DATA message not sealed again, sent only on a
direct hop between the channel's two nodes (a hop that is already mutually authenticated and
encrypted end to end, DESIGN decision 19), its nonce taken from the same sequence as sealed
messages', so replay and order rules stay the channel's, and its tag naming the session (from
the handshake hash), so a late one from an earlier session is not taken for this one's; the
receiver accepts one only from such a hop (the kind says it is not sealed: neither side
infers it from the path); REFUSE and USE_XX
carry a plaintext reason. REFUSE says the handshake is over; USE_XX, a listener's answer to an
IK_HELLO it cannot use (it does not hold the static key the initiator encrypted to: a stale
record, a rotated key; or the message was a replay), asks the initiator to start again with XX.
Both can be forged by anyone on the route, who could as well drop the handshake: they only make
failures readable and fast (a forged USE_XX costs one round trip, and XX is as secure).

Inside the Noise messages that carry one (XX 2 and 3, IK 1 and 2), each side sends its
identity proof, in one of two versions::

    1: u8 1 | 32-byte NodeId | 64-byte Ed25519 signature attesting its X25519 static key
    2: u8 2 | NodeId | signature | u64 timestamp | u16 length | early data

Version 1 is sent whenever the rest would be empty (so XX stays as it was). The timestamp
(IK_HELLO only: nanoseconds of the initiator's clock, strictly increasing per process) lets
the responder drop a replayed IK_HELLO; early data (at most :data:`MAX_EARLY_DATA` bytes,
opaque here) is what the layer above has the handshake carry, e.g. a punch's candidates.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from meshkey.wire.errors import MalformedError, OversizeError, UnsupportedVersionError
from meshkey.wire.reader import Reader, u16, u64

CHANNEL_VERSION = 1
MAX_REASON = 512
PLAIN_TAG_SIZE = 8
#: Opaque early data one handshake message may carry, each way.
MAX_EARLY_DATA = 1024
#: The longest handshake message: XX's second or IK's first (ephemeral 32, encrypted static
#: 32 + 16, a version 2 proof of 107 + early data, its tag 16), with room to spare.
MAX_HANDSHAKE = 1280


class ChannelKind(enum.IntEnum):
    HELLO = 1
    HELLO_REPLY = 2
    FINISH = 3
    CONFIRM = 4
    DATA = 5
    CLOSE = 6
    REFUSE = 7
    PING = 8
    PONG = 9
    IK_HELLO = 10
    IK_REPLY = 11
    USE_XX = 12
    PLAIN = 13


_SEALED = frozenset(
    {ChannelKind.CONFIRM, ChannelKind.DATA, ChannelKind.CLOSE, ChannelKind.PING, ChannelKind.PONG}
)
_NONCED = _SEALED | {ChannelKind.PLAIN}
_SEALED_HEADER = struct.Struct("!BBQ")  # version, kind, nonce
_HANDSHAKE = frozenset(
    {
        ChannelKind.HELLO,
        ChannelKind.HELLO_REPLY,
        ChannelKind.FINISH,
        ChannelKind.IK_HELLO,
        ChannelKind.IK_REPLY,
    }
)


@dataclass(frozen=True, slots=True)
class Handshake:
    kind: ChannelKind
    noise: bytes


@dataclass(frozen=True, slots=True)
class Sealed:
    kind: ChannelKind
    nonce: int
    #: Decoded: a view into the received payload (the AEAD reads it in place; a payload of a
    #: MiB is not copied only to be decrypted into another).
    ciphertext: bytes | memoryview


@dataclass(frozen=True, slots=True)
class Plain:
    """DATA not sealed again, on a direct hop between the channel's two nodes."""

    nonce: int
    session: bytes  # PLAIN_TAG_SIZE bytes naming the channel's session
    #: Decoded: a view into the received payload, as a sealed message's ciphertext.
    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class Refuse:
    reason: str


@dataclass(frozen=True, slots=True)
class UseXX:
    """The listener cannot use this IK_HELLO: start again with XX (unauthenticated)."""

    reason: str


ChannelPayload = Handshake | Sealed | Plain | Refuse | UseXX


def encode_channel(payload: ChannelPayload) -> bytes:
    header = bytes([CHANNEL_VERSION])
    match payload:
        case Handshake(kind, noise):
            return header + bytes([kind]) + noise
        case Sealed(kind, nonce, ciphertext):
            return header + bytes([kind]) + u64(nonce) + ciphertext
        case Plain(nonce, session, data):
            if len(session) != PLAIN_TAG_SIZE:
                raise ValueError(f"a session tag is {PLAIN_TAG_SIZE} bytes")
            return header + bytes([ChannelKind.PLAIN]) + u64(nonce) + session + data
        case Refuse(reason):
            return header + bytes([ChannelKind.REFUSE]) + reason.encode()[:MAX_REASON]
        case UseXX(reason):
            return header + bytes([ChannelKind.USE_XX]) + reason.encode()[:MAX_REASON]
    raise TypeError(f"not a channel payload: {payload!r}")


def peek_kind(data: bytes) -> ChannelKind | None:
    """The kind of a channel payload without decoding the rest (a glue that must tell a new
    session's handshake from an old session's traffic); None if it has no known kind."""
    if len(data) < 2:
        return None
    try:
        return ChannelKind(data[1])
    except ValueError:
        return None


def decode_channel(data: bytes) -> ChannelPayload:
    if len(data) >= _SEALED_HEADER.size and data[0] == CHANNEL_VERSION and data[1] in _NONCED:
        # The bulk path, without a Reader: one struct read, the ciphertext (or data) a view.
        _, kind, nonce = _SEALED_HEADER.unpack_from(data)
        rest = memoryview(data)[_SEALED_HEADER.size :]
        if kind != ChannelKind.PLAIN:
            return Sealed(ChannelKind(kind), nonce, rest)
        if len(rest) >= PLAIN_TAG_SIZE:
            return Plain(nonce, bytes(rest[:PLAIN_TAG_SIZE]), rest[PLAIN_TAG_SIZE:])
    reader = Reader(data, "channel payload")
    version = reader.u8()
    if version != CHANNEL_VERSION:
        raise UnsupportedVersionError(f"secure channel version {version}")
    raw = reader.u8()
    try:
        kind = ChannelKind(raw)
    except ValueError:
        raise MalformedError(f"unknown channel payload kind {raw}") from None
    if kind in _HANDSHAKE:
        if reader.remaining > MAX_HANDSHAKE:
            raise OversizeError(f"handshake message of {reader.remaining} bytes")
        return Handshake(kind, reader.rest())
    if kind in _SEALED:
        return Sealed(kind, reader.u64(), reader.rest())
    if kind is ChannelKind.PLAIN:
        return Plain(reader.u64(), reader.take(PLAIN_TAG_SIZE), reader.rest())
    if reader.remaining > MAX_REASON:
        raise OversizeError("refusal reason too long")
    reason = reader.rest().decode("utf-8", errors="replace")
    return UseXX(reason) if kind is ChannelKind.USE_XX else Refuse(reason)


IDENTITY_PROOF_VERSION = 1


@dataclass(frozen=True, slots=True)
class IdentityProof:
    node_id: bytes
    signature: bytes


def encode_identity_proof(proof: IdentityProof) -> bytes:
    return bytes([IDENTITY_PROOF_VERSION]) + proof.node_id + proof.signature


def decode_identity_proof(data: bytes) -> IdentityProof:
    reader = Reader(data, "identity proof")
    version = reader.u8()
    if version != IDENTITY_PROOF_VERSION:
        raise UnsupportedVersionError(f"identity proof version {version}")
    proof = IdentityProof(reader.take(32), reader.take(64))
    reader.end()
    return proof


HANDSHAKE_PAYLOAD_VERSION = 2


@dataclass(frozen=True, slots=True)
class HandshakePayload:
    """What a handshake message carries inside Noise: the sender's identity proof, and (version
    2) an IK_HELLO's timestamp and the early data of the layer above."""

    proof: IdentityProof
    timestamp: int = 0
    early_data: bytes = b""


def encode_handshake_payload(payload: HandshakePayload) -> bytes:
    if not payload.timestamp and not payload.early_data:
        return encode_identity_proof(payload.proof)
    if len(payload.early_data) > MAX_EARLY_DATA:
        raise ValueError(
            f"early data of {len(payload.early_data)} bytes (at most {MAX_EARLY_DATA})"
        )
    return (
        bytes([HANDSHAKE_PAYLOAD_VERSION])
        + payload.proof.node_id
        + payload.proof.signature
        + u64(payload.timestamp)
        + u16(len(payload.early_data))
        + payload.early_data
    )


def decode_handshake_payload(data: bytes) -> HandshakePayload:
    reader = Reader(data, "handshake payload")
    version = reader.u8()
    if version not in (IDENTITY_PROOF_VERSION, HANDSHAKE_PAYLOAD_VERSION):
        raise UnsupportedVersionError(f"identity proof version {version}")
    proof = IdentityProof(reader.take(32), reader.take(64))
    if version == IDENTITY_PROOF_VERSION:
        reader.end()
        return HandshakePayload(proof)
    timestamp = reader.u64()
    size = reader.u16()
    if size > MAX_EARLY_DATA:
        raise OversizeError(f"early data of {size} bytes")
    early_data = reader.take(size)
    reader.end()
    return HandshakePayload(proof, timestamp, early_data)
