"""The shared timer glue and round-trip estimator (meshkey.timing)."""

from __future__ import annotations

import asyncio

import pytest

from meshkey.timing import DeadlineTimer, RttEstimate


def test_rtt_estimate_follows_rfc_6298() -> None:
    estimate = RttEstimate()
    assert _state(estimate) == (None, 0.0, 0)
    assert estimate.timeout(default=1.0, minimum=0.1, maximum=3.0) == 1.0
    estimate.add(0.1)
    assert _state(estimate) == (0.1, 0.05, 1)
    estimate.add(0.2)
    srtt, rttvar, _ = _state(estimate)
    assert srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.2)
    assert rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.1)
    assert estimate.timeout(default=1.0, minimum=0.0, maximum=3.0) == pytest.approx(
        (srtt or 0.0) + 4 * rttvar
    )
    assert estimate.timeout(default=1.0, minimum=0.0, maximum=0.05) == 0.05
    estimate.add(-1.0)  # a clock that went backwards is a zero sample, never negative
    assert (_state(estimate)[0] or 0.0) > 0


def _state(estimate: RttEstimate) -> tuple[float | None, float, int]:
    return estimate.srtt, estimate.rttvar, estimate.samples


async def test_deadline_timer_fires_once_never_early_and_rearms_only_on_change() -> None:
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    timer = DeadlineTimer(fired.append)
    deadline = loop.time() + 0.02
    timer.follow(deadline)
    handle = timer._handle
    timer.follow(deadline)  # unchanged: the same handle stays armed
    assert timer._handle is handle and timer.at == deadline
    await asyncio.sleep(0.06)
    assert len(fired) == 1 and fired[0] >= deadline
    assert timer.at is None  # disarmed while (and after) it fired


async def test_deadline_timer_moves_and_cancels() -> None:
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    timer = DeadlineTimer(fired.append)
    timer.follow(loop.time() + 10.0)
    later = loop.time() + 0.01
    timer.follow(later)  # moved earlier
    await asyncio.sleep(0.05)
    assert len(fired) == 1 and fired[0] >= later
    timer.follow(loop.time() + 0.01)
    timer.cancel()
    await asyncio.sleep(0.03)
    assert len(fired) == 1


async def test_deadline_timer_clamps_now_to_the_deadline_when_woken_early() -> None:
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    timer = DeadlineTimer(fired.append)
    deadline = loop.time() + 5.0
    timer.follow(deadline)
    timer._expired()  # as if the loop woke it early (uvloop does, by up to a millisecond)
    assert fired == [deadline]
