"""UDP transport: one socket per node, QUIC (qh3, driven sans-IO) for hops, meshkey control
packets beside it on the same port (DESIGN.md decisions 3 and 4).

The socket (:mod:`meshkey.transport.udp_socket`) batches with GRO and GSO. Every datagram is
routed by its first byte: below 0x40 to the control-packet handlers (the reflexive-address
service and the puncher live in :mod:`meshkey.nat`), otherwise to the QUIC connection that
owns its destination connection ID. Each QUIC connection carries one hop link on one
bidirectional stream, opened by the server (which speaks first in the hop protocol).

Socket 0 is the node's one socket. A birthday punch (DESIGN.md decision 11) opens extra ones
for a few seconds (:meth:`QuicTransport.open_socket`): their datagrams go through the same
demultiplexing, each tagged with its socket id, and a QUIC connection lives on the socket it
was dialled from or accepted on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import ipaddress
import os
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Any

from qh3._hazmat import pull_quic_header
from qh3.quic import events as quic_events
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection, QuicConnectionError
from qh3.quic.packet import QuicPacketType, encode_quic_retry
from qh3.tls import SignatureAlgorithm

from meshkey.identity.certificate import certificate_pem, node_id_from_certificate
from meshkey.identity.errors import IdentityError
from meshkey.identity.node_id import NodeId
from meshkey.log import EventLogger
from meshkey.ratelimit import TokenBucket
from meshkey.routing.address import TransportAddress
from meshkey.timing import DeadlineTimer
from meshkey.transport.errors import describe_error
from meshkey.transport.link import HopLink, LinkError, LinkTransport
from meshkey.transport.tls import SERVER_NAME
from meshkey.transport.udp_socket import UdpEndpoint
from meshkey.wire.errors import WireError
from meshkey.wire.hop import CloseCode
from meshkey.wire.net import Endpoint
from meshkey.wire.udp import (
    QUIC_BIT,
    ControlKind,
    Restarted,
    Stale,
    decode_nudge_packet,
    encode_control_packet,
)

log = EventLogger("transport.udp")

ALPN = "meshkey/1"
CID_LENGTH = 8
MAIN_SOCKET = 0
SEND_HIGH_WATER = 2 * 1024 * 1024  # stream bytes queued in QUIC before writers wait
MAX_CONNECTIONS = 4096
#: Half-open inbound connections beyond which new ones must first prove their address with a
#: QUIC Retry round trip: a spoofed flood then costs one small Retry packet each, no state.
RETRY_THRESHOLD = 64
RETRY_TOKEN_LIFETIME = 10.0
#: A new QUIC connection costs ~0.75 ms of CPU before it is known to be garbage (qh3 sets up
#: TLS to try the Initial): at most this many per second get that far without a Retry token;
#: beyond, Initials are answered with a Retry (cheap, stateless), and beyond that dropped.
NEW_CONNECTIONS_PER_SECOND = 200.0
RETRIES_PER_SECOND = 2000.0
#: STALE answers to packets for connections this node does not have (after a restart, the
#: peers' next packets): enough to tell every peer quickly, never a flood.
STALE_PER_SECOND = 200.0
#: Stream bytes received from one peer and not yet consumed by the node; beyond this its
#: datagrams are dropped unread (QUIC resends them and its congestion control slows the
#: sender), so one peer sending as fast as it can cannot starve the others or fill memory.
INBOX_HIGH_WATER = 8 * 1024 * 1024

#: (datagram, where it came from, the id of the socket it arrived on)
ControlHandler = Callable[[bytes, Endpoint, int], None]


class QuicTransport(LinkTransport):
    protocol = "udp"
    hop_tag = "quic"

    def __init__(self, *args: Any, batching: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batching = batching
        self.endpoint = self._new_endpoint(MAIN_SOCKET)
        self.sockets: dict[int, UdpEndpoint] = {MAIN_SOCKET: self.endpoint}
        self.by_cid: dict[bytes, QuicLink] = {}
        self._retry_key = os.urandom(32)
        self._new_connections = TokenBucket(NEW_CONNECTIONS_PER_SECOND, NEW_CONNECTIONS_PER_SECOND)
        self._retries = TokenBucket(RETRIES_PER_SECOND, RETRIES_PER_SECOND)
        self._stale = TokenBucket(STALE_PER_SECOND, STALE_PER_SECOND)
        self._dirty: set[QuicLink] = set()
        self._flush_scheduled = False
        self._control: dict[int, ControlHandler] = {
            ControlKind.STALE: self._on_nudge,
            ControlKind.RESTARTED: self._on_nudge,
        }

    # -- configuration ----------------------------------------------------------------

    @functools.cached_property
    def quic_idle_timeout(self) -> float:
        # Below typical NAT mapping lifetimes; links that must stay up send hop keepalives.
        return min(self.idle_timeout, 60.0)

    @functools.cached_property
    def server_configuration(self) -> QuicConfiguration:
        configuration = QuicConfiguration(
            is_client=False,
            alpn_protocols=[ALPN],
            idle_timeout=self.quic_idle_timeout,
            connection_id_length=CID_LENGTH,
        )
        configuration.load_cert_chain(certificate_pem(self.identity) + self.identity.to_pem())
        return configuration

    @functools.cached_property
    def client_configuration(self) -> QuicConfiguration:
        configuration = QuicConfiguration(
            is_client=True,
            alpn_protocols=[ALPN],
            idle_timeout=self.quic_idle_timeout,
            connection_id_length=CID_LENGTH,
            verify_mode=ssl.CERT_NONE,  # no CA: the certificate's key is checked as a NodeId
            server_name=SERVER_NAME,
        )
        configuration.signature_algorithms = [SignatureAlgorithm.ED25519]
        return configuration

    # -- socket -----------------------------------------------------------------------

    async def listen(self, host: str, port: int) -> TransportAddress:
        bound = self.endpoint.bind(host, port)
        self.address = TransportAddress.from_socket("udp", *bound, self.identity.node_id)
        log.info("listening", address=self.address, gro=self.endpoint.gro)
        return self.address

    def _ensure_socket(self) -> None:
        if self.endpoint.sock is None:  # a node without a UDP listener still needs its socket
            if socket.has_ipv6:
                try:
                    self.endpoint.bind("::", 0)
                    return
                except OSError:
                    pass
            self.endpoint.bind("0.0.0.0", 0)

    def register_control(self, kind: int, handler: ControlHandler) -> None:
        """Handles meshkey control packets of ``kind`` (first byte, below 0x40), from any of
        the node's sockets (the handler is told which)."""
        self._control[kind] = handler

    def send_control(
        self,
        packet: bytes,
        address: Endpoint,
        *,
        socket_id: int = MAIN_SOCKET,
        ttl: int | None = None,
    ) -> None:
        """Sends a control packet from socket ``socket_id`` (with IP TTL ``ttl`` if given:
        a low TTL opens this side's NAT mapping without reaching the peer's NAT)."""
        if socket_id == MAIN_SOCKET:
            self._ensure_socket()
        endpoint = self.sockets.get(socket_id)
        if endpoint is not None:
            endpoint.send_one(packet, address, ttl=ttl)

    # -- extra sockets (a birthday punch) -------------------------------------------------

    def _new_endpoint(self, socket_id: int) -> UdpEndpoint:
        def received(buffer: bytes, segment: int, source: Endpoint) -> None:
            self._on_datagrams(buffer, segment, source, socket_id)

        return UdpEndpoint(received, self._flush, self._on_unreachable, batching=self._batching)

    def open_socket(self, socket_id: int) -> Endpoint:
        """Opens extra socket ``socket_id`` on the main socket's address (another port);
        OSError if it cannot be bound."""
        if socket_id in self.sockets:
            raise ValueError(f"socket {socket_id} is already open")
        self._ensure_socket()
        host = self.endpoint.local_host()
        endpoint = self._new_endpoint(socket_id)
        bound = endpoint.bind(host, 0)
        self.sockets[socket_id] = endpoint
        return bound

    def close_socket(self, socket_id: int) -> None:
        """Closes extra socket ``socket_id`` and every link that lives on it."""
        endpoint = self.sockets.pop(socket_id, None) if socket_id != MAIN_SOCKET else None
        if endpoint is None:
            return
        for link in list(self.links):
            if isinstance(link, QuicLink) and link.endpoint is endpoint:
                link.spawn(link.close(CloseCode.NORMAL, "its punch socket closed"), "close")
        endpoint.close()

    def socket_of(self, link: HopLink) -> int:
        """The id of the socket ``link`` lives on (0 for the main one and for TCP)."""
        if isinstance(link, QuicLink):
            for socket_id, endpoint in self.sockets.items():
                if link.endpoint is endpoint:
                    return socket_id
        return MAIN_SOCKET

    def dial(self, address: TransportAddress, socket_id: int = MAIN_SOCKET) -> HopLink:
        """A new QUIC hop to ``address`` (pinned to its NodeId) from socket ``socket_id``: the
        one a punch found a way through. It replaces any link kept for that address."""
        endpoint = self.sockets.get(socket_id)
        if endpoint is None:
            raise ValueError(f"socket {socket_id} is not open")
        self._ensure_socket()
        link = QuicLink(
            self, "outbound", address.endpoint, address.node_id, address, endpoint=endpoint
        )
        self._outbound[(address.host, address.port, address.node_id)] = link
        link.start_outbound()
        return link

    def _new_outbound(self, address: TransportAddress) -> HopLink:
        self._ensure_socket()
        return QuicLink(
            self, "outbound", address.endpoint, address.node_id, address, endpoint=self.endpoint
        )

    async def close(self) -> None:
        await self.close_links()
        self._flush()
        for socket_id in list(self.sockets):
            if socket_id != MAIN_SOCKET:
                self.close_socket(socket_id)
        self.endpoint.close()

    # -- demultiplexing ---------------------------------------------------------------

    def _on_datagrams(
        self, buffer: bytes, segment: int, source: Endpoint, socket_id: int = MAIN_SOCKET
    ) -> None:
        now = asyncio.get_running_loop().time()
        if segment >= len(buffer):
            self._on_datagram(buffer, source, now, socket_id)
            return
        # A GRO buffer holds datagrams of one sender; they may still belong to several
        # connections, or be control packets: hand each run of one connection over at once.
        start = 0
        while start < len(buffer):
            link = self._link_at(buffer, start)
            end = start + segment
            while link is not None and end < len(buffer) and self._link_at(buffer, end) is link:
                end += segment
            if link is not None and link.inbox_full:
                self.endpoint.stats["inbox_dropped"] += (end - start) // segment
            elif link is not None and end - start > segment:
                link.receive_gro(buffer[start:end], segment, source, now)
            else:
                self._on_datagram(buffer[start : start + segment], source, now, socket_id)
                end = start + segment
            start = end

    def _on_datagram(
        self, data: bytes, source: Endpoint, now: float, socket_id: int = MAIN_SOCKET
    ) -> None:
        if not data[0] & QUIC_BIT:
            handler = self._control.get(data[0])
            if handler is not None:
                try:
                    handler(data, source, socket_id)
                except Exception:
                    log.exception("control.handler_failed", kind=data[0])
            return
        link = self._link_for(data)
        if link is None:
            if data[0] & 0x80:
                self._accept(data, source, now, socket_id)
            elif socket_id == MAIN_SOCKET:
                self._answer_stale(data, source, now)
        elif link.inbox_full:
            self.endpoint.stats["inbox_dropped"] += 1
        else:
            link.receive(data, source, now)

    def _link_at(self, buffer: bytes, offset: int) -> QuicLink | None:
        """The link of the datagram at ``offset`` in a GRO buffer, reading only its header."""
        first = buffer[offset]
        if not first & QUIC_BIT:
            return None
        if first & 0x80:
            return self._link_for(buffer[offset : offset + 6 + 20])
        return self.by_cid.get(buffer[offset + 1 : offset + 1 + CID_LENGTH])

    def _link_for(self, data: bytes) -> QuicLink | None:
        if not data or not data[0] & QUIC_BIT:
            return None
        if data[0] & 0x80:
            dcid = _long_header_dcid(data)
            return None if dcid is None else self.by_cid.get(dcid)
        return self.by_cid.get(data[1 : 1 + CID_LENGTH])

    def _accept(
        self, data: bytes, source: Endpoint, now: float, socket_id: int = MAIN_SOCKET
    ) -> None:
        """Opens an inbound connection for a client's first Initial, if it deserves one."""
        # Only a full-size QUIC v1 Initial may open a connection (RFC 9000, 14.1).
        if len(data) < 1200 or data[0] & 0xB0 != 0x80 or data[1:5] != b"\x00\x00\x00\x01":
            return
        endpoint = self.sockets.get(socket_id)
        if endpoint is None or endpoint.sock is None or len(self.links) >= MAX_CONNECTIONS:
            return
        try:
            header = pull_quic_header(data, 0, CID_LENGTH)
        except ValueError:
            return
        packet_type, destination_cid, source_cid, token = header[1], header[3], header[4], header[5]
        if packet_type != QuicPacketType.INITIAL:
            return
        retry_source: bytes | None = None
        original_cid = destination_cid
        if token:
            validated = self._validate_retry_token(token, source)
            if validated is None:
                return  # forged, expired or from another address: no state, no answer
            original_cid, retry_source = validated
        elif sum(self.unauthenticated.values()) >= RETRY_THRESHOLD or not (
            self._new_connections.allow(now)
        ):
            if self._retries.allow(now):
                self._send_retry(source, destination_cid, source_cid)
            else:
                self.endpoint.stats["initials_dropped"] += 1
            return
        if not self.admits_stranger(source[0]):
            self.endpoint.stats["strangers_refused"] += 1
            return
        quic = QuicConnection(
            configuration=self.server_configuration,
            original_destination_connection_id=original_cid,
            retry_source_connection_id=retry_source,
        )
        quic.receive_datagram(data, source, now)
        answer = quic.datagrams_to_send(now)
        if not answer:
            # It did not decrypt (its keys come from its own connection ID, so only garbage
            # fails): keep nothing, so junk costs one decryption and no state.
            self.endpoint.stats["junk_initials"] += 1
            return
        link = QuicLink(self, "inbound", source, quic=quic, endpoint=endpoint)
        link.add_cid(destination_cid)
        link.add_cid(quic.host_cid)
        link.unsent = answer  # goes out with this batch's other datagrams
        link._after_input()

    # -- nudges: a peer learns at once that a connection it holds is gone here ------------

    def _answer_stale(self, data: bytes, source: Endpoint, now: float) -> None:
        if len(data) >= 1 + CID_LENGTH + 16 and self._stale.allow(now):
            cid = data[1 : 1 + CID_LENGTH]
            self.endpoint.send_one(encode_control_packet(Stale(cid)), source)

    def remote_of(self, worker: str) -> Endpoint | None:
        """The UDP address of the peer of the link that is worker ``worker``, if any."""
        for link in self.links:
            if link.name == worker and not link.closed:
                return link.remote
        return None

    def send_restarted(self, address: Endpoint) -> None:
        """Tells the node at ``address`` that this node restarted (see wire.udp)."""
        self._ensure_socket()
        packet = encode_control_packet(Restarted(self.identity.node_id.raw))
        self.endpoint.send_one(packet, address)

    def _on_nudge(self, data: bytes, source: Endpoint, socket_id: int) -> None:
        try:
            nudge = decode_nudge_packet(data)
        except WireError:
            return
        if isinstance(nudge, Stale):
            link = self.by_cid.get(nudge.connection_id)
            suspects = [link] if link is not None and link.remote == source else []
        else:
            suspects = [
                each
                for each in self.links
                if isinstance(each, QuicLink)
                and each.remote == source
                and each.core.peer is not None
                and each.core.peer.raw == nudge.node_id
            ]
        for each in suspects:
            log.debug("udp.nudged", remote=f"{source[0]}:{source[1]}", kind=type(nudge).__name__)
            each.suspect()

    # -- address validation (QUIC Retry) --------------------------------------------------

    def _retry_mac(self, source: Endpoint, body: bytes) -> bytes:
        address = ipaddress.ip_address(source[0]).packed + struct.pack("!H", source[1])
        return hmac.new(self._retry_key, address + body, hashlib.sha256).digest()[:16]

    def _send_retry(self, source: Endpoint, original_cid: bytes, client_cid: bytes) -> None:
        """A stateless Retry: the token proves, when it comes back, that the client receives
        at its source address (``expiry | odcid | our new cid | MAC``, keyed per process)."""
        retry_cid = os.urandom(CID_LENGTH)
        expiry = asyncio.get_running_loop().time() + RETRY_TOKEN_LIFETIME
        body = struct.pack("!dB", expiry, len(original_cid)) + original_cid + retry_cid
        token = body + self._retry_mac(source, body)
        packet = encode_quic_retry(
            version=1,
            source_cid=retry_cid,
            destination_cid=client_cid,
            original_destination_cid=original_cid,
            retry_token=token,
        )
        self.endpoint.stats["retries_sent"] += 1
        self.endpoint.send_one(packet, source)

    def _validate_retry_token(self, token: bytes, source: Endpoint) -> tuple[bytes, bytes] | None:
        """(original destination cid, retry source cid) of a valid token, else None."""
        if len(token) < 9 + CID_LENGTH + 16:
            return None
        body, mac = token[:-16], token[-16:]
        if not hmac.compare_digest(mac, self._retry_mac(source, body)):
            return None
        expiry, length = struct.unpack("!dB", body[:9])
        if expiry < asyncio.get_running_loop().time() or len(body) != 9 + length + CID_LENGTH:
            return None
        return body[9 : 9 + length], body[9 + length :]

    def _on_unreachable(self, destination: Endpoint, original: bytes) -> None:
        """An ICMP error came back for ``original``, a datagram we sent to ``destination``."""
        for link in list(self.links):
            if isinstance(link, QuicLink) and link.remote == destination:
                link.unreachable(original)

    def schedule(self, link: QuicLink) -> None:
        """Asks for ``link``'s datagrams to be sent once this batch of work is done."""
        self._dirty.add(link)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, set()
        for link in dirty:
            link.transmit()


class QuicLink(HopLink):
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
            if self.quic is not None and _long_header_dcid(original) == (
                self.quic.original_destination_connection_id
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


def _long_header_dcid(datagram: bytes) -> bytes | None:
    """The destination connection ID of a long-header QUIC packet (after the first byte: a
    4-byte version, a 1-byte length, the ID), or None."""
    if len(datagram) < 6 or not datagram[0] & 0x80:
        return None
    return datagram[6 : 6 + datagram[5]]
