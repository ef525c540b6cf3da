"""The punch scheduler on a fake clock: synchronisation (the timed start, and SYNC where it
cannot be used), the probe schedule, token checks, who dials, endings, refusals, and the
reference schedules."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshkey.identity.node_id import NodeId
from meshkey.nat.punch import (
    DialHop,
    LocalCandidates,
    PunchFailed,
    PunchSession,
    PunchStarted,
    PunchState,
    PunchSucceeded,
    SendDatagram,
    SendSignal,
)
from meshkey.nat.strategy import (
    DEFAULT_SCHEDULE,
    MESHKEY,
    MESHKEY_NO_TTL,
    OCKAM,
    POLYKEY,
    STRATEGIES,
    PunchConfig,
)
from meshkey.nat.token import PunchKey
from meshkey.wire.net import NatClass
from meshkey.wire.punch import (
    MAX_CREDIT_PAD,
    Abort,
    AbortReason,
    Capability,
    Connect,
    Credit,
    Result,
    Sync,
    decode_punch_message,
    encode_punch_message,
)
from meshkey.wire.udp import (
    PUNCH_PROBE_SIZE,
    ControlKind,
    PunchRole,
    decode_punch_packet,
    encode_control_packet,
)
from tests.natsim.wiring import Logged, Wiring

CAPS = frozenset({Capability.BIRTHDAY, Capability.LOW_TTL, Capability.TCP_DIAL})
A_PUBLIC = ("203.0.113.1", 5000)
B_PUBLIC = ("203.0.113.2", 5000)


def info(
    nat: NatClass, public: tuple[str, int], local: tuple[str, int], **kw: object
) -> LocalCandidates:
    return LocalCandidates(nat, local=(local,), reflexive=(public,), capabilities=CAPS, **kw)  # type: ignore[arg-type]


EIM_A = info(NatClass.ENDPOINT_INDEPENDENT, A_PUBLIC, ("10.1.0.2", 5000))
EIM_B = info(NatClass.ENDPOINT_INDEPENDENT, B_PUBLIC, ("10.2.0.2", 5000))


def events(wiring: Wiring, side: str, kind: type) -> list[tuple[float, object]]:
    return [(at, e) for at, e in wiring.events[side] if isinstance(e, kind)]


def signals(wiring: Wiring, side: str) -> list[tuple[float, object]]:
    return [
        (x.at, decode_punch_message(x.command.data))
        for x in wiring.commands(side, SendSignal)
        if isinstance(x.command, SendSignal)
    ]


def probes(wiring: Wiring, side: str, *, to: tuple[str, int] | None = None) -> list[Logged]:
    return [
        x
        for x in wiring.commands(side, SendDatagram)
        if isinstance(x.command, SendDatagram)
        and x.command.data[0] == ControlKind.PUNCH_PROBE
        and (to is None or x.command.destination == to)
    ]


def key_of(wiring: Wiring) -> PunchKey:
    """The punch key, from the two CONNECTs (which only the channel ends see)."""
    mine = next(m for _, m in signals(wiring, "a") if isinstance(m, Connect))
    theirs = next(m for _, m in signals(wiring, "b") if isinstance(m, Connect))
    return PunchKey.derive(mine.punch_id, mine.key_share, theirs.key_share)


def test_a_timed_start_puts_both_sides_on_the_reply_and_the_first_ack_wins() -> None:
    wiring = Wiring(EIM_A, EIM_B)
    wiring.start("a")
    wiring.run(1.0)
    # CONNECT at 0 (offering the timed start), at b 0.04: b knows the signalling RTT (0.08),
    # answers "start in 0.04" and starts then, when its reply reaches a. a measured 0.08
    # too, so it starts on the reply: no SYNC.
    connect = next(m for _, m in signals(wiring, "a") if isinstance(m, Connect))
    assert Capability.TIMED_START in connect.capabilities and connect.start_in is None
    ((replied_at, reply),) = [(at, m) for at, m in signals(wiring, "b") if isinstance(m, Connect)]
    assert replied_at == pytest.approx(0.04) and reply.reply
    assert reply.start_in == pytest.approx(0.04)
    assert not any(isinstance(m, Sync) for _, m in signals(wiring, "a"))
    ((start_a, _),) = events(wiring, "a", PunchStarted)
    ((start_b, _),) = events(wiring, "b", PunchStarted)
    assert start_a == pytest.approx(0.08)
    assert start_b == pytest.approx(0.08)
    # Openers first (low TTL, to the peer's public address only), probes opener_lead later.
    first = wiring.commands("a", SendDatagram)
    assert first[0].command.ttl == 5 and first[0].command.destination == B_PUBLIC  # type: ignore[union-attr]
    assert first[0].at == pytest.approx(0.08)
    round_one = [x for x in probes(wiring, "a") if x.command.ttl is None]  # type: ignore[union-attr]
    assert round_one[0].at == pytest.approx(0.08 + MESHKEY.opener_lead)
    # b's local address (10.2.0.2) is on another LAN than a's (10.1.0.2): never probed.
    assert {x.command.destination for x in round_one} == {B_PUBLIC}  # type: ignore[union-attr]
    # Probes cross (20 ms), ACKs come back (20 ms): both win one 40 ms RTT later.
    ((won_a, success_a),) = events(wiring, "a", PunchSucceeded)
    ((won_b, success_b),) = events(wiring, "b", PunchSucceeded)
    won = 0.08 + MESHKEY.opener_lead + 0.04
    assert won_a == pytest.approx(won) and won_b == pytest.approx(won)
    assert success_a.remote == B_PUBLIC and success_b.remote == A_PUBLIC  # type: ignore[attr-defined]
    assert success_a.rtt == pytest.approx(0.04)  # type: ignore[attr-defined]
    assert success_a.seen_as == A_PUBLIC  # type: ignore[attr-defined]  # what b saw: consistent
    # Exactly one side dials: the lower NodeId (a), over the winning pair.
    dials = wiring.commands("a", DialHop) + wiring.commands("b", DialHop)
    assert [(x.side, x.command) for x in dials] == [("a", DialHop(wiring.b_id, 0, B_PUBLIC, "udp"))]
    assert success_a.dial and not success_b.dial  # type: ignore[attr-defined]
    assert any(isinstance(m, Result) for _, m in signals(wiring, "a"))


def test_without_an_rtt_estimate_the_responder_waits_for_sync() -> None:
    """The fallback (DCUtR): b's glue knows no signalling RTT, so its reply has no start_in;
    a sends SYNC on the reply (0.08) and waits RTT/2; b starts when SYNC arrives (0.12)."""
    wiring = Wiring(EIM_A, EIM_B, rtt_known=False)
    wiring.start("a")
    wiring.run(1.0)
    reply = next(m for _, m in signals(wiring, "b") if isinstance(m, Connect))
    assert reply.start_in is None
    kinds = [(round(at, 3), type(m).__name__) for at, m in signals(wiring, "a")]
    assert kinds[:2] == [(0.0, "Connect"), (0.08, "Sync")]
    ((start_a, _),) = events(wiring, "a", PunchStarted)
    ((start_b, _),) = events(wiring, "b", PunchStarted)
    assert start_a == pytest.approx(0.12) and start_b == pytest.approx(0.12)
    ((won_a, _),) = events(wiring, "a", PunchSucceeded)
    assert won_a == pytest.approx(0.12 + MESHKEY.opener_lead + 0.04)


@pytest.mark.parametrize(
    ("rtt_error", "start_a", "start_b"),
    [
        (0.04, 0.10, 0.10),  # b overestimates: start_in 0.06; a (measured 0.08) waits 0.02
        (-0.04, 0.08, 0.06),  # b underestimates: it starts 20 ms early, a on the reply
        (-0.08, 0.08, 0.04),  # b thinks the RTT is 0: start_in 0, it starts on CONNECT
    ],
)
def test_the_initiator_corrects_the_responders_estimate(
    rtt_error: float, start_a: float, start_b: float
) -> None:
    wiring = Wiring(EIM_A, EIM_B, rtt_error=rtt_error)
    wiring.start("a")
    wiring.run(1.0)
    reply = next(m for _, m in signals(wiring, "b") if isinstance(m, Connect))
    assert reply.start_in == pytest.approx((0.08 + rtt_error) / 2)
    ((started_a, _),) = events(wiring, "a", PunchStarted)
    ((started_b, _),) = events(wiring, "b", PunchStarted)
    assert started_a == pytest.approx(start_a) and started_b == pytest.approx(start_b)
    assert not any(isinstance(m, Sync) for _, m in signals(wiring, "a"))
    # Within opener_lead + the direct one-way time of each other: the punch still works.
    assert len(events(wiring, "a", PunchSucceeded)) == len(events(wiring, "b", PunchSucceeded)) == 1


def _responder(**changes: object) -> PunchSession:
    return PunchSession(
        role=PunchRole.RESPONDER,
        local_id=NodeId(b"\x02" * 32),
        peer=NodeId(b"\x01" * 32),
        me=EIM_B,
        punch_id=b"p" * 16,
        now=0.0,
        **changes,  # type: ignore[arg-type]
    )


def state_of(session: PunchSession) -> PunchState:
    return session.state  # read afresh (mypy would narrow the attribute across calls)


def _connect(capabilities: frozenset[str]) -> Connect:
    return Connect(
        b"p" * 16,
        reply=False,
        key_share=b"k" * 32,
        nat_class=NatClass.ENDPOINT_INDEPENDENT,
        local=EIM_A.local,
        reflexive=EIM_A.reflexive,
        capabilities=capabilities,
    )


@pytest.mark.parametrize(
    ("capabilities", "rtt", "timed"),
    [
        (CAPS | {Capability.TIMED_START}, 0.08, True),
        (CAPS, 0.08, False),  # an initiator without the capability (older): it will send SYNC
        (CAPS | {Capability.TIMED_START}, None, False),  # no estimate
        (CAPS | {Capability.TIMED_START}, float("nan"), False),  # no usable estimate
        (CAPS | {Capability.TIMED_START}, 11.0, False),  # RTT/2 beyond MAX_START_IN
    ],
)
def test_a_responder_times_its_start_only_when_it_can(
    capabilities: frozenset[str], rtt: float | None, timed: bool
) -> None:
    session = _responder()
    session.accept(_connect(capabilities), 1.0, signalling_rtt=rtt)
    (reply,) = [decode_punch_message(c.data) for c in session.commands()]  # type: ignore[union-attr]
    assert isinstance(reply, Connect) and reply.reply
    if timed:
        assert reply.start_in == pytest.approx(0.04)
        assert state_of(session) is PunchState.WAITING
        assert session.next_deadline() == pytest.approx(1.04)
        session.on_signal(Sync(b"p" * 16), 1.01)  # a stray SYNC changes nothing
        assert state_of(session) is PunchState.WAITING
        session.on_timer(1.04)
    else:
        assert reply.start_in is None
        assert state_of(session) is PunchState.SIGNALLING
        assert session.next_deadline() == pytest.approx(1.0 + MESHKEY.signalling_timeout)
        session.on_signal(Sync(b"p" * 16), 1.05)
    assert state_of(session) is PunchState.PROBING
    assert [type(e) for e in session.events()] == [PunchStarted]


def test_without_synchronisation_nobody_offers_or_uses_a_timed_start() -> None:
    session = _responder(config=OCKAM)
    session.accept(_connect(CAPS | {Capability.TIMED_START}), 1.0, signalling_rtt=0.08)
    (reply,) = [
        decode_punch_message(c.data) for c in session.commands() if isinstance(c, SendSignal)
    ]
    assert isinstance(reply, Connect)
    assert reply.start_in is None and Capability.TIMED_START not in reply.capabilities
    assert session.state is PunchState.PROBING  # on CONNECT, as the reference does


def start_paid(wiring: Wiring, *, observed: tuple[tuple[str, int], ...] = (B_PUBLIC,)) -> bytes:
    """a starts a punch with b, having observed b at ``observed``, and b pays for everything
    a's schedule may send (as a birthday punch's CREDIT does): the schedule runs unbounded
    by the allowance (test_punch_allowance.py tests the bounds)."""
    punch_id = wiring.a.start(wiring.b_id, wiring.net.now, observed=observed)
    for _ in range(8):
        credit = encode_punch_message(Credit(punch_id, MAX_CREDIT_PAD))
        wiring.a.on_signal(wiring.b_id, credit, wiring.net.now)
    wiring.pump("a")
    return punch_id


def test_the_schedule_runs_to_the_end_and_the_punch_gives_up_and_says_so() -> None:
    wiring = Wiring(EIM_A, EIM_B, drop=lambda side, command: True)
    start_paid(wiring)
    wiring.run(10.0)
    sent = probes(wiring, "a", to=B_PUBLIC)
    full = [x for x in sent if x.command.ttl is None]  # type: ignore[union-attr]
    assert len(full) == len(DEFAULT_SCHEDULE)
    first_round = 0.08 + MESHKEY.opener_lead  # the timed start, then the openers' lead
    assert [round(x.at - first_round, 6) for x in full] == list(DEFAULT_SCHEDULE)
    ((failed_at, failure),) = events(wiring, "a", PunchFailed)
    assert failed_at == pytest.approx(first_round + MESHKEY.give_up)
    assert failure.reason is AbortReason.TIMEOUT and failure.retryable  # type: ignore[attr-defined]
    assert failure.stats.probes_sent == len(DEFAULT_SCHEDULE)  # type: ignore[attr-defined]
    assert any(isinstance(m, Abort) for _, m in signals(wiring, "a"))
    assert wiring.a.session(wiring.b_id) is None  # forgotten once over
    assert wiring.a.next_deadline() is None


def test_probes_without_a_valid_token_get_no_answer() -> None:
    wiring = Wiring(EIM_A, EIM_B, drop=lambda side, command: True)
    wiring.start("a")
    wiring.run(0.2)
    key = key_of(wiring)
    legit = probes(wiring, "a")[0].command.data  # type: ignore[union-attr]
    stranger = ("198.51.100.66", 4444)
    before = len(wiring.commands("b", SendDatagram))
    dropped = wiring.b.dropped
    bad_mac = bytearray(legit)
    bad_mac[30] ^= 1
    reflected = encode_control_packet(key.probe(PunchRole.RESPONDER, 99))  # b's own role
    unknown_id = encode_control_packet(PunchKey(b"k" * 32, b"u" * 16).probe(PunchRole.INITIATOR, 1))
    for junk in (bytes(bad_mac), reflected, unknown_id, b"\x03\x01short", legit[:40]):
        wiring.b.on_control_packet(0, stranger, junk, wiring.net.now)
        wiring.pump("b")
    assert len(wiring.commands("b", SendDatagram)) == before  # nothing answered
    assert wiring.b.dropped == dropped + 3  # unknown id and the two undecodable ones
    session = wiring.b.session(wiring.a_id)
    assert session is not None and session.stats.ignored == 2
    # A valid probe is answered once, with something smaller; its replay is not.
    fresh = encode_control_packet(key.probe(PunchRole.INITIATOR, 1000))
    for _ in range(2):
        wiring.b.on_control_packet(0, stranger, fresh, wiring.net.now)
        wiring.pump("b")
    answers = [
        x.command
        for x in wiring.commands("b", SendDatagram)[before:]
        if isinstance(x.command, SendDatagram) and x.command.data[0] == ControlKind.PUNCH_ACK
    ]
    assert len(answers) == 1
    assert answers[0].destination == stranger
    assert len(answers[0].data) < PUNCH_PROBE_SIZE == len(fresh)
    ack = decode_punch_packet(answers[0].data)
    assert key.verify(ack) and ack.counter == 1000 and ack.observed == stranger  # type: ignore[union-attr]


def test_an_ack_counts_only_from_where_its_probe_went() -> None:
    wiring = Wiring(EIM_A, EIM_B, drop=lambda side, command: True)
    wiring.start("a")
    wiring.run(0.2)
    key = key_of(wiring)
    probe = decode_punch_packet(probes(wiring, "a", to=B_PUBLIC)[-1].command.data)  # type: ignore[union-attr]
    ack = encode_control_packet(key.ack(PunchRole.RESPONDER, probe.counter, A_PUBLIC))
    forged_ack = encode_control_packet(key.ack(PunchRole.INITIATOR, probe.counter, A_PUBLIC))
    never_sent = encode_control_packet(key.ack(PunchRole.RESPONDER, 4_000_000, A_PUBLIC))
    now = wiring.net.now
    wiring.a.on_control_packet(0, ("198.51.100.66", 5000), ack, now)  # wrong source
    wiring.a.on_control_packet(1, B_PUBLIC, ack, now)  # wrong socket
    wiring.a.on_control_packet(0, B_PUBLIC, forged_ack, now)  # a's own role
    wiring.a.on_control_packet(0, B_PUBLIC, never_sent, now)
    wiring.pump("a")
    assert events(wiring, "a", PunchSucceeded) == []
    wiring.a.on_control_packet(0, B_PUBLIC, ack, now)
    wiring.pump("a")
    ((_, success),) = events(wiring, "a", PunchSucceeded)
    assert success.remote == B_PUBLIC  # type: ignore[attr-defined]


def test_after_winning_a_side_keeps_answering_then_forgets() -> None:
    # b's ACKs never reach a, so only b can win from ACKs; a wins when b's RESULT arrives,
    # because a probe of b reached it (a hot pair).
    def lose_b_acks(side: str, command: SendDatagram) -> bool:
        return side == "b" and command.data[0] == ControlKind.PUNCH_ACK

    wiring = Wiring(EIM_A, EIM_B, drop=lose_b_acks)
    wiring.start("a")
    wiring.run(1.0)
    ((won_b, _),) = events(wiring, "b", PunchSucceeded)
    ((won_a, success_a),) = events(wiring, "a", PunchSucceeded)
    assert won_a == pytest.approx(won_b + wiring.signal_delay)
    assert success_a.rtt is None  # type: ignore[attr-defined]
    assert success_a.seen_as == A_PUBLIC  # type: ignore[attr-defined]  # from b's RESULT
    assert wiring.commands("a", DialHop)  # a is the lower NodeId: it dials
    session = wiring.b.session(wiring.a_id)
    assert session is not None  # lingering
    wiring.run(MESHKEY.linger + 0.1)
    assert wiring.b.session(wiring.a_id) is None
    assert wiring.a.next_deadline() is None and wiring.b.next_deadline() is None


def test_the_signalling_can_time_out() -> None:
    wiring = Wiring(EIM_A, EIM_B, signals_lost=True)
    wiring.start("a")
    wiring.run(10.0)
    ((at, failure),) = events(wiring, "a", PunchFailed)
    assert at == pytest.approx(MESHKEY.signalling_timeout)
    assert failure.reason is AbortReason.SIGNALLING_TIMEOUT and failure.retryable  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("a_class", "b_class", "reason"),
    [
        (
            NatClass.ENDPOINT_DEPENDENT,
            NatClass.ENDPOINT_DEPENDENT,
            AbortReason.BOTH_ENDPOINT_DEPENDENT,
        ),
        (NatClass.ENDPOINT_INDEPENDENT, NatClass.UDP_BLOCKED, AbortReason.UDP_BLOCKED),
        (NatClass.UDP_BLOCKED, NatClass.UDP_BLOCKED, AbortReason.UDP_BLOCKED),
        (NatClass.UDP_BLOCKED, NatClass.ENDPOINT_DEPENDENT, AbortReason.UDP_BLOCKED),
    ],
)
def test_hopeless_pairs_are_refused_at_once_without_a_probe(
    a_class: NatClass, b_class: NatClass, reason: AbortReason
) -> None:
    wiring = Wiring(
        dataclasses.replace(EIM_A, nat_class=a_class), dataclasses.replace(EIM_B, nat_class=b_class)
    )
    wiring.start("a")
    wiring.run(1.0)
    ((at, failure),) = events(wiring, "a", PunchFailed)
    assert at == pytest.approx(0.08)  # one signalling round trip
    assert failure.reason is reason and failure.by_peer and not failure.retryable  # type: ignore[attr-defined]
    ((_, refusal),) = events(wiring, "b", PunchFailed)
    assert refusal.reason is reason  # type: ignore[attr-defined]
    assert wiring.commands("a", SendDatagram) == wiring.commands("b", SendDatagram) == []


def test_no_direct_refuses_without_probing() -> None:
    wiring = Wiring(EIM_A, EIM_B)
    wiring.b.on_message(
        wiring.a_id,
        Connect(b"p" * 16, False, b"k" * 32, NatClass.ENDPOINT_INDEPENDENT, reflexive=(A_PUBLIC,)),
        0.0,
        direct_allowed=False,
    )
    wiring.pump("b")
    ((_, abort),) = signals(wiring, "b")
    assert isinstance(abort, Abort) and abort.reason is AbortReason.DIRECT_DISABLED


def test_udp_blocked_against_public_dials_tcp() -> None:
    public = LocalCandidates(
        NatClass.PUBLIC,
        local=(("203.0.113.22", 5000),),
        reflexive=(("203.0.113.22", 5000),),
        tcp=(("203.0.113.22", 6000),),
        capabilities=CAPS,
    )
    blocked = LocalCandidates(NatClass.UDP_BLOCKED, local=(("10.2.0.2", 5000),), capabilities=CAPS)
    wiring = Wiring(public, blocked)
    wiring.start("a")
    wiring.run(1.0)
    assert [x.command for x in wiring.commands("b", DialHop)] == [
        DialHop(wiring.a_id, 0, ("203.0.113.22", 6000), "tcp")
    ]
    assert wiring.commands("a", DialHop) == []
    ((_, mine),) = events(wiring, "a", PunchSucceeded)
    assert mine.transport == "tcp" and mine.remote is None  # type: ignore[attr-defined]
    assert wiring.commands("a", SendDatagram) == wiring.commands("b", SendDatagram) == []


def test_glare_the_lower_nodeids_punch_survives() -> None:
    wiring = Wiring(EIM_A, EIM_B)
    punch_a = wiring.start("a")
    punch_b = wiring.start("b")
    assert punch_a != punch_b
    wiring.run(1.0)
    ((_, started_b),) = events(wiring, "b", PunchStarted)
    assert started_b.punch_id == punch_a  # type: ignore[attr-defined]
    assert len(events(wiring, "a", PunchSucceeded)) == len(events(wiring, "b", PunchSucceeded)) == 1


def test_a_public_side_answers_an_endpoint_dependent_one_at_its_new_port() -> None:
    public = LocalCandidates(
        NatClass.PUBLIC,
        local=(("203.0.113.22", 5000),),
        reflexive=(("203.0.113.22", 5000),),
        capabilities=CAPS,
    )
    wiring = Wiring(public, dataclasses.replace(EIM_B, nat_class=NatClass.ENDPOINT_DEPENDENT))
    wiring.addresses[("b", 0)] = ("203.0.113.2", 17665)  # what the EDM NAT gave this flow
    wiring.start("a")
    wiring.run(1.0)
    ((_, success),) = events(wiring, "a", PunchSucceeded)
    assert success.remote == ("203.0.113.2", 17665)  # type: ignore[attr-defined]


@pytest.mark.parametrize("config", [POLYKEY, OCKAM], ids=lambda c: c.name)
def test_reference_schedules(config: PunchConfig) -> None:
    wiring = Wiring(EIM_A, EIM_B, config=config, drop=lambda side, command: True)
    start_paid(wiring)
    wiring.run(20.0)
    assert not any(isinstance(m, Sync) for _, m in signals(wiring, "a"))
    ((start_a, _),) = events(wiring, "a", PunchStarted)
    ((start_b, _),) = events(wiring, "b", PunchStarted)
    assert start_b == pytest.approx(0.04)  # on CONNECT
    assert start_a == pytest.approx(0.08)  # on the reply
    times = [round(x.at - start_a, 6) for x in probes(wiring, "a", to=B_PUBLIC)]
    assert times == list(config.schedule)
    assert all(x.command.ttl is None for x in probes(wiring, "a"))  # type: ignore[union-attr]
    ((failed_at, _),) = events(wiring, "a", PunchFailed)
    assert failed_at == pytest.approx(start_a + config.give_up)


def test_references_punch_even_hopeless_pairs() -> None:
    edm = dataclasses.replace(EIM_A, nat_class=NatClass.ENDPOINT_DEPENDENT)
    wiring = Wiring(edm, dataclasses.replace(edm, reflexive=(B_PUBLIC,)), config=POLYKEY)
    wiring.start("a")
    wiring.run(0.5)
    assert probes(wiring, "a")


def test_a_session_refuses_a_bad_punch_id_and_configs_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="schedule"):
        PunchConfig(schedule=(1.0, 0.5))
    with pytest.raises(ValueError, match="give up"):
        PunchConfig(schedule=(0.0,), give_up=0.0)
    from meshkey.nat.punch import PunchSession

    with pytest.raises(ValueError, match="punch id"):
        PunchSession(
            role=PunchRole.INITIATOR,
            local_id=NodeId(b"\x01" * 32),
            peer=NodeId(b"\x02" * 32),
            me=EIM_A,
            punch_id=b"short",
            now=0.0,
        )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=120)), max_size=20))
def test_no_bytes_from_a_peer_or_the_network_make_the_puncher_raise(
    inputs: list[tuple[bool, bytes]],
) -> None:
    wiring = Wiring(EIM_A, EIM_B, drop=lambda side, command: True)
    wiring.start("a")
    wiring.run(0.2)  # a punch is running: its id is known, its key derived
    legit = probes(wiring, "a")[0].command.data  # type: ignore[union-attr]
    for as_signal, data in inputs:
        if as_signal:
            wiring.b.on_signal(wiring.a_id, data, wiring.net.now)
        else:
            mutated = legit[:2] + data[:62].ljust(62, b"\x00") if data else data
            wiring.b.on_control_packet(0, ("198.51.100.1", 9), mutated, wiring.net.now)
        wiring.pump("b")
    acks = [
        x
        for x in wiring.commands("b", SendDatagram)
        if isinstance(x.command, SendDatagram) and x.command.destination == ("198.51.100.1", 9)
    ]
    assert acks == []  # nothing forged was answered


def test_meshkey_nottl_is_meshkey_without_openers() -> None:
    """The benchmark's control strategy: synchronised like meshkey, but no low-TTL packet, so
    the first probe round goes out at the synchronised start itself."""
    wiring = Wiring(EIM_A, EIM_B, config=MESHKEY_NO_TTL)
    wiring.start("a")
    wiring.run(1.0)
    ((start_a, _),) = events(wiring, "a", PunchStarted)
    assert start_a == pytest.approx(0.08)  # synchronised as meshkey's (a timed start)
    sent = probes(wiring, "a") + probes(wiring, "b")
    assert sent and all(x.command.ttl is None for x in sent)  # type: ignore[union-attr]
    assert min(x.at for x in probes(wiring, "a")) == pytest.approx(0.08)
    assert len(events(wiring, "a", PunchSucceeded)) == 1
    assert STRATEGIES["meshkey-nottl"] is MESHKEY_NO_TTL
    assert (
        dataclasses.replace(MESHKEY_NO_TTL, name="meshkey", low_ttl=5, birthday_opener_ttl=5)
        == MESHKEY
    )
