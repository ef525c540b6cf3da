"""The node graph's RPCs over hops: what it needs of the node's transports, and one request
with its answer.

- **What it needs** is written as protocols (:class:`UdpHops`, :class:`Hop`), which the
  node's :class:`~meshkey.transport.udp.QuicTransport` and
  :class:`~meshkey.transport.tcp.TcpTransport` and their links satisfy, and so does a test's
  in-memory transport: the glue is tested without sockets.
- **Out.** A request goes to ``/ip4/H/udp/P/id/NODEID/service/dht``: the hop is pinned to the
  NodeId, so a contact that lies about its NodeId fails the hop's authentication and never
  answers (nor enters the table). A live hop to that NodeId is reused instead (it proved the
  same NodeId; a UDP one before a TCP one), unless the caller asks for a fresh dial
  (reachability checks). Each request has its own reply address, so an error coming back
  (unreachable, authentication failed) names the request, and an answer must come from the
  NodeId asked, with its txid.
- **TCP fallback** (:func:`dial_plan`, happy eyeballs, RFC 8305's idea): a node behind a
  router that drops UDP must still join (issue 18). A node's TCP listener takes its UDP port
  number, so a contact's address is dialled over UDP first and, when no answer came within
  :data:`TCP_FALLBACK_DELAY` (or the UDP dial failed), over TCP at the same address too;
  the first answer wins. A node whose only open hops are TCP ones (UDP is blocked here)
  dials TCP at once. Reachability checks (``fresh``) stay on UDP (they test exactly that),
  and so do dials on someone's say-so while UDP works (no second dial to an address only
  someone else named). The TCP hops the graph dialled itself are remembered
  (:meth:`DhtHops.dialled_over_tcp`): those enter the graph as UDP hops do.
- **In.** A request that arrived over a hop (UDP or TCP) names the hop it came over
  (:meth:`DhtHops.link_of`: its address is where the peer was seen); one over anything else
  (a secure channel) names none. A request counts only when the hop's peer sent it itself
  (:func:`sent_by_hop_peer`): its return route is exactly that hop, then the reply slot the
  sender opened for it. Every node that passes a message on puts its own address in front
  of the return route (the hop or secure channel it came in by), so a request a stranger
  routed *through* the hop's peer arrives with the peer's link to the stranger there, never
  with the slot: nobody can speak for a node by routing through it.
- **Dials on someone's say-so** (``dial_timeout``): a request that needs a new hop to an
  address this node did not observe itself gives the dial that long to authenticate, then
  closes it, so an address that does not answer gets the first flight and a close, not
  QUIC's retransmissions up to the handshake timeout (see :mod:`meshkey.dht.budget`).
- **Dial-backs** (:meth:`DhtHops.dial_back`): a fresh hop to the node that asked, at the
  address its hop came from, pinned to its NodeId, and a PING with its nonce; from a helper
  when the responder named one (a third node's dial comes from an address the asker never
  sent to, which is what a NAT's filter stops). The ask to the helper is padded
  (:data:`~meshkey.dht.budget.HELPER_PADDING`): the helper dials an address it never saw,
  and the asker pays for that dial in bytes.
"""

from __future__ import annotations

import asyncio
import random
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from typing import Any, Protocol

from meshkey.dht.budget import DIAL_PATIENCE, HELPER_PADDING
from meshkey.dht.responder import DialBackJob
from meshkey.identity.node_id import NodeId
from meshkey.routing.address import ServiceAddress, TransportAddress
from meshkey.routing.errors import RemoteError, RoutingError
from meshkey.routing.message import Message
from meshkey.routing.router import Router
from meshkey.wire.dht import (
    TXID_SIZE,
    Answer,
    DialBack,
    DialBackResult,
    Mode,
    Ping,
    Pong,
    Request,
    WireContact,
    decode_rpc,
    encode_rpc,
    is_request,
)
from meshkey.wire.errors import WireError
from meshkey.wire.hop import CloseCode
from meshkey.wire.message import ErrorCode
from meshkey.wire.net import Endpoint

DHT_SERVICE = "dht"
REQUEST_TIMEOUT = 10.0  # backstop: the engine's own timeouts (from RTT) come first
DIAL_BACK_TIMEOUT = 5.0  # one dial (a fresh hop and a ping), or one ask of a helper
#: How long a request dialled over UDP waits for its answer before the same request is sent
#: over TCP to the same address as well (a QUIC handshake and an answer take 2 RTT: a WAN's
#: few hundred ms at most).
TCP_FALLBACK_DELAY = 0.5
#: TCP hops the graph dialled, remembered so their authentication enters the graph.
MAX_TCP_DIALS = 256
#: Every request's reply slot is this and its txid in hex: the one address a DHT request
#: may name after the hop it came over (see :func:`sent_by_hop_peer`).
REPLY_PREFIX = "_dht."


