"""A bounds-checked cursor over bytes, shared by every wire parser."""

from __future__ import annotations

import struct

from meshkey.wire.errors import MalformedError, TruncatedError

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


class Reader:
    """Reads big-endian integers and byte strings, raising typed errors on short input."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes | bytearray | memoryview, what: str) -> None:
        # A view: parsing copies only what it returns (a 1 MiB payload once, not thrice).
        self._data = memoryview(data)
        self._pos = 0
        self._what = what

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, size: int) -> bytes:
        if size < 0 or self._pos + size > len(self._data):
            raise TruncatedError(
                f"{self._what}: needs {size} more bytes at offset {self._pos}, has {self.remaining}"
            )
        chunk = bytes(self._data[self._pos : self._pos + size])
        self._pos += size
        return chunk

    def u8(self) -> int:
        if self._pos >= len(self._data):
            self.take(1)  # raises TruncatedError
        value = self._data[self._pos]
        self._pos += 1
        return value

    def u16(self) -> int:
        value: int = _U16.unpack(self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = _U32.unpack(self.take(4))[0]
        return value

    def u64(self) -> int:
        value: int = _U64.unpack(self.take(8))[0]
        return value

    def rest(self) -> bytes:
        return self.take(self.remaining)

    def text(self, size: int) -> str:
        raw = self.take(size)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedError(f"{self._what}: text is not valid UTF-8") from exc

    def end(self) -> None:
        """Asserts the input is fully consumed: trailing bytes are an error, not ignored."""
        if self.remaining:
            raise MalformedError(f"{self._what}: {self.remaining} unexpected trailing bytes")


def u16(value: int) -> bytes:
    return _U16.pack(value)


def u32(value: int) -> bytes:
    return _U32.pack(value)


def u64(value: int) -> bytes:
    return _U64.pack(value)
