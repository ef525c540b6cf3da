"""Length-prefixed frames for stream transports (TCP/TLS, QUIC streams).

A frame is ``u32 length`` followed by ``length`` bytes of body. The decoder is sans-IO:
feed it whatever the socket produced and it returns the complete frames.
"""

from __future__ import annotations

from meshkey.wire.errors import OversizeError
from meshkey.wire.reader import u32

#: Largest message payload an application may send (documented in the README).
MAX_PAYLOAD = 1024 * 1024
#: Largest frame body: a full payload plus routes, channel overhead and headers.
MAX_FRAME = 2 * MAX_PAYLOAD

_HEADER = 4


def encode_frame(body: bytes) -> bytes:
    if len(body) > MAX_FRAME:
        raise OversizeError(f"frame of {len(body)} bytes is over the {MAX_FRAME}-byte limit")
    return u32(len(body)) + body


class FrameDecoder:
    """Splits a byte stream into frames; raises OversizeError on a length over the limit."""

    __slots__ = ("_buffer", "_max_frame")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._max_frame = max_frame

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames: list[bytes] = []
        buffer = self._buffer
        offset = 0
        while len(buffer) - offset >= _HEADER:
            length = int.from_bytes(buffer[offset : offset + _HEADER], "big")
            if length > self._max_frame:
                raise OversizeError(
                    f"frame announces {length} bytes, over the {self._max_frame}-byte limit"
                )
            end = offset + _HEADER + length
            if len(buffer) < end:
                break
            frames.append(bytes(buffer[offset + _HEADER : end]))
            offset = end
        if offset:
            del buffer[:offset]
        return frames

    @property
    def buffered(self) -> int:
        return len(self._buffer)
