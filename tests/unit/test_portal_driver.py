"""The portal driver (the asyncio glue around a multiplexer), without sockets.

A scripted multiplexer (the real interface, its output chosen by the test) shows what the
glue does with a core's deadline and output; two drivers with real multiplexers, on one
in-process router and with recording local ends, show sessions carried end to end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from meshkey.identity.keys import Identity
from meshkey.portal.driver import MuxDriver
from meshkey.portal.mux import (
    Multiplexer,
    MuxEvent,
    SessionEvent,
    SessionRequested,
    ToApp,
)
from meshkey.portal.session import (
    Closed,
    Opened,
    Outcome,
    Role,
    SessionLimits,
    WriteToApp,
)
from meshkey.routing.address import ServiceAddress
from meshkey.routing.message import Message
from meshkey.routing.router import Router
from meshkey.wire.portal import Ping, decode_packet, encode_packet

#: Long enough for anything in these tests to happen on a loaded machine; only a bound
#: against hanging, never a measurement.
PATIENCE = 10.0


async def eventually(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(PATIENCE):
        while not condition():
            await asyncio.sleep(0.001)


def new_router() -> Router:
    return Router(Identity.generate().node_id, label="test")


class RecordingEnd:
    """A session's local end that records what the driver told it (an AppEnd)."""

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.driver: MuxDriver | None = None
        self.session: int | None = None
        self.received = bytearray()
        self.eof = False
        self.ended: tuple[Outcome, str, bool] | None = None
        self.opened_count = 0

    def deliver(self, data: bytes) -> None:
        if self.fail:
            raise RuntimeError("the local socket broke")
        self.received += data
        if self.driver is not None and self.session is not None:
            self.driver.app_consumed(self.session, len(data))  # re-enters the driver's pump

    def end_of_data(self) -> None:
        self.eof = True

    def terminate(self, outcome: Outcome, reason: str, abort: bool) -> None:
        self.ended = (outcome, reason, abort)

    def hold_input(self) -> None:
        pass

    def release_input(self) -> None:
        pass

    def opened(self) -> None:
        self.opened_count += 1


class ScriptedMux(Multiplexer):
    """A multiplexer whose deadline and output the test sets; it records its timer calls."""

    def __init__(self) -> None:
        super().__init__(Role.ACCEPTOR)
        self.deadline: float | None = None
        self.fired: list[float] = []
        self.on_fire: Callable[[float], None] = lambda now: None
        self.queued_commands: list[ToApp] = []
        self.queued_packets: list[bytes] = []
        self.queued_events: list[MuxEvent] = []
        self.shut_down_with: str | None = None

    def next_deadline(self) -> float | None:
        return self.deadline

    def on_timer(self, now: float) -> None:
        self.fired.append(now)
        self.deadline = None
        self.on_fire(now)

    def shut_down(self, reason: str, now: float) -> None:
        self.shut_down_with = reason

    def app_commands(self) -> list[ToApp]:
        commands, self.queued_commands = self.queued_commands, []
        return commands

    @property
    def has_packets(self) -> bool:
        return bool(self.queued_packets)

    @property
    def has_app_output(self) -> bool:
        return bool(self.queued_commands or self.queued_events)

    def next_packet(self) -> bytes | None:
        return self.queued_packets.pop(0) if self.queued_packets else None

    def events(self) -> list[MuxEvent]:
        events, self.queued_events = self.queued_events, []
        return events


# -- the glue, with a scripted core ------------------------------------------------------


async def test_the_timer_fires_the_core_at_its_deadline_then_follows_the_next_one() -> None:
    loop = asyncio.get_running_loop()
    mux = ScriptedMux()
    driver = MuxDriver(new_router(), Role.ACCEPTOR, label="test", mux=mux)
    end = RecordingEnd()
    driver.attach(3, end)
    first = loop.time() + 0.02
    deadlines = [first]

    def fire(now: float) -> None:  # the core's output at its deadline, and a next one
        mux.queued_commands.append(ToApp(3, WriteToApp(b"due")))
        if len(mux.fired) == 1:
            mux.deadline = now + 0.01
            deadlines.append(mux.deadline)

    mux.on_fire = fire
    mux.deadline = first
    driver.pump()
    await eventually(lambda: len(mux.fired) == 2)
    assert all(fired >= deadline for fired, deadline in zip(mux.fired, deadlines, strict=True))
    assert bytes(end.received) == b"duedue"  # what the timer made the core say was handled
    await asyncio.sleep(0.05)
    assert len(mux.fired) == 2  # no deadline, no more calls
    driver.retire()


async def test_a_closed_driver_shuts_its_core_down_and_its_timer_never_fires() -> None:
    loop = asyncio.get_running_loop()
    mux = ScriptedMux()
    driver = MuxDriver(new_router(), Role.ACCEPTOR, label="test", mux=mux)
    mux.deadline = loop.time() + 0.02
    driver.pump()
    await driver.close("the outlet was deleted")
    assert mux.shut_down_with == "the outlet was deleted"
    await asyncio.sleep(0.05)
    assert mux.fired == []
    assert not driver.router.has_worker(driver.worker)


