"""Many portal sessions over one route: ids, independence of windows, bounds, unknown ids."""

from __future__ import annotations

import hashlib
import random

import pytest

from meshkey.portal.budget import BudgetLimits, PortalBudget
from meshkey.portal.mux import MAX_ANSWERS, Multiplexer, SendPacket, SessionRequested
from meshkey.portal.session import Closed, Outcome, PauseReading, PortalLocalError, Role
from meshkey.wire.portal import (
    MAX_PACKET,
    MAX_WINDOW,
    Data,
    Frame,
    Open,
    OpenOk,
    OpenRefused,
    Ping,
    Pong,
    RefuseReason,
    Reset,
    ResetReason,
    decode_packet,
    encode_packet,
)

from .test_portal_sim import Pair, SimApp


def digest(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_thousand_concurrent_sessions_on_one_route_each_get_their_own_bytes() -> None:
    pair = Pair(seed=5, loss=0.02, reorder=0.01)
    pair.track_buffers = False
    rng = random.Random(5)
    payloads = {}
    for _ in range(1000):
        payload = rng.randbytes(rng.randrange(1, 20_000))
        session = pair.open(SimApp(outgoing=payload))
        payloads[session] = payload
    assert len(set(payloads)) == 1000  # no id reused while open
    pair.run(lambda: all(pair.apps["a"][s].outcome is not None for s in payloads), limit=3600)
    for session, payload in payloads.items():
        assert digest(pair.apps["b"][session].received) == digest(payload)
        assert digest(pair.apps["a"][session].received) == digest(payload)
        assert pair.apps["a"][session].outcome == Closed(Outcome.CLOSED, "closed")


def test_one_stalled_session_does_not_stall_the_others() -> None:
    stalled_app = SimApp(consume_rate=0.0, eof_after=False)  # a reader that never reads
    apps = iter([stalled_app, SimApp(echo=True)])
    pair = Pair(acceptor_app=lambda: next(apps))
    stalled = pair.open(SimApp(outgoing=random.Random(1).randbytes(4 << 20), eof_after=False))
    payload = random.Random(2).randbytes(4 << 20)
    moving_client = SimApp(outgoing=payload)
    moving = pair.open(moving_client)
    pair.run(lambda: moving_client.outcome is not None, limit=600)
    assert digest(pair.apps["b"][moving].received) == digest(payload)
    assert moving_client.outcome == Closed(Outcome.CLOSED, "closed")
    stalled_core = pair.a.session(stalled)
    assert stalled_core is not None and not stalled_core.terminal
    assert pair.apps["a"][stalled].paused  # its inlet stopped reading its socket
    assert len(stalled_app.received) <= pair.b.limits.receive_window


def test_the_acceptor_holds_a_bounded_number_of_sessions_per_peer() -> None:
    pair = Pair(max_sessions=3)
    clients = [SimApp(outgoing=b"x", eof_after=False) for _ in range(5)]
    for client in clients:
        pair.open(client)
    pair.run(lambda: sum(c.outcome is not None for c in clients) == 2)
    refused = [c for c in clients if c.outcome is not None]
    assert all(c.outcome is not None and c.outcome.outcome is Outcome.REFUSED for c in refused)
    assert all("holds 3 sessions" in (c.outcome.reason if c.outcome else "") for c in refused)
    assert len(pair.b) == 3


def test_opens_past_a_peers_share_of_the_budget_are_refused_until_its_sessions_end() -> None:
    budget = PortalBudget(BudgetLimits(sessions_per_peer=3))
    pair = Pair(budget=budget)
    clients = [SimApp(outgoing=b"x", eof_after=False) for _ in range(5)]
    sessions = [pair.open(client) for client in clients]
    pair.run(lambda: sum(c.outcome is not None for c in clients) == 2)
    refused = [c.outcome for c in clients if c.outcome is not None]
    assert all(c.outcome is Outcome.REFUSED for c in refused)
    assert all("too_many): this peer holds 3 portal sessions" in c.reason for c in refused)
    assert budget.held_by("peer a") == (3, 0)  # and nothing more was made for the others
    served = [s for s, c in zip(sessions, clients, strict=True) if c.outcome is None]
    pair.a.app_reset(served[0], pair.now, "the client left")
    pair.run(lambda: budget.held_by("peer a")[0] == 2)
    late = SimApp(outgoing=b"y", eof_after=False)
    session = pair.open(late)
    pair.run(lambda: session in pair.apps["b"] and pair.apps["b"][session].received == b"y")
    assert budget.held_by("peer a") == (3, 0)


def test_a_resend_of_data_still_waiting_to_be_sent_is_not_queued_twice() -> None:
    """A route that does not take packets: what waits is frames, each segment once."""
    mux = Multiplexer(Role.OPENER)
    session = mux.open(0.0)
    mux.frames_received([OpenOk(session, MAX_WINDOW)], 0.1)
    mux.app_data(session, random.Random(1).randbytes(200_000), 0.1)
    assert [c.command for c in mux.app_commands()] == [PauseReading()]  # its buffer is full
    assert mux.has_packets  # and its frames wait, unpacked
    for _ in range(3):  # retransmission timeouts while the route is stuck
        deadline = mux.next_deadline()
        assert deadline is not None
        mux.on_timer(deadline)
        mux.app_commands()
    packets = []
    while (packet := mux.next_packet()) is not None:
        assert len(packet) <= MAX_PACKET
        packets.append(packet)
    data = [f for p in packets for f in decode_packet(p) if isinstance(f, Data)]
    assert sorted((f.offset, len(f.data)) for f in data) == [
        (0, 65536),
        (65536, 65536),
        (131072, 65536),
        (196608, 3392),
    ]
    assert not mux.has_packets


def test_a_peer_that_sends_but_never_lets_us_send_cannot_grow_what_waits() -> None:
    """The route is stuck (nothing is ever packed) while the peer pings an open session,
    pings the route, and pings sessions that do not exist: what waits stays bounded."""
    mux = Multiplexer(Role.ACCEPTOR)
    mux.frames_received([Open(1, MAX_WINDOW)], 0.0)
    mux.accept(1, 0.0)
    mux.app_commands()
    for round_ in range(50):
        now = 1.0 + round_ * 0.01
        pings: list[Frame] = [Ping(1, round_ * 100 + i) for i in range(100)]
        pings.append(Ping(0, round_))
        unknown: list[Frame] = [Ping(2 + round_ * 1000 + i, 1) for i in range(1000)]
        mux.frames_received(pings, now)
        mux.frames_received(unknown, now)
        mux.app_commands()
    assert mux.unknown_frames == 50_000
    assert mux.waiting <= MAX_ANSWERS + 8  # an OPEN_OK, an ACK, two PONGs, our answers
    packets = []
    while (packet := mux.next_packet()) is not None:
        packets.append(packet)
    pongs = [f for p in packets for f in decode_packet(p) if isinstance(f, Pong)]
    assert sorted(pongs, key=lambda f: f.session) == [Pong(0, 49), Pong(1, 4999)]  # newest
    assert mux.waiting == 0


def test_the_opener_allocates_ids_without_collision_and_bounds_its_sessions() -> None:
    mux = Multiplexer(Role.OPENER, max_sessions=3)
    mux._next_id = 0xFFFFFFFF  # wrap around: 0 is never used, open ids are skipped
    ids = [mux.open(0.0) for _ in range(3)]
    assert ids == [0xFFFFFFFF, 1, 2]
    with pytest.raises(PortalLocalError):
        mux.open(0.0)
    with pytest.raises(PortalLocalError):
        Multiplexer(Role.ACCEPTOR).open(0.0)


def test_frames_for_unknown_sessions_get_one_reset_and_resets_get_none() -> None:
    mux = Multiplexer(Role.ACCEPTOR)
    mux.frames_received([Data(9, 0, b"a"), Data(9, 1, b"b"), Ping(10, 1)], 0.0)
    (packet,) = mux.commands()
    assert isinstance(packet, SendPacket)
    assert decode_packet(packet.payload) == [
        Reset(9, ResetReason.UNKNOWN_SESSION, "no such portal session"),
        Reset(10, ResetReason.UNKNOWN_SESSION, ""),  # said once per packet
    ]
    mux.frames_received(
        [Reset(9, ResetReason.APP_RESET, "x"), OpenRefused(3, RefuseReason.REFUSED, "")], 0.0
    )
    assert mux.commands() == []
    opener = Multiplexer(Role.OPENER)
    opener.frames_received([Open(5, 100)], 0.0)  # only the opener opens
    (packet,) = opener.commands()
    assert isinstance(packet, SendPacket)
    assert isinstance(decode_packet(packet.payload)[0], Reset)


@pytest.mark.parametrize(
    "frames",
    [
        [Ping(session, 1) for session in range(1, 501)],  # unknown sessions: RSTs
        [Open(session, MAX_WINDOW) for session in range(1, 501)],  # past the cap: refusals
    ],
    ids=["pings-of-unknown-sessions", "opens-past-the-cap"],
)
def test_what_one_packet_makes_a_multiplexer_answer_never_outweighs_it(
    frames: list[Frame],
) -> None:
    mux = Multiplexer(Role.ACCEPTOR, max_sessions=10)
    packet = encode_packet(frames)
    mux.frames_received(decode_packet(packet), 0.0)
    answers = [c.payload for c in mux.commands() if isinstance(c, SendPacket)]
    assert sum(len(a) for a in answers) <= len(packet)
    answered = [f for a in answers for f in decode_packet(a)]
    assert all(isinstance(f, Reset | OpenRefused) for f in answered)
    assert len(answered) >= 490  # each answered (but the ten admitted)
    first = answered[0]
    assert isinstance(first, Reset | OpenRefused) and first.text  # and the first says why


def test_the_deadline_is_the_earliest_of_all_sessions() -> None:
    mux = Multiplexer(Role.ACCEPTOR)
    mux.frames_received([Open(1, 1000), Open(2, 1000)], 0.0)
    assert [e for e in mux.events() if isinstance(e, SessionRequested)] == [
        SessionRequested(1),
        SessionRequested(2),
    ]
    assert mux.next_deadline() is None  # waiting for the glue to connect: no timer yet
    mux.accept(1, 0.0)
    mux.accept(2, 5.0)
    mux.commands()
    idle = mux.limits.idle_timeout
    assert mux.next_deadline() == idle
    mux.frames_received([Ping(1, 1)], 30.0)  # session 1 heard from later
    mux.commands()
    assert mux.next_deadline() == 5.0 + idle
    mux.on_timer(5.0 + idle)
    mux.commands()
    assert mux.session(2) is None  # silent too long: failed and forgotten
    assert mux.next_deadline() == 30.0 + idle


def test_idle_sessions_of_one_route_share_their_keepalive_messages() -> None:
    pair = Pair()
    pair.track_buffers = False
    servers = []

    def server() -> SimApp:
        servers.append(SimApp(eof_after=False))
        return servers[-1]

    pair.acceptor_app = server
    clients = []
    for _ in range(200):
        clients.append(SimApp(outgoing=b"hi", eof_after=False))
        pair.open(clients[-1])
        pair.settle(0.37)  # opened at scattered times
    pair.run(lambda: all(bytes(s.received) == b"hi" for s in servers))
    sent_before = pair.path.sent
    pair.settle(200.0)
    assert all(c.outcome is None for c in clients)  # all alive
    keepalive_messages = pair.path.sent - sent_before
    frames = 2 * 200 * 200 / pair.a.limits.keepalive_interval  # a PING and a PONG each
    assert keepalive_messages <= frames / 10  # many of them per message


def test_an_idle_opener_pings_its_route_and_sessions_take_over_while_open() -> None:
    opener = Multiplexer(Role.OPENER, route_keepalive=20.0, now=0.0)
    acceptor = Multiplexer(Role.ACCEPTOR)
    assert opener.next_deadline() == 20.0
    opener.on_timer(20.0)
    (packet,) = opener.commands()
    assert isinstance(packet, SendPacket)
    assert decode_packet(packet.payload) == [Ping(0, 1)]
    acceptor.frames_received(decode_packet(packet.payload), 20.0)
    assert len(acceptor) == 0  # no state for the route's keepalive
    (answer,) = acceptor.commands()
    assert isinstance(answer, SendPacket)
    assert decode_packet(answer.payload) == [Pong(0, 1)]  # not RST
    opener.frames_received(decode_packet(answer.payload), 20.01)
    assert opener.route_answered_at == 20.01
    assert opener.next_deadline() == pytest.approx(40.01)
    session = opener.open(25.0)
    opener.commands()
    deadline = opener.next_deadline()
    assert deadline is not None and deadline < 40  # the session's own timers now
    opener.app_reset(session, 26.0, "gone")
    opener.commands()
    assert opener.next_deadline() == 46.0  # idle again: the route keepalive resumes
