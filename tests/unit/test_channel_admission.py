"""Half-open handshake limits: per source, per listener and in all, each tested at its bound."""

from __future__ import annotations

from meshkey.channel.admission import (
    MAX_HALF_OPEN,
    MAX_HALF_OPEN_PER_LISTENER,
    MAX_HALF_OPEN_PER_SOURCE,
    HalfOpenLimits,
)


def test_the_defaults_are_the_documented_limits() -> None:
    limits = HalfOpenLimits()
    assert (limits.total, limits.per_listener, limits.per_source) == (
        MAX_HALF_OPEN,
        MAX_HALF_OPEN_PER_LISTENER,
        MAX_HALF_OPEN_PER_SOURCE,
    )
    assert MAX_HALF_OPEN_PER_SOURCE < MAX_HALF_OPEN_PER_LISTENER < MAX_HALF_OPEN


def test_a_flood_from_one_source_does_not_stop_another() -> None:
    limits = HalfOpenLimits(total=100, per_listener=50, per_source=3)
    slots = [limits.hold("api", "mallory") for _ in range(3)]
    refusal = limits.refusal("api", "mallory")
    assert refusal is not None and "from mallory" in refusal
    assert limits.refusal("api", "alice") is None
    assert limits.refusal("other", "mallory") is None  # the per-source bound is per listener
    limits.release(slots[0])
    assert limits.refusal("api", "mallory") is None
    assert limits.held("api", "mallory") == 2 and len(limits) == 2


def test_per_listener_and_total_bounds() -> None:
    limits = HalfOpenLimits(total=5, per_listener=3, per_source=10)
    for source in ("a", "b", "c"):
        limits.hold("api", source)
    refusal = limits.refusal("api", "d")
    assert refusal is not None and "on /service/api" in refusal
    assert limits.refusal("other", "d") is None
    limits.hold("other", "d")
    limits.hold("other", "e")
    assert len(limits) == 5
    assert limits.refusal("third", "f") == (
        "too many secure channel handshakes in progress on /service/third"
    )


def test_release_is_counted_once_and_forgets_empty_slots() -> None:
    limits = HalfOpenLimits()
    slot = limits.hold("api", "local")
    limits.release(slot)
    limits.release(slot)  # a second release of the same slot changes nothing
    assert len(limits) == 0 and limits.held("api") == 0
    assert limits._held == {}
