"""What two nodes' path managers say to each other inside their secure channel.

It travels as the payload of a message to the peer's ``/service/_paths`` through the secure
channel, so the relay in between can neither read nor forge it::

    u8 version | u8 kind | body

PUNCH   an encoded punch message (:mod:`meshkey.wire.punch`): candidates, SYNC, results
PING    u64 token: the peer answers PONG with the same token (the relay path's liveness
        and round-trip time)
PONG    u64 token
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from meshkey.wire.errors import MalformedError, OversizeError, UnsupportedVersionError
from meshkey.wire.reader import Reader, u64

PATHS_VERSION = 1
MAX_PATHS_MESSAGE = 4096


class PathSignalKind(enum.IntEnum):
    PUNCH = 1
    PING = 2
    PONG = 3


@dataclass(frozen=True, slots=True)
class PunchSignal:
    data: bytes


@dataclass(frozen=True, slots=True)
class PathPing:
    token: int


@dataclass(frozen=True, slots=True)
class PathPong:
    token: int


PathSignal = PunchSignal | PathPing | PathPong


def encode_path_signal(signal: PathSignal) -> bytes:
    header = bytes([PATHS_VERSION])
    if isinstance(signal, PunchSignal):
        if len(signal.data) + 2 > MAX_PATHS_MESSAGE:
            raise OversizeError("punch signal too large")
        return header + bytes([PathSignalKind.PUNCH]) + signal.data
    kind = PathSignalKind.PING if isinstance(signal, PathPing) else PathSignalKind.PONG
    return header + bytes([kind]) + u64(signal.token)


def decode_path_signal(data: bytes) -> PathSignal:
    if len(data) > MAX_PATHS_MESSAGE:
        raise OversizeError(f"path signal of {len(data)} bytes")
    reader = Reader(data, "path signal")
    version = reader.u8()
    if version != PATHS_VERSION:
        raise UnsupportedVersionError(f"path signal version {version}")
    raw = reader.u8()
    try:
        kind = PathSignalKind(raw)
    except ValueError:
        raise MalformedError(f"unknown path signal kind {raw}") from None
    if kind == PathSignalKind.PUNCH:
        return PunchSignal(reader.rest())
    token = reader.u64()
    reader.end()
    return PathPing(token) if kind == PathSignalKind.PING else PathPong(token)
