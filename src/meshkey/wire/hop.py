"""Frames of the hop protocol: what two directly connected nodes say to each other.

A hop runs inside an encrypted transport (TLS 1.3 over TCP, or a QUIC stream). Every frame
body starts with a type byte. The first frames authenticate the hop in both directions:

1. server -> client  SERVER_HELLO  version, server NodeId, fresh 32-byte nonce
2. client -> server  CLIENT_PROOF  version, client NodeId, Ed25519 signature over
                                   :func:`proof_payload` (binds server id + nonce)
3. server -> client  AUTH_OK

then either side sends MESSAGE, PING, PONG and CLOSE frames.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from meshkey.wire.errors import MalformedError, OversizeError, UnsupportedVersionError
from meshkey.wire.reader import Reader, u64

HOP_VERSION = 1
NODE_ID_SIZE = 32
NONCE_SIZE = 32
SIGNATURE_SIZE = 64
MAX_CLOSE_REASON = 256

_PROOF_CONTEXT = b"meshkey/hop-auth/v1"


class HopFrameType(enum.IntEnum):
    SERVER_HELLO = 0x01
    CLIENT_PROOF = 0x02
    AUTH_OK = 0x03
    CLOSE = 0x04
    MESSAGE = 0x10
    PING = 0x11
    PONG = 0x12


class CloseCode(enum.IntEnum):
    NORMAL = 0
    PROTOCOL_ERROR = 1
    AUTH_FAILED = 2
    SHUTTING_DOWN = 3
    IDLE = 4


@dataclass(frozen=True, slots=True)
class ServerHello:
    node_id: bytes
    nonce: bytes
    version: int = HOP_VERSION


@dataclass(frozen=True, slots=True)
class ClientProof:
    node_id: bytes
    signature: bytes
    version: int = HOP_VERSION


@dataclass(frozen=True, slots=True)
class AuthOk:
    pass


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class MessageFrame:
    body: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    token: int


@dataclass(frozen=True, slots=True)
class Pong:
    token: int


HopFrame = ServerHello | ClientProof | AuthOk | Close | MessageFrame | Ping | Pong


def proof_payload(transport: str, server_id: bytes, client_id: bytes, nonce: bytes) -> bytes:
    """The bytes a client signs: bound to this transport, the server's NodeId and its nonce.

    Binding the server's NodeId stops a man in the middle from relaying the proof to another
    server; binding the fresh nonce stops it from being replayed on a later connection.
    """
    tag = transport.encode("ascii")
    return _PROOF_CONTEXT + bytes([len(tag)]) + tag + server_id + client_id + nonce


def encode_hop_frame(frame: HopFrame) -> bytes:
    match frame:
        case MessageFrame(body):
            return bytes([HopFrameType.MESSAGE]) + body
        case ServerHello(node_id, nonce, version):
            _check_size("node id", node_id, NODE_ID_SIZE)
            _check_size("nonce", nonce, NONCE_SIZE)
            return bytes([HopFrameType.SERVER_HELLO, version]) + node_id + nonce
        case ClientProof(node_id, signature, version):
            _check_size("node id", node_id, NODE_ID_SIZE)
            _check_size("signature", signature, SIGNATURE_SIZE)
            return bytes([HopFrameType.CLIENT_PROOF, version]) + node_id + signature
        case AuthOk():
            return bytes([HopFrameType.AUTH_OK])
        case Close(code, reason):
            text = reason.encode("utf-8")[:MAX_CLOSE_REASON]
            return bytes([HopFrameType.CLOSE, code]) + text
        case Ping(token):
            return bytes([HopFrameType.PING]) + u64(token)
        case Pong(token):
            return bytes([HopFrameType.PONG]) + u64(token)
    raise TypeError(f"not a hop frame: {frame!r}")


def decode_hop_frame(body: bytes) -> HopFrame:
    reader = Reader(body, "hop frame")
    kind = reader.u8()
    frame: HopFrame
    if kind == HopFrameType.MESSAGE:
        return MessageFrame(reader.rest())
    if kind == HopFrameType.SERVER_HELLO:
        version = _version(reader)
        frame = ServerHello(reader.take(NODE_ID_SIZE), reader.take(NONCE_SIZE), version)
    elif kind == HopFrameType.CLIENT_PROOF:
        version = _version(reader)
        frame = ClientProof(reader.take(NODE_ID_SIZE), reader.take(SIGNATURE_SIZE), version)
    elif kind == HopFrameType.AUTH_OK:
        frame = AuthOk()
    elif kind == HopFrameType.CLOSE:
        code = reader.u8()
        if reader.remaining > MAX_CLOSE_REASON:
            raise OversizeError(f"close reason over {MAX_CLOSE_REASON} bytes")
        frame = Close(code, reader.rest().decode("utf-8", errors="replace"))
    elif kind == HopFrameType.PING:
        frame = Ping(reader.u64())
    elif kind == HopFrameType.PONG:
        frame = Pong(reader.u64())
    else:
        raise MalformedError(f"unknown hop frame type 0x{kind:02x}")
    reader.end()
    return frame


def _version(reader: Reader) -> int:
    version = reader.u8()
    if version != HOP_VERSION:
        raise UnsupportedVersionError(
            f"hop protocol version {version} (this node speaks {HOP_VERSION})"
        )
    return version


def _check_size(what: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise ValueError(f"{what} must be {size} bytes, not {len(value)}")
