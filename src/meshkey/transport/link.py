"""Hop links: what every transport does once it has an encrypted byte pipe to a peer.

A :class:`HopLink` drives the sans-IO hop protocol (authentication, frames, pings) over a
pipe its subclass provides (a TLS stream for TCP, a QUIC stream for UDP), registers itself
as a worker so replies return over the link a request came in on, batches outgoing messages,
closes when idle or keeps alive with pings, and answers every message it could not send.
A :class:`LinkTransport` keeps the links: one outbound link per peer address, reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable, Coroutine
from typing import Any

from meshkey.identity.errors import IdentityError
from meshkey.identity.keys import Identity
from meshkey.identity.node_id import NodeId
from meshkey.log import EventLogger
from meshkey.routing.address import ServiceAddress, TransportAddress
from meshkey.routing.errors import RoutingError
from meshkey.routing.message import LocalInfo, Message
from meshkey.routing.router import Router
from meshkey.transport.errors import describe_error
from meshkey.transport.events import HopAuthenticated, HopClosed, HopRefused, TransportEvent
from meshkey.transport.hop import (
    HopConnection,
    HopError,
    MessageReceived,
    PeerClosed,
    Role,
)
from meshkey.wire.errors import WireError
from meshkey.wire.hop import CloseCode
from meshkey.wire.message import MAX_ROUTE_LENGTH, ErrorCode

log = EventLogger("transport")

QUEUE_SIZE = 256

EventCallback = Callable[[TransportEvent], None]


class LinkError(Exception):
    """The pipe could not be set up or broke; the message says why."""


class LinkTransport:
    """The pool of links of one transport; subclasses say how to dial."""

    protocol = ""  # the route's transport name: "tcp" or "udp"
    hop_tag = ""  # what the hop proof is bound to: "tcp" or "quic"

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
        self.handshake_timeout = handshake_timeout
        self.keepalive_interval = keepalive_interval
        self._on_event = on_event or (lambda event: None)
        self._outbound: dict[tuple[str, int, NodeId | None], HopLink] = {}
        self.links: set[HopLink] = set()
        self.address: TransportAddress | None = None

    def _new_outbound(self, address: TransportAddress) -> HopLink:
        raise NotImplementedError

    async def send(self, address: TransportAddress, message: Message) -> None:
        key = (address.host, address.port, address.node_id)
        link = self._outbound.get(key)
        if link is None or link.closed:
            link = self._new_outbound(address)
            self._outbound[key] = link
            link.start_outbound()
        await link.enqueue(message)

    def watch(self, address: TransportAddress) -> asyncio.Future[str]:
        """Keeps the link to ``address`` alive (pings instead of idle close) and returns a
        future that resolves, with the reason, when it closes."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        link = self._outbound.get((address.host, address.port, address.node_id))
        if link is None or link.closed:
            future.set_result("not connected")
        else:
            link.keepalive = True
            link.watchers.append(future)
        return future

    def connections(self) -> list[dict[str, Any]]:
        return [link.describe() for link in self.links if not link.closed]

    async def close_links(self) -> None:
        for link in list(self.links):
            await link.close(CloseCode.SHUTTING_DOWN, "node shutting down")

    def emit(self, event: TransportEvent) -> None:
        try:
            self._on_event(event)
        except Exception:
            log.exception("event.handler_failed", kind=type(event).__name__)

    def forget(self, link: HopLink) -> None:
        self.links.discard(link)
        for key, value in list(self._outbound.items()):
            if value is link:
                del self._outbound[key]


