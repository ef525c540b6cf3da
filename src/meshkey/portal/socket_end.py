"""A local TCP socket at one end of a portal session (:class:`SocketEnd`): it reads into one
buffer shared by every socket of the loop, hands what it read to its
:class:`~meshkey.portal.driver.MuxDriver`, pauses and resumes as the session's window and the
socket's own write buffer say, and holds what it read before its session existed."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from meshkey.portal.session import Outcome

if TYPE_CHECKING:
    from meshkey.portal.driver import MuxDriver

#: A local socket's write buffer pauses us above this and resumes us below the low mark.
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024
_LINGER_ZERO = struct.pack("ii", 1, 0)
#: The most one read from a local socket takes (the session cuts it into DATA frames).
READ_SIZE = 512 * 1024
#: The least one read takes (a session nearly full still reads a useful amount).
SMALL_READ = 4096


#: What a socket end reads before its session exists (then it stops reading).
EARLY_READ = 16 * 1024
_EARLY_BUFFER: list[memoryview] = []


def _early_buffer() -> memoryview:
    """One buffer for every socket end's early read: it is copied out in the callback that
    filled it."""
    if not _EARLY_BUFFER:
        _EARLY_BUFFER.append(memoryview(bytearray(EARLY_READ)))
    return _EARLY_BUFFER[0]


_READ_BUFFERS = threading.local()


def shared_read_buffer() -> memoryview:
    """One read buffer for all socket ends of this thread's event loop: a read is copied out
    of it in the callback that filled it, so no two sockets ever use it at once (one per
    driver cost 512 KiB for each remote inlet an outlet served)."""
    view: memoryview | None = getattr(_READ_BUFFERS, "view", None)
    if view is None:
        view = _READ_BUFFERS.view = memoryview(bytearray(READ_SIZE))
    return view


class SocketEnd(asyncio.BufferedProtocol):
    """A TCP connection as a session's local end (the inlet's client, the outlet's server).

    Its session may come after the connection (an outlet connects first; an inlet may have
    to resolve its route first, with no driver yet). Until then the socket is not read:
    ``pause_reading`` in ``connection_made`` is not enough (uvloop starts reading after
    ``connection_made`` whatever it was told), so what arrives early, at most one read of
    :data:`EARLY_READ` bytes, is kept and reading pauses; the end of the stream or the loss
    of the connection is remembered too. :meth:`start` hands all of it to the session.
    """

    def __init__(
        self,
        driver: MuxDriver | None,
        on_connected: Callable[[SocketEnd], None],
        on_lost_early: Callable[[SocketEnd], None] | None = None,
    ) -> None:
        self._driver = driver
        self.session: int | None = None
        self.transport: asyncio.Transport | None = None
        self._on_connected = on_connected
        self._on_lost_early = on_lost_early
        self._written = 0
        self._reported = 0
        self._write_paused = False
        self._held = False
        self._ended = False  # the session is over: socket events no longer matter
        self._early = bytearray()  # read before the session existed
        self._early_eof = False
        self._early_lost: str | None = None

    @property
    def driver(self) -> MuxDriver:
        assert self._driver is not None, "the socket end has no driver yet"
        return self._driver

    @driver.setter
    def driver(self, driver: MuxDriver) -> None:
        self._driver = driver

    def start(self) -> None:
        """The session is set: hand it what arrived before, then read on."""
        assert self.session is not None
        data, self._early = bytes(self._early), bytearray()
        if data:
            self.driver.app_data(self.session, data)
        if self._early_lost is not None:
            self._ended = True
            self.driver.app_reset(self.session, self._early_lost)
            return
        if self._early_eof:
            self.driver.app_eof(self.session)
        if self.transport is not None and not self.transport.is_closing() and not self._held:
            self.transport.resume_reading()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        sock = self.transport.get_extra_info("socket")
        if sock is not None:  # small writes (a request, a keystroke) go out at once
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._on_connected(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.session is None:
            return _early_buffer()
        # Never read much past what the session may hold: its send buffer stays bounded by
        # its capacity + SMALL_READ, not + READ_SIZE.
        room = self.driver.send_room(self.session)
        return shared_read_buffer()[: min(READ_SIZE, max(SMALL_READ, room))]

    def buffer_updated(self, nbytes: int) -> None:
        if self._ended:
            return
        if self.session is None:
            self._early += _early_buffer()[:nbytes]
            if self.transport is not None:
                self.transport.pause_reading()
            return
        self.driver.app_data(self.session, bytes(shared_read_buffer()[:nbytes]))

    def eof_received(self) -> bool:
        if self.session is None:
            self._early_eof = True
        elif not self._ended:
            self.driver.app_eof(self.session)
        return True  # keep the write side open: half-close

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"local connection lost: {exc}" if exc else "local connection closed"
        if self.session is None:
            self._early_lost = reason
            if self._on_lost_early is not None:
                self._on_lost_early(self)
        elif not self._ended:
            self._ended = True
            self.driver.app_reset(self.session, reason)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._report()

    # AppEnd

    def deliver(self, data: bytes) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            return
        self.transport.write(data)
        self._written += len(data)
        if not self._write_paused:
            self._report()

    def _report(self) -> None:
        if self.transport is None or self.session is None or self._ended:
            return
        consumed = self._written - self.transport.get_write_buffer_size()
        if consumed > self._reported:
            delta, self._reported = consumed - self._reported, consumed
            self.driver.app_consumed(self.session, delta)

    def end_of_data(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                self.transport.write_eof()

    def terminate(self, outcome: Outcome, reason: str, abort: bool) -> None:
        self._ended = True
        if self.transport is None:
            return
        if abort:
            # A reset, not a FIN: with linger 0 the kernel answers with RST, so the local
            # peer sees "connection reset" rather than a clean (and misleading) end.
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
            self.transport.abort()
        else:
            self.transport.close()

    def hold_input(self) -> None:
        self._held = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def release_input(self) -> None:
        self._held = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def opened(self) -> None:
        pass
