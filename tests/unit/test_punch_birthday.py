"""The birthday strategy's bookkeeping: extra sockets opened and every one closed, the spray
bounded and rate-limited, openers only, and one birthday punch at a time per node."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest

from meshkey.nat.birthday import BirthdayGate, hit_probability, spray_ports
from meshkey.nat.probes import MAX_SPRAY_BURST
from meshkey.nat.punch import (
    CloseBirthdaySockets,
    DialHop,
    OpenBirthdaySockets,
    PunchFailed,
    PunchStarted,
    PunchSucceeded,
    SendDatagram,
)
from meshkey.nat.strategy import MESHKEY, MESHKEY_NO_TTL, Strategy
from meshkey.wire.net import NatClass
from meshkey.wire.punch import AbortReason
from meshkey.wire.udp import ControlKind
from tests.natsim.wiring import Wiring
from tests.unit.test_punch_session import EIM_A, EIM_B

EDM_B = dataclasses.replace(EIM_B, nat_class=NatClass.ENDPOINT_DEPENDENT)
EDM_IP = EIM_B.reflexive[0][0]


def opened(wiring: Wiring, side: str) -> list[int]:
    return [
        socket
        for x in wiring.commands(side, OpenBirthdaySockets)
        if isinstance(x.command, OpenBirthdaySockets)
        for socket in x.command.sockets
    ]


def closed(wiring: Wiring, side: str) -> list[int]:
    return [
        socket
        for x in wiring.commands(side, CloseBirthdaySockets)
        if isinstance(x.command, CloseBirthdaySockets)
        for socket in x.command.sockets
    ]


def sent(wiring: Wiring, side: str) -> list[tuple[float, SendDatagram]]:
    return [
        (x.at, x.command)
        for x in wiring.commands(side, SendDatagram)
        if isinstance(x.command, SendDatagram) and x.command.data[0] == ControlKind.PUNCH_PROBE
    ]


def test_a_lost_birthday_punch_closes_every_socket_and_stays_within_its_budget() -> None:
    wiring = Wiring(EIM_A, EDM_B, drop=lambda side, command: True)
    wiring.start("a")
    wiring.run(12.0)
    ((_, started),) = [(at, e) for at, e in wiring.events["b"] if isinstance(e, PunchStarted)]
    assert started.strategy is Strategy.BIRTHDAY
    sockets = opened(wiring, "b")
    assert len(sockets) == MESHKEY.birthday_sockets == len(set(sockets))
    assert 0 not in sockets
    assert sorted(closed(wiring, "b")) == sorted(sockets)  # all of them, at the end
    assert opened(wiring, "a") == []
    # The EDM side only sends openers (low TTL) from its extra sockets, twice each.
    edm = sent(wiring, "b")
    assert len(edm) == 2 * len(sockets)
    assert all(c.ttl is not None and c.socket in sockets for _, c in edm)
    assert {c.destination for _, c in edm} == {EIM_A.reflexive[0]}
    # The other side sprays distinct random ports of the EDM IP: bounded and rate-limited.
    spray = sent(wiring, "a")
    assert len(spray) == MESHKEY.birthday_max_probes
    assert all(c.destination[0] == EDM_IP and c.ttl is None for _, c in spray)
    ports = [c.destination[1] for _, c in spray]
    assert len(set(ports)) == len(ports) and all(1024 <= p <= 65535 for p in ports)
    times = [at for at, _ in spray]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) == pytest.approx(MESHKEY.spray_interval)
    for side in ("a", "b"):
        ((_, failure),) = [(at, e) for at, e in wiring.events[side] if isinstance(e, PunchFailed)]
        assert failure.reason is AbortReason.TIMEOUT
    assert wiring.a.gate.holder is None and wiring.b.gate.holder is None


def test_a_won_birthday_punch_keeps_only_the_winning_socket() -> None:
    wiring = Wiring(EIM_A, EDM_B, seed=3)
    wiring.start("a")
    wiring.run(10.0)
    ((_, success_b),) = [(at, e) for at, e in wiring.events["b"] if isinstance(e, PunchSucceeded)]
    ((_, success_a),) = [(at, e) for at, e in wiring.events["a"] if isinstance(e, PunchSucceeded)]
    winner = success_b.socket
    sockets = opened(wiring, "b")
    assert winner in sockets
    assert sorted(closed(wiring, "b")) == sorted(s for s in sockets if s != winner)
    assert success_a.remote == wiring.addresses[("b", winner)]
    assert success_a.stats.sprayed < MESHKEY.birthday_max_probes
    # The spray stopped at the win: nothing after it.
    last_spray = max(at for at, _ in sent(wiring, "a"))
    won_at = next(at for at, e in wiring.events["a"] if isinstance(e, PunchSucceeded))
    assert last_spray <= won_at
    ((_, dial),) = [(x.side, x.command) for x in wiring.commands("a", DialHop)]
    assert dial == DialHop(wiring.b_id, 0, wiring.addresses[("b", winner)], "udp")


def test_one_birthday_punch_at_a_time_and_spaced() -> None:
    gate = BirthdayGate(spacing=20.0)
    assert gate.try_acquire(b"one", 0.0) is None
    assert gate.try_acquire(b"one", 1.0) is None  # the holder may ask again
    assert gate.try_acquire(b"two", 1.0) == 20.0
    gate.release(b"two", 2.0)  # not the holder: no effect
    assert gate.holder == b"one"
    gate.release(b"one", 5.0)
    assert gate.try_acquire(b"two", 15.0) == pytest.approx(10.0)
    assert gate.try_acquire(b"two", 25.0) is None


def test_a_node_refuses_a_second_birthday_punch_while_one_runs() -> None:
    wiring = Wiring(EIM_A, EDM_B, drop=lambda side, command: True)
    wiring.b.gate.try_acquire(b"another punch....", 0.0)  # b is busy with someone else
    wiring.start("a")
    wiring.run(1.0)
    ((_, failure),) = [(at, e) for at, e in wiring.events["a"] if isinstance(e, PunchFailed)]
    assert failure.reason is AbortReason.BIRTHDAY_BUSY
    assert failure.retryable and failure.retry_after == 20.0
    assert opened(wiring, "b") == [] and sent(wiring, "a") == []


def test_the_spacing_holds_between_punches() -> None:
    wiring = Wiring(EIM_A, EDM_B, drop=lambda side, command: True)
    wiring.start("a")
    wiring.run(12.0)  # the first punch ran and was lost
    wiring.start("a")
    wiring.run(1.0)
    failures = [e for _, e in wiring.events["a"] if isinstance(e, PunchFailed)]
    assert [f.reason for f in failures] == [AbortReason.TIMEOUT, AbortReason.BIRTHDAY_BUSY]
    assert 0 < failures[1].retry_after <= 20.0
    wiring.run(20.0)
    wiring.start("a")
    wiring.run(0.5)
    assert len(opened(wiring, "b")) == 2 * MESHKEY.birthday_sockets


def test_spray_ports_and_odds() -> None:
    ports = spray_ports(random.Random(1), 2048)
    assert ports == spray_ports(random.Random(1), 2048)  # the rng decides
    assert len(set(ports)) == 2048
    assert hit_probability(256, 1024) == pytest.approx(0.983, abs=0.001)
    assert hit_probability(256, 2048) > 0.999
    assert hit_probability(0, 10) == 0.0


def test_a_late_timer_does_not_turn_the_spray_into_a_flood() -> None:
    wiring = Wiring(EIM_A, EDM_B, drop=lambda side, command: True)
    wiring.start("a")
    wiring.run(0.2)  # a sprays now
    before = len(sent(wiring, "a"))
    late = wiring.net.now + 0.5
    wiring.a.on_timer(late)  # 250 probes overdue
    burst = [c for c in wiring.a.commands() if isinstance(c, SendDatagram)]
    assert len(burst) == MAX_SPRAY_BURST
    assert wiring.a.next_deadline() == pytest.approx(late + MESHKEY.spray_interval)
    assert len(sent(wiring, "a")) == before


def test_without_low_ttl_the_birthday_openers_go_at_full_ttl() -> None:
    """``meshkey-nottl`` (the benchmark's control): the opener sockets send the same packets,
    as many, but at the full TTL; the default sends them at TTL 5."""
    for config, ttl in ((MESHKEY, 5), (MESHKEY_NO_TTL, None)):
        wiring = Wiring(EIM_A, EDM_B, config=config, drop=lambda side, command: True)
        wiring.start("a")
        wiring.run(12.0)
        sockets = opened(wiring, "b")
        edm = sent(wiring, "b")
        assert len(edm) == 2 * len(sockets) == 2 * config.birthday_sockets
        assert {c.ttl for _, c in edm} == {ttl}
        ((_, failed),) = [(at, e) for at, e in wiring.events["b"] if isinstance(e, PunchFailed)]
        counted = failed.stats.probes_sent if ttl is None else failed.stats.openers_sent
        assert counted == len(edm)
