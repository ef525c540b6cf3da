"""The control API client: a plain blocking socket, so CLI commands that only talk to a
daemon never import asyncio, ssl or cryptography (and return quickly)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from meshkey.errors import MeshkeyError
from meshkey.node.state import connect_unix
from meshkey.wire.control import decode_control, encode_control
from meshkey.wire.errors import WireError
from meshkey.wire.frames import FrameDecoder, encode_frame

#: What a node signs a share ticket's body after (``meshkey share``): never the start of
#: anything else it signs, so a ticket signature proves nothing but the ticket.
TICKET_SIGNATURE_CONTEXT = b"meshkey share ticket v1\x00"


class ControlError(MeshkeyError):
    """A control request failed. ``code``: invalid, not_found, conflict, unreachable, timeout,
    refused, auth_failed, no_such_service, internal (the CLI maps each to an exit code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def kind(self) -> str:
        return self.code


class ControlClient:
    """Blocking client: ``ControlClient(path).call("status")``."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout

    def call(
        self, op: str, args: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        limit = timeout if timeout is not None else self.timeout
        try:
            sock = connect_unix(self.path, limit)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ControlError("conflict", "the node is not running") from exc
        except OSError as exc:
            raise ControlError(
                "unreachable", f"cannot reach the node's control socket: {exc}"
            ) from exc
        with sock:
            try:
                sock.sendall(encode_frame(encode_control({"op": op, "args": args or {}})))
                response = self._receive(sock)
            except TimeoutError:
                raise ControlError(
                    "no_answer", f"the node did not answer within {limit:g}s"
                ) from None
            except (OSError, WireError) as exc:
                raise ControlError("unreachable", f"lost the node's control socket: {exc}") from exc
        if response.get("ok"):
            return response.get("result")
        error = response.get("error") or {}
        raise ControlError(str(error.get("code", "internal")), str(error.get("message", "?")))

    @staticmethod
    def _receive(sock: socket.socket) -> dict[str, Any]:
        decoder = FrameDecoder()
        while True:
            data = sock.recv(65536)
            if not data:
                raise OSError("the node closed the control connection")
            frames = decoder.feed(data)
            if frames:
                return decode_control(frames[0])
