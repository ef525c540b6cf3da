"""The control API: a daemon serves it on its Unix socket; the CLI calls it.

The server is asyncio; the client (:mod:`meshkey.node.control_client`) is not.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from meshkey.log import EventLogger
from meshkey.node.control_client import ControlError
from meshkey.node.state import bind_unix
from meshkey.wire.control import decode_control, encode_control
from meshkey.wire.errors import WireError
from meshkey.wire.frames import FrameDecoder, encode_frame

log = EventLogger("node.control")

ControlHandler = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlServer:
    def __init__(self, handlers: dict[str, ControlHandler]) -> None:
        self.handlers = handlers
        self._server: asyncio.AbstractServer | None = None

    async def start(self, path: Path) -> None:
        self._server = await asyncio.start_unix_server(self._serve, sock=bind_unix(path))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        try:
            while data := await reader.read(65536):
                for body in decoder.feed(data):
                    writer.write(encode_frame(encode_control(await self._answer(body))))
                    await writer.drain()
        except (ConnectionResetError, BrokenPipeError) as exc:
            # The CLI went away before its answer (Ctrl-C, a timeout of its own): nothing
            # wrong with the request, and nobody left to tell.
            log.debug("control.client_gone", reason=str(exc))
        except (WireError, OSError) as exc:
            log.warning("control.bad_request", reason=str(exc))
        finally:
            writer.close()

    async def _answer(self, body: bytes) -> dict[str, Any]:
        try:
            request = decode_control(body)
            op, args = request.get("op"), request.get("args") or {}
            handler = self.handlers.get(op) if isinstance(op, str) else None
            if handler is None or not isinstance(args, dict):
                return _error("invalid", f"unknown control operation {op!r}")
            return {"ok": True, "result": await handler(args)}
        except ControlError as exc:
            return _error(exc.code, exc.message)
        except WireError as exc:
            return _error("invalid", str(exc))
        except Exception as exc:
            log.exception("control.failed")
            return _error("internal", f"internal error: {exc}")


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}
