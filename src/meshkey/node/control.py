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


#: An HTTP page: the body and its content type, made when asked.
Page = Callable[[], Awaitable[tuple[bytes, str]]]
_MAX_REQUEST = 8192
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


class HttpStatusServer:
    """A node's read-only HTTP status endpoints (``node create --http-server``, as Ockam's):
    ``GET``/``HEAD /`` says the node is alive, ``GET /show`` is what ``node show`` prints
    (``HEAD /show`` is refused: a page that asks the node for its state is only made for a
    reader). HTTP/1.0-style: one request per connection, bounded, on loopback by default."""

    def __init__(self, pages: dict[str, tuple[Page, frozenset[str]]]) -> None:
        self.pages = pages
        self._server: asyncio.AbstractServer | None = None
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, host, port)
        bound = self._server.sockets[0].getsockname()
        self.address = (str(bound[0]), int(bound[1]))
        return self.address

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            status, body, kind, method = await self._answer(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            status, body, kind, method = 400, b"bad request\n", "text/plain", "GET"
        headers = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            writer.write(headers.encode() + (b"" if method == "HEAD" else body))
            await writer.drain()
        writer.close()

    async def _answer(self, head: bytes) -> tuple[int, bytes, str, str]:
        if len(head) > _MAX_REQUEST:
            return 400, b"request too large\n", "text/plain", "GET"
        method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
        path = rest.split(" ", 1)[0].split("?", 1)[0]
        page = self.pages.get(path.rstrip("/") or "/")
        if page is None:
            return 404, b"not found\n", "text/plain", method
        make, methods = page
        if method not in methods:
            return 405, b"method not allowed\n", "text/plain", method
        body, kind = await make()
        return 200, body, kind, method
