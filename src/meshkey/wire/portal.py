"""Portal frames: what the two ends of a TCP portal say to each other, as routing payloads.

A routing message addressed to a portal worker carries one *packet*: a version byte and one
or more frames, so an ACK can travel with DATA of the other direction, and one message can
carry frames of many sessions::

    packet  = u8 PORTAL_VERSION, frame, frame, ...
    frame   = u8 kind, u32 session, u32 body length, body

    OPEN          u32 window                      (the opener's receive window)
    OPEN_OK       u32 window                      (the acceptor's receive window)
    OPEN_REFUSED  u8 RefuseReason, UTF-8 text
    DATA          u64 offset, bytes               (offset = sequence of the first byte)
    ACK           u64 acked, u32 window, u8 flags, u8 n, n x (u64 start, u64 end)
                  (acked: every byte before it arrived; window: bytes the receiver takes
                  beyond it; flag 1: the peer's FIN arrived; the ranges: data held past a gap)
    FIN           u64 final offset                (no byte at or after it will follow)
    RST           u8 ResetReason, UTF-8 text
    PING / PONG   u64 nonce

Session 0 is never a session: a PING of session 0 is an idle inlet's keepalive of the route
itself, answered with a PONG of session 0 (never with RST).

Limits, and why:

* :data:`MAX_CHUNK` (64 KiB) of data per DATA frame. One frame must fit in one message
  (:data:`meshkey.wire.frames.MAX_PAYLOAD`, 1 MiB), but a sixteenth of that keeps each loss
  (a message dropped on a path switch) small to resend, lets frames of many sessions
  interleave on one channel instead of one session holding it for a megabyte, matches what
  one socket read usually yields, and still amortises the ~100 bytes of per-message headers
  to well under 1 %.
* :data:`MAX_WINDOW` (1 MiB): the most a receiver may grant, the bound on what one session
  makes a node buffer in each direction.
* :data:`MAX_PACKET` is :data:`~meshkey.wire.frames.MAX_PAYLOAD`; :data:`MAX_TEXT` (256
  bytes) for reasons; :data:`MAX_SACK_RANGES` (8) ranges per ACK.

:func:`decode_packet` parses one payload (whole frames only, nothing after them);
:class:`FrameReader` parses the same frames from input that arrives in arbitrary pieces,
keeping a partial frame until the rest comes. Both raise only :mod:`meshkey.wire.errors`.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from meshkey.wire.errors import (
    MalformedError,
    OversizeError,
    TruncatedError,
    UnsupportedVersionError,
    WireError,
)
from meshkey.wire.frames import MAX_PAYLOAD

PORTAL_VERSION = 1
MAX_CHUNK = 64 * 1024
MAX_WINDOW = 1024 * 1024
MAX_PACKET = MAX_PAYLOAD
MAX_TEXT = 256
MAX_SACK_RANGES = 8
MAX_OFFSET = 2**64 - 1

_HEADER = struct.Struct("!BII")  # kind, session, body length
HEADER_SIZE = _HEADER.size
#: The largest body any frame kind has (DATA: offset + a full chunk).
MAX_BODY = 8 + MAX_CHUNK

_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_ACK = struct.Struct("!QIBB")
_RANGE = struct.Struct("!QQ")
_REASON = struct.Struct("!B")


class FrameKind(enum.IntEnum):
    OPEN = 1
    OPEN_OK = 2
    OPEN_REFUSED = 3
    DATA = 4
    ACK = 5
    FIN = 6
    RST = 7
    PING = 8
    PONG = 9


class RefuseReason(enum.IntEnum):
    REFUSED = 1  # the outlet's TCP server refused the connection
    UNREACHABLE = 2  # the outlet could not reach its TCP server (timeout, no route)
    NOT_ALLOWED = 3  # the opener's identity is not allowed, or the route is not secure
    TOO_MANY = 4  # the outlet holds as many sessions for this peer as it may


class ResetReason(enum.IntEnum):
    APP_RESET = 1  # a TCP connection at one end was reset or aborted
    PROTOCOL_ERROR = 2  # the peer broke the portal protocol
    TIMEOUT = 3  # the peer stopped answering
    UNKNOWN_SESSION = 4  # a frame for a session this end does not have
    SHUTTING_DOWN = 5  # the inlet or outlet is going away
    ROUTE_BROKEN = 6  # the route to the peer failed


@dataclass(frozen=True, slots=True)
class Open:
    session: int
    window: int


@dataclass(frozen=True, slots=True)
class OpenOk:
    session: int
    window: int


@dataclass(frozen=True, slots=True)
class OpenRefused:
    session: int
    reason: RefuseReason
    text: str


@dataclass(frozen=True, slots=True)
class Data:
    session: int
    offset: int
    data: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


@dataclass(frozen=True, slots=True)
class Ack:
    session: int
    acked: int
    window: int
    fin: bool = False
    ranges: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Fin:
    session: int
    final: int


@dataclass(frozen=True, slots=True)
class Reset:
    session: int
    reason: ResetReason
    text: str


@dataclass(frozen=True, slots=True)
class Ping:
    session: int
    nonce: int


@dataclass(frozen=True, slots=True)
class Pong:
    session: int
    nonce: int


Frame = Open | OpenOk | OpenRefused | Data | Ack | Fin | Reset | Ping | Pong


# -- encoding ---------------------------------------------------------------------------


def _text(text: str, what: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > MAX_TEXT:
        # Reasons are for people; cut them (on a character boundary) instead of failing.
        raw = raw[:MAX_TEXT].decode("utf-8", "ignore").encode("utf-8")
    return raw


def _check_session(session: int) -> None:
    if not 0 <= session <= 0xFFFFFFFF:
        raise OversizeError(f"portal session id {session} does not fit in 32 bits")


def _check_window(window: int) -> None:
    if not 0 <= window <= MAX_WINDOW:
        raise OversizeError(f"portal window {window} is outside 0..{MAX_WINDOW}")


def _check_offset(offset: int) -> None:
    if not 0 <= offset <= MAX_OFFSET:
        raise OversizeError(f"portal offset {offset} does not fit in 64 bits")


def frame_body(frame: Frame) -> bytes:
    """The body of ``frame`` (its header excluded); raises WireError for unencodable values."""
    if isinstance(frame, Open | OpenOk):
        _check_window(frame.window)
        return _U32.pack(frame.window)
    if isinstance(frame, Data):
        _check_offset(frame.offset)
        if not 0 < len(frame.data) <= MAX_CHUNK:
            raise OversizeError(f"DATA frame of {len(frame.data)} bytes (1..{MAX_CHUNK})")
        _check_offset(frame.end)
        return _U64.pack(frame.offset) + frame.data
    if isinstance(frame, Ack):
        _check_offset(frame.acked)
        _check_window(frame.window)
        if len(frame.ranges) > MAX_SACK_RANGES:
            raise OversizeError(f"ACK with {len(frame.ranges)} ranges (max {MAX_SACK_RANGES})")
        _check_ranges(frame.acked, frame.ranges)
        parts = [_ACK.pack(frame.acked, frame.window, int(frame.fin), len(frame.ranges))]
        parts.extend(_RANGE.pack(start, end) for start, end in frame.ranges)
        return b"".join(parts)
    if isinstance(frame, Fin):
        _check_offset(frame.final)
        return _U64.pack(frame.final)
    if isinstance(frame, OpenRefused | Reset):
        return _REASON.pack(frame.reason) + _text(frame.text, type(frame).__name__)
    if isinstance(frame, Ping | Pong):
        _check_offset(frame.nonce)
        return _U64.pack(frame.nonce)
    raise MalformedError(f"not a portal frame: {frame!r}")


_KIND_OF: dict[type, FrameKind] = {
    Open: FrameKind.OPEN,
    OpenOk: FrameKind.OPEN_OK,
    OpenRefused: FrameKind.OPEN_REFUSED,
    Data: FrameKind.DATA,
    Ack: FrameKind.ACK,
    Fin: FrameKind.FIN,
    Reset: FrameKind.RST,
    Ping: FrameKind.PING,
    Pong: FrameKind.PONG,
}


def frame_kind(frame: Frame) -> FrameKind:
    return _KIND_OF[type(frame)]


def encode_frame(frame: Frame) -> bytes:
    return b"".join(_frame_parts(frame))


_DATA_HEADER = struct.Struct("!BIIQ")  # a DATA frame's header and offset, packed at once


def _frame_parts(frame: Frame) -> tuple[bytes, ...]:
    """The encoded frame in pieces, so a packet joins its data once (no copy per frame)."""
    _check_session(frame.session)
    if isinstance(frame, Data):
        size = len(frame.data)
        if not 0 < size <= MAX_CHUNK:
            raise OversizeError(f"DATA frame of {size} bytes (1..{MAX_CHUNK})")
        _check_offset(frame.offset)
        _check_offset(frame.end)
        head = _DATA_HEADER.pack(FrameKind.DATA, frame.session, 8 + size, frame.offset)
        return head, frame.data
    body = frame_body(frame)
    return _HEADER.pack(_KIND_OF[type(frame)], frame.session, len(body)), body


def encode_packet(frames: Iterable[Frame]) -> bytes:
    """One payload holding ``frames`` (at least one); OversizeError past :data:`MAX_PACKET`."""
    parts = [bytes([PORTAL_VERSION])]
    for frame in frames:
        parts.extend(_frame_parts(frame))
    if len(parts) == 1:
        raise MalformedError("a portal packet needs at least one frame")
    packet = b"".join(parts)
    if len(packet) > MAX_PACKET:
        raise OversizeError(f"portal packet of {len(packet)} bytes (limit {MAX_PACKET})")
    return packet


def pack_frames(frames: Iterable[Frame], limit: int = MAX_PACKET) -> list[bytes]:
    """Packets of at most ``limit`` bytes holding ``frames`` in order (as few as fit)."""
    packets: list[bytes] = []
    batch: list[bytes] = []
    size = 1
    for frame in frames:
        parts = _frame_parts(frame)
        length = len(parts[0]) + len(parts[1])
        if batch and size + length > limit:
            packets.append(b"".join(batch))
            batch, size = [], 1
        if not batch:
            batch.append(bytes([PORTAL_VERSION]))
        batch.extend(parts)
        size += length
    if batch:
        packets.append(b"".join(batch))
    return packets


def take_packet(frames: Iterable[Frame], limit: int = MAX_PACKET) -> tuple[bytes, int]:
    """One packet of the first of ``frames`` that fit in ``limit`` bytes (at least one), and
    how many it holds: a sender packs only when it can send, so frames wait unpacked."""
    parts = [bytes([PORTAL_VERSION])]
    size = 1
    taken = 0
    for frame in frames:
        head, body = _frame_parts(frame)
        length = len(head) + len(body)
        if taken and size + length > limit:
            break
        parts += (head, body)
        size += length
        taken += 1
    if not taken:
        raise MalformedError("a portal packet needs at least one frame")
    return b"".join(parts), taken


# -- decoding ---------------------------------------------------------------------------


def _check_ranges(acked: int, ranges: Iterable[tuple[int, int]]) -> None:
    previous = acked
    for start, end in ranges:
        if not previous < start < end <= MAX_OFFSET:
            raise MalformedError(
                f"ACK range {start}..{end} is empty, out of order or not past {previous}"
            )
        previous = end


def _text_of(body: memoryview, what: str) -> str:
    if len(body) > MAX_TEXT:
        raise OversizeError(f"{what}: reason of {len(body)} bytes (max {MAX_TEXT})")
    try:
        return bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedError(f"{what}: reason is not valid UTF-8") from exc


def _exact(body: memoryview, size: int, what: str) -> None:
    if len(body) < size:
        raise TruncatedError(f"{what} body needs {size} bytes, has {len(body)}")
    if len(body) > size:
        raise MalformedError(f"{what} body has {len(body) - size} unexpected trailing bytes")


def _window(value: int, what: str) -> int:
    if value > MAX_WINDOW:
        raise OversizeError(f"{what}: window {value} is over {MAX_WINDOW}")
    return value


def decode_frame_body(kind: int, session: int, body: memoryview) -> Frame:
    """The frame of ``kind`` whose body is ``body``; WireError if it is not a valid one."""
    try:
        frame_kind = FrameKind(kind)
    except ValueError:
        raise MalformedError(f"unknown portal frame kind {kind}") from None
    name = frame_kind.name
    if frame_kind in (FrameKind.OPEN, FrameKind.OPEN_OK):
        _exact(body, 4, name)
        window = _window(_U32.unpack(body)[0], name)
        return Open(session, window) if frame_kind is FrameKind.OPEN else OpenOk(session, window)
    if frame_kind is FrameKind.DATA:
        if len(body) <= 8:
            raise TruncatedError(f"DATA body of {len(body)} bytes carries no data")
        if len(body) > MAX_BODY:
            raise OversizeError(f"DATA of {len(body) - 8} bytes (max {MAX_CHUNK})")
        offset: int = _U64.unpack(body[:8])[0]
        data = bytes(body[8:])
        if offset + len(data) > MAX_OFFSET:
            raise MalformedError("DATA runs past the largest 64-bit offset")
        return Data(session, offset, data)
    if frame_kind is FrameKind.ACK:
        if len(body) < _ACK.size:
            raise TruncatedError(f"ACK body of {len(body)} bytes (needs {_ACK.size})")
        acked, window, flags, count = _ACK.unpack(body[: _ACK.size])
        if flags & ~1:
            raise MalformedError(f"ACK with unknown flags {flags:#x}")
        if count > MAX_SACK_RANGES:
            raise OversizeError(f"ACK with {count} ranges (max {MAX_SACK_RANGES})")
        _exact(body, _ACK.size + count * _RANGE.size, name)
        ranges = tuple(
            _RANGE.unpack(body[_ACK.size + i * _RANGE.size : _ACK.size + (i + 1) * _RANGE.size])
            for i in range(count)
        )
        _check_ranges(acked, ranges)
        return Ack(session, acked, _window(window, name), bool(flags & 1), ranges)
    if frame_kind in (FrameKind.FIN, FrameKind.PING, FrameKind.PONG):
        _exact(body, 8, name)
        value: int = _U64.unpack(body)[0]
        if frame_kind is FrameKind.FIN:
            return Fin(session, value)
        return Ping(session, value) if frame_kind is FrameKind.PING else Pong(session, value)
    # OPEN_REFUSED, RST: a reason code, then text.
    if not body:
        raise TruncatedError(f"{name} without a reason")
    code = body[0]
    text = _text_of(body[1:], name)
    if frame_kind is FrameKind.OPEN_REFUSED:
        try:
            return OpenRefused(session, RefuseReason(code), text)
        except ValueError:
            raise MalformedError(f"OPEN_REFUSED with unknown reason {code}") from None
    try:
        return Reset(session, ResetReason(code), text)
    except ValueError:
        raise MalformedError(f"RST with unknown reason {code}") from None


def _scan(view: memoryview, position: int) -> tuple[list[Frame], int]:
    """The complete frames in ``view`` from ``position`` on, and where the first incomplete
    one (or the end) starts. The header of an incomplete frame is checked as far as it goes."""
    frames: list[Frame] = []
    size = len(view)
    while size - position >= HEADER_SIZE:
        kind, session, length = _HEADER.unpack_from(view, position)
        if kind not in _KINDS:
            raise MalformedError(f"unknown portal frame kind {kind}")
        if length > MAX_BODY:
            raise OversizeError(f"portal frame body of {length} bytes (max {MAX_BODY})")
        end = position + HEADER_SIZE + length
        if size < end:
            return frames, position
        frames.append(decode_frame_body(kind, session, view[position + HEADER_SIZE : end]))
        position = end
    if size > position and view[position] not in _KINDS:
        raise MalformedError(f"unknown portal frame kind {view[position]}")
    return frames, position


def _check_version(version: int) -> None:
    if version != PORTAL_VERSION:
        raise UnsupportedVersionError(f"portal packet version {version}")


class FrameReader:
    """Frames from bytes that arrive in any pieces: :meth:`feed` returns the complete ones.

    The first byte fed must be a packet's version byte. A partial frame at the end of the
    input is kept until the rest arrives (:attr:`buffered` says how much is held, never more
    than one frame). Bad input raises a WireError and leaves the reader failed: later feeds
    raise the same error, since nothing after a bad frame can be trusted to be aligned.
    """

    __slots__ = ("_buffer", "_error", "_started")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._started = False
        self._error: WireError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        if self._error is not None:
            raise self._error
        self._buffer += data
        try:
            position = 0
            if not self._started and self._buffer:
                _check_version(self._buffer[0])
                self._started = True
                position = 1
            with memoryview(self._buffer) as view:
                frames, position = _scan(view, position)
        except WireError as exc:
            self._error = exc
            # A new buffer, never a resize: the error's traceback may still hold slices of
            # the old one (a frame's body), and a bytearray with live views cannot shrink.
            self._buffer = bytearray()
            raise
        del self._buffer[:position]  # no view outlives _scan on success: frames hold copies
        return frames


_KINDS = frozenset(int(k) for k in FrameKind)


def decode_packet(payload: bytes | memoryview) -> list[Frame]:
    """The frames of one portal payload: whole frames only, nothing left over."""
    if len(payload) > MAX_PACKET:
        raise OversizeError(f"portal packet of {len(payload)} bytes (limit {MAX_PACKET})")
    if not payload:
        raise TruncatedError("empty portal packet")
    view = memoryview(payload)
    _check_version(view[0])
    frames, position = _scan(view, 1)
    if position != len(view):
        raise TruncatedError(
            f"portal packet ends inside a frame ({len(view) - position} bytes left)"
        )
    if not frames:
        raise TruncatedError("portal packet without frames")
    return frames
