"""The path manager on a fake clock: relay first, switch up, hysteresis, a dead path within
~2 s and the fall back, keepalives, re-probing while relayed, --no-direct, NAT rebinding and
anti-amplification."""

from __future__ import annotations

import itertools
import random

import pytest

from meshkey.identity.node_id import NodeId
from meshkey.nat.punch import PunchFailed, PunchStats, PunchSucceeded
from meshkey.nat.strategy import Strategy
from meshkey.paths.manager import (
    CancelPunch,
    ClosePath,
    CloseSocket,
    PathConfig,
    PathFailed,
    PathManager,
    PathSwitched,
    PathValidated,
    SendPathPing,
    StartPunch,
)
from meshkey.paths.path import Path, PathKey, PathKind, PathState, SwitchReason, choose
from meshkey.wire.punch import AbortReason

PEER = NodeId(b"\x07" * 32)
RELAY = PathKey(PathKind.RELAY, "/node/green/service/forward_to_blue")
DIRECT = PathKey(PathKind.PUNCHED, ("203.0.113.2", 5000))
OTHER = PathKey(PathKind.DIRECT, ("198.51.100.2", 5000))
REBOUND = PathKey(PathKind.PUNCHED, ("203.0.113.2", 7002))


def manager(**config: float | None) -> PathManager:
    return PathManager(PathConfig(**config), rng=random.Random(5))  # type: ignore[arg-type]


def drain(paths: PathManager) -> tuple[list[object], list[object]]:
    return list(paths.commands()), list(paths.events())


def pong_all(paths: PathManager, commands: list[object], now: float) -> None:
    for command in commands:
        if isinstance(command, SendPathPing):
            paths.on_pong(command.peer, command.path, command.token, now)


def failed(reason: AbortReason, *, retryable: bool, retry_after: float = 0.0) -> PunchFailed:
    return PunchFailed(
        PEER, b"p" * 16, reason, "detail", retryable, retry_after, True, 1.0, PunchStats()
    )


def succeeded() -> PunchSucceeded:
    return PunchSucceeded(
        PEER,
        b"p" * 16,
        Strategy.PUNCH,
        0,
        ("203.0.113.2", 5000),
        True,
        "udp",
        0.04,
        0.2,
        PunchStats(),
    )


def on_direct(paths: PathManager, now: float = 1.0) -> None:
    """Relayed at 0; a punch (asked for at once) succeeded and its hop came up at ``now``."""
    paths.add_path(PEER, RELAY, 0.0, validated=True)
    paths.on_punch_event(succeeded(), now)
    paths.add_path(PEER, DIRECT, now, validated=True)
    drain(paths)


def test_traffic_starts_on_the_relay_and_moves_to_a_direct_path_at_once() -> None:
    paths = manager()
    paths.add_path(PEER, RELAY, 0.0, validated=True)
    commands, events = drain(paths)
    assert PathSwitched(PEER, None, RELAY, SwitchReason.FIRST, 0.0) in events
    assert StartPunch(PEER) in commands  # relayed: ask for a punch at once
    paths.on_punch_event(succeeded(), 0.2)
    paths.add_path(PEER, DIRECT, 0.3, validated=True, rtt=0.04)
    _, events = drain(paths)
    assert PathSwitched(PEER, RELAY, DIRECT, SwitchReason.DIRECT, 0.3) in events
    assert paths.current_path(PEER) == DIRECT
    report = paths.report(PEER)
    assert report is not None
    assert report.description == "direct 203.0.113.2:5000 (punched)"
    assert report.rtt == pytest.approx(0.04)
    assert report.switch_reason is SwitchReason.DIRECT and report.switched_at == 0.3
    assert report.punch.startswith("punched (punch)")


