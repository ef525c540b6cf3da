"""UDP transport: one socket per node, QUIC (qh3, driven sans-IO) for hops, meshkey control
packets beside it on the same port (DESIGN.md decisions 3 and 4).

The socket layer batches: it receives with UDP_GRO (one ``recvmsg`` returns up to 64 KiB of
same-sized datagrams from one sender) and sends runs of same-sized datagrams to one address
with UDP_SEGMENT (one ``sendmsg`` per run). Where the kernel refuses either, it falls back to
one datagram per system call, once and for good.

Every datagram is routed by its first byte: below 0x40 to the control-packet handlers (the
reflexive-address service lives in :mod:`meshkey.nat`), otherwise to the QUIC connection
that owns its destination connection ID. Each QUIC connection carries one hop link on one
bidirectional stream, opened by the server (which speaks first in the hop protocol).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import hmac
import ipaddress
import os
import select
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
from meshkey.transport.errors import describe_error
from meshkey.transport.link import HopLink, LinkError, LinkTransport
from meshkey.transport.tls import SERVER_NAME
from meshkey.wire.hop import CloseCode
from meshkey.wire.udp import QUIC_BIT

log = EventLogger("transport.udp")

ALPN = "meshkey/1"
CID_LENGTH = 8
SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = 103  # linux/udp.h
UDP_GRO = 104
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)  # linux/in.h; not exported by Python
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
_UNREACHABLE_ERRORS = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH}
# What a kernel or device without UDP segmentation offload answers to a GSO send.
_GSO_UNSUPPORTED = {errno.EIO, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOPROTOOPT}
MAX_GSO_SEGMENTS = 64
MAX_GSO_BYTES = 65000
RECEIVE_BUFFER = 65535
READS_PER_WAKEUP = 128
SOCKET_BUFFER = 4 * 1024 * 1024
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
#: Stream bytes received from one peer and not yet consumed by the node; beyond this its
#: datagrams are dropped unread (QUIC resends them and its congestion control slows the
#: sender), so one peer sending as fast as it can cannot starve the others or fill memory.
INBOX_HIGH_WATER = 8 * 1024 * 1024

Address = tuple[str, int]
DatagramHandler = Callable[[bytes, int, Address], None]
ControlHandler = Callable[[bytes, Address], None]


class UdpEndpoint:
    """The one UDP socket: batched receive (GRO) and send (GSO), with clean fallbacks."""

    def __init__(
        self,
        on_datagrams: DatagramHandler,
        on_batch_end: Callable[[], None],
        on_unreachable: Callable[[Address, bytes], None],
        *,
        batching: bool,
    ) -> None:
        self._on_datagrams = on_datagrams
        self._on_batch_end = on_batch_end
        self._on_unreachable = on_unreachable
        self.gro = batching
        self.gso = batching
        self.dual_stack = False
        self.sock: socket.socket | None = None
        self._epoll: select.epoll | None = None
        self.stats = {
            "datagrams_in": 0,
            "datagrams_out": 0,
            "syscalls_in": 0,
            "syscalls_out": 0,
            "send_dropped": 0,
            "inbox_dropped": 0,
            "retries_sent": 0,
            "strangers_refused": 0,
            "junk_initials": 0,
            "initials_dropped": 0,
        }

    def bind(self, host: str, port: int) -> Address:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if host == "::":  # one socket for both families: IPv4 peers appear as ::ffff:a.b.c.d
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                self.dual_stack = True
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        # ICMP errors (port unreachable...) on the error queue: a dial to a port nothing
        # listens on fails at once, as TCP's does, instead of waiting out the handshake.
        with contextlib.suppress(OSError):
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            if family == socket.AF_INET or self.dual_stack:  # v4 errors need the v4 option
                sock.setsockopt(socket.SOL_IP, IP_RECVERR, 1)
        if self.gro:
            try:
                sock.setsockopt(SOL_UDP, UDP_GRO, 1)
            except OSError:
                self.gro = False
                log.info("udp.gro_unavailable")
        self.sock = sock
        # The loop watches an epoll set holding the socket, not the socket itself: ICMP errors
        # put the socket in POLLERR, and libuv (uvloop) stops any poll handle that reports it,
        # which would silently end reception. The epoll fd is readable whenever the socket has
        # data or errors pending, and never in error itself.
        if hasattr(select, "epoll"):
            self._epoll = select.epoll()
            self._epoll.register(sock.fileno(), select.EPOLLIN)
            asyncio.get_running_loop().add_reader(self._epoll.fileno(), self._readable)
        else:  # pragma: no cover - not Linux
            asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)
        bound = sock.getsockname()
        return str(bound[0]), int(bound[1])

    @property
    def family(self) -> int:
        return self.sock.family if self.sock is not None else socket.AF_INET

    def close(self) -> None:
        if self.sock is not None:
            watched = self._epoll.fileno() if self._epoll is not None else self.sock.fileno()
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(watched)
            if self._epoll is not None:
                self._epoll.close()
                self._epoll = None
            self.sock.close()
            self.sock = None

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        cmsg_space = socket.CMSG_SPACE(4)
        try:
            for _ in range(READS_PER_WAKEUP):
                try:
                    if self.gro:
                        data, ancillary, _flags, source = sock.recvmsg(RECEIVE_BUFFER, cmsg_space)
                    else:
                        data, source = sock.recvfrom(RECEIVE_BUFFER)
                        ancillary = []
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if exc.errno in _UNREACHABLE_ERRORS:
                        self._read_errors(sock)
                    else:
                        log.debug("udp.receive_error", reason=describe_error(exc))
                    continue
                self.stats["syscalls_in"] += 1
                segment = len(data)
                for level, kind, value in ancillary:
                    if level == SOL_UDP and kind == UDP_GRO and len(value) >= 4:
                        segment = struct.unpack("=i", value[:4])[0] or segment
                if not data:
                    continue
                self.stats["datagrams_in"] += -(-len(data) // segment)
                self._on_datagrams(data, segment, self._from_socket(source))
            self._read_errors(sock)  # always: a pending error keeps the socket readable
        finally:
            self._on_batch_end()

    def _read_errors(self, sock: socket.socket) -> None:
        """Reports each ICMP error waiting on the socket's error queue, with its destination."""
        for _ in range(READS_PER_WAKEUP):
            try:
                original, _ancillary, _flags, destination = sock.recvmsg(
                    2048, 512, socket.MSG_ERRQUEUE
                )
            except OSError:
                return
            if destination:
                self._on_unreachable(self._from_socket(destination), original)

    def _from_socket(self, address: Any) -> Address:
        host = str(address[0])
        if self.dual_stack and host.startswith("::ffff:") and "." in host:
            host = host[7:]
        return host, int(address[1])

    def _to_socket(self, address: Address) -> Address:
        if self.dual_stack and ":" not in address[0]:
            return f"::ffff:{address[0]}", address[1]
        return address

    def send(self, datagrams: list[bytes], address: Address) -> None:
        """Sends datagrams to one address: runs of equal size in one GSO system call."""
        index = 0
        while index < len(datagrams):
            size = len(datagrams[index])
            end = index + 1
            if self.gso:
                limit = min(MAX_GSO_SEGMENTS, max(1, MAX_GSO_BYTES // size))
                while end < len(datagrams) and end - index < limit and len(datagrams[end]) == size:
                    end += 1
                if end < len(datagrams) and end - index < limit and len(datagrams[end]) < size:
                    end += 1  # GSO allows one shorter datagram at the end of a run
            run = datagrams[index:end]
            self._send_run(run, size, address)
            index = end

    def _send_run(
        self, run: list[bytes], segment: int, address: Address, *, retry: bool = True
    ) -> None:
        sock = self.sock
        if sock is None:
            return
        target = self._to_socket(address)
        try:
            if len(run) > 1:
                ancillary = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", segment))]
                sock.sendmsg([b"".join(run)], ancillary, 0, target)
            else:
                sock.sendto(run[0], target)
            self.stats["syscalls_out"] += 1
            self.stats["datagrams_out"] += len(run)
        except (BlockingIOError, InterruptedError):
            self.stats["send_dropped"] += len(run)  # QUIC's loss recovery resends
        except OSError as exc:
            if exc.errno in _UNREACHABLE_ERRORS and retry:
                # An ICMP error for an earlier datagram, reported by this send, which therefore
                # did not go out: collect the errors, then send it again.
                self._read_errors(sock)
                self._send_run(run, segment, address, retry=False)
            elif len(run) > 1 and exc.errno in _GSO_UNSUPPORTED:
                # The kernel or device cannot segment: never try again, resend singly.
                self.gso = False
                log.info("udp.gso_unavailable", reason=describe_error(exc))
                for datagram in run:
                    self._send_run([datagram], len(datagram), address)
            elif exc.errno == errno.ENOBUFS:
                self.stats["send_dropped"] += len(run)
            else:
                log.debug(
                    "udp.send_error", to=f"{address[0]}:{address[1]}", reason=describe_error(exc)
                )

    def send_one(self, datagram: bytes, address: Address) -> None:
        self._send_run([datagram], len(datagram), address)


class QuicTransport(LinkTransport):
    protocol = "udp"
    hop_tag = "quic"

    def __init__(self, *args: Any, batching: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.endpoint = UdpEndpoint(
            self._on_datagrams, self._flush, self._on_unreachable, batching=batching
        )
        self.by_cid: dict[bytes, QuicLink] = {}
        self._retry_key = os.urandom(32)
        self._new_connections = TokenBucket(NEW_CONNECTIONS_PER_SECOND, NEW_CONNECTIONS_PER_SECOND)
        self._retries = TokenBucket(RETRIES_PER_SECOND, RETRIES_PER_SECOND)
        self._dirty: set[QuicLink] = set()
        self._flush_scheduled = False
        self._control: dict[int, ControlHandler] = {}

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
        """Handles meshkey control packets of ``kind`` (first byte, below 0x40)."""
        self._control[kind] = handler

    def send_control(self, packet: bytes, address: Address) -> None:
        self._ensure_socket()
        self.endpoint.send_one(packet, address)

    def _new_outbound(self, address: TransportAddress) -> HopLink:
        self._ensure_socket()
        return QuicLink(self, "outbound", address.endpoint, address.node_id, address)

    async def close(self) -> None:
        await self.close_links()
        self._flush()
        self.endpoint.close()

    # -- demultiplexing ---------------------------------------------------------------

    def _on_datagrams(self, buffer: bytes, segment: int, source: Address) -> None:
        now = asyncio.get_running_loop().time()
        if segment >= len(buffer):
            self._on_datagram(buffer, source, now)
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
                self._on_datagram(buffer[start : start + segment], source, now)
                end = start + segment
            start = end

    def _on_datagram(self, data: bytes, source: Address, now: float) -> None:
        if not data[0] & QUIC_BIT:
            handler = self._control.get(data[0])
            if handler is not None:
                try:
                    handler(data, source)
                except Exception:
                    log.exception("control.handler_failed", kind=data[0])
            return
        link = self._link_for(data)
        if link is None:
            self._accept(data, source, now)
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

    def _accept(self, data: bytes, source: Address, now: float) -> None:
        """Opens an inbound connection for a client's first Initial, if it deserves one."""
        # Only a full-size QUIC v1 Initial may open a connection (RFC 9000, 14.1).
        if len(data) < 1200 or data[0] & 0xB0 != 0x80 or data[1:5] != b"\x00\x00\x00\x01":
            return
        if self.endpoint.sock is None or len(self.links) >= MAX_CONNECTIONS:
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
        link = QuicLink(self, "inbound", source, quic=quic)
        link.add_cid(destination_cid)
        link.add_cid(quic.host_cid)
        link.unsent = answer  # goes out with this batch's other datagrams
        link._after_input()

    # -- address validation (QUIC Retry) --------------------------------------------------

    def _retry_mac(self, source: Address, body: bytes) -> bytes:
        address = ipaddress.ip_address(source[0]).packed + struct.pack("!H", source[1])
        return hmac.new(self._retry_key, address + body, hashlib.sha256).digest()[:16]

    def _send_retry(self, source: Address, original_cid: bytes, client_cid: bytes) -> None:
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

    def _validate_retry_token(self, token: bytes, source: Address) -> tuple[bytes, bytes] | None:
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

    def _on_unreachable(self, destination: Address, original: bytes) -> None:
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

    def __init__(self, *args: Any, quic: QuicConnection | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
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
        self._quic_timer: asyncio.TimerHandle | None = None
        self._quic_timer_at: float | None = None
        self._cids: set[bytes] = set()
        self._terminated = False
        #: Datagrams already taken from the QUIC connection and not yet sent.
        self.unsent: list[tuple[bytes, Address]] = []

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
            family = 0 if self.transport.endpoint.dual_stack else self.transport.endpoint.family
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

    def receive(self, data: bytes, source: Address, now: float) -> None:
        assert self.quic is not None
        self.quic.receive_datagram(data, source, now)
        self._after_input()

    def receive_gro(self, buffer: bytes, segment: int, source: Address, now: float) -> None:
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
            # The server opens the link's stream: it speaks first in the hop protocol.
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
        loop = self._loop
        now = loop.time()
        datagrams = quic.datagrams_to_send(now)
        if self.unsent:
            datagrams, self.unsent = self.unsent + datagrams, []
        if datagrams:
            address = datagrams[0][1]
            if all(d[1] == address for d in datagrams):
                self.transport.endpoint.send([d[0] for d in datagrams], address)
            else:
                for data, each in datagrams:
                    self.transport.endpoint.send_one(data, each)
        deadline = None if self._terminated else quic.get_timer()
        if deadline != self._quic_timer_at:  # re-armed only when the deadline moved
            if self._quic_timer is not None:
                self._quic_timer.cancel()
            self._quic_timer_at = deadline
            self._quic_timer = (
                None if deadline is None else loop.call_at(deadline, self._on_quic_timer)
            )
        if (
            self.stream_id is not None
            and not self._writable.is_set()
            and quic.get_send_buffer_size(self.stream_id) <= SEND_HIGH_WATER // 2
        ):
            self._writable.set()

    def _on_quic_timer(self) -> None:
        deadline, self._quic_timer, self._quic_timer_at = self._quic_timer_at, None, None
        if self.quic is None or deadline is None:
            return
        # uvloop wakes early, and qh3 ignores an early handle_timer: give it its deadline.
        self.quic.handle_timer(max(deadline, self._loop.time()))
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
        if self._quic_timer is not None:
            self._quic_timer.cancel()
            self._quic_timer, self._quic_timer_at = None, None
        self._writable.set()
        self._drop_cids()


def _long_header_dcid(datagram: bytes) -> bytes | None:
    """The destination connection ID of a long-header QUIC packet (after the first byte: a
    4-byte version, a 1-byte length, the ID), or None."""
    if len(datagram) < 6 or not datagram[0] & 0x80:
        return None
    return datagram[6 : 6 + datagram[5]]