class HopLink:
    """One authenticated hop; subclasses provide the pipe (``_connect`` .. ``_wait_closed``)."""

    def __init__(
        self,
        transport: LinkTransport,
        direction: str,
        remote: tuple[str, int],
        expected: NodeId | None = None,
        target: TransportAddress | None = None,
    ) -> None:
        self.transport = transport
        self.direction = direction
        self.remote = remote
        self.target = target
        self.name = f"_{transport.protocol}.{secrets.token_hex(8)}"
        self.core = HopConnection(
            Role.CLIENT if direction == "outbound" else Role.SERVER,
            transport.identity,
            transport.hop_tag,
            expected_peer=expected,
        )
        self.closed = False
        self.keepalive = False
        self.watchers: list[asyncio.Future[str]] = []
        self.queue: asyncio.Queue[Message] = asyncio.Queue(QUEUE_SIZE)
        self._tasks: list[asyncio.Task[None]] = []
        self._loop = asyncio.get_running_loop()
        self._last_activity = self._loop.time()
        self.last_received = self._last_activity
        self._registered = False
        transport.links.add(self)

    # -- the pipe (subclasses) --------------------------------------------------------

    async def _connect(self) -> NodeId:
        """Outbound: sets up the encrypted pipe; returns the NodeId in the peer's certificate.
        Raises LinkError when it cannot connect, IdentityError when the certificate is bad."""
        raise NotImplementedError

    def _write(self, chunks: list[bytes]) -> None:
        raise NotImplementedError

    async def _drain(self) -> None:
        raise NotImplementedError

    async def _read(self) -> bytes:
        """The next bytes from the peer; b"" at the end."""
        raise NotImplementedError

    def _close_pipe(self) -> None:
        raise NotImplementedError

    async def _wait_closed(self) -> None:
        return None

    # -- lifecycle --------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "transport": self.transport.protocol,
            "direction": self.direction,
            "remote": f"{self.remote[0]}:{self.remote[1]}",
            "peer": str(self.core.peer) if self.core.peer else None,
            "state": self.core.state.value,
            "address": f"/service/{self.name}",
        }

    def spawn(self, coroutine: Coroutine[Any, Any, None], what: str) -> None:
        self._tasks.append(self._loop.create_task(coroutine, name=f"{self.name}:{what}"))

    def start_outbound(self) -> None:
        self.spawn(self._run_outbound(), "dial")

    async def _run_outbound(self) -> None:
        try:
            peer = await self._connect()
        except LinkError as exc:
            await self.close(
                CloseCode.NORMAL, f"cannot connect to {self.target}: {exc}", ErrorCode.UNREACHABLE
            )
            return
        try:
            self.core.certificate_verified(peer)
        except (IdentityError, HopError) as exc:
            await self._refuse(str(exc))
            return
        await self.run()

    async def run(self) -> None:
        """Authenticates the hop, then reads until the link ends."""
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
        except (LinkError, OSError, asyncio.IncompleteReadError) as exc:
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
            transport=self.transport.protocol,
            peer=peer,
            direction=self.direction,
            remote=f"{self.remote[0]}:{self.remote[1]}",
        )
        self.transport.emit(
            HopAuthenticated(peer, self.transport.protocol, self.remote, self.direction)
        )
        self.spawn(self._write_loop(), "write")
        self.spawn(self._idle_watch(), "idle")

    async def _read_once(self) -> bool:
        data = await self._read()
        if not data:
            return False
        self._last_activity = self.last_received = self._loop.time()
        events = self.core.receive_data(data)
        self._flush()
        for event in events:
            if isinstance(event, MessageReceived):
                await self._deliver(event.body)
            elif isinstance(event, PeerClosed):
                await self.close(CloseCode.NORMAL, f"peer closed: {event.reason or event.code}")
                return False
        return True

    async def _deliver(self, body: bytes | memoryview) -> None:
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
        try:
            while True:
                message = await self.queue.get()
                self._send(message)
                while not self.queue.empty():  # batch whatever else is waiting
                    self._send(self.queue.get_nowait())
                self._flush()
                self._last_activity = self._loop.time()
                await self._drain()
        except (LinkError, OSError) as exc:
            await self.close(CloseCode.NORMAL, f"connection lost: {describe_error(exc)}")

    def _send(self, message: Message) -> None:
        try:
            self.core.send_message(*message.to_wire_parts())
        except (WireError, ValueError) as exc:
            log.warning("message.unsendable", reason=str(exc))

    def _flush(self) -> None:
        chunks = self.core.chunks_to_send()
        if chunks:
            self._write(chunks)

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
            transport=self.transport.protocol,
            direction=self.direction,
            remote=f"{self.remote[0]}:{self.remote[1]}",
            reason=reason,
        )
        self.transport.emit(
            HopRefused(self.transport.protocol, self.remote, self.direction, reason)
        )
        await self.close(CloseCode.AUTH_FAILED, reason, ErrorCode.AUTH_FAILED)

    async def close(
        self, code: CloseCode, reason: str, error: ErrorCode = ErrorCode.UNREACHABLE
    ) -> None:
        if self.closed:
            return
        self.closed = True
        self.transport.forget(self)
        if self._registered:
            self.transport.router.unregister(self.name)
        if code == CloseCode.SHUTTING_DOWN and self.core.is_open:
            # A graceful shutdown sends what is already queued (a channel's CLOSE, say).
            while not self.queue.empty():
                self._send(self.queue.get_nowait())
        self.core.close(code, reason)
        with contextlib.suppress(LinkError, OSError):
            self._flush()
        self._close_pipe()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        if self.core.peer is not None:
            log.info(
                "hop.closed", transport=self.transport.protocol, peer=self.core.peer, reason=reason
            )
            self.transport.emit(
                HopClosed(
                    self.core.peer, self.transport.protocol, self.remote, self.direction, reason
                )
            )
        for watcher in self.watchers:
            if not watcher.done():
                watcher.set_result(reason)
        # Whatever was waiting to go out is answered, so no sender waits for nothing.
        while not self.queue.empty():
            await self.transport.router.fail(self.queue.get_nowait(), error, reason)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._wait_closed(), 1)
