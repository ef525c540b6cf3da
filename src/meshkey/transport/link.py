"""Hop links: what every transport does once it has an encrypted byte pipe to a peer.

(Over 600 lines on purpose: :class:`HopLink` is the one glue every transport's links share
(two thirds of the file), beside the :class:`LinkTransport` they live in; the hop protocol
itself is the sans-IO :mod:`~meshkey.transport.hop`.)

A :class:`HopLink` drives the sans-IO hop protocol (authentication, frames, liveness) over a
pipe its subclass provides (a TLS stream for TCP, a QUIC stream for UDP), registers itself
as a worker so replies return over the link a request came in on, batches outgoing messages,
keeps one timer for the core's next deadline, and answers every message it could not send.
A :class:`LinkTransport` keeps the links: one outbound link per peer address, reused, and
bounds what strangers can make it hold (unauthenticated inbound links, in total and per
source address).

Backpressure: a link's queue is bounded in bytes (:data:`QUEUE_HIGH_WATER`). A sender that
forwards for one peer (a link's read loop, a channel) waits when it is full, which in turn
stops reading from whoever feeds it. A shared service must not wait for one peer that does
not read (everyone else would wait too): the router marks such senders
(:func:`meshkey.routing.router.sends_must_not_block`) and their message is refused at once
with BUSY instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from meshkey.identity.errors import IdentityError
from meshkey.identity.keys import Identity
from meshkey.identity.node_id import NodeId
from meshkey.log import EventLogger
from meshkey.ratelimit import TokenBucket
from meshkey.routing.address import ServiceAddress, TransportAddress
from meshkey.routing.errors import RoutingError
from meshkey.routing.message import LocalInfo, Message
from meshkey.routing.router import Router, sends_must_not_block
from meshkey.timing import DeadlineTimer
from meshkey.transport.errors import describe_error
from meshkey.transport.events import HopAuthenticated, HopClosed, HopRefused, TransportEvent
from meshkey.transport.hop import (
    HopConnection,
    HopError,
    HopEvent,
    HopFailed,
    HopIdle,
    HopUnresponsive,
    Liveness,
    MessageReceived,
    PeerAuthenticated,
    PeerClosed,
    PongReceived,
    Role,
)
from meshkey.wire.errors import WireError
from meshkey.wire.hop import CloseCode
from meshkey.wire.message import MAX_ROUTE_LENGTH, ErrorCode

log = EventLogger("transport")

#: Bytes of messages a link holds for its peer before senders wait (or, for shared
#: services, are refused): a few full-size messages, enough to keep any pipe busy.
QUEUE_HIGH_WATER = 4 * 1024 * 1024
#: Inbound links that have not authenticated yet, in all and from one source address. Each
#: costs a TLS or QUIC handshake. Beyond the total, the oldest of them is closed to make
#: room: strangers from many addresses who hold connections open without finishing
#: (slowloris) age out, and a fresh client, which authenticates in milliseconds, gets in.
#: Beyond the per-source limit the newest from that source is refused: one address only
#: ever crowds out itself (and the handshakes it has under way, which may be honest — many
#: nodes behind one NAT — are not cut off; a QUIC client sends its Initial again).
MAX_UNAUTHENTICATED = 256
MAX_UNAUTHENTICATED_PER_SOURCE = 8
#: An inbound peer has this long to finish TLS/QUIC and hop authentication.
INBOUND_AUTH_TIMEOUT = 5.0
#: Events handled before a link's task lets others run.
EVENTS_PER_TURN = 64
#: An outbound dial whose authentication timed out is tried this many times more before what
#: waited for it fails (issue 22: a lossy handshake retries within the caller's timeout).
AUTH_REDIALS = 1
#: Malformed messages an authenticated peer may send (a bug now and then is forgiven; a
#: stream of them closes the hop).
MALFORMED_PER_SECOND = 10.0
MALFORMED_BURST = 100.0

EventCallback = Callable[[TransportEvent], None]


class LinkMonitor(Protocol):
    """Watches one link's traffic (the path manager's evidence for a direct path)."""

    def received(self, size: int) -> None: ...

    def sent(self, size: int) -> None: ...

    def pong(self, token: int) -> None: ...


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
        self.unauthenticated: Counter[str] = Counter()  # inbound, by source host
        #: The same links, oldest first (the first to go when a limit is reached).
        self.strangers: dict[HopLink, None] = {}

    def liveness(self, direction: str) -> Liveness:
        return Liveness(
            auth_timeout=min(self.handshake_timeout, INBOUND_AUTH_TIMEOUT)
            if direction == "inbound"
            else self.handshake_timeout,
            idle_timeout=self.idle_timeout,
            keepalive_interval=self.keepalive_interval,
            dead_after=3 * self.keepalive_interval,
        )

    def admits_stranger(self, host: str) -> bool:
        """Whether one more unauthenticated inbound link from ``host`` may be accepted: not
        beyond ``host``'s own limit; at the total, the oldest unauthenticated link is closed
        to make room."""
        total = sum(self.unauthenticated.values())
        if self.unauthenticated[host] >= MAX_UNAUTHENTICATED_PER_SOURCE:
            log.warning("hop.too_many_strangers", transport=self.protocol, source=host, total=total)
            return False
        if total < MAX_UNAUTHENTICATED:
            return True
        oldest = next(iter(self.strangers), None)
        if oldest is None:
            return False
        log.warning(
            "hop.stranger_evicted",
            transport=self.protocol,
            source=host,
            evicted=oldest.remote[0],
            total=total,
        )
        oldest.evict("evicted: too many unauthenticated connections")
        return True

    def _new_outbound(self, address: TransportAddress) -> HopLink:
        raise NotImplementedError

    def outbound(self, address: TransportAddress) -> HopLink:
        """The link to ``address``: an open or opening one, else a new one (dialling). A
        link under suspicion (silent since it was asked to prove itself) is not handed out:
        a new one is dialled beside it, and the old one closes unless it answers."""
        link = self._outbound.get((address.host, address.port, address.node_id))
        if link is None or link.closed or link.core.suspected:
            link = self.dial(address)
        return link

    def dial(self, address: TransportAddress) -> HopLink:
        """A new outbound link to ``address``, dialling, the one :meth:`outbound` hands out
        from now on (whatever link it handed out before)."""
        link = self._new_outbound(address)
        self._outbound[(address.host, address.port, address.node_id)] = link
        link.start_outbound()
        return link

    def question_older_hops(self, inbound: HopLink) -> None:
        """A peer dialled in from the address an outbound hop of ours goes to: perhaps it
        restarted, and that hop talks to a process that is gone (nothing tells a QUIC or TCP
        client so until its idle timeout). The old hop is asked to prove itself within
        ``suspect_grace``; one that answers stays, one that does not is closed and the next
        send to that address dials anew."""
        for link in list(self._outbound.values()):
            same = link.core.peer == inbound.core.peer and link.remote == inbound.remote
            if same and link is not inbound and not link.closed:
                link.suspect("the peer dialled in anew (restarted?) and this hop is silent")

    async def send(self, address: TransportAddress, message: Message) -> None:
        await self.outbound(address).enqueue(message)

    def open_link(self, address: TransportAddress) -> HopLink | None:
        """A link that reaches ``address`` without a new connection: the outbound one to it
        (open or being dialled), else an authenticated one (either direction) to the NodeId
        ``address`` is pinned to, else one whose peer's packets come from its endpoint."""
        link = self._outbound.get((address.host, address.port, address.node_id))
        if link is not None and not link.closed and not link.core.suspected:
            return link
        for each in self.links:
            if each.closed or not each.core.is_open:
                continue
            if address.node_id is not None:
                if each.core.peer == address.node_id:
                    return each
            elif each.remote == address.endpoint:
                return each
        return None

    async def send_if_open(self, address: TransportAddress, message: Message) -> bool:
        """Sends ``message`` over a link that is already there (:meth:`open_link`); False,
        and nothing sent, when reaching ``address`` would take a new connection."""
        link = self.open_link(address)
        if link is None:
            return False
        await link.enqueue(message)
        return True

    def watch(
        self, address: TransportAddress, *, interval: float | None = None
    ) -> asyncio.Future[str]:
        """Keeps the link to ``address`` alive (pings instead of idle close) and returns a
        future that resolves, with the reason, when it closes; ``interval``: ping this often,
        each expecting its answer (see :meth:`HopLink.set_keepalive`)."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        link = self._outbound.get((address.host, address.port, address.node_id))
        if link is None or link.closed:
            future.set_result("not connected")
        else:
            link.set_keepalive(True, watch=interval)
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
        self._loop = asyncio.get_running_loop()
        self.created = self._loop.time()
        self.core = HopConnection(
            Role.CLIENT if direction == "outbound" else Role.SERVER,
            transport.identity,
            transport.hop_tag,
            expected_peer=expected,
            liveness=transport.liveness(direction),
            now=self.created,
        )
        self.closed = False
        self.watchers: list[asyncio.Future[str]] = []
        self._queue: deque[Message] = deque()
        self._queued_bytes = 0
        self._queued = asyncio.Event()  # the write loop has work
        self._room = asyncio.Event()  # senders waiting on a full queue may go on
        self._room.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._timer = DeadlineTimer(self._on_timer, self._loop)
        self._registered = False
        #: Set once the hop is authenticated or closed, whichever comes first.
        self.settled = asyncio.Event()
        self.monitor: LinkMonitor | None = None
        self.punched = False  # dialled over an address a hole punch found
        #: Outbound: dials left after one whose authentication times out (see _redial).
        self.redials_left = AUTH_REDIALS
        self._malformed = TokenBucket(MALFORMED_PER_SECOND, MALFORMED_BURST)
        self._counted_stranger = direction == "inbound"
        if self._counted_stranger:
            transport.unauthenticated[remote[0]] += 1
            transport.strangers[self] = None
        transport.links.add(self)
        self._rearm()

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

    @property
    def last_received(self) -> float:
        return self.core.last_received

    def describe(self) -> dict[str, Any]:
        return {
            "transport": self.transport.protocol,
            "direction": self.direction,
            "remote": f"{self.remote[0]}:{self.remote[1]}",
            "peer": str(self.core.peer) if self.core.peer else None,
            "state": self.core.state.value,
            "address": f"/service/{self.name}",
            "age": round(self._loop.time() - self.created, 1),
            "rtt_ms": round(self.core.rtt * 1000, 2) if self.core.rtt is not None else None,
            "keepalive": self.core.keepalive,
        }

    def set_keepalive(self, on: bool, *, watch: float | None = None) -> None:
        """Keepalives on (the hop is not closed when idle); ``watch``: every this many
        seconds, each expecting its answer (a hop whose death must be seen in seconds)."""
        self.core.keepalive = on
        self.core.watch_interval = watch if on else None
        self._rearm()

    def spawn(self, coroutine: Coroutine[Any, Any, None], what: str) -> None:
        self._tasks.append(self._loop.create_task(coroutine, name=f"{self.name}:{what}"))

    def start_outbound(self) -> None:
        self.spawn(self._run_outbound(), "dial")

    async def _run_outbound(self) -> None:
        try:
            peer = await self._connect()
        except LinkError as exc:
            await self.close(
                CloseCode.NORMAL,
                f"cannot connect to {self.target}: {exc}",
                ErrorCode.UNREACHABLE,
                public=f"cannot connect to {self.target}",
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
            while await self._read_once():
                pass
            if not self.closed:
                if not self.core.is_open and self._may_redial():
                    # The peer gave up on a handshake a lossy path slowed (its own deadline).
                    await self._redial("peer closed the connection during authentication")
                    return
                during = "" if self.core.is_open else " during authentication"
                await self.close(
                    CloseCode.NORMAL, f"peer closed the connection{during}", ErrorCode.UNREACHABLE
                )
        except (LinkError, OSError, asyncio.IncompleteReadError) as exc:
            reason = f"connection lost: {describe_error(exc)}"
            if not self.closed and not self.core.is_open and self._may_redial():
                await self._redial(reason)
                return
            await self.close(CloseCode.NORMAL, reason, ErrorCode.UNREACHABLE)

    def _opened(self) -> None:
        peer = self.core.peer
        assert peer is not None
        self._stranger_done()
        self.transport.router.register(self.name, self._send_from_router, inline=True)
        self._registered = True
        self.settled.set()
        # Debug: every one-shot CLI send opens and closes a hop with a throwaway identity, and
        # those pairs would drown the log; refusals stay warnings.
        log.debug(
            "hop.authenticated",
            transport=self.transport.protocol,
            peer=peer,
            direction=self.direction,
            remote=f"{self.remote[0]}:{self.remote[1]}",
        )
        self.transport.emit(
            HopAuthenticated(
                peer, self.transport.protocol, self.remote, self.direction, self.punched
            )
        )
        if self.direction == "inbound":
            self.transport.question_older_hops(self)
        self.spawn(self._write_loop(), "write")

    def evict(self, reason: str) -> None:
        """Closes this unauthenticated inbound link to make room for a newer one; it stops
        counting against the limits at once."""
        self._stranger_done()
        self.spawn(self.close(CloseCode.NORMAL, reason), "evict")

    def _stranger_done(self) -> None:
        if self._counted_stranger:
            self._counted_stranger = False
            self.transport.strangers.pop(self, None)
            counts = self.transport.unauthenticated
            counts[self.remote[0]] -= 1
            if counts[self.remote[0]] <= 0:
                del counts[self.remote[0]]

    async def _read_once(self) -> bool:
        data = await self._read()
        if not data:
            return False
        events = self.core.receive_data(data, self._loop.time())
        if self.monitor is not None:
            self.monitor.received(len(data))
            for event in events:
                if isinstance(event, PongReceived):
                    self.monitor.pong(event.token)
        if not (events and isinstance(events[-1], HopFailed)):
            self._flush()  # answers (AUTH_OK, PONG) go out before the messages are handled
        # (after a failure the CLOSE waits for close(): what is logged is logged first)
        self._rearm()
        return await self._handle(events)

    async def _handle(self, events: list[HopEvent]) -> bool:
        """Acts on the core's events; False once the link is closed.

        It yields every :data:`EVENTS_PER_TURN` events and after each batch: a read that
        found data buffered does not suspend, and one busy peer must not starve the rest."""
        for index, event in enumerate(events, 1):
            if index % EVENTS_PER_TURN == 0:
                await asyncio.sleep(0)
            if isinstance(event, MessageReceived):
                await self._deliver(event.body)
            elif isinstance(event, PeerAuthenticated):
                self._opened()
            elif isinstance(event, PeerClosed):
                await self.close(CloseCode.NORMAL, f"peer closed: {event.reason or event.code}")
            elif isinstance(event, HopFailed):
                if self.core.peer is None:
                    await self._refuse(event.reason, timed_out=event.timed_out)
                else:
                    log.warning("hop.protocol_error", peer=self.core.peer, reason=event.reason)
                    await self.close(event.code, event.reason)
            elif isinstance(event, HopUnresponsive):
                await self.close(CloseCode.NORMAL, event.reason)
            elif isinstance(event, HopIdle):
                if self._queue:
                    self.core.note_activity(self._loop.time())
                else:
                    await self.close(CloseCode.IDLE, "idle")
            if self.closed:
                return False
        await asyncio.sleep(0)
        return True

    def _rearm(self) -> None:
        """One timer per link, following the core's deadline (moved only when it changes)."""
        self._timer.follow(None if self.closed else self.core.next_deadline())

    def _on_timer(self, now: float) -> None:
        """The core's deadline is reached (``now`` is never earlier than it)."""
        if self.closed:
            return
        events = self.core.on_timer(now)
        with contextlib.suppress(LinkError, OSError):
            self._flush()
        self._rearm()
        if events:
            self.spawn(self._handle_quietly(events), "timer")

    async def _handle_quietly(self, events: list[HopEvent]) -> None:
        await self._handle(events)

    async def _deliver(self, body: bytes | memoryview) -> None:
        try:
            message = Message.from_wire(
                body, LocalInfo(hop_peer=self.core.peer, hop_remote=self.remote)
            )
        except WireError as exc:
            log.warning("message.malformed", peer=self.core.peer, reason=str(exc))
            if not self._malformed.allow(self._loop.time()):
                await self.close(CloseCode.PROTOCOL_ERROR, "too many malformed messages")
            return
        if len(message.return_route) >= MAX_ROUTE_LENGTH:
            log.warning("message.route_too_long", peer=self.core.peer)
            return
        await self.transport.router.route(message.with_return(ServiceAddress(self.name)))

    async def _send_from_router(self, message: Message) -> None:
        await self.enqueue(message.step())

    async def enqueue(self, message: Message) -> None:
        """Queues ``message`` for the peer; waits while the queue is full (RoutingError BUSY
        at once instead when the sender must not block), UNREACHABLE once closed."""
        while not self.closed and self._queued_bytes >= QUEUE_HIGH_WATER:
            if sends_must_not_block():
                raise RoutingError(
                    ErrorCode.BUSY,
                    f"the connection to {self.remote[0]}:{self.remote[1]} is full "
                    "(its peer is not reading)",
                )
            self._room.clear()
            await self._room.wait()
        if self.closed:
            raise RoutingError(
                ErrorCode.UNREACHABLE, f"connection to {self.remote[0]}:{self.remote[1]} is closed"
            )
        self._queue.append(message)
        self._queued_bytes += len(message.payload)
        self._queued.set()

    def _pop(self) -> Message:
        message = self._queue.popleft()
        self._queued_bytes -= len(message.payload)
        if self._queued_bytes < QUEUE_HIGH_WATER:
            self._room.set()
        return message

    async def _write_loop(self) -> None:
        try:
            while True:
                if not self._queue:
                    self._queued.clear()
                    await self._queued.wait()
                now = self._loop.time()
                unsendable: list[tuple[Message, str]] = []
                while self._queue:  # batch whatever is waiting
                    message = self._pop()
                    problem = self._send(message, now)
                    if problem is not None:
                        unsendable.append((message, problem))
                    elif self.monitor is not None:
                        self.monitor.sent(len(message.payload))
                self._flush()
                for message, problem in unsendable:  # its sender hears at once, not by timeout
                    await self.transport.router.fail(message, ErrorCode.TOO_LARGE, problem)
                self._rearm()
                await self._drain()
        except (LinkError, OSError) as exc:
            await self.close(CloseCode.NORMAL, f"connection lost: {describe_error(exc)}")

    def _send(self, message: Message, now: float | None = None) -> str | None:
        """Frames ``message`` for the peer; why it cannot be sent (too large...), or None."""
        try:
            self.core.send_message(*message.to_wire_parts(), now=now)
        except (WireError, ValueError) as exc:
            log.warning("message.unsendable", reason=str(exc))
            return f"cannot send to {self.remote[0]}:{self.remote[1]}: {exc}"
        return None

    def _flush(self) -> None:
        chunks = self.core.chunks_to_send()
        if chunks:
            self._write(chunks)

    def ping(self, token: int) -> None:
        """Sends a hop PING with ``token`` (its PONG reaches the monitor)."""
        if self.closed:
            return
        self.core.ping(self._loop.time(), token)
        with contextlib.suppress(LinkError, OSError):
            self._flush()
        self._rearm()

    def suspect(self, why: str = "the peer is gone (ICMP)") -> None:
        """An ICMP error says the peer may be gone: the core asks it to prove otherwise."""
        if self.closed:
            return
        self.core.suspect(self._loop.time(), why)
        with contextlib.suppress(LinkError, OSError):
            self._flush()
        self._rearm()

    async def _refuse(self, reason: str, *, timed_out: bool = False) -> None:
        """The peer could not be authenticated: what waited for the hop fails, with TIMEOUT
        when the peer never answered in time (a lossy or silent path, not a refusal)."""
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
        error = ErrorCode.TIMEOUT if timed_out else ErrorCode.AUTH_FAILED
        if timed_out and self._may_redial():
            await self._redial(reason)
            return
        await self.close(CloseCode.AUTH_FAILED, reason, error, public="hop authentication failed")

    def _may_redial(self) -> bool:
        """An outbound hop that never authenticated, with messages waiting and a redial left."""
        return (
            self.direction == "outbound"
            and self.target is not None
            and self.redials_left > 0
            and bool(self._queue)
        )

    async def _redial(self, reason: str) -> None:
        """An outbound hop whose authentication timed out or that its peer closed before it
        was authenticated (a lossy path can lose handshake packets past QUIC's or TCP's
        backoff, and the peer has its own deadline) is dialled once more, and what waited for
        it waits for the new one: none of it left this node, so nothing can arrive twice.
        Its senders' own timeouts still bound the wait."""
        assert self.target is not None
        waiting = list(self._queue)
        self._queue.clear()
        self._queued_bytes = 0
        fresh = self.transport.dial(self.target)
        fresh.redials_left = self.redials_left - 1
        log.info("hop.redial", remote=f"{self.remote[0]}:{self.remote[1]}", waiting=len(waiting))
        for message in waiting:
            try:
                await fresh.enqueue(message)
            except RoutingError as exc:
                await self.transport.router.fail(message, exc.code, exc.text)
        await self.close(CloseCode.AUTH_FAILED, reason, ErrorCode.TIMEOUT)

    async def close(
        self,
        code: CloseCode,
        reason: str,
        error: ErrorCode = ErrorCode.UNREACHABLE,
        *,
        public: str | None = None,
    ) -> None:
        """Closes the link. Queued messages are answered with ``error``: those this node sent
        itself hear ``reason``; others hear ``public`` (default ``reason``), so that a stranger
        using this node as a hop learns one thing about every failed dial, not a port scan."""
        if self.closed:
            return
        self.closed = True
        self.settled.set()
        self._stranger_done()
        self._rearm()
        self.transport.forget(self)
        if self._registered:
            self.transport.router.unregister(self.name)
        if code == CloseCode.SHUTTING_DOWN and self.core.is_open:
            # A graceful shutdown sends what is already queued (a channel's CLOSE, say).
            while self._queue:
                self._send(self._pop())
        self.core.close(code, reason)
        with contextlib.suppress(LinkError, OSError):
            self._flush()
        self._close_pipe()
        self._room.set()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        if self.core.peer is not None:
            log.debug(
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
        while self._queue:
            message = self._pop()
            local = message.local.hop_peer is None and message.local.channel_peer is None
            await self.transport.router.fail(message, error, reason if local else public or reason)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._wait_closed(), 1)
