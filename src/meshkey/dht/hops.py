"""The node graph's RPCs over hops: what it needs of the node's UDP transport, and one
request with its answer.

- **What it needs** is written as protocols (:class:`UdpHops`, :class:`Hop`), which the
  node's :class:`~meshkey.transport.udp.QuicTransport` and its links satisfy, and so does a
  test's in-memory transport: the glue is tested without sockets.
- **Out.** A request goes to ``/ip4/H/udp/P/id/NODEID/service/dht``: the hop is pinned to the
  NodeId, so a contact that lies about its NodeId fails the hop's authentication and never
  answers (nor enters the table). A live hop to that NodeId is reused instead (it proved the
  same NodeId), unless the caller asks for a fresh dial (reachability checks). Each request
  has its own reply address, so an error coming back (unreachable, authentication failed)
  names the request, and an answer must come from the NodeId asked, with its txid.
- **In.** A request that arrived over a UDP hop names the hop it came over
  (:meth:`DhtHops.link_of`: its address is where the peer was seen); one over any other
  transport names none. A request counts only when the hop's peer sent it itself
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
from collections.abc import Collection, Iterable
from typing import Any, Protocol

from meshkey.dht.budget import DIAL_PATIENCE, HELPER_PADDING
from meshkey.dht.responder import DialBackJob
from meshkey.identity.node_id import NodeId
from meshkey.routing.address import ServiceAddress, TransportAddress
from meshkey.routing.errors import RemoteError
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
    """What the graph needs of the node's UDP transport."""

    @property
    def links(self) -> Collection[Hop]: ...
    @property
    def address(self) -> TransportAddress | None: ...  # where its socket is bound
    def connections(self) -> list[dict[str, Any]]: ...


class DhtHops:
    def __init__(
        self, router: Router, udp: UdpHops, *, request_timeout: float = REQUEST_TIMEOUT
    ) -> None:
        self.router = router
        self.udp = udp
        self.request_timeout = request_timeout
        self._closing: set[asyncio.Task[None]] = set()

    def link_of(self, message: Message) -> Hop | None:
        """The open UDP hop ``message`` arrived over, if it came over one."""
        first = message.return_route[0] if message.return_route else None
        if not isinstance(first, ServiceAddress):
            return None
        for link in self.udp.links:
            if link.name == first.name and not link.closed:
                return link
        return None

    def live_link(self, peer: NodeId) -> Hop | None:
        """An open UDP hop to ``peer`` (it proved that NodeId), if there is one: the newest
        that is not under suspicion (a peer that restarted dials in anew, and its old hop
        talks to a process that is gone until it is found out)."""
        links = [
            link
            for link in self.udp.links
            if link.core.peer == peer
            and link.core.is_open
            and not link.closed
            and not link.core.suspected
        ]
        return max(links, key=lambda link: link.created, default=None)

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

        async def receive(reply: Message) -> None:
            if not future.done():
                future.set_result(reply)

        link = None if fresh else self.live_link(peer)
        hop: TransportAddress | None = None
        if link is not None:
            onward: tuple[Any, ...] = (ServiceAddress(link.name), ServiceAddress(DHT_SERVICE))
        elif address is not None:
            # Pinned to the NodeId: a contact that lies about it fails the hop's authentication.
            hop = TransportAddress.from_socket("udp", *address, peer)
            onward = (hop, ServiceAddress(DHT_SERVICE))
        else:
            raise RemoteError(ErrorCode.UNREACHABLE, f"no address for {peer.short()}")
        self.router.register(slot, receive, inline=True)
        watchdog: asyncio.TimerHandle | None = None
        try:
            await self.router.route(Message(onward, (ServiceAddress(slot),), encode_rpc(request)))
            if hop is not None and dial_timeout is not None:
                watchdog = loop.call_later(dial_timeout, self._give_up_dial, hop)
            reply = await asyncio.wait_for(future, timeout or self.request_timeout)
        except TimeoutError:
            raise RemoteError(ErrorCode.TIMEOUT, f"no DHT answer from {peer.short()}") from None
        finally:
            if watchdog is not None:
                watchdog.cancel()
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

    def _give_up_dial(self, hop: TransportAddress) -> None:
        """Closes the dial to ``hop`` if it has not authenticated yet: its queued request is
        answered UNREACHABLE, and QUIC sends no more Initials there."""
        for link in list(self.udp.links):
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
    "DhtHops",
    "Hop",
    "HopState",
    "UdpHops",
    "reply_slot",
    "sent_by_hop_peer",
]
