"""``meshkey.Node``: a node embedded in a Python program, and the heart of the daemon.

async with meshkey.Node() as node:
    reply = await node.send("/ip4/127.0.0.1/tcp/4000/service/uppercase", b"hello")
"""

from __future__ import annotations

import asyncio
import inspect
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from meshkey.identity.keys import Identity
from meshkey.identity.node_id import NodeId
from meshkey.log import EventLogger
from meshkey.node.events import EventBus
from meshkey.node.services import install_builtin_services
from meshkey.node.state import Home, parse_listen, resolve_route
from meshkey.routing.address import Route, ServiceAddress, TransportAddress
from meshkey.routing.errors import RemoteError
from meshkey.routing.message import Message
from meshkey.routing.router import Handler, Router
from meshkey.transport.tcp import TcpTransport
from meshkey.wire.frames import MAX_PAYLOAD
from meshkey.wire.message import ErrorCode

log = EventLogger("node")

ServiceFunction = Callable[[bytes], bytes | Awaitable[bytes]]


class Node:
    """A meshkey node: identity, router, transports and services.

    ``tcp`` is the listen address (``"127.0.0.1:0"`` lets the OS choose a port; ``None``
    makes a client-only node). ``home`` lets routes name local daemons with ``/node/NAME``.
    """

    def __init__(
        self,
        *,
        identity: Identity | None = None,
        tcp: str | None = "127.0.0.1:0",
        home: Home | Path | str | None = None,
        name: str | None = None,
        idle_timeout: float = 300.0,
    ) -> None:
        self.identity = identity or Identity.generate()
        self.name = name
        self.events = EventBus()
        self._tcp_listen = parse_listen(tcp) if tcp else None
        self._home = home if isinstance(home, Home) or home is None else Home(home)
        self._idle_timeout = idle_timeout
        self._router: Router | None = None
        self._tcp: TcpTransport | None = None
        self._started = False

    @property
    def node_id(self) -> NodeId:
        return self.identity.node_id

    @property
    def router(self) -> Router:
        if self._router is None:
            raise RuntimeError("the node is not started")
        return self._router

    @property
    def tcp(self) -> TcpTransport:
        if self._tcp is None:
            raise RuntimeError("the node is not started")
        return self._tcp

    @property
    def addresses(self) -> list[TransportAddress]:
        return [a for a in [self._tcp.address if self._tcp else None] if a is not None]

    async def start(self) -> Node:
        self._router = Router(self.node_id)
        self._tcp = TcpTransport(
            self.identity,
            self._router,
            on_event=self.events.publish,
            idle_timeout=self._idle_timeout,
        )
        self._router.add_transport(self._tcp)
        install_builtin_services(self._router)
        if self._tcp_listen is not None:
            await self._tcp.listen(*self._tcp_listen)
        self._started = True
        log.info("node.started", name=self.name or "-", node_id=self.node_id)
        return self

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        assert self._tcp is not None
        assert self._router is not None
        await self._tcp.close()
        await self._router.close()
        log.info("node.stopped", name=self.name or "-")

    async def __aenter__(self) -> Node:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- workers ----------------------------------------------------------------------

    def register_worker(self, name: str, handler: Handler, *, inline: bool = False) -> str:
        """Registers a full worker: ``handler(message)`` gets every Message sent to it."""
        return str(self.router.register(name, handler, inline=inline))

    def register_service(self, name: str, function: ServiceFunction) -> str:
        """Registers a request/reply service: ``function(payload)`` returns the reply payload."""
        router = self.router

        async def handle(message: Message) -> None:
            result = function(message.payload)
            if inspect.isawaitable(result):
                result = await result
            await router.reply(message, result)

        return self.register_worker(name, handle)

    # -- sending ----------------------------------------------------------------------

    def resolve(self, route: str | Route) -> Route:
        """Parses route text and replaces ``/node/NAME`` with that node's pinned address."""
        return resolve_route(route, self._home)

    async def send(self, route: str | Route, payload: bytes, *, timeout: float = 10.0) -> bytes:
        """Sends ``payload`` along ``route`` and returns the reply's payload.

        Raises RemoteError when the message cannot be delivered (the error comes back along
        the return route from the node where it failed) or no reply comes within ``timeout``.
        """
        if len(payload) > MAX_PAYLOAD:
            raise RemoteError(
                ErrorCode.TOO_LARGE, f"payload of {len(payload)} bytes (limit {MAX_PAYLOAD})"
            )
        resolved = self.resolve(route)
        reply = await self.request(
            Message(resolved, (), payload), timeout=timeout, describe=str(route)
        )
        if reply.is_error:
            code, text = reply.error()
            raise RemoteError(code, text)
        return reply.payload

    async def request(self, message: Message, *, timeout: float, describe: str = "") -> Message:
        """Routes ``message`` with a one-shot reply address and returns whatever comes back."""
        router = self.router
        slot = f"_reply.{secrets.token_hex(8)}"
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

        async def receive(reply: Message) -> None:
            if not future.done():
                future.set_result(reply)

        router.register(slot, receive, inline=True)
        try:
            await router.route(
                Message(
                    message.onward,
                    (ServiceAddress(slot), *message.return_route),
                    message.payload,
                    message.kind,
                )
            )
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise RemoteError(
                ErrorCode.TIMEOUT, f"no reply from {describe or 'the route'} within {timeout:g}s"
            ) from None
        finally:
            router.unregister(slot)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "node_id": str(self.node_id),
            "addresses": [str(a) for a in self.addresses],
            "services": [n for n in self.router.worker_names() if not n.startswith("_")],
            "connections": self.tcp.connections(),
        }