def reply_slot(txid: bytes) -> str:
    """The worker name a request with ``txid`` is answered at, on the node that sent it."""
    return f"{REPLY_PREFIX}{txid.hex()}"


def sent_by_hop_peer(message: Message, txid: bytes | None = None) -> bool:
    """Whether ``message`` was sent by the peer of the hop it came over, not passed on by it:
    its return route is that hop, then the sender's reply slot (for ``txid``, when given).
    A node that passes a message on puts its own hop's (or channel's) address right after
    ours, and those names are never a reply slot."""
    route = message.return_route
    if len(route) != 2 or not isinstance(route[1], ServiceAddress):
        return False
    if txid is None:
        return route[1].name.startswith(REPLY_PREFIX)
    return route[1].name == reply_slot(txid)


class HopState(Protocol):
    """A hop's protocol state, as far as the graph reads it."""

    @property
    def peer(self) -> NodeId | None: ...
    @property
    def is_open(self) -> bool: ...
    @property
    def suspected(self) -> bool: ...


class Hop(Protocol):
    """One authenticated hop (a link) of the UDP transport."""

    @property
    def name(self) -> str: ...  # its worker: /service/NAME sends over it
    @property
    def closed(self) -> bool: ...
    @property
    def direction(self) -> str: ...  # "inbound" or "outbound"
    @property
    def remote(self) -> Endpoint: ...
    @property
    def created(self) -> float: ...
    @property
    def core(self) -> HopState: ...
    @property
    def target(self) -> TransportAddress | None: ...  # outbound: what it was dialled as
    def describe(self) -> dict[str, Any]: ...
    async def close(self, code: CloseCode, reason: str) -> None: ...


class UdpHops(Protocol):
    """What the graph needs of one of the node's transports (UDP, or TCP beside it)."""

    @property
    def protocol(self) -> str: ...  # "udp" or "tcp": the routes' transport name
    @property
    def links(self) -> Collection[Hop]: ...
    @property
    def address(self) -> TransportAddress | None: ...  # where its socket is bound
    def connections(self) -> list[dict[str, Any]]: ...


def dial_plan(
    *, fresh: bool, say_so: bool, has_tcp: bool, udp_up: bool, tcp_up: bool
) -> tuple[str, ...]:
    """The transports a request with no live hop dials its peer's address over, in order
    (the second one :data:`TCP_FALLBACK_DELAY` later, or as soon as the first failed).
    ``fresh``: a reachability check (UDP only: it checks exactly that); ``say_so``: an
    address only someone else named; ``udp_up`` / ``tcp_up``: whether this node holds any
    open hop over UDP / TCP now (only TCP ones: UDP is blocked here, TCP at once)."""
    if fresh or not has_tcp:
        return ("udp",)
    if tcp_up and not udp_up:
        return ("tcp",)
    if say_so:
        return ("udp",)
    return ("udp", "tcp")


class _Attempts:
    """The dials one request makes (a plan of one or two transports): an answer over any
    of them wins; an error counts only once every dial of the plan failed."""

    def __init__(self, planned: int) -> None:
        self.planned = planned
        self.started = 0
        self.failed = 0

    def on_error(self) -> bool:
        """One dial failed: whether the request failed for good (every dial did)."""
        self.failed += 1
        return self.failed >= self.planned


