"""The QUIC connection driver: one qh3 connection (sans-IO) carrying one hop link.

A :class:`QuicLink` owns a ``QuicConnection`` and pumps it: datagrams the socket demultiplexed
to it go in (:meth:`QuicLink.receive`, :meth:`QuicLink.receive_gro`), qh3's events come out
(stream data into the link's inbox, connection IDs into the transport's table, the end of the
connection), and :meth:`QuicLink.transmit` sends what qh3 has to send and follows qh3's timer
(one :class:`~meshkey.timing.DeadlineTimer`: qh3 ignores a ``handle_timer`` before its
deadline, so the timer fires no earlier). The hop protocol runs on one bidirectional stream,
opened by the server, which speaks first (its SERVER_HELLO leaves as 0.5-RTT data with its
handshake flight). The socket and the demultiplexing are :mod:`meshkey.transport.udp`'s.

Backpressure both ways: writers wait while qh3 holds more than :data:`SEND_HIGH_WATER` bytes of
the stream unsent; the socket drops a peer's datagrams unread while the link's inbox holds
:data:`INBOX_HIGH_WATER` bytes the node has not consumed (QUIC resends them, and its congestion
control slows the sender).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING, Any

from qh3.quic import events as quic_events
from qh3.quic.connection import QuicConnection, QuicConnectionError

from meshkey.identity.certificate import node_id_from_certificate
from meshkey.identity.errors import IdentityError
from meshkey.identity.node_id import NodeId
from meshkey.timing import DeadlineTimer
from meshkey.transport.errors import describe_error
from meshkey.transport.link import HopLink, LinkError
from meshkey.transport.udp_socket import UdpEndpoint
from meshkey.wire.hop import CloseCode
from meshkey.wire.net import Endpoint
from meshkey.wire.udp import QuicLongHeader, classify

if TYPE_CHECKING:
    from meshkey.transport.udp import QuicTransport

SEND_HIGH_WATER = 2 * 1024 * 1024  # stream bytes queued in QUIC before writers wait
#: Stream bytes received from one peer and not yet consumed by the node; beyond this its
#: datagrams are dropped unread (QUIC resends them and its congestion control slows the
#: sender), so one peer sending as fast as it can cannot starve the others or fill memory.
INBOX_HIGH_WATER = 8 * 1024 * 1024


class QuicLink(HopLink):
    """A hop link over one QUIC connection, on the socket ``endpoint``; inbound ones are
    made by the transport with the connection it accepted (``quic``), outbound ones dial."""

    transport: QuicTransport

    def __init__(
        self,
        *args: Any,
        quic: QuicConnection | None = None,
        endpoint: UdpEndpoint,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.endpoint = endpoint  # the socket it lives on
        self.quic = quic
        if quic is not None:
            skip_packet_logs(quic)
        self.stream_id: int | None = None
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._inbox_bytes = 0
        self._established: asyncio.Future[NodeId] = self._loop.create_future()
        # Nobody awaits an inbound link's (or an abandoned dial's) future: mark it retrieved.
        self._established.add_done_callback(
            lambda future: None if future.cancelled() else future.exception()
        )
        self._writable = asyncio.Event()
        self._writable.set()
        # qh3's own timer (loss recovery, idle): clamped, since qh3 ignores an early
        # handle_timer, and re-armed only when get_timer() moves.
        self._quic_timer = DeadlineTimer(self._on_quic_timer, self._loop)
        self._cids: set[bytes] = set()
        self._terminated = False
        #: Datagrams already taken from the QUIC connection and not yet sent.
        self.unsent: list[tuple[bytes, Endpoint]] = []

    @property
    def inbox_full(self) -> bool:
        return self._inbox_bytes >= INBOX_HIGH_WATER

    def add_cid(self, cid: bytes) -> None:
        self.transport.by_cid[cid] = self
        self._cids.add(cid)

    def _drop_cids(self) -> None:
        for cid in self._cids:
            if self.transport.by_cid.get(cid) is self:
                del self.transport.by_cid[cid]
        self._cids.clear()

    # -- QUIC -------------------------------------------------------------------------

    async def _connect(self) -> NodeId:
        loop = self._loop
        host, port = self.remote
        try:
            family = 0 if self.endpoint.dual_stack else self.endpoint.family
            infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise LinkError(describe_error(exc)) from exc
        address = infos[0][4]
        self.remote = (str(address[0]), int(address[1]))
        self.quic = QuicConnection(configuration=self.transport.client_configuration)
        skip_packet_logs(self.quic)
        self.add_cid(self.quic.host_cid)
        self.quic.connect(self.remote, loop.time())
        self.transmit()
        try:
            return await asyncio.wait_for(
                asyncio.shield(self._established), self.transport.handshake_timeout
            )
        except TimeoutError:
            raise LinkError("no QUIC handshake answer in time") from None

    def unreachable(self, original: bytes) -> None:
        """An ICMP error for a datagram sent to this link's peer address.

        While dialling it is fatal, but only if it answers one of *this* dial's Initial
        packets (whose connection ID is its own): errors for an earlier connection to the same
        address can arrive late. Once open it is only a cue to check (ICMP can be forged):
        ping, and close if nothing comes back.
        """
        if self.direction == "outbound" and not self._established.done():
            sent = classify(original)
            if (
                self.quic is not None
                and isinstance(sent, QuicLongHeader)
                and sent.dcid == self.quic.original_destination_connection_id
            ):
                self._established.set_exception(
                    LinkError("connection refused (nothing listens on that UDP port)")
                )
        elif self.core.is_open:
            self.suspect()

    def receive(self, data: bytes, source: Endpoint, now: float) -> None:
        assert self.quic is not None
        self.quic.receive_datagram(data, source, now)
        self._after_input()

    def receive_gro(self, buffer: bytes, segment: int, source: Endpoint, now: float) -> None:
        assert self.quic is not None
        self.quic.receive_gro_buffer(buffer, segment, source, now)
        self._after_input()

    def _after_input(self) -> None:
        self._process_events()
        self.transport.schedule(self)

    def _process_events(self) -> None:
        assert self.quic is not None
        while (event := self.quic.next_event()) is not None:
            if isinstance(event, quic_events.StreamDataReceived):
                if self.stream_id is None and self.direction == "outbound":
                    self.stream_id = event.stream_id  # the server opened it
                if event.stream_id == self.stream_id:
                    if event.data:
                        self._inbox_bytes += len(event.data)
                        self._inbox.put_nowait(event.data)
                    if event.end_stream:
                        self._inbox.put_nowait(b"")
            elif isinstance(event, quic_events.HandshakeCompleted):
                self._handshake_completed()
            elif isinstance(event, quic_events.ProtocolNegotiated):
                if self.direction == "inbound":
                    # The server speaks first: its SERVER_HELLO goes out as 0.5-RTT data
                    # with its handshake flight, so the client's proof can leave with its
                    # Finished and the hop opens one round trip sooner.
                    self._start_server_hop()
            elif isinstance(event, quic_events.ConnectionIdIssued):
                self.add_cid(event.connection_id)
            elif isinstance(event, quic_events.ConnectionIdRetired):
                self.transport.by_cid.pop(event.connection_id, None)
                self._cids.discard(event.connection_id)
            elif isinstance(event, quic_events.StreamReset):
                if event.stream_id == self.stream_id:
                    self._inbox.put_nowait(b"")
            elif isinstance(event, quic_events.ConnectionTerminated):
                self._connection_terminated(event.reason_phrase or f"error {event.error_code}")

    def _handshake_completed(self) -> None:
        assert self.quic is not None
        if self.direction == "outbound":
            if self._established.done():
                return
            certificate = self.quic.get_peercert()
            try:
                peer = node_id_from_certificate(
                    certificate.public_bytes() if certificate is not None else None
                )
            except IdentityError as exc:
                self._established.set_exception(exc)
                return
            self._established.set_result(peer)
        else:
            self._start_server_hop()

    def _start_server_hop(self) -> None:
        """The server opens the link's stream: it speaks first in the hop protocol."""
        assert self.quic is not None
        if self.stream_id is not None:
            return
        self.stream_id = self.quic.get_next_available_stream_id()
        self.spawn(self.run(), "run")

    def _connection_terminated(self, reason: str) -> None:
        self._terminated = True
        self._inbox.put_nowait(b"")
        if not self._established.done():
            self._established.set_exception(LinkError(f"QUIC connection closed: {reason}"))
        elif self.direction == "inbound" and self.stream_id is None:
            self.spawn(
                self.close(CloseCode.NORMAL, f"closed before the handshake: {reason}"), "close"
            )
        self._drop_cids()

    def transmit(self) -> None:
        quic = self.quic
        if quic is None:
            return
        now = self._loop.time()
        datagrams = quic.datagrams_to_send(now)
        if self.unsent:
            datagrams, self.unsent = self.unsent + datagrams, []
        if datagrams:
            address = datagrams[0][1]
            if all(d[1] == address for d in datagrams):
                self.endpoint.send([d[0] for d in datagrams], address)
            else:
                for data, each in datagrams:
                    self.endpoint.send_one(data, each)
        self._quic_timer.follow(None if self._terminated else quic.get_timer())
        if (
            self.stream_id is not None
            and not self._writable.is_set()
            and quic.get_send_buffer_size(self.stream_id) <= SEND_HIGH_WATER // 2
        ):
            self._writable.set()

    def _on_quic_timer(self, now: float) -> None:
        if self.quic is None:
            return
        self.quic.handle_timer(now)
        self._process_events()
        self.transmit()

    # -- the pipe ---------------------------------------------------------------------

    def _write(self, chunks: list[bytes]) -> None:
        if self.quic is None or self.stream_id is None or self._terminated:
            raise LinkError("the QUIC connection is not open")
        try:
            for chunk in chunks:
                self.quic.send_stream_data(self.stream_id, chunk)
        except QuicConnectionError as exc:
            self._terminated = True
            raise LinkError(f"the QUIC connection closed: {exc.reason_phrase}") from exc
        self.transport.schedule(self)

    async def _drain(self) -> None:
        quic, stream = self.quic, self.stream_id
        while (
            quic is not None
            and stream is not None
            and not self._terminated
            and quic.get_send_buffer_size(stream) > SEND_HIGH_WATER
        ):
            self._writable.clear()
            await self._writable.wait()
        if self._terminated:
            raise LinkError("the QUIC connection closed")

    async def _read(self) -> bytes:
        data = await self._inbox.get()
        self._inbox_bytes -= len(data)
        return data

    def _close_pipe(self) -> None:
        if self.quic is not None and not self._terminated:
            with contextlib.suppress(QuicConnectionError):
                self.transmit()  # the hop's CLOSE frame first: the peer learns at once, and why
                self.quic.close(reason_phrase="closed")
                self.transmit()
        self._terminated = True
        self._quic_timer.cancel()
        self._writable.set()
        self._drop_cids()


def skip_packet_logs(quic: QuicConnection) -> None:
    """qh3 (2.1) parses the header of every packet it sends, copying each, to log it, even
    when no logger is configured: 6-7 % of a bulk sender's time (issue 21's profile). Without
    a logger, that is skipped (an attribute of this connection only; a qh3 without it, or a
    connection with a logger, is left as it is)."""
    if getattr(quic, "_quic_logger", True) is None and hasattr(quic, "_log_packets"):
        setattr(quic, "_log_packets", _no_packet_log)  # noqa: B010  (a private hook)


def _no_packet_log(event: str, data: bytes) -> None:
    return None
