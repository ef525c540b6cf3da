"""The automatic relay keeper (DESIGN.md decision 15), with a fake clock."""

from __future__ import annotations

from meshkey.identity.node_id import NodeId
from meshkey.relay.keeper import (
    AutoRelayState,
    CreateAutoRelay,
    DeleteAutoRelay,
    RelayCandidate,
    RelayKeeper,
)

SEED = RelayCandidate(NodeId(b"\x01" * 32), ("203.0.113.10", 7000), seed=True)
FAST = RelayCandidate(NodeId(b"\x02" * 32), ("198.51.100.2", 7000), rtt=0.010)
SLOW = RelayCandidate(NodeId(b"\x03" * 32), ("198.51.100.3", 7000), rtt=0.080)
UNMEASURED = RelayCandidate(NodeId(b"\x04" * 32), ("198.51.100.4", 7000))


def keeper(*candidates: RelayCandidate, reachable: bool | None = False) -> RelayKeeper:
    k = RelayKeeper()
    k.set_candidates(list(candidates), 0.0)
    k.set_reachable(reachable, 0.0)
    return k


def test_a_client_takes_a_relay_on_its_seed_first_then_servers_by_rtt() -> None:
    k = keeper(UNMEASURED, SLOW, FAST, SEED)
    assert k.commands() == [CreateAutoRelay(SEED.node_id, SEED.endpoint)]
    expected = [c.node_id for c in (SEED, FAST, SLOW, UNMEASURED)]
    assert [c.node_id for c in k.ranked(0.0)] == expected


def test_nothing_while_reachability_is_unknown_and_everything_dropped_once_reachable() -> None:
    k = keeper(SEED, reachable=None)
    assert k.commands() == [] and k.next_deadline() is None
    k.set_reachable(False, 1.0)
    assert k.commands() == [CreateAutoRelay(SEED.node_id, SEED.endpoint)]
    k.on_relay_state(SEED.node_id, AutoRelayState.ACTIVE, 1.2)
    assert k.commands() == [] and k.status == "active"
    k.set_reachable(True, 50.0)
    assert k.commands() == [DeleteAutoRelay(SEED.node_id, "not needed (reachable)")]
    assert k.held() == {}


def test_a_relay_is_kept_while_reachability_goes_unknown_again() -> None:
    k = keeper(SEED, FAST, reachable=False)
    assert k.commands() == [CreateAutoRelay(SEED.node_id, SEED.endpoint)]
    k.on_relay_state(SEED.node_id, AutoRelayState.ACTIVE, 0.5)
    k.set_reachable(None, 1.0)  # e.g. the hint that said "not reachable" no longer holds
    assert k.commands() == [] and k.held() == {SEED.node_id: AutoRelayState.ACTIVE}
    k.on_relay_state(SEED.node_id, AutoRelayState.DOWN, 3.0)  # and it still fails over
    k.on_timer(3.0 + k.down_grace)
    assert k.commands() == [CreateAutoRelay(FAST.node_id, FAST.endpoint)]


def test_turned_off_means_no_relay() -> None:
    k = RelayKeeper(enabled=False)
    k.set_candidates([SEED], 0.0)
    k.set_reachable(False, 0.0)
    assert k.commands() == [] and "turned off" in k.status


def test_a_relay_that_dies_is_replaced_within_grace_and_the_dead_one_goes_once_replaced() -> None:
    k = keeper(SEED, FAST)
    k.commands()
    k.on_relay_state(SEED.node_id, AutoRelayState.ACTIVE, 0.5)
    assert k.next_deadline() is None  # an active relay needs no timer
    k.on_relay_state(SEED.node_id, AutoRelayState.DOWN, 10.0)  # the relay node died
    assert k.commands() == [] and k.next_deadline() == 10.0 + k.down_grace
    k.on_timer(10.0 + k.down_grace)
    assert k.commands() == [CreateAutoRelay(FAST.node_id, FAST.endpoint)]
    k.on_relay_state(FAST.node_id, AutoRelayState.ACTIVE, 13.4)
    assert k.commands() == [DeleteAutoRelay(SEED.node_id, "replaced")]
    assert k.held() == {FAST.node_id: AutoRelayState.ACTIVE}


def test_a_relay_that_comes_back_before_grace_is_kept() -> None:
    k = keeper(SEED, FAST)
    k.commands()
    k.on_relay_state(SEED.node_id, AutoRelayState.ACTIVE, 0.5)
    k.on_relay_state(SEED.node_id, AutoRelayState.DOWN, 10.0)
    k.on_relay_state(SEED.node_id, AutoRelayState.ACTIVE, 11.0)
    k.on_timer(20.0)
    assert k.commands() == []


def test_a_refused_candidate_is_skipped_with_backoff_and_tried_again_later() -> None:
    k = keeper(SEED, FAST)
    k.commands()
    k.on_relay_state(SEED.node_id, AutoRelayState.REFUSED, 0.2)
    assert k.commands() == [CreateAutoRelay(FAST.node_id, FAST.endpoint)]
    assert [c.node_id for c in k.ranked(1.0)] == [FAST.node_id]
    assert next(c.node_id for c in k.ranked(0.2 + k.retry_after)) == SEED.node_id


def test_when_every_candidate_fails_the_set_stays_bounded() -> None:
    many = [
        RelayCandidate(NodeId(bytes([i]) * 32), ("198.51.100.9", 7000 + i)) for i in range(5, 25)
    ]
    k = keeper(*many)
    now = 0.0
    for _ in range(40):
        k.commands()
        now += k.grace
        k.on_timer(now)
        assert len(k.held()) <= k.wanted + 1
    assert len(k.held()) == k.wanted + 1  # the newest attempt and one that keeps trying


def test_no_candidate_says_so() -> None:
    k = keeper()
    assert k.commands() == [] and k.status == "no reachable node to hold a relay yet"
    k.set_candidates([SEED], 3.0)
    assert k.commands() == [CreateAutoRelay(SEED.node_id, SEED.endpoint)]


def test_an_active_relay_made_by_hand_makes_the_automatic_one_unneeded() -> None:
    k = keeper(SEED)
    k.commands()
    k.on_relay_state(SEED.node_id, AutoRelayState.ACTIVE, 0.5)
    k.set_manual_active(1, 2.0)
    assert k.commands() == [
        DeleteAutoRelay(SEED.node_id, "not needed (a relay made by hand is active)")
    ]
    k.set_manual_active(0, 9.0)  # the manual one went down: an automatic one again
    assert k.commands() == [CreateAutoRelay(SEED.node_id, SEED.endpoint)]


def test_registering_again_after_being_active_is_down_and_keeps_its_clock() -> None:
    """The relay client re-registers (REGISTERING) before it gives up (RETRYING): both are
    "down" for a relay that was active, and the 1.5 s grace runs from the first."""
    k = keeper(SEED, FAST)
    k.commands()
    k.on_relay_state(SEED.node_id, AutoRelayState.ACTIVE, 0.5)
    k.on_relay_state(SEED.node_id, AutoRelayState.PENDING, 10.0)  # connection lost
    k.on_relay_state(SEED.node_id, AutoRelayState.DOWN, 11.0)  # the re-dial failed
    assert k.next_deadline() == 10.0 + k.down_grace
    k.on_timer(10.0 + k.down_grace)
    assert k.commands() == [CreateAutoRelay(FAST.node_id, FAST.endpoint)]
