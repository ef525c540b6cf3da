"""UDP transport: one socket per node, QUIC (qh3, driven sans-IO) for hops, meshkey control
packets beside it on the same port (DESIGN.md decisions 3 and 4).

The socket (:mod:`meshkey.transport.udp_socket`) batches with GRO and GSO. Every datagram is
classified by :func:`meshkey.wire.udp.classify` (a pure function of its first bytes): a first
byte below 0x40 goes to the control-packet handlers (the reflexive-address service and the
puncher live in :mod:`meshkey.nat`), a QUIC packet to the connection that owns its destination
connection ID. A full-size Initial for no connection may open one, if the node admits it
(limits, rate, a stateless QUIC Retry when busy); a short-header packet for no connection is
answered with a STALE nudge. Each QUIC connection is driven by a
:class:`~meshkey.transport.quic.QuicLink` and carries one hop link.

Socket 0 is the node's one socket. A birthday punch (DESIGN.md decision 11) opens extra ones
for a few seconds (:meth:`QuicTransport.open_socket`): their datagrams go through the same
demultiplexing, each tagged with its socket id, and a QUIC connection lives on the socket it
was dialled from or accepted on.
"""

from __future__ import annotations

import asyncio
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
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection
from qh3.quic.packet import QuicPacketType, encode_quic_retry
from qh3.tls import SignatureAlgorithm

from meshkey.identity.certificate import certificate_pem
from meshkey.identity.keys import Identity
from meshkey.log import EventLogger
from meshkey.ratelimit import TokenBucket
from meshkey.routing.address import TransportAddress
from meshkey.transport.link import HopLink, LinkTransport
from meshkey.transport.quic import INBOX_HIGH_WATER, SEND_HIGH_WATER, QuicLink
from meshkey.transport.tls import SERVER_NAME
from meshkey.transport.udp_socket import UdpEndpoint
from meshkey.wire.errors import WireError
from meshkey.wire.hop import CloseCode
from meshkey.wire.net import Endpoint
from meshkey.wire.udp import (
    CID_LENGTH,
    ControlDatagram,
    ControlKind,
    Datagram,
    Garbage,
    QuicLongHeader,
    QuicShortHeader,
    Restarted,
    Stale,
    classify,
    decode_nudge_packet,
    encode_control_packet,
    gro_runs,
)

__all__ = [
    "ALPN",
    "CID_LENGTH",
    "INBOX_HIGH_WATER",
    "MAIN_SOCKET",
    "SEND_HIGH_WATER",
    "ControlHandler",
    "QuicLink",
    "QuicTransport",
]

log = EventLogger("transport.udp")

ALPN = "meshkey/1"
MAIN_SOCKET = 0
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
#: (datagram, where it came from, the id of the socket it arrived on)
ControlHandler = Callable[[bytes, Endpoint, int], None]


