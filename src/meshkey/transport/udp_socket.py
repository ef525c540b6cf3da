"""A node's UDP socket with batching: receives with UDP_GRO (one ``recvmsg`` returns up to
64 KiB of same-sized datagrams from one sender) and sends runs of same-sized datagrams to one
address with UDP_SEGMENT (one ``sendmsg`` per run). Where the kernel refuses either, it falls
back to one datagram per system call, once and for good. ICMP errors are read from the
socket's error queue and reported with the datagram they answer.

A node has one such socket for everything (DESIGN.md decision 3); a birthday punch adds a few
hundred short-lived ones (:meth:`meshkey.transport.udp.QuicTransport.open_socket`).

The first endpoint a process opens also sets its allocator's policy for bulk traffic
(:func:`keep_freed_memory`): a portal moves its bytes in buffers of up to a MiB, which glibc by
default maps fresh (and zeroes) for each, or hands back to the kernel as soon as a few are
freed together, so that every byte's page is faulted in two or three times on its way through
a node (issue 21's profile: 12-15 % of both nodes' CPU).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import select
import socket
import struct
from collections.abc import Callable
from typing import Any

from meshkey.log import EventLogger
from meshkey.transport.errors import describe_error
from meshkey.wire.net import Endpoint

log = EventLogger("transport.udp")

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

DatagramHandler = Callable[[bytes, int, Endpoint], None]

#: Buffers under this come from the heap, not fresh mappings: above the largest message
#: (1 MiB, :data:`meshkey.wire.frames.MAX_PAYLOAD`) with its headers.
HEAP_BUFFERS_UNDER = 4 * 1024 * 1024
#: Freed heap kept for the next buffers rather than given back at once (what is over it is).
FREED_HEAP_KEPT = 32 * 1024 * 1024
_M_TRIM_THRESHOLD = -1  # malloc.h
_M_MMAP_THRESHOLD = -3
_allocator_set = False


def keep_freed_memory() -> bool:
    """Once per process, on glibc: allocate bulk buffers from the heap and keep up to
    :data:`FREED_HEAP_KEPT` of what is freed for the next ones. Whether it was set now."""
    global _allocator_set
    if _allocator_set:
        return False
    _allocator_set = True
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, HEAP_BUFFERS_UNDER)
        libc.mallopt(_M_TRIM_THRESHOLD, FREED_HEAP_KEPT)
    except (OSError, AttributeError, ValueError):  # not glibc, or no confstr name
        return False
    return True


class UdpEndpoint:
    """The one UDP socket: batched receive (GRO) and send (GSO), with clean fallbacks."""

    def __init__(
        self,
        on_datagrams: DatagramHandler,
        on_batch_end: Callable[[], None],
        on_unreachable: Callable[[Endpoint, bytes], None],
        *,
        batching: bool,
    ) -> None:
        keep_freed_memory()
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
            "handler_errors": 0,  # exceptions a datagram's handler raised (logged, swallowed)
        }

    def bind(self, host: str, port: int) -> Endpoint:
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
                try:
                    self._on_datagrams(data, segment, self._from_socket(source))
                except Exception:  # a bug above must cost one datagram, not the batch
                    self.stats["handler_errors"] += 1
                    log.exception("udp.datagram_handler_failed")
            self._read_errors(sock)  # always: a pending error keeps the socket readable
        except Exception:  # the loop's reader callback never raises
            self.stats["handler_errors"] += 1
            log.exception("udp.read_failed")
        finally:
            try:
                self._on_batch_end()
            except Exception:
                self.stats["handler_errors"] += 1
                log.exception("udp.batch_end_failed")

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
                try:
                    self._on_unreachable(self._from_socket(destination), original)
                except Exception:
                    self.stats["handler_errors"] += 1
                    log.exception("udp.unreachable_handler_failed")

    def _from_socket(self, address: Any) -> Endpoint:
        host = str(address[0])
        if self.dual_stack and host.startswith("::ffff:") and "." in host:
            host = host[7:]
        return host, int(address[1])

    def _to_socket(self, address: Endpoint) -> Endpoint:
        if self.dual_stack and ":" not in address[0]:
            return f"::ffff:{address[0]}", address[1]
        return address

    def send(self, datagrams: list[bytes], address: Endpoint) -> None:
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
        self, run: list[bytes], segment: int, address: Endpoint, *, retry: bool = True
    ) -> None:
        sock = self.sock
        if sock is None:
            return
        target = self._to_socket(address)
        try:
            if len(run) > 1:
                ancillary = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", segment))]
                sock.sendmsg(run, ancillary, 0, target)  # the run as iovecs: no joined copy
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

    def send_one(self, datagram: bytes, address: Endpoint, *, ttl: int | None = None) -> None:
        """Sends one datagram; with ``ttl``, with that IP TTL (hop limit) for this one."""
        if ttl is None or self.sock is None:
            self._send_run([datagram], len(datagram), address)
            return
        level, option = (
            (socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS)
            if self.family == socket.AF_INET6
            and ":" in self._to_socket(address)[0]
            and not self._to_socket(address)[0].startswith("::ffff:")
            else (socket.IPPROTO_IP, socket.IP_TTL)
        )
        try:
            previous = self.sock.getsockopt(level, option)
            self.sock.setsockopt(level, option, ttl)
        except OSError as exc:
            log.debug("udp.ttl_unavailable", reason=describe_error(exc))
            self._send_run([datagram], len(datagram), address)
            return
        try:
            self._send_run([datagram], len(datagram), address)
        finally:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(level, option, previous)

    def local_host(self) -> str:
        """The host the socket is bound to (for extra sockets on the same address)."""
        if self.sock is None:
            return "0.0.0.0"
        host = str(self.sock.getsockname()[0])
        return host