async def test_output_drained_with_a_failing_local_end_is_still_handled() -> None:
    loop = asyncio.get_running_loop()
    router = new_router()
    sent: list[Message] = []

    async def sink(message: Message) -> None:
        sent.append(message)

    router.register("sink", sink, inline=True)
    requested: list[int] = []

    def on_requested(driver: MuxDriver, session: int) -> None:
        requested.append(session)
        raise RuntimeError("the outlet could not take it")

    mux = ScriptedMux()
    driver = MuxDriver(
        router,
        Role.ACCEPTOR,
        route=(ServiceAddress("sink"),),
        label="test",
        mux=mux,
        on_requested=on_requested,
    )
    broken, healthy = RecordingEnd(fail=True), RecordingEnd()
    driver.attach(1, broken)
    driver.attach(2, healthy)
    packet = encode_packet([Ping(2, 7)])
    mux.queued_commands = [
        ToApp(1, WriteToApp(b"lost")),  # raises in the end
        ToApp(2, WriteToApp(b"kept")),
    ]
    mux.queued_packets = [packet]
    mux.queued_events = [
        SessionRequested(5),  # raises in the callback
        SessionEvent(1, Closed(Outcome.RESET_LOCALLY, "the local connection was reset")),
        SessionEvent(2, Opened()),
    ]
    mux.deadline = loop.time() + 0.02
    driver.pump()  # raises nothing
    assert bytes(healthy.received) == b"kept" and healthy.opened_count == 1
    assert requested == [5]
    assert driver.counters.sessions_failed == 1  # session 1's end was still counted
    await eventually(lambda: len(sent) == 1 and bool(mux.fired))  # sent, and the timer armed
    assert decode_packet(sent[0].payload) == [Ping(2, 7)]
    driver.retire()


# -- two drivers, real cores, one router -------------------------------------------------


class Pair:
    """An opener's driver and an acceptor's on one router; the acceptor accepts every
    session with a recording end."""

    def __init__(self, *, limits: SessionLimits | None = None, to: str | None = None) -> None:
        self.router = new_router()
        self.accepted: dict[int, RecordingEnd] = {}
        limits = limits or SessionLimits()
        self.acceptor = MuxDriver(
            self.router, Role.ACCEPTOR, label="outlet", limits=limits, on_requested=self._accept
        )
        target = to or self.acceptor.worker
        self.opener = MuxDriver(
            self.router, Role.OPENER, route=(ServiceAddress(target),), label="inlet", limits=limits
        )

    def _accept(self, driver: MuxDriver, session: int) -> None:
        end = RecordingEnd()
        end.driver, end.session = driver, session
        self.accepted[session] = end
        driver.attach(session, end)
        driver.accept(session)

    def open(self) -> tuple[int, RecordingEnd]:
        client = RecordingEnd()
        client.driver = self.opener
        client.session = session = self.opener.open_session(client)
        return session, client

    def retire(self) -> None:
        self.opener.retire()
        self.acceptor.retire()


async def test_two_drivers_carry_a_session_both_ways_and_close_it() -> None:
    pair = Pair()
    session, client = pair.open()
    pair.opener.app_data(session, b"hello")
    pair.opener.app_eof(session)
    await eventually(lambda: session in pair.accepted and pair.accepted[session].eof)
    server = pair.accepted[session]
    assert bytes(server.received) == b"hello" and client.opened_count == 1
    pair.acceptor.app_data(session, b"world")
    pair.acceptor.app_eof(session)
    await eventually(lambda: client.ended is not None and server.ended is not None)
    assert bytes(client.received) == b"world" and client.eof
    assert client.ended == server.ended == (Outcome.CLOSED, "closed", False)
    for driver in (pair.opener, pair.acceptor):
        counters = driver.counters
        assert (counters.bytes_in, counters.bytes_out) == (5, 5)
        assert (counters.sessions_total, counters.sessions_failed) == (1, 0)
    pair.retire()


async def test_a_peer_going_away_on_purpose_is_not_counted_as_a_failure() -> None:
    pair = Pair()
    reset_session, reset_client = pair.open()
    await eventually(lambda: reset_session in pair.accepted)
    pair.acceptor.app_reset(reset_session, "the server crashed")
    await eventually(lambda: reset_client.ended is not None)
    assert pair.opener.counters.sessions_failed == 1  # a reset is a failure
    session, client = pair.open()
    await eventually(lambda: session in pair.accepted)
    await pair.acceptor.close("the outlet was deleted")
    await eventually(lambda: client.ended is not None)
    assert client.ended is not None and client.ended[0] is Outcome.RESET_BY_PEER
    assert "the outlet was deleted" in client.ended[1] and client.ended[2]  # aborted
    assert pair.opener.counters.sessions_failed == 1  # a shutdown is not
    pair.retire()


async def test_a_route_that_reaches_no_one_fails_the_session_with_the_routers_reason() -> None:
    pair = Pair(limits=SessionLimits(open_retries=0), to="nobody")
    session, client = pair.open()
    pair.opener.app_data(session, b"anyone?")
    await eventually(lambda: client.ended is not None)
    assert client.ended is not None and client.ended[0] is Outcome.ROUTE_BROKEN
    assert "no service 'nobody'" in client.ended[1]
    counters = pair.opener.counters
    assert counters.sessions_failed == 1 and (counters.last_error or "").startswith("route")
    pair.retire()


async def test_a_packet_that_does_not_parse_is_counted_and_dropped() -> None:
    pair = Pair()
    reply_to = (ServiceAddress(pair.opener.worker),)
    await pair.acceptor.receive(Message((), reply_to, b"\x01\xff not a frame"))
    assert pair.acceptor.counters.bad_packets == 1
    assert len(pair.acceptor.mux) == 0 and pair.accepted == {}
    pair.retire()