def server_configuration(identity: Identity, idle_timeout: float) -> QuicConfiguration:
    """The QUIC server side of ``identity``: its self-signed certificate and key."""
    configuration = QuicConfiguration(
        is_client=False,
        alpn_protocols=[ALPN],
        idle_timeout=idle_timeout,
        connection_id_length=CID_LENGTH,
    )
    # Certificate and key apart: given them joined, qh3 splits the PEM before the key and
    # loses the certificate's last newline, then base64-decodes "...-----END CERTIFICATE"
    # with it, which fails ("Incorrect padding") whenever the DER's length (it varies with
    # the random serial number) puts those letters off a 4-character boundary: 7 builds in
    # 3,000, raised in the UDP read callback by the first Initial.
    configuration.load_cert_chain(certificate_pem(identity), identity.to_pem())
    return configuration


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
        #: Told of every ICMP error for a destination (control packets have no link).
        self.unreachable_listeners: list[Callable[[Endpoint], None]] = []

    # -- configuration ----------------------------------------------------------------

    @functools.cached_property
    def quic_idle_timeout(self) -> float:
        # Below typical NAT mapping lifetimes; links that must stay up send hop keepalives.
        return min(self.idle_timeout, 60.0)

    @functools.cached_property
    def server_configuration(self) -> QuicConfiguration:
        return server_configuration(self.identity, self.quic_idle_timeout)

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

    def open_socket(self, socket_id: int, port: int = 0) -> Endpoint:
        """Opens extra socket ``socket_id`` on the main socket's address (another port:
        ``port``, or one the system picks); OSError if it cannot be bound."""
        if socket_id in self.sockets:
            raise ValueError(f"socket {socket_id} is already open")
        self._ensure_socket()
        host = self.endpoint.local_host()
        endpoint = self._new_endpoint(socket_id)
        bound = endpoint.bind(host, port)
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

    def dial(
        self, address: TransportAddress, socket_id: int = MAIN_SOCKET, *, punched: bool = False
    ) -> HopLink:
        """A new QUIC hop to ``address`` (pinned to its NodeId) from socket ``socket_id``: the
        one a punch found a way through (``punched``: say so in its HopAuthenticated). It
        replaces any link kept for that address."""
        endpoint = self.sockets.get(socket_id)
        if endpoint is None:
            raise ValueError(f"socket {socket_id} is not open")
        self._ensure_socket()
        link = QuicLink(
            self, "outbound", address.endpoint, address.node_id, address, endpoint=endpoint
        )
        link.punched = punched
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

    # -- demultiplexing (what a datagram is: wire.udp.classify) --------------------------

    def _on_datagrams(
        self, buffer: bytes, segment: int, source: Endpoint, socket_id: int = MAIN_SOCKET
    ) -> None:
        now = asyncio.get_running_loop().time()
        if segment >= len(buffer):
            self._on_datagram(buffer, source, now, socket_id)
            return
        # A GRO buffer holds datagrams of one sender; they may still belong to several
        # connections, or be control packets: each run for one connection goes over at once.
        for start, end, kind in gro_runs(buffer, segment):
            if end - start <= segment:
                self._on_datagram(buffer[start:end], source, now, socket_id, kind)
                continue
            assert isinstance(kind, QuicShortHeader)  # the only datagrams that come in runs
            link = self.by_cid.get(kind.dcid)
            if link is None:  # no connection: each is answered as if it came alone
                for offset in range(start, end, segment):
                    self._on_datagram(buffer[offset : offset + segment], source, now, socket_id)
            elif link.inbox_full:
                self.endpoint.stats["inbox_dropped"] += (end - start) // segment
            else:
                link.receive_gro(buffer[start:end], segment, source, now)

    def _on_datagram(
        self,
        data: bytes,
        source: Endpoint,
        now: float,
        socket_id: int = MAIN_SOCKET,
        kind: Datagram | None = None,
    ) -> None:
        kind = classify(data) if kind is None else kind
        if isinstance(kind, ControlDatagram):
            handler = self._control.get(kind.kind)
            if handler is not None:
                try:
                    handler(data, source, socket_id)
                except Exception:
                    log.exception("control.handler_failed", kind=kind.kind)
            return
        if isinstance(kind, Garbage):
            return
        link = self.by_cid.get(kind.dcid)
        if link is None:
            if isinstance(kind, QuicLongHeader):
                if kind.initial:
                    self._accept(data, source, now, socket_id)
            elif socket_id == MAIN_SOCKET and kind.answerable:
                self._answer_stale(kind.dcid, source, now)
        elif link.inbox_full:
            self.endpoint.stats["inbox_dropped"] += 1
        else:
            link.receive(data, source, now)

    def _accept(
        self, data: bytes, source: Endpoint, now: float, socket_id: int = MAIN_SOCKET
    ) -> None:
        """Opens an inbound connection for a client's first Initial (a full-size QUIC v1
        one: classify() said so), if it deserves one."""
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

    def _answer_stale(self, cid: bytes, source: Endpoint, now: float) -> None:
        if self._stale.allow(now):
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
        for listener in list(self.unreachable_listeners):
            listener(destination)
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
