"""NodeId: the 32-byte Ed25519 public key of a node, and its text form.

Text form: ``mk`` followed by the key in lower-case RFC 4648 base32 without padding, 54
characters in all. Base32's alphabet has no 0/O or 1/l pairs, the form has no punctuation (a
double-click selects all of it), and the encoding is canonical, so one key has one spelling.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Iterable

from meshkey.identity.errors import InvalidNodeIdError

NODE_ID_SIZE = 32
PREFIX = "mk"
TEXT_LENGTH = len(PREFIX) + 52


@functools.total_ordering
class NodeId:
    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes | bytearray) or len(raw) != NODE_ID_SIZE:
            raise InvalidNodeIdError(f"a NodeId is {NODE_ID_SIZE} bytes")
        self._raw = bytes(raw)

    @classmethod
    def parse(cls, text: str) -> NodeId:
        candidate = text.strip().lower()
        if len(candidate) != TEXT_LENGTH or not candidate.startswith(PREFIX):
            raise InvalidNodeIdError(
                f"{text!r} is not a NodeId (expected {TEXT_LENGTH} characters starting with "
                f"{PREFIX!r})"
            )
        body = candidate[len(PREFIX) :]
        try:
            raw = base64.b32decode(body.upper() + "====")
        except ValueError as exc:
            raise InvalidNodeIdError(f"{text!r} is not a NodeId: bad base32") from exc
        node_id = cls(raw)
        if str(node_id) != candidate:  # the 4 spare bits must be zero: one key, one spelling
            raise InvalidNodeIdError(f"{text!r} is not a canonical NodeId")
        return node_id

    @property
    def raw(self) -> bytes:
        return self._raw

    def short(self) -> str:
        """A short prefix for humans in logs and tables; never for identification."""
        return str(self)[:12]

    def __str__(self) -> str:
        return PREFIX + base64.b32encode(self._raw).decode("ascii").rstrip("=").lower()

    def __repr__(self) -> str:
        return f"NodeId({self})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NodeId) and other._raw == self._raw

    def __lt__(self, other: NodeId) -> bool:
        return self._raw < other._raw

    def __hash__(self) -> int:
        return hash(self._raw)


def node_ids(values: Iterable[NodeId | str] | NodeId | str) -> frozenset[NodeId]:
    """NodeIds given as NodeId or text (one, or several); InvalidNodeIdError (a ValueError)
    for anything else."""
    if isinstance(values, str | NodeId):
        values = [values]
    ids = set()
    for value in values:
        if isinstance(value, NodeId):
            ids.add(value)
        elif isinstance(value, str):
            ids.add(NodeId.parse(value))
        else:
            raise InvalidNodeIdError(f"{value!r} is not a NodeId (nor its text form)")
    return frozenset(ids)