def test_a_probing_path_needs_a_pong_with_one_of_our_tokens() -> None:
    paths = manager()
    paths.add_path(PEER, RELAY, 0.0, validated=True)
    paths.add_path(PEER, OTHER, 0.0)
    commands, _ = drain(paths)
    pings = [c for c in commands if isinstance(c, SendPathPing) and c.path == OTHER]
    assert len(pings) == 1
    paths.on_pong(PEER, OTHER, pings[0].token ^ 1, 0.05)  # not ours
    assert paths.current_path(PEER) == RELAY
    paths.on_timer(0.25)  # probes repeat every 250 ms
    commands, _ = drain(paths)
    again = [c for c in commands if isinstance(c, SendPathPing) and c.path == OTHER]
    assert len(again) == 1
    paths.on_pong(PEER, OTHER, again[0].token, 0.3)
    _, events = drain(paths)
    assert PathValidated(PEER, OTHER, pytest.approx(0.05), 0.3) in events  # type: ignore[arg-type]
    assert paths.current_path(PEER) == OTHER


def test_a_path_that_never_answers_fails_at_its_timeout() -> None:
    paths = manager()
    paths.add_path(PEER, RELAY, 0.0, validated=True)
    paths.add_path(PEER, OTHER, 0.0)
    while (deadline := paths.next_deadline()) is not None and deadline <= 5.0:
        paths.on_timer(deadline)
    _, events = drain(paths)
    assert PathFailed(PEER, OTHER, "no answer to probes", 5.0) in events
    assert paths.current_path(PEER) == RELAY
    (path,) = [p for p in paths.paths(PEER) if p.key == OTHER]
    assert path.bytes_sent <= path.credit  # never more than its credit, unanswered


def test_hysteresis_needs_five_ms_and_does_not_flap() -> None:
    one = Path(DIRECT, 0.0, state=PathState.VALIDATED)
    two = Path(OTHER, 0.0, state=PathState.VALIDATED)
    one.rtt_sample(0.040)
    two.rtt_sample(0.037)
    assert choose([one, two], DIRECT, no_direct=False, rtt_gain=0.005).key == DIRECT
    two.rtt.srtt = 0.034
    choice = choose([one, two], DIRECT, no_direct=False, rtt_gain=0.005)
    assert choice.key == OTHER and choice.reason is SwitchReason.LOWER_RTT
    assert choose([one, two], OTHER, no_direct=False, rtt_gain=0.005).key == OTHER  # stays
    unmeasured = Path(OTHER, 0.0, state=PathState.VALIDATED)
    assert choose([one, unmeasured], DIRECT, no_direct=False, rtt_gain=0.005).key == DIRECT
    relay = Path(RELAY, 0.0, state=PathState.VALIDATED)
    relay.rtt_sample(0.001)  # a fast relay still loses to a direct path
    assert choose([relay, one], RELAY, no_direct=False, rtt_gain=0.005).key == DIRECT
    assert choose([relay, one], DIRECT, no_direct=True, rtt_gain=0.005).key == RELAY


def test_best_path_is_pure() -> None:
    paths = manager()
    paths.add_path(PEER, RELAY, 0.0, validated=True)
    paths.add_path(PEER, OTHER, 0.0)
    drain(paths)
    before = paths.current_path(PEER)
    assert paths.best_path(PEER, 1.0) == RELAY
    assert paths.best_path(NodeId(b"\x09" * 32), 1.0) is None
    assert paths.current_path(PEER) == before
    assert drain(paths) == ([], [])


def test_unanswered_traffic_kills_a_direct_path_within_two_seconds_and_falls_back() -> None:
    paths = manager()
    on_direct(paths)
    paths.on_sent(PEER, DIRECT, 1000, 10.0)
    paths.on_sent(PEER, DIRECT, 1000, 10.2)  # more traffic does not move the clock
    ping_times = []
    while (deadline := paths.next_deadline()) is not None and deadline <= 11.5:
        paths.on_timer(deadline)
        commands, events = drain(paths)
        ping_times += [
            deadline for c in commands if isinstance(c, SendPathPing) and c.path == DIRECT
        ]
        if any(isinstance(e, PathSwitched) for e in events):
            break
    assert ping_times == pytest.approx([10.3, 10.8, 11.3])
    assert deadline == pytest.approx(11.5)
    assert PathSwitched(PEER, DIRECT, RELAY, SwitchReason.DEAD, 11.5) in events
    assert ClosePath(PEER, DIRECT) in commands
    assert paths.current_path(PEER) == RELAY
    # and a punch is tried again later, after a conntrack clash would have aged out
    upgrade = paths.report(PEER).next_upgrade_at  # type: ignore[union-attr]
    assert upgrade is not None and 11.5 + 36.0 <= upgrade <= 11.5 + 44.0