class DhtHops:
    def __init__(
        self,
        router: Router,
        udp: UdpHops,
        *,
        tcp: UdpHops | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
        fallback_delay: float = TCP_FALLBACK_DELAY,
    ) -> None:
        self.router = router
        self.udp = udp
        self.tcp = tcp
        self.request_timeout = request_timeout
        self.fallback_delay = fallback_delay
        self._closing: set[asyncio.Task[None]] = set()
        self._tcp_dials: OrderedDict[tuple[NodeId, Endpoint], None] = OrderedDict()

    @property
    def pools(self) -> list[UdpHops]:
        """The transports whose hops carry DHT RPCs: UDP, then TCP."""
        return [self.udp] if self.tcp is None else [self.udp, self.tcp]

    def link_of(self, message: Message) -> Hop | None:
        """The open hop (UDP or TCP) ``message`` arrived over, if it came over one."""
        first = message.return_route[0] if message.return_route else None
        if not isinstance(first, ServiceAddress):
            return None
        for pool in self.pools:
            for link in pool.links:
                if link.name == first.name and not link.closed:
                    return link
        return None

    def live_link(self, peer: NodeId) -> Hop | None:
        """An open hop to ``peer`` (it proved that NodeId), if there is one: a UDP one before
        a TCP one, the newest that is not under suspicion (a peer that restarted dials in
        anew, and its old hop talks to a process that is gone until it is found out)."""
        for pool in self.pools:
            links = [
                link
                for link in pool.links
                if link.core.peer == peer
                and link.core.is_open
                and not link.closed
                and not link.core.suspected
            ]
            if links:
                return max(links, key=lambda link: link.created)
        return None

    def dialled_over_tcp(self, peer: NodeId, remote: Endpoint) -> bool:
        """Whether the graph itself dialled ``peer`` over TCP at ``remote`` (its contact
        address: a TCP hop there is as good as a UDP one for the graph)."""
        return (peer, remote) in self._tcp_dials

    def _open_over(self, pool: UdpHops | None) -> bool:
        return pool is not None and any(
            link.core.is_open and not link.closed for link in pool.links
        )

    def plan(self, *, fresh: bool, say_so: bool) -> tuple[str, ...]:
        return dial_plan(
            fresh=fresh,
            say_so=say_so,
            has_tcp=self.tcp is not None,
            udp_up=self._open_over(self.udp),
            tcp_up=self._open_over(self.tcp),
        )

    async def request(
        self,
        peer: NodeId,
        address: Endpoint | None,
        request: Request,
        *,
        timeout: float | None = None,
        fresh: bool = False,
        dial_timeout: float | None = None,
    ) -> Answer:
        """Sends one DHT request to ``peer`` and returns its answer. Over a live hop to
        ``peer`` if there is one (and not ``fresh``), else over a new hop to ``address``
        pinned to ``peer``, closed unless it authenticated within ``dial_timeout`` (when
        given). RemoteError when it cannot be delivered or answered."""
        answer, _ = await self.exchange(
            peer, address, request, timeout=timeout, fresh=fresh, dial_timeout=dial_timeout
        )
        return answer

    async def exchange(
        self,
        peer: NodeId,
        address: Endpoint | None,
        request: Request,
        *,
        timeout: float | None = None,
        fresh: bool = False,
        dial_timeout: float | None = None,
    ) -> tuple[Answer, int]:
        """:meth:`request`, and the size in bytes of the answer as it came."""
        slot = reply_slot(request.txid)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Message] = loop.create_future()
        link = None if fresh else self.live_link(peer)
        onwards: list[tuple[ServiceAddress | TransportAddress, ServiceAddress]]
        if link is not None:
            onwards = [(ServiceAddress(link.name), ServiceAddress(DHT_SERVICE))]
        elif address is not None:
            # Pinned to the NodeId: a contact that lies about it fails the hop's authentication.
            plan = self.plan(fresh=fresh, say_so=dial_timeout is not None)
            onwards = [
                (TransportAddress.from_socket(p, *address, peer), ServiceAddress(DHT_SERVICE))
                for p in plan
            ]
        else:
            raise RemoteError(ErrorCode.UNREACHABLE, f"no address for {peer.short()}")
        attempts = _Attempts(len(onwards))
        handles: list[asyncio.TimerHandle] = []

        def start_next() -> None:
            if future.done() or attempts.started >= len(onwards):
                return
            onward = onwards[attempts.started]
            attempts.started += 1
            first = onward[0]
            if isinstance(first, TransportAddress) and first.protocol == "tcp":
                self._remember_tcp_dial(peer, first.endpoint)
            task = loop.create_task(self._send(onward, slot, request, failed))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            if dial_timeout is not None and isinstance(first, TransportAddress):
                handles.append(loop.call_later(dial_timeout, self._give_up_dial, first))
            if attempts.started < len(onwards):
                handles.append(loop.call_later(self.fallback_delay, start_next))

        def failed(reply: Message | RoutingError) -> None:
            if future.done():
                return
            if not attempts.on_error():
                start_next()  # the first dial failed: the next one now, not after the delay
            elif isinstance(reply, Message):
                future.set_result(reply)
            else:
                future.set_exception(RemoteError(reply.code, reply.text))

        async def receive(reply: Message) -> None:
            if future.done():
                return
            if reply.is_error:
                failed(reply)
            else:
                future.set_result(reply)

        self.router.register(slot, receive, inline=True)
        try:
            start_next()
            reply = await asyncio.wait_for(future, timeout or self.request_timeout)
        except TimeoutError:
            raise RemoteError(ErrorCode.TIMEOUT, f"no DHT answer from {peer.short()}") from None
        finally:
            for handle in handles:
                handle.cancel()
            self.router.unregister(slot)
        if reply.is_error:
            code, text = reply.error()
            raise RemoteError(code, text)
        if reply.local.hop_peer != peer:
            raise RemoteError(ErrorCode.AUTH_FAILED, "the answer came from another node")
        try:
            answer = decode_rpc(reply.payload)
        except WireError as exc:
            raise RemoteError(ErrorCode.MALFORMED, f"bad DHT answer: {exc}") from exc
        if is_request(answer) or answer.txid != request.txid:
            raise RemoteError(ErrorCode.MALFORMED, "the DHT answer does not match the request")
        return answer, len(reply.payload)  # type: ignore[return-value]

    async def _send(
        self,
        onward: tuple[Any, ...],
        slot: str,
        request: Request,
        failed: Callable[[Message | RoutingError], None],
    ) -> None:
        """Routes one dial's copy of ``request``; a dial that cannot even start counts as a
        failed one (an error reply comes back for those that start and fail)."""
        try:
            await self.router.route(Message(onward, (ServiceAddress(slot),), encode_rpc(request)))
        except RoutingError as exc:
            failed(exc)

    def _remember_tcp_dial(self, peer: NodeId, endpoint: Endpoint) -> None:
        self._tcp_dials[(peer, endpoint)] = None
        self._tcp_dials.move_to_end((peer, endpoint))
        while len(self._tcp_dials) > MAX_TCP_DIALS:
            self._tcp_dials.popitem(last=False)

    def _give_up_dial(self, hop: TransportAddress) -> None:
        """Closes the dial to ``hop`` if it has not authenticated yet: its queued request is
        answered UNREACHABLE, and QUIC sends no more Initials there."""
        pool = self.tcp if hop.protocol == "tcp" else self.udp
        for link in list(pool.links if pool is not None else ()):
            if link.direction == "outbound" and link.target == hop and not link.closed:
                if link.core.is_open:
                    continue
                task = asyncio.get_running_loop().create_task(
                    link.close(CloseCode.NORMAL, f"no answer within the dial's patience at {hop}")
                )
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    async def dial_back(self, job: DialBackJob, mode: Mode, rng: random.Random) -> DialBackResult:
        """Carries out a dial-back for the node that asked (``mode``: ours, for the answer):
        as a helper, ping the node named on a fresh hop with its nonce; else have the helper
        the responder chose do that, or, without one (or when it did not answer), dial the
        asker ourselves (from the address it sent to: proof of less, ``helper`` False)."""
        request = job.request
        if request.target is not None:  # we are the helper: dial the node named
            # An address only the asker observed: the dial gets the patience of a dial on
            # someone's say-so (the asker paid for it in padding), then it is closed.
            target = request.target
            ok = await self._ping_fresh(
                NodeId(target.node_id),
                target.addresses,
                request.nonce,
                mode,
                rng,
                dial_timeout=DIAL_PATIENCE,
            )
            return DialBackResult(request.txid, mode, ok, True)
        if job.helper is not None:
            contact = WireContact(job.peer.raw, Mode.CLIENT, (job.address,))
            ask = DialBack(
                rng.randbytes(TXID_SIZE), mode, request.nonce, contact, padding=HELPER_PADDING
            )
            try:
                answer = await self.request(
                    job.helper.node_id, job.helper.addresses[0], ask, timeout=DIAL_BACK_TIMEOUT
                )
            except RemoteError:
                answer = None
            if isinstance(answer, DialBackResult):
                return DialBackResult(request.txid, mode, answer.ok, True, answer.reason)
        # The asker's own address (where its hop came from): closed at the ping's timeout
        # rather than left to QUIC's handshake timeout.
        ok = await self._ping_fresh(
            job.peer, (job.address,), request.nonce, mode, rng, dial_timeout=DIAL_BACK_TIMEOUT
        )
        return DialBackResult(request.txid, mode, ok, False)

    async def _ping_fresh(
        self,
        peer: NodeId,
        addresses: Iterable[Endpoint],
        nonce: bytes,
        mode: Mode,
        rng: random.Random,
        *,
        dial_timeout: float,
    ) -> bool:
        for address in list(addresses)[:1]:
            ping = Ping(rng.randbytes(TXID_SIZE), mode, nonce)
            try:
                answer = await self.request(
                    peer,
                    address,
                    ping,
                    timeout=DIAL_BACK_TIMEOUT,
                    fresh=True,
                    dial_timeout=dial_timeout,
                )
            except RemoteError:
                return False
            return isinstance(answer, Pong)
        return False


__all__ = [
    "DHT_SERVICE",
    "DIAL_BACK_TIMEOUT",
    "REPLY_PREFIX",
    "REQUEST_TIMEOUT",
    "TCP_FALLBACK_DELAY",
    "DhtHops",
    "Hop",
    "HopState",
    "UdpHops",
    "dial_plan",
    "reply_slot",
    "sent_by_hop_peer",
]
