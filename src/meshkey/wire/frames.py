"""Length-prefixed frames for stream transports (TCP/TLS, QUIC streams).

A frame is ``u32 length`` followed by ``length`` bytes of body. The decoder is sans-IO:
feed it whatever the socket produced and it returns the complete frames.
"""

from __future__ import annotations

from collections import deque

from meshkey.wire.errors import OversizeError
from meshkey.wire.reader import u32

#: Largest message payload an application may send (documented in the README).
MAX_PAYLOAD = 1024 * 1024
#: Largest frame body: a full payload plus routes, channel overhead and headers.
MAX_FRAME = 2 * MAX_PAYLOAD

_HEADER = 4


def frame_header(length: int) -> bytes:
    if length > MAX_FRAME:
        raise OversizeError(f"frame of {length} bytes is over the {MAX_FRAME}-byte limit")
    return u32(length)


def encode_frame(body: bytes) -> bytes:
    return frame_header(len(body)) + body


class FrameDecoder:
    """Splits a byte stream into frames; raises OversizeError on a length over the limit.

    Incoming chunks are kept as they are (with an offset into the first) and a frame's bytes
    are joined once, when it is complete: a 1 MiB frame arriving in 64 KiB pieces is copied
    once, and many small frames in one chunk cost no more than their own size.
    """

    __slots__ = ("_chunks", "_offset", "_size", "max_frame")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._chunks: deque[bytes] = deque()
        self._offset = 0  # into self._chunks[0]
        self._size = 0  # bytes buffered, from the offset on
        #: Frames announcing more are refused (raised while the decoder is in use, e.g. once
        #: a hop is authenticated).
        self.max_frame = max_frame

    def feed(self, data: bytes) -> list[bytes]:
        if data:
            self._chunks.append(data)
            self._size += len(data)
        frames: list[bytes] = []
        while self._size >= _HEADER:
            length = int.from_bytes(self._read(_HEADER, consume=False), "big")
            if length > self.max_frame:
                raise OversizeError(
                    f"frame announces {length} bytes, over the {self.max_frame}-byte limit"
                )
            if self._size < _HEADER + length:
                break
            self._read(_HEADER, consume=True)
            frames.append(self._read(length, consume=True))
        return frames

    def _read(self, size: int, *, consume: bool) -> bytes:
        first, offset = self._chunks[0] if self._chunks else b"", self._offset
        if len(first) - offset >= size:
            whole = offset == 0 and size == len(first)
            taken = first if whole else first[offset : offset + size]
            if consume:
                self._advance(size)
            return taken
        parts, need = [], size
        for chunk in self._chunks:
            piece = chunk[offset : offset + need]
            parts.append(piece)
            need -= len(piece)
            offset = 0
            if not need:
                break
        if consume:
            self._advance(size)
        return b"".join(parts)

    def _advance(self, size: int) -> None:
        self._size -= size
        while size:
            available = len(self._chunks[0]) - self._offset
            if available > size:
                self._offset += size
                return
            size -= available
            self._chunks.popleft()
            self._offset = 0

    @property
    def buffered(self) -> int:
        return self._size
