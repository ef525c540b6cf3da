"""Routing failures; importing this module costs nothing (no asyncio)."""

from __future__ import annotations

from meshkey.errors import MeshkeyError
from meshkey.wire.message import ErrorCode


class RoutingError(MeshkeyError):
    """A message could not be routed; ``code`` travels back to the sender in an error reply."""

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text

    @property
    def kind(self) -> str:
        return self.code.name.lower()


class RemoteError(RoutingError):
    """Raised to a sender: its message could not be delivered or answered (see ``code``)."""