def test_an_answer_keeps_a_path_alive_and_under_suspicion_only_a_pong_does() -> None:
    paths = manager()
    on_direct(paths)
    paths.on_sent(PEER, DIRECT, 1000, 10.0)
    paths.on_received(PEER, DIRECT, 40, 10.1)  # the answer, in time: no suspicion at all
    paths.on_timer(12.0)
    _, events = drain(paths)
    assert not any(isinstance(e, PathFailed) for e in events)
    paths.on_sent(PEER, DIRECT, 1000, 20.0)
    paths.on_timer(20.5)
    commands, _ = drain(paths)  # suspect: a PING went out on the path
    paths.on_received(PEER, DIRECT, 40, 21.0)  # the peer's traffic, not an answer to us
    pong_all(paths, commands, 21.2)  # the PONG to our PING: it works both ways
    paths.on_timer(21.6)
    _, events = drain(paths)
    assert not any(isinstance(e, PathFailed) for e in events)
    assert paths.current_path(PEER) == DIRECT


def test_a_path_broken_one_way_dies_although_the_peers_traffic_still_arrives() -> None:
    """Our message died on the way; the peer, which never got it, sends us other things on
    the same path (a PONG to a channel probe that went another way, say): they arrive, but
    after the path came under suspicion they do not clear it."""
    paths = manager()
    on_direct(paths)
    paths.on_sent(PEER, DIRECT, 1000, 10.0)
    for step in range(4, 16):  # from 10.4 s, after suspect_after (0.3 s)
        paths.on_received(PEER, DIRECT, 40, 10.0 + step * 0.1)
        paths.on_timer(10.0 + step * 0.1)
    _, events = drain(paths)
    assert any(isinstance(e, PathFailed) and e.path == DIRECT for e in events)
    assert paths.current_path(PEER) == RELAY


def test_idle_paths_get_keepalives_below_the_nat_timeout() -> None:
    paths = manager(keepalive_interval=15.0, relay_keepalive=None)
    on_direct(paths, now=1.0)
    assert paths.next_deadline() == pytest.approx(16.0)
    paths.on_timer(16.0)
    commands, _ = drain(paths)
    assert [c.path for c in commands if isinstance(c, SendPathPing)] == [DIRECT]
    pong_all(paths, commands, 16.04)
    assert paths.next_deadline() == pytest.approx(31.04)  # 15 s after the pong
    assert paths.current_path(PEER) == DIRECT
    relay_too = manager()  # by default the relay path is kept alive as well, every 20 s
    relay_too.add_path(PEER, RELAY, 0.0, validated=True)
    drain(relay_too)
    relay_too.on_punch_event(failed(AbortReason.UDP_BLOCKED, retryable=False), 0.1)
    assert relay_too.next_deadline() == pytest.approx(20.0)
    relay_too.on_timer(20.0)
    commands, _ = drain(relay_too)
    assert [c.path for c in commands if isinstance(c, SendPathPing)] == [RELAY]


def test_an_idle_path_that_died_is_found_a_second_and_a_half_after_its_keepalive() -> None:
    paths = manager()
    on_direct(paths, now=0.0)
    paths.on_received(PEER, RELAY, 10, 19.0)  # keep the relay busy, only the direct idles
    while (deadline := paths.next_deadline()) is not None and deadline <= 23.0:
        paths.on_timer(deadline)
        commands, events = drain(paths)
        for command in commands:  # the relay answers, the direct path does not
            if isinstance(command, SendPathPing) and command.path == RELAY:
                paths.on_pong(PEER, RELAY, command.token, deadline + 0.08)
        if any(isinstance(e, PathFailed) for e in events):
            break
    assert deadline == pytest.approx(21.5)  # keepalive at 20, dead at 21.5
    assert paths.current_path(PEER) == RELAY


