"""The reflexive-address service: "which address do you see my UDP socket as?"

Every node answers WHOAMI requests on its one UDP socket, and asks them from that same
socket, so the answer is the public address (the NAT mapping) that peers must punch to. It
is the rendezvous building block for hole punching. Requests are retransmitted every 250 ms
(:data:`RETRANSMIT_INTERVAL`, on the one :class:`~meshkey.retry.RetrySchedule`) until an
answer or the timeout; answers are matched by a 16-byte transaction id from the injected ``rng`` (by
default ``random.SystemRandom()``: an off-path attacker must not guess it and forge an
answer).

An observer may also answer on an *alternate port* (:meth:`ReflexiveAddressService.open_alternate`,
STUN's OTHER-ADDRESS; DESIGN.md decision 16): a second socket on the same IP, on a port the
system picks (a fixed offset such as the main port + 1 would take the port of the next node a
user starts), that does nothing but answer WHOAMI, from itself. Every answer names
it, so a node whose only rendezvous is this one observer can still compare two mappings (an
endpoint-dependent NAT gives the two destinations two ports). The asking side never uses a
second socket: only the observer has one.

This is glue (it awaits the answer); :class:`~meshkey.nat.classify.ClassificationRound` is
the sans-IO core that asks several observers at once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from meshkey.log import EventLogger
from meshkey.retry import RetrySchedule
from meshkey.routing.address import TransportAddress
from meshkey.routing.errors import RemoteError
from meshkey.transport.udp import QuicTransport
from meshkey.wire.errors import WireError
from meshkey.wire.message import ErrorCode
from meshkey.wire.net import Endpoint
from meshkey.wire.udp import (
    TXID_SIZE,
    ControlKind,
    WhoamiRequest,
    WhoamiResponse,
    decode_control_packet,
    encode_control_packet,
)

log = EventLogger("nat.reflexive")

RETRANSMIT_INTERVAL = 0.25
#: The socket id of the alternate WHOAMI port (birthday sockets count up from 1).
ALTERNATE_SOCKET = 0x7FFF_FFFF


class ReflexiveAddressService:
    """Answers WHOAMI requests and asks them (:meth:`whoami`). A response that answers none of
    this service's own requests goes to ``on_unmatched`` (the NAT classification asks its own,
    with its own transaction ids)."""

    def __init__(
        self,
        udp: QuicTransport,
        on_unmatched: Callable[[WhoamiResponse, Endpoint], None] | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.udp = udp
        self.on_unmatched = on_unmatched
        self._rng = rng or random.SystemRandom()
        self._pending: dict[bytes, asyncio.Future[WhoamiResponse]] = {}
        self.alternate_port = 0  # 0: no alternate WHOAMI port
        for kind in (ControlKind.WHOAMI_REQUEST, ControlKind.WHOAMI_RESPONSE):
            udp.register_control(kind, self._on_packet)
        self._asking: dict[Endpoint, set[asyncio.Future[WhoamiResponse]]] = {}
        udp.unreachable_listeners.append(self._on_unreachable)

    def _on_unreachable(self, destination: Endpoint) -> None:
        """ICMP said nothing listens where we ask: every question there fails now."""
        for future in self._asking.get(destination, ()):
            if not future.done():
                future.set_exception(
                    RemoteError(
                        ErrorCode.UNREACHABLE,
                        f"nothing listens at {destination[0]}:{destination[1]} (ICMP)",
                    )
                )

    def open_alternate(self) -> int:
        """Opens the alternate WHOAMI port (one the system picks); returns it, 0 if none
        could be had (the node then simply has none)."""
        if self.alternate_port or self.udp.address is None:
            return self.alternate_port
        try:
            self.alternate_port = self.udp.open_socket(ALTERNATE_SOCKET)[1]
        except OSError as exc:
            log.warning("whoami.no_alternate_port", reason=str(exc))
        return self.alternate_port

    def _on_packet(self, data: bytes, source: Endpoint, socket_id: int = 0) -> None:
        try:
            packet = decode_control_packet(data)
        except WireError as exc:
            log.debug("whoami.bad_packet", source=f"{source[0]}:{source[1]}", reason=str(exc))
            return
        if isinstance(packet, WhoamiRequest):
            # Answered from the socket asked (the asker's NAT lets in only that address), and
            # naming the other port it may ask.
            if socket_id == ALTERNATE_SOCKET:
                other = self.udp.address.port if self.udp.address is not None else 0
            else:
                other = self.alternate_port
            answer = WhoamiResponse(packet.txid, source[0], source[1], other)
            self.udp.send_control(encode_control_packet(answer), source, socket_id=socket_id)
            return
        if socket_id == ALTERNATE_SOCKET:
            return  # the alternate port only answers
        future = self._pending.get(packet.txid)
        if future is not None:
            if not future.done():
                future.set_result(packet)
        elif self.on_unmatched is not None:
            self.on_unmatched(packet, source)

    async def whoami(self, target: TransportAddress, *, timeout: float = 3.0) -> TransportAddress:
        """This node's UDP socket as ``target`` sees it; RemoteError(TIMEOUT) if no answer."""
        if target.protocol != "udp":
            raise RemoteError(ErrorCode.UNSUPPORTED, f"{target} is not a UDP address")
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(target.host, target.port)
        destination = infos[0][4][:2]
        txid = self._rng.randbytes(TXID_SIZE)
        future: asyncio.Future[WhoamiResponse] = loop.create_future()
        self._pending[txid] = future
        asked: Endpoint = (str(destination[0]), int(destination[1]))
        self._asking.setdefault(asked, set()).add(future)
        packet = encode_control_packet(WhoamiRequest(txid))
        deadline = loop.time() + timeout
        retransmit = RetrySchedule(
            RETRANSMIT_INTERVAL, RETRANSMIT_INTERVAL, jitter=0, rng=self._rng
        )
        try:
            while True:
                self.udp.send_control(packet, asked)
                now = loop.time()
                if now >= deadline:
                    raise RemoteError(
                        ErrorCode.TIMEOUT,
                        f"no reflexive-address answer from {target} within {timeout:g}s",
                    )
                resend_at = min(retransmit.next_deadline(now) or deadline, deadline)
                try:
                    response = await asyncio.wait_for(asyncio.shield(future), resend_at - now)
                    break
                except TimeoutError:
                    continue
        finally:
            self._pending.pop(txid, None)
            waiting = self._asking.get(asked)
            if waiting is not None:
                waiting.discard(future)
                if not waiting:
                    del self._asking[asked]
        return TransportAddress.from_socket("udp", response.host, response.port)
