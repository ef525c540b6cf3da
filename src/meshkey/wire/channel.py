"""Secure-channel payloads: what travels (as a routing message's payload) between the two ends.

    u8 version | u8 kind | body

kinds: HELLO, HELLO_REPLY, FINISH carry Noise XX handshake messages; CONFIRM, DATA, CLOSE,
PING and PONG carry ``u64 nonce | AEAD ciphertext`` (PING/PONG: the channel's own liveness,
authentic and replay-protected like data, so no node on the route can fake an answer);
REFUSE carries a plaintext reason (it can be forged by
anyone on the route, who could as well drop the handshake: it only makes failures readable).

Inside Noise messages 2 and 3, each side sends its identity proof::

    u8 version | 32-byte NodeId | 64-byte Ed25519 signature attesting its X25519 static key
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from meshkey.wire.errors import MalformedError, OversizeError, UnsupportedVersionError
from meshkey.wire.reader import Reader, u64

CHANNEL_VERSION = 1
MAX_HANDSHAKE = 1024
MAX_REASON = 512


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


_SEALED = frozenset(
    {ChannelKind.CONFIRM, ChannelKind.DATA, ChannelKind.CLOSE, ChannelKind.PING, ChannelKind.PONG}
)
_HANDSHAKE = frozenset({ChannelKind.HELLO, ChannelKind.HELLO_REPLY, ChannelKind.FINISH})


@dataclass(frozen=True, slots=True)
class Handshake:
    kind: ChannelKind
    noise: bytes


@dataclass(frozen=True, slots=True)
class Sealed:
    kind: ChannelKind
    nonce: int
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class Refuse:
    reason: str


ChannelPayload = Handshake | Sealed | Refuse


def encode_channel(payload: ChannelPayload) -> bytes:
    header = bytes([CHANNEL_VERSION])
    match payload:
        case Handshake(kind, noise):
            return header + bytes([kind]) + noise
        case Sealed(kind, nonce, ciphertext):
            return header + bytes([kind]) + u64(nonce) + ciphertext
        case Refuse(reason):
            return header + bytes([ChannelKind.REFUSE]) + reason.encode()[:MAX_REASON]
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
    if reader.remaining > MAX_REASON:
        raise OversizeError("refusal reason too long")
    return Refuse(reader.rest().decode("utf-8", errors="replace"))


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