def test_punching_is_retried_with_backoff_and_every_minute_while_relayed() -> None:
    paths = manager()
    paths.add_path(PEER, RELAY, 0.0, validated=True)
    commands, _ = drain(paths)
    assert StartPunch(PEER) in commands
    starts = [0.0]
    now = 0.0
    for _ in range(3):
        paths.on_punch_event(failed(AbortReason.TIMEOUT, retryable=True), now + 5.0)
        deadline = paths.next_deadline()
        while deadline is not None:
            paths.on_timer(deadline)
            commands, _ = drain(paths)
            pong_all(paths, commands, deadline)
            if StartPunch(PEER) in commands:
                break
            deadline = paths.next_deadline()
        assert deadline is not None
        now = deadline
        starts.append(now)
    gaps = [b - a - 5.0 for a, b in itertools.pairwise(starts)]
    assert 36.0 <= gaps[0] <= 44.0
    assert all(54.0 <= gap <= 66.0 for gap in gaps[1:])
    # a refusal no retry can change: straight to a minute
    paths.on_punch_event(failed(AbortReason.BOTH_ENDPOINT_DEPENDENT, retryable=False), now + 1)
    report = paths.report(PEER)
    assert report is not None and report.next_upgrade_at == pytest.approx(now + 61.0)
    assert report.punch == "both-endpoint-dependent: detail"
    # and the peer's birthday gate is honoured
    paths.on_punch_event(
        failed(AbortReason.BIRTHDAY_BUSY, retryable=True, retry_after=90.0), now + 2
    )
    assert paths.report(PEER).next_upgrade_at == pytest.approx(now + 92.0)  # type: ignore[union-attr]


def test_no_direct_keeps_a_peer_on_the_relay() -> None:
    paths = manager()
    on_direct(paths)
    paths.set_no_direct(PEER, True, 2.0)
    commands, events = drain(paths)
    assert PathSwitched(PEER, DIRECT, RELAY, SwitchReason.NO_DIRECT, 2.0) in events
    paths.remove_path(PEER, DIRECT, "closed", 3.0)
    for t in (10.0, 70.0, 200.0):
        paths.on_timer(t)
        commands, _ = drain(paths)
        pong_all(paths, commands, t)
        assert StartPunch(PEER) not in commands
    assert paths.report(PEER).punch == "direct paths are turned off (--no-direct)"  # type: ignore[union-attr]
    paths.set_no_direct(PEER, False, 201.0)
    commands, _ = drain(paths)
    assert StartPunch(PEER) in commands  # at once


def test_turning_direct_off_cancels_a_running_punch() -> None:
    paths = manager()
    paths.add_path(PEER, RELAY, 0.0, validated=True)
    commands, _ = drain(paths)
    assert StartPunch(PEER) in commands
    paths.set_no_direct(PEER, True, 0.1)
    commands, _ = drain(paths)
    assert CancelPunch(PEER) in commands


def test_a_node_wide_no_direct_applies_to_new_peers() -> None:
    paths = PathManager(no_direct=True)
    paths.add_path(PEER, RELAY, 0.0, validated=True)
    paths.add_path(PEER, DIRECT, 0.1, validated=True)
    commands, _ = drain(paths)
    assert StartPunch(PEER) not in commands
    assert paths.current_path(PEER) == RELAY


def test_nat_rebinding_moves_to_the_new_address_after_validating_it() -> None:
    paths = manager()
    on_direct(paths)
    paths.on_received(PEER, REBOUND, 1200, 5.0)  # the peer's packets now come from :7002
    commands, _ = drain(paths)
    (ping,) = [c for c in commands if isinstance(c, SendPathPing) and c.path == REBOUND]
    assert paths.current_path(PEER) == DIRECT  # not before it answered
    paths.on_pong(PEER, REBOUND, ping.token, 5.04)
    commands, events = drain(paths)
    assert PathSwitched(PEER, DIRECT, REBOUND, SwitchReason.REBOUND, 5.04) in events
    assert PathFailed(PEER, DIRECT, "rebound to a new address", 5.04) in events
    assert not any(isinstance(c, ClosePath) for c in commands)  # the hop moved with it


def test_an_unproven_address_gets_at_most_three_times_what_came_from_it() -> None:
    paths = manager()
    on_direct(paths)
    paths.on_received(PEER, REBOUND, 10, 5.0)  # a tiny (perhaps forged) packet
    commands, _ = drain(paths)
    assert not any(isinstance(c, SendPathPing) and c.path == REBOUND for c in commands)
    assert paths.may_send(PEER, REBOUND, 30) and not paths.may_send(PEER, REBOUND, 31)
    paths.on_received(PEER, REBOUND, 20, 5.1)
    paths.on_timer(5.25)
    commands, _ = drain(paths)
    assert any(isinstance(c, SendPathPing) and c.path == REBOUND for c in commands)  # 90 >= 64
    assert not paths.may_send(PEER, REBOUND, 27)
    assert paths.may_send(PEER, DIRECT, 10**9)  # a validated path is not limited


def test_strangers_and_full_tables_are_bounded() -> None:
    paths = manager(max_paths=3)
    paths.on_received(NodeId(b"\x09" * 32), REBOUND, 1200, 0.0)  # unknown peer: no state
    assert paths.report(NodeId(b"\x09" * 32)) is None
    on_direct(paths)
    assert paths.add_path(PEER, OTHER, 2.0)
    assert not paths.add_path(PEER, PathKey(PathKind.DIRECT, ("192.0.2.1", 1)), 2.0)
    paths.on_received(PEER, PathKey(PathKind.PUNCHED, ("192.0.2.9", 9)), 1200, 2.0)
    assert len(paths.paths(PEER)) == 3
    paths.remove_path(PEER, OTHER, "closed", 3.0)  # a failed path makes room
    assert paths.add_path(PEER, PathKey(PathKind.DIRECT, ("192.0.2.1", 1)), 3.0)


def test_the_winning_probes_rtt_seeds_the_path_and_a_hop_that_never_comes_frees_its_socket() -> (
    None
):
    paths = manager()
    paths.add_path(PEER, RELAY, 0.0, validated=True)
    paths.on_punch_event(succeeded(), 0.2)
    paths.add_path(PEER, DIRECT, 0.3, validated=True)
    assert paths.report(PEER).rtt == pytest.approx(0.04)  # type: ignore[union-attr]
    lonely = manager()
    lonely.add_path(PEER, RELAY, 0.0, validated=True)
    birthday = PunchSucceeded(
        PEER,
        b"p" * 16,
        Strategy.BIRTHDAY,
        17,
        ("203.0.113.2", 41000),
        False,
        "udp",
        None,
        1.0,
        PunchStats(),
    )
    lonely.on_punch_event(birthday, 1.0)
    drain(lonely)
    while (deadline := lonely.next_deadline()) is not None and deadline <= 16.0:
        lonely.on_timer(deadline)
        commands, _ = drain(lonely)
        pong_all(lonely, commands, deadline)
        if CloseSocket(17) in commands:
            break
    assert deadline == pytest.approx(16.0)  # hop_timeout after the punch
    assert lonely.report(PEER).punch == "punched, but no hop came up over the address"  # type: ignore[union-attr]
    assert lonely.direct_allowed(PEER)
    lonely.set_no_direct(PEER, True, 17.0)
    assert not lonely.direct_allowed(PEER)


def test_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="dead_after"):
        PathConfig(dead_after=30.0, keepalive_interval=20.0)


def test_a_silent_relay_is_pinged_but_only_the_glue_removes_it() -> None:
    paths = manager()
    paths.add_path(PEER, RELAY, 0.0, validated=True)
    paths.on_punch_event(failed(AbortReason.UDP_BLOCKED, retryable=False), 0.1)
    drain(paths)
    for second in range(1, 120):
        paths.on_sent(PEER, RELAY, 100, float(second))  # never answered
        paths.on_timer(float(second))
        _, events = drain(paths)
        assert not any(isinstance(e, PathFailed) for e in events)
    assert paths.current_path(PEER) == RELAY
    paths.remove_path(PEER, RELAY, "the relay closed the channel", 120.0)
    _, events = drain(paths)
    assert PathSwitched(PEER, RELAY, None, SwitchReason.REMOVED, 120.0) in events
