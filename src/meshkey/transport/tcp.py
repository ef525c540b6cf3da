"""TCP transport: framed hop protocol over TLS 1.3, connection pool, idle close.

Every connection is a worker at a local address (``/service/_tcp.<hex>``) that a message's
return route names when it arrived over that connection, so replies go back over the very
connection the request came in on (which is what lets a node behind a NAT be answered).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
from collections.abc import Callable
from typing import Any

from meshkey.identity.certificate import node_id_from_certificate
from meshkey.identity.errors import IdentityError
from meshkey.identity.keys import Identity
from meshkey.identity.node_id import NodeId
from meshkey.log import EventLogger
from meshkey.routing.address import ServiceAddress, TransportAddress
from meshkey.routing.message import LocalInfo, Message
from meshkey.routing.router import Router, RoutingError
from meshkey.transport.errors import describe_error
from meshkey.transport.events import HopAuthenticated, HopClosed, HopRefused, TransportEvent
from meshkey.transport.hop import (
    HopConnection,
    HopError,
    MessageReceived,
    PeerAuthenticated,
    PeerClosed,
    Role,
)
from meshkey.transport.tls import SERVER_NAME, client_context, server_context
from meshkey.wire.errors import WireError
from meshkey.wire.hop import CloseCode
from meshkey.wire.message import MAX_ROUTE_LENGTH, ErrorCode

log = EventLogger("transport.tcp")

_READ_SIZE = 256 * 1024
_QUEUE_SIZE = 256

EventCallback = Callable[[TransportEvent], None]


class TcpTransport:
    protocol = "tcp"

    def __init__(
        self,
        identity: Identity,
        router: Router,
        *,
        on_event: EventCallback | None = None,
        idle_timeout: float = 300.0,
        handshake_timeout: float = 10.0,
        keepalive_interval: float = 20.0,
    ) -> None:
        self.identity = identity
        self.router = router
        self.idle_timeout = idle_timeout
        self.keepalive_interval = keepalive_interval
        self.handshake_timeout = handshake_timeout
        self._on_event = on_event or (lambda event: None)
        self._server: asyncio.Server | None = None
        self._server_ssl: ssl.SSLContext | None = None
        self._client_ssl = client_context()
        self._outbound: dict[tuple[str, int, NodeId | None], _Connection] = {}
        self._connections: set[_Connection] = set()
        self.address: TransportAddress | None = None

    async def listen(self, host: str, port: int) -> TransportAddress:
        if self._server_ssl is None:
            self._server_ssl = server_context(self.identity)
        self._server = await asyncio.start_server(
            self._accept,
            host,
            port,
            ssl=self._server_ssl,
            ssl_handshake_timeout=self.handshake_timeout,
            reuse_address=True,
        )
        bound_host, bound_port = self._server.sockets[0].getsockname()[:2]
        self.address = TransportAddress.from_socket(
            "tcp", bound_host, bound_port, self.identity.node_id
        )
        log.info("listening", address=self.address)
        return self.address

    async def send(self, address: TransportAddress, message: Message) -> None:
        key = (address.host, address.port, address.node_id)
        connection = self._outbound.get(key)
        if connection is None or connection.closed:
            connection = _Connection(self, "outbound", address.endpoint, address.node_id)
            connection.target = address
            self._outbound[key] = connection
            connection.start_outbound()
        await connection.enqueue(message)

    def watch(self, address: TransportAddress) -> asyncio.Future[str]:
        """Keeps the connection to ``address`` alive (pings instead of idle close) and returns
        a future that resolves, with the reason, when it closes."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        connection = self._outbound.get((address.host, address.port, address.node_id))
        if connection is None or connection.closed:
            future.set_result("not connected")
        else:
            connection.keepalive = True
            connection.watchers.append(future)
        return future

    def connections(self) -> list[dict[str, Any]]:
        return [c.describe() for c in self._connections if not c.closed]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            await connection.close(CloseCode.SHUTTING_DOWN, "node shutting down")
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername") or ("?", 0)
        connection = _Connection(self, "inbound", (str(peername[0]), int(peername[1])), None)
        connection.attach(reader, writer)
        await connection.run()

    # called by connections
    def _emit(self, event: TransportEvent) -> None:
        try:
            self._on_event(event)
        except Exception:
            log.exception("event.handler_failed", kind=type(event).__name__)

    def _forget(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        for key, value in list(self._outbound.items()):
            if value is connection:
                del self._outbound[key]


class _Connection:
    def __init__(
        self,
        transport: TcpTransport,
        direction: str,
        remote: tuple[str, int],
        expected: NodeId | None,
    ) -> None:
        self.transport = transport
        self.direction = direction
        self.remote = remote
        self.name = f"_tcp.{secrets.token_hex(8)}"
        self.target: TransportAddress | None = None
        self.core = HopConnection(
            Role.CLIENT if direction == "outbound" else Role.SERVER,
            transport.identity,
            "tcp",
            expected_peer=expected,
        )
        self.closed = False
        self.queue: asyncio.Queue[Message] = asyncio.Queue(_QUEUE_SIZE)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loop = asyncio.get_running_loop()
        self._last_activity = self._loop.time()
        self._registered = False
        self.keepalive = False
        self.watchers: list[asyncio.Future[str]] = []
        transport._connections.add(self)

    def describe(self) -> dict[str, Any]:
        return {
            "transport": "tcp",
            "direction": self.direction,
            "remote": f"{self.remote[0]}:{self.remote[1]}",
            "peer": str(self.core.peer) if self.core.peer else None,
            "state": self.core.state.value,
            "address": f"/service/{self.name}",
        }

    # -- lifecycle --------------------------------------------------------------------

    def start_outbound(self) -> None:
        self._spawn(self._run_outbound(), "dial")

    def attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    def _spawn(self, coroutine: Any, what: str) -> None:
        task = self._loop.create_task(coroutine, name=f"{self.name}:{what}")
        self._tasks.append(task)

    async def _run_outbound(self) -> None:
        host, port = self.remote
        timeout = self.transport.handshake_timeout
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host,
                    port,
                    ssl=self.transport._client_ssl,
                    server_hostname=SERVER_NAME,
                    ssl_handshake_timeout=timeout,
                ),
                timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            reason = describe_error(exc)
            await self.close(
                CloseCode.NORMAL,
                f"cannot connect to {self.target}: {reason}",
                ErrorCode.UNREACHABLE,
            )
            return
        self._reader, self._writer = reader, writer
        try:
            self.core.certificate_verified(_certificate_node_id(writer))
        except (IdentityError, HopError) as exc:
            await self._refuse(str(exc))
            return
        await self.run()

    async def run(self) -> None:
        """Authenticates the hop, then reads until the connection ends."""
        try:
            self._flush()
            async with asyncio.timeout(self.transport.handshake_timeout):
                while not self.core.is_open:
                    if not await self._read_once():
                        await self.close(
                            CloseCode.NORMAL,
                            "peer closed during authentication",
                            ErrorCode.UNREACHABLE,
                        )
                        return
            self._opened()
            while await self._read_once():
                pass
            await self.close(CloseCode.NORMAL, "peer closed the connection")
        except HopError as exc:
            if self.core.peer is None:
                await self._refuse(exc.reason)
            else:
                log.warning("hop.protocol_error", peer=self.core.peer, reason=exc.reason)
                await self.close(exc.code, exc.reason)
        except TimeoutError:
            await self._refuse("authentication timed out")
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            await self.close(
                CloseCode.NORMAL, f"connection lost: {describe_error(exc)}", ErrorCode.UNREACHABLE
            )

    def _opened(self) -> None:
        peer = self.core.peer
        assert peer is not None
        self.transport.router.register(self.name, self._send_from_router, inline=True)
        self._registered = True
        log.info(
            "hop.authenticated",
            peer=peer,
            direction=self.direction,
            remote=f"{self.remote[0]}:{self.remote[1]}",
        )
        self.transport._emit(HopAuthenticated(peer, "tcp", self.remote, self.direction))
        self._spawn(self._write_loop(), "write")
        self._spawn(self._idle_watch(), "idle")

    async def _read_once(self) -> bool:
        assert self._reader is not None
        data = await self._reader.read(_READ_SIZE)
        if not data:
            return False
        self._last_activity = self._loop.time()
        events = self.core.receive_data(data)
        self._flush()
        for event in events:
            if isinstance(event, MessageReceived):
                await self._deliver(event.body)
            elif isinstance(event, PeerClosed):
                await self.close(CloseCode.NORMAL, f"peer closed: {event.reason or event.code}")
                return False
            elif isinstance(event, PeerAuthenticated):
                pass  # reported by _opened once the loop sees the hop open
        return True

    async def _deliver(self, body: bytes) -> None:
        try:
            message = Message.from_wire(body, LocalInfo(hop_peer=self.core.peer))
        except WireError as exc:
            log.warning("message.malformed", peer=self.core.peer, reason=str(exc))
            return
        if len(message.return_route) >= MAX_ROUTE_LENGTH:
            log.warning("message.route_too_long", peer=self.core.peer)
            return
        await self.transport.router.route(message.with_return(ServiceAddress(self.name)))

    async def _send_from_router(self, message: Message) -> None:
        await self.enqueue(message.step())

    async def enqueue(self, message: Message) -> None:
        if self.closed:
            raise RoutingError(
                ErrorCode.UNREACHABLE, f"connection to {self.remote[0]}:{self.remote[1]} is closed"
            )
        await self.queue.put(message)

    async def _write_loop(self) -> None:
        assert self._writer is not None
        writer = self._writer
        try:
            while True:
                message = await self.queue.get()
                self._send(message)
                while not self.queue.empty():  # batch whatever else is waiting
                    self._send(self.queue.get_nowait())
                self._flush()
                self._last_activity = self._loop.time()
                await writer.drain()
        except (OSError, ssl.SSLError) as exc:
            await self.close(CloseCode.NORMAL, f"connection lost: {describe_error(exc)}")

    def _send(self, message: Message) -> None:
        try:
            self.core.send_message(message.to_wire())
        except (WireError, ValueError) as exc:
            log.warning("message.unsendable", reason=str(exc))

    def _flush(self) -> None:
        data = self.core.data_to_send()
        if data and self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)

    async def _idle_watch(self) -> None:
        idle = self.transport.idle_timeout
        interval = self.transport.keepalive_interval
        pings = 0
        while True:
            await asyncio.sleep(min(idle / 4, interval / 2))
            quiet = self._loop.time() - self._last_activity
            if self.keepalive:
                # Pings keep NAT mappings and the peer's idle timer fresh; silence means dead.
                if quiet > 3 * interval:
                    await self.close(CloseCode.NORMAL, f"no answer to keepalives for {quiet:.0f}s")
                    return
                if quiet > interval:
                    pings += 1
                    self.core.ping(pings)
                    self._flush()
            elif quiet > idle and self.queue.empty():
                await self.close(CloseCode.IDLE, "idle")
                return

    async def _refuse(self, reason: str) -> None:
        log.warning(
            "hop.refused",
            direction=self.direction,
            remote=f"{self.remote[0]}:{self.remote[1]}",
            reason=reason,
        )
        self.transport._emit(HopRefused("tcp", self.remote, self.direction, reason))
        await self.close(CloseCode.AUTH_FAILED, reason, ErrorCode.AUTH_FAILED)

    async def close(
        self, code: CloseCode, reason: str, error: ErrorCode = ErrorCode.UNREACHABLE
    ) -> None:
        if self.closed:
            return
        self.closed = True
        self.transport._forget(self)
        if self._registered:
            self.transport.router.unregister(self.name)
        self.core.close(code, reason)
        self._flush()
        if self._writer is not None:
            self._writer.close()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        if self.core.peer is not None:
            log.info("hop.closed", peer=self.core.peer, reason=reason)
            self.transport._emit(
                HopClosed(self.core.peer, "tcp", self.remote, self.direction, reason)
            )
        for watcher in self.watchers:
            if not watcher.done():
                watcher.set_result(reason)
        # Whatever was waiting to go out is answered, so no sender waits for nothing.
        while not self.queue.empty():
            await self.transport.router.fail(self.queue.get_nowait(), error, reason)
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer.wait_closed(), 1)


def _certificate_node_id(writer: asyncio.StreamWriter) -> NodeId:
    ssl_object = writer.get_extra_info("ssl_object")
    return node_id_from_certificate(
        ssl_object.getpeercert(binary_form=True) if ssl_object else None
    )
