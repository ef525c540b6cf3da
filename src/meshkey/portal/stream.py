"""A portal session as an asyncio (StreamReader, StreamWriter) pair, without a local socket.

:func:`open_portal_stream` opens one session to the outlet at ``route`` and returns the
standard stream pair. The pair's transport is :class:`PortalTransport`: ``write`` feeds the
session, ``write_eof`` half-closes, ``abort`` resets; ``drain()`` waits while the session's
send buffer is full (the session's ``PauseReading`` pauses the writer's protocol). Bytes
from the peer go to the reader; they count as consumed while the reader takes them, and
stop counting when the StreamReader pauses its transport (its buffer is full), so the
window closes instead of the buffer growing.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any

from meshkey.portal.budget import PortalBudget
from meshkey.portal.driver import MuxDriver
from meshkey.portal.inlet import check_end_to_end
from meshkey.portal.session import DEFAULT_LIMITS, Outcome, Role, SessionLimits
from meshkey.routing.address import Route, format_route
from meshkey.routing.router import Router

if TYPE_CHECKING:
    from meshkey.channel.manager import SecureChannels

STREAM_LIMIT = 256 * 1024  # the StreamReader's buffer limit (it pauses at twice this)
#: The owner of a node's portal streams in its budget (they are all the node's own).
STREAMS = "portal streams"


class PortalTransport(asyncio.Transport):
    """The transport under a portal stream pair (also the session's local end)."""

    def __init__(self, driver: MuxDriver, protocol: asyncio.StreamReaderProtocol) -> None:
        super().__init__()
        self.driver = driver
        self.protocol = protocol
        self.session = -1
        self._closing = False
        self._eof_sent = False
        self._reading = True
        self._unreported = 0
        self._opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.reason: str | None = None

    # -- asyncio.Transport, called by the stream writer and reader -----------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._eof_sent or not data:
            return
        self.driver.app_data(self.session, bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def write_eof(self) -> None:
        if not self._eof_sent and not self._closing:
            self._eof_sent = True
            self.driver.app_eof(self.session)

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        """Like a socket's close: our direction ends; if more data arrives, the session is
        reset (as a kernel answers data for a closed socket with RST). A reader that had
        stopped taking data (its buffer full) resets at once, as a kernel resets a socket
        closed with unread data: no more data would come to reset it, and the session
        would stay open, half-closed, for as long as the peer answers."""
        if self._closing:
            return
        if not self._reading or self._unreported:
            self.abort()
            return
        self.write_eof()
        self._closing = True

    def abort(self) -> None:
        if self.reason is None:
            self.driver.app_reset(self.session, "the stream was aborted")
        self._closing = True

    def is_closing(self) -> bool:
        return self._closing

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        self._reading = True
        self._report(self._unreported)

    def is_reading(self) -> bool:
        return self._reading

    def get_write_buffer_size(self) -> int:
        return self.driver.buffered_to_send(self.session)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return format_route(self.driver.route)
        return default

    # -- the session's local end ---------------------------------------------------------

    def _report(self, count: int) -> None:
        if count and self.reason is None:
            self._unreported = 0
            self.driver.app_consumed(self.session, count)

    def deliver(self, data: bytes) -> None:
        if self._closing:
            # Closed, yet the peer still sends: as a TCP socket would, answer with a reset.
            if self.reason is None:
                self.driver.app_reset(self.session, "the stream was closed while data arrived")
            return
        self.protocol.data_received(data)
        if self._reading:
            self._report(self._unreported + len(data))
        else:
            self._unreported += len(data)

    def end_of_data(self) -> None:
        self.protocol.eof_received()

    def terminate(self, outcome: Outcome, reason: str, abort: bool) -> None:
        self.reason = reason
        self._closing = True
        if not self._opened.done():
            error = (
                ConnectionRefusedError(reason)
                if outcome is Outcome.REFUSED
                else ConnectionError(reason)
            )
            self._opened.set_exception(error)
        self.protocol.connection_lost(ConnectionResetError(reason) if abort else None)

    def hold_input(self) -> None:
        self.protocol.pause_writing()

    def release_input(self) -> None:
        self.protocol.resume_writing()

    def opened(self) -> None:
        if not self._opened.done():
            self._opened.set_result(None)


async def open_portal_stream(
    router: Router,
    route: Route,
    *,
    insecure: bool = False,
    limits: SessionLimits = DEFAULT_LIMITS,
    timeout: float = 30.0,
    rng: random.Random | None = None,
    channels: SecureChannels | None = None,
    budget: PortalBudget | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Opens a portal session to the outlet at ``route`` (end to end, as for an inlet).
    ``budget``: the node's (every stream of a node is one owner in it).

    Raises ConnectionRefusedError when the outlet refuses (its server refused, or we are not
    allowed), ConnectionError when the route fails, TimeoutError after ``timeout``.
    """
    if not insecure:
        check_end_to_end(route, router, channels)
    loop = asyncio.get_running_loop()

    def retire(driver: MuxDriver) -> None:
        driver.retire()

    driver = MuxDriver(
        router,
        Role.OPENER,
        route=route,
        label="stream",
        limits=limits,
        rng=rng,
        on_idle=retire,
        budget=budget,
        owner=STREAMS,
    )
    reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport = PortalTransport(driver, protocol)
    protocol.connection_made(transport)
    transport.session = driver.open_session(transport)
    opened = transport._opened
    try:
        async with asyncio.timeout(timeout):
            await opened
    except TimeoutError:
        transport.abort()
        raise TimeoutError(f"no answer from the outlet at {format_route(route)}") from None
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer
