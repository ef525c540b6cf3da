"""The portal session core, driven with a fake clock over a simulated path (test_portal_sim)."""

from __future__ import annotations

import hashlib
import os
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkey.portal.session import (
    ACK_DELAY,
    CloseApp,
    Closed,
    Opened,
    Outcome,
    PauseReading,
    PortalLocalError,
    PortalSession,
    Role,
    SendFrames,
    SessionLimits,
    ShutdownAppWrite,
    State,
    WriteToApp,
)
from meshkey.portal.transitions import TRANSITIONS, Local
from meshkey.wire.portal import (
    MAX_CHUNK,
    MAX_WINDOW,
    Ack,
    Data,
    Fin,
    Frame,
    Open,
    OpenOk,
    OpenRefused,
    Ping,
    Pong,
    RefuseReason,
    Reset,
    ResetReason,
    frame_kind,
)

from .test_portal_sim import Pair, SimApp

MiB = 1024 * 1024


def digest(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def done(pair: Pair, *sessions: int) -> bool:
    return all(pair.apps[side][s].outcome is not None for side in ("a", "b") for s in sessions)


# -- whole transfers over the simulated path ----------------------------------------------


def test_bytes_arrive_exactly_over_a_perfect_path_and_both_ends_close() -> None:
    pair = Pair()
    payload = os.urandom(4 * MiB + 12345)
    client = SimApp(outgoing=payload)
    session = pair.open(client)
    pair.run(lambda: done(pair, session))
    server = pair.apps["b"][session]
    assert digest(server.received) == digest(payload)
    assert digest(client.received) == digest(payload)  # echoed back
    for app in (client, server):
        assert app.outcome == Closed(Outcome.CLOSED, "closed")
        assert app.closed == CloseApp(Outcome.CLOSED, "closed", abort=False)
        assert app.peer_eof
    assert pair.a.session(session) is not None  # lingers a while, to re-acknowledge a FIN
    pair.settle(pair.a.limits.linger + 1)
    assert pair.a.session(session) is None and pair.b.session(session) is None


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_bytes_arrive_exactly_under_loss_reordering_and_duplication(seed: int) -> None:
    pair = Pair(seed=seed, loss=0.10, duplicate=0.10, reorder=0.03)
    payload = random.Random(seed).randbytes(3 * MiB + seed)
    client = SimApp(outgoing=payload)
    session = pair.open(client)
    pair.run(lambda: done(pair, session), limit=3600)
    server = pair.apps["b"][session]
    assert digest(server.received) == digest(payload)
    assert digest(client.received) == digest(payload)
    assert client.outcome == server.outcome == Closed(Outcome.CLOSED, "closed")
    assert pair.path.lost > 5 and pair.path.duplicated > 3
    core_a = pair.a.session(session)
    assert core_a is not None
    core_b = pair.b.session(session)
    assert core_b is not None
    assert core_a.stats.bytes_resent > 0  # it really had to resend
    # and duplicates were dropped, not delivered (the digests above)
    assert core_a.stats.duplicate_bytes + core_b.stats.duplicate_bytes > 0
    assert pair.max_buffered <= MAX_WINDOW + 64 * 1024


def test_a_slow_reader_closes_the_window_and_pauses_the_far_socket() -> None:
    limits = SessionLimits()
    pair = Pair(acceptor_app=lambda: SimApp(consume_rate=2 * MiB))  # 2 MB/s local reader
    payload = os.urandom(8 * MiB)
    client = SimApp(outgoing=payload)
    session = pair.open(client)
    paused_seen = []

    def finished() -> bool:
        paused_seen.append(client.paused)
        return done(pair, session)

    pair.run(finished, limit=600)
    server = pair.apps["b"][session]
    assert digest(server.received) == digest(payload)
    assert any(paused_seen) and not all(paused_seen)  # the inlet stopped reading, then resumed
    assert server.max_unconsumed <= limits.receive_window  # never more than the window held
    # No session held more than its window (+ one socket read) in either direction.
    assert pair.max_buffered <= limits.receive_window + 64 * 1024


def test_half_close_the_client_shuts_its_write_side_and_still_gets_the_reply() -> None:
    reply = os.urandom(300_000)

    class Server(SimApp):
        pass

    server_app = Server(outgoing=b"", eof_after=False)
    pair = Pair(acceptor_app=lambda: server_app)
    client = SimApp(outgoing=b"GET /big\r\n")
    session = pair.open(client)
    pair.run(lambda: server_app.peer_eof)
    assert bytes(server_app.received) == b"GET /big\r\n"
    core_a = pair.a.session(session)
    assert core_a is not None and core_a.state is State.OPEN  # the other direction lives on
    server_app.outgoing, server_app.eof_after = reply, True
    pair.run(lambda: done(pair, session))
    assert bytes(client.received) == reply
    assert client.peer_eof
    assert client.outcome == Closed(Outcome.CLOSED, "closed")


def test_reset_reaches_the_other_end_promptly_and_both_fail() -> None:
    pair = Pair()
    client = SimApp(outgoing=os.urandom(2 * MiB), eof_after=False)
    session = pair.open(client)
    pair.run(lambda: len(pair.apps["b"].get(session, SimApp()).received) > 100_000)
    started = pair.now
    pair.a.app_reset(session, pair.now, "client aborted")
    pair.run(lambda: done(pair, session))
    server = pair.apps["b"][session]
    assert pair.now - started < 0.1  # one path delay, no timer
    assert server.outcome is not None and server.outcome.outcome is Outcome.RESET_BY_PEER
    assert "client aborted" in server.outcome.reason
    assert server.closed is not None and server.closed.abort
    assert client.outcome == Closed(Outcome.RESET_LOCALLY, "client aborted")
    core_b = pair.b.session(session)
    assert core_b is None  # a failed session is forgotten at once


def test_a_refused_open_closes_the_client_at_once_with_the_reason() -> None:
    pair = Pair(accept=lambda s: (RefuseReason.REFUSED, "connection refused by 127.0.0.1:9"))
    client = SimApp(outgoing=b"hello")
    session = pair.open(client)
    pair.run(lambda: client.outcome is not None)
    assert pair.now - 1000.0 < 0.1
    assert client.outcome is not None and client.outcome.outcome is Outcome.REFUSED
    assert "connection refused by 127.0.0.1:9" in client.outcome.reason
    assert client.closed is not None and not client.closed.abort
    assert not client.opened
    assert pair.a.session(session) is None and pair.b.session(session) is None


def test_a_silent_peer_fails_the_session_within_the_peer_timeout() -> None:
    limits = SessionLimits(peer_timeout=5.0)
    pair = Pair(limits=limits)
    client = SimApp(outgoing=os.urandom(4 * MiB))
    session = pair.open(client)
    pair.run(lambda: len(pair.apps["b"].get(session, SimApp()).received) > MiB)
    pair.path.blocked = True  # the relay died: nothing gets through, nobody says so
    silent_from = pair.now
    pair.run(lambda: client.outcome is not None, limit=60)
    assert client.outcome is not None and client.outcome.outcome is Outcome.TIMEOUT
    assert "no answer from the peer" in client.outcome.reason
    assert limits.peer_timeout <= pair.now - silent_from <= limits.peer_timeout + limits.max_rto
    assert client.closed is not None and client.closed.abort
    server = pair.apps["b"][session]
    pair.run(lambda: server.outcome is not None, limit=120)  # the far end gives up too
    assert server.outcome is not None and server.outcome.outcome is Outcome.TIMEOUT


def test_a_broken_route_fails_open_sessions_after_the_grace_period() -> None:
    limits = SessionLimits(route_grace=2.0)
    pair = Pair(limits=limits)
    client = SimApp(outgoing=os.urandom(2 * MiB))
    session = pair.open(client)
    pair.run(lambda: len(pair.apps["b"].get(session, SimApp()).received) > 200_000)
    pair.path.blocked = True
    pair.route_errors = True
    broken_at = pair.now
    pair.run(lambda: client.outcome is not None, limit=30)
    assert client.outcome is not None and client.outcome.outcome is Outcome.ROUTE_BROKEN
    assert client.outcome.reason == "route broken: the relay is gone"
    assert pair.now - broken_at <= limits.route_grace + limits.max_rto


def test_route_errors_while_opening_retry_with_backoff_then_give_up() -> None:
    pair = Pair()
    pair.path.blocked = True
    pair.route_errors = True
    client = SimApp(outgoing=b"x")
    pair.open(client)
    pair.run(lambda: client.outcome is not None, limit=60)
    assert client.outcome is not None and client.outcome.outcome is Outcome.ROUTE_BROKEN
    assert client.outcome.reason == "unreachable: the relay is gone"
    # Bounded: the first OPEN, the open retries and a few RTO resends, not a busy loop.
    assert pair.path.sent <= 1 + pair.a.limits.open_retries + 4
    assert pair.now - 1000.0 < 10


def test_a_route_error_is_forgiven_when_the_peer_speaks_again() -> None:
    limits = SessionLimits(route_grace=2.0)
    pair = Pair(limits=limits)
    payload = os.urandom(MiB)
    client = SimApp(outgoing=payload)
    session = pair.open(client)
    pair.run(lambda: len(pair.apps["b"].get(session, SimApp()).received) > 100_000)
    pair.a.route_error("a path switch lost a message", pair.now)
    pair.run(lambda: done(pair, session))
    assert client.outcome == Closed(Outcome.CLOSED, "closed")
    assert digest(pair.apps["b"][session].received) == digest(payload)


def test_an_idle_session_survives_long_idle_periods_with_rare_keepalives() -> None:
    pair = Pair()
    client = SimApp(outgoing=b"hello", eof_after=False)
    server = SimApp(eof_after=False)
    pair.acceptor_app = lambda: server
    session = pair.open(client)
    pair.run(lambda: bytes(server.received) == b"hello")
    sent_before = pair.path.sent
    pair.settle(3600.0)  # an hour of silence from both applications
    assert client.outcome is None and server.outcome is None
    pings = pair.path.sent - sent_before
    interval = pair.a.limits.keepalive_interval
    grid = 2.0  # keepalives are rounded up to a grid: intervals of 20 to 22 s
    assert 3600 / (interval + grid) <= pings / 2 <= 3600 / interval + 1  # a PING, a PONG
    pair.a.app_data(session, b"still there?", pair.now)
    pair.run(lambda: bytes(server.received) == b"hellostill there?")


def test_an_idle_acceptor_whose_opener_vanished_fails_after_the_idle_timeout() -> None:
    pair = Pair()
    client = SimApp(outgoing=b"hello", eof_after=False)
    server = SimApp(eof_after=False)
    pair.acceptor_app = lambda: server
    pair.open(client)
    pair.run(lambda: bytes(server.received) == b"hello")
    pair.path.blocked = True
    started = pair.now
    pair.run(lambda: server.outcome is not None, limit=200)
    assert server.outcome is not None and server.outcome.outcome is Outcome.TIMEOUT
    assert pair.now - started <= pair.b.limits.idle_timeout + 1


# -- one core, by hand -------------------------------------------------------------------


def frames_of(session: PortalSession) -> list[Frame]:
    return [f for c in session.commands() if isinstance(c, SendFrames) for f in c.frames]


#: Windows and send buffers at their largest from the start (no growth), so the protocol's
#: frames can be checked at fixed sizes; growth has tests of its own.
FULL = SessionLimits(initial_window=MAX_WINDOW, initial_send_buffer=MAX_WINDOW)


def opened_pair(now: float = 0.0) -> tuple[PortalSession, PortalSession]:
    opener = PortalSession(Role.OPENER, 7, now, rng=random.Random(1), limits=FULL)
    (open_frame,) = frames_of(opener)
    assert open_frame == Open(7, MAX_WINDOW)
    acceptor = PortalSession(Role.ACCEPTOR, 7, now, peer_window=MAX_WINDOW, limits=FULL)
    acceptor.accept(now)
    (ok,) = frames_of(acceptor)
    opener.frame_received(ok, now)
    assert opener.state is State.OPEN and opener.events() == [Opened()]
    acceptor.frame_received(frames_of(opener)[0], now)  # the ACK that confirms OPEN_OK
    return opener, acceptor


def test_local_misuse_raises_the_local_error_and_changes_nothing() -> None:
    opener, acceptor = opened_pair()
    opener.app_eof(0.0)
    with pytest.raises(PortalLocalError):
        opener.app_data(b"late", 0.0)
    with pytest.raises(PortalLocalError):
        opener.app_eof(0.0)
    with pytest.raises(PortalLocalError):
        acceptor.accept(0.0)
    with pytest.raises(PortalLocalError):
        acceptor.app_consumed(1, 0.0)  # nothing was written to its socket
    with pytest.raises(PortalLocalError):
        acceptor.frame_received(Ping(8, 1), 0.0)  # another session's frame
    waiting = PortalSession(Role.ACCEPTOR, 1, 0.0, peer_window=100)
    with pytest.raises(PortalLocalError):
        waiting.app_data(b"x", 0.0)  # before accept()
    assert opener.state is State.OPEN and acceptor.state is State.OPEN


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (Data(7, MAX_WINDOW - 10, b"x" * 11), "past the window"),
        (Ack(7, 5, 100), "only 0 were sent"),
        (Ack(7, 0, 100, fin=True), "never sent"),
        (Open(7, 100), None),  # a repeated OPEN: answered with OPEN_OK, not an error
        (OpenOk(7, 100), "OPEN_OK sent to the acceptor"),
        (OpenRefused(7, RefuseReason.REFUSED, "x"), "OPEN_REFUSED sent to the acceptor"),
    ],
)
def test_protocol_violations_reset_and_fail_with_the_peer_error(
    frame: Frame, why: str | None
) -> None:
    _, acceptor = opened_pair()
    acceptor.frame_received(frame, 1.0)
    sent = frames_of(acceptor)
    if why is None:
        assert acceptor.state is State.OPEN
        assert OpenOk(7, MAX_WINDOW) in sent
        return
    assert acceptor.state is State.FAILED and acceptor.outcome is Outcome.PROTOCOL_ERROR
    assert acceptor.error is not None and why in acceptor.error.reason
    assert acceptor.error.code is ResetReason.PROTOCOL_ERROR
    assert any(isinstance(f, Reset) and f.reason is ResetReason.PROTOCOL_ERROR for f in sent)
    assert acceptor.events()[-1] == Closed(Outcome.PROTOCOL_ERROR, acceptor.reason or "")
    acceptor.frame_received(Ping(7, 1), 2.0)  # later frames change nothing
    assert frames_of(acceptor) == []


def test_a_peer_reset_says_its_code_typed_in_the_closed_event() -> None:
    opener, acceptor = opened_pair()
    acceptor.shut_down("the outlet was deleted", 1.0)
    for frame in frames_of(acceptor):
        opener.frame_received(frame, 1.1)
    commands, (closed,) = opener.commands(), opener.events()
    assert closed == Closed(
        Outcome.RESET_BY_PEER,
        "reset by the peer (shutting_down): the outlet was deleted",
        ResetReason.SHUTTING_DOWN,
    )
    assert commands == [CloseApp(Outcome.RESET_BY_PEER, closed.reason, abort=True)]
    own = acceptor.events()[-1]
    assert isinstance(own, Closed) and own.outcome is Outcome.SHUT_DOWN
    assert own.peer_reset is None  # only the peer's code is said


def test_a_fin_that_contradicts_the_data_is_a_protocol_error() -> None:
    _, acceptor = opened_pair()
    acceptor.frame_received(Data(7, 0, b"abcdef"), 1.0)
    acceptor.frame_received(Fin(7, 3), 1.0)
    assert acceptor.outcome is Outcome.PROTOCOL_ERROR
    _, acceptor = opened_pair()
    acceptor.frame_received(Fin(7, 6), 1.0)
    acceptor.frame_received(Data(7, 4, b"abc"), 1.0)
    assert acceptor.outcome is Outcome.PROTOCOL_ERROR


def test_out_of_order_data_is_held_reported_in_ranges_and_delivered_in_order() -> None:
    _, acceptor = opened_pair()
    acceptor.frame_received(Data(7, 10, b"klmno"), 1.0)
    acceptor.frame_received(Data(7, 20, b"uvw"), 1.0)
    acceptor.frame_received(Data(7, 12, b"mnopqrst"), 1.0)  # overlaps what is held
    commands = acceptor.commands()
    assert not any(isinstance(c, WriteToApp) for c in commands)
    (ack,) = [f for c in commands if isinstance(c, SendFrames) for f in c.frames]
    assert ack == Ack(7, 0, MAX_WINDOW, False, ((10, 23),))
    assert acceptor.buffered_received == 13
    acceptor.frame_received(Data(7, 0, b"abcdefghij"), 1.0)
    acceptor.frame_received(Data(7, 0, b"abcdefghij"), 1.0)  # a duplicate
    commands = acceptor.commands()
    written = b"".join(c.data for c in commands if isinstance(c, WriteToApp))
    assert written == b"abcdefghijklmnopqrstuvw"
    acks = [f for c in commands if isinstance(c, SendFrames) for f in c.frames]
    assert acks == [Ack(7, 23, MAX_WINDOW - 23)]
    assert acceptor.stats.duplicate_bytes >= 10


def test_the_window_is_the_edge_of_what_the_local_socket_consumed() -> None:
    _opener, acceptor = opened_pair()
    chunk = b"z" * MAX_CHUNK
    for i in range(MAX_WINDOW // MAX_CHUNK):
        acceptor.frame_received(Data(7, i * MAX_CHUNK, chunk), 1.0)
    (ack,) = [f for c in acceptor.commands() if isinstance(c, SendFrames) for f in c.frames]
    assert ack == Ack(7, MAX_WINDOW, 0)  # full: nothing more may come
    acceptor.app_consumed(MAX_CHUNK, 1.0)
    assert frames_of(acceptor) == [Ack(7, MAX_WINDOW, MAX_CHUNK)]  # the window reopens
    acceptor.app_consumed(1000, 1.0)
    assert frames_of(acceptor) == []  # small updates wait for a worthwhile one


def test_the_sender_never_passes_the_window_and_probes_a_closed_one() -> None:
    opener, _ = opened_pair()
    opener.app_data(os.urandom(3 * MiB), 1.0)
    commands = opener.commands()
    data = [
        f for c in commands if isinstance(c, SendFrames) for f in c.frames if isinstance(f, Data)
    ]
    assert sum(len(d.data) for d in data) == MAX_WINDOW
    assert PauseReading() in commands
    opener.frame_received(Ack(7, MAX_WINDOW, 0), 1.1)  # all acknowledged, window closed
    assert frames_of(opener) == []
    deadline = opener.next_deadline()
    assert deadline is not None
    opener.on_timer(deadline)
    assert [type(f) for f in frames_of(opener)] == [Ping]  # a probe, answered with an ACK
    opener.frame_received(Ack(7, MAX_WINDOW, 2 * MAX_CHUNK), deadline + 0.01)
    sent = frames_of(opener)
    assert [(f.offset, len(f.data)) for f in sent if isinstance(f, Data)] == [
        (MAX_WINDOW, MAX_CHUNK),
        (MAX_WINDOW + MAX_CHUNK, MAX_CHUNK),
    ]


def test_the_retransmission_timeout_follows_rfc6298_and_backs_off() -> None:
    limits = SessionLimits(min_rto=0.2, initial_rto=1.0, max_rto=4.0)
    opener = PortalSession(Role.OPENER, 1, 0.0, limits=limits)
    frames_of(opener)
    assert opener.next_deadline() == 1.0  # the first OPEN's timer: the initial RTO
    opener.frame_received(OpenOk(1, MAX_WINDOW), 0.1)
    opener.app_data(b"a" * 100, 0.1)
    frames_of(opener)
    opener.frame_received(Ack(1, 100, MAX_WINDOW), 0.2)  # RTT 0.1: SRTT .1, RTTVAR .05
    assert opener.rto == pytest.approx(0.3)
    opener.app_data(b"b" * 100, 1.0)
    frames_of(opener)
    assert opener.next_deadline() == pytest.approx(1.3)
    resent = []
    for expected in (0.6, 1.2, 2.4, 4.0, 4.0):
        deadline = opener.next_deadline()
        assert deadline is not None
        opener.on_timer(deadline)
        resent.append(frames_of(opener))
        assert opener.rto == pytest.approx(expected)
    assert all(Data(1, 100, b"b" * 100) in frames for frames in resent)
    opener.on_timer(100.0)  # nothing heard for far longer than the peer timeout
    assert opener.outcome is Outcome.TIMEOUT


def test_a_lost_open_ok_is_repaired_by_the_repeated_open() -> None:
    opener = PortalSession(Role.OPENER, 3, 0.0)
    (first_open,) = frames_of(opener)
    assert isinstance(first_open, Open)
    acceptor = PortalSession(Role.ACCEPTOR, 3, 0.0, peer_window=first_open.window)
    acceptor.accept(0.0)
    frames_of(acceptor)  # the OPEN_OK is lost
    opener.on_timer(1.0)
    (again,) = frames_of(opener)
    assert again == first_open
    acceptor.frame_received(again, 1.01)
    (ok,) = frames_of(acceptor)
    opener.frame_received(ok, 1.02)
    assert opener.state is State.OPEN


def test_data_before_the_open_ok_opens_the_opener_through_its_ack() -> None:
    opener = PortalSession(Role.OPENER, 3, 0.0)
    frames_of(opener)
    opener.frame_received(Data(3, 0, b"banner"), 0.1)  # the acceptor spoke first
    writes = [c for c in opener.commands() if isinstance(c, WriteToApp)]
    assert writes == [WriteToApp(b"banner")]
    assert opener.state.value == "opening"
    opener.frame_received(Ack(3, 0, 5000), 0.1)
    assert opener.state is State.OPEN


def test_a_closed_session_lingers_to_acknowledge_a_repeated_fin() -> None:
    opener, acceptor = opened_pair()
    opener.app_eof(1.0)
    acceptor.app_eof(1.0)
    fin_a, fin_b = frames_of(opener), frames_of(acceptor)
    for frame in fin_b:
        opener.frame_received(frame, 1.1)
    for frame in fin_a:
        acceptor.frame_received(frame, 1.1)
    for frame in frames_of(acceptor):
        opener.frame_received(frame, 1.2)
    assert opener.state is State.CLOSED
    frames_of(opener)  # this last ACK is lost: the acceptor sends its FIN again
    acceptor.on_timer(acceptor.next_deadline() or 0.0)
    repeated = frames_of(acceptor)
    assert Fin(7, 0) in repeated
    for frame in repeated:
        opener.frame_received(frame, 2.5)
    (ack,) = frames_of(opener)
    assert ack == Ack(7, 0, MAX_WINDOW, fin=True)
    acceptor.frame_received(ack, 2.6)
    assert acceptor.state is State.CLOSED
    assert any(isinstance(c, ShutdownAppWrite) for c in acceptor.commands()) is False
    assert not opener.finished
    opener.on_timer(1.2 + opener.limits.linger)
    assert opener.finished


def test_ping_is_answered_with_pong_and_the_window() -> None:
    _opener, acceptor = opened_pair()
    acceptor.frame_received(Ping(7, 42), 1.0)
    assert frames_of(acceptor) == [Pong(7, 42), Ack(7, 0, MAX_WINDOW)]


def test_in_order_data_is_acknowledged_late_or_with_the_reply() -> None:
    _, acceptor = opened_pair()
    acceptor.frame_received(Data(7, 0, b"GET /"), 1.0)
    writes = acceptor.commands()
    assert writes == [WriteToApp(b"GET /")]  # no ACK yet: it may ride with the answer
    deadline = acceptor.next_deadline()
    assert deadline is not None and deadline == pytest.approx(1.0 + ACK_DELAY)
    acceptor.app_consumed(5, 1.001)
    acceptor.app_data(b"200 OK", 1.002)
    frames = frames_of(acceptor)
    assert frames == [Data(7, 0, b"200 OK"), Ack(7, 5, MAX_WINDOW)]  # together
    acceptor.frame_received(Ack(7, 6, MAX_WINDOW), 1.01)
    acceptor.frame_received(Data(7, 5, b"more"), 2.0)
    acceptor.commands()
    acceptor.on_timer(2.0 + ACK_DELAY)  # nothing to ride with: the timer sends it alone
    assert frames_of(acceptor) == [Ack(7, 9, MAX_WINDOW - 4)]


def test_an_acceptor_slow_to_connect_is_waited_for_and_never_sent_data_early() -> None:
    opener = PortalSession(Role.OPENER, 4, 0.0)
    assert [type(f) for f in frames_of(opener)] == [Open]
    acceptor = PortalSession(Role.ACCEPTOR, 4, 0.0, peer_window=MAX_WINDOW)
    opener.app_data(b"early bytes", 0.01)  # the client speaks before the outlet connected
    now = 0.0
    for _ in range(3):  # the outlet's TCP connect takes seconds (a full backlog, say)
        now = opener.next_deadline() or now
        opener.on_timer(now)
        sent = frames_of(opener)
        assert all(isinstance(f, Open) for f in sent), sent  # only OPEN again, no probes
        for frame in sent:
            acceptor.frame_received(frame, now)
        assert frames_of(acceptor) == []  # nothing to say until connected
    acceptor.accept(now)
    for frame in frames_of(acceptor):
        opener.frame_received(frame, now + 0.01)
    for frame in frames_of(opener):
        acceptor.frame_received(frame, now + 0.02)
    assert acceptor.state is State.OPEN and opener.state is State.OPEN
    assert [c for c in acceptor.commands() if isinstance(c, WriteToApp)] == [
        WriteToApp(b"early bytes")
    ]


peer_frames = st.one_of(
    st.builds(Open, st.just(7), st.integers(0, MAX_WINDOW)),
    st.builds(OpenOk, st.just(7), st.integers(0, MAX_WINDOW)),
    st.builds(OpenRefused, st.just(7), st.sampled_from(RefuseReason), st.text(max_size=5)),
    st.builds(
        Data, st.just(7), st.integers(0, 2 * MAX_WINDOW), st.binary(min_size=1, max_size=3000)
    ),
    st.builds(
        Ack,
        st.just(7),
        st.integers(0, 5000),
        st.integers(0, MAX_WINDOW),
        st.booleans(),
        st.just(()),
    ),
    st.builds(Fin, st.just(7), st.integers(0, 2 * MAX_WINDOW)),
    st.builds(Reset, st.just(7), st.sampled_from(ResetReason), st.text(max_size=5)),
    st.builds(Ping, st.just(7), st.integers(0, 10)),
    st.builds(Pong, st.just(7), st.integers(0, 10)),
)


@given(
    st.sampled_from([Role.OPENER, Role.ACCEPTOR]),
    st.lists(st.tuples(peer_frames, st.floats(0, 5)), max_size=40),
)
def test_whatever_the_peer_sends_the_core_never_raises_and_stays_bounded(
    role: Role, script: list[tuple[Frame, float]]
) -> None:
    session = PortalSession(role, 7, 0.0, peer_window=MAX_WINDOW)
    if role is Role.ACCEPTOR:
        session.accept(0.0)
    session.app_data(os.urandom(5000), 0.0)
    now = 0.0
    for frame, step in script:
        now += step
        before, kind = session.state, frame_kind(frame)
        allowed = session.allows(kind)
        session.frame_received(frame, now)
        if allowed:  # it went where the table says it may
            assert session.state in TRANSITIONS[role][before][kind]
        else:  # refused: a protocol error
            assert session.outcome is Outcome.PROTOCOL_ERROR and session.error is not None
        deadline = session.next_deadline()
        if deadline is not None and deadline <= now:
            before = session.state
            session.on_timer(now)
            assert session.state in TRANSITIONS[role][before][Local.TIMER]
        session.commands()
        session.events()
        assert session.buffered_received <= MAX_WINDOW
        assert session.buffered_to_send <= 5000
        if session.state is State.FAILED:
            assert session.outcome is not None and session.reason
            assert session.next_deadline() is None
