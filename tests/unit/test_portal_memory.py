"""Giving freed portal buffers back: one heap trim per burst of ended sessions."""

from __future__ import annotations

import asyncio

import pytest

from meshkey.portal import memory


async def test_many_sessions_ending_at_once_share_one_trim(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []

    def trim(pad: int) -> int:
        calls.append(pad)
        return 1

    monkeypatch.setattr(memory, "_MALLOC_TRIM", trim)
    monkeypatch.setattr(memory, "TRIM_DELAY", 0.05)
    for _ in range(100):
        memory.give_back_soon()
    assert calls == []  # not once per session, and not at once
    async with asyncio.timeout(5):
        while not calls:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert calls == [0]  # one trim, of everything (no padding kept)
    memory.give_back_soon()  # a later burst gets its own
    async with asyncio.timeout(5):
        while len(calls) < 2:
            await asyncio.sleep(0.01)


def test_without_glibc_giving_back_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_MALLOC_TRIM", None)
    assert memory.give_back() is False
    memory.give_back_soon()  # no loop, no trim function: nothing to schedule, no error


def test_on_this_machine_the_heaps_can_be_trimmed() -> None:
    """The daemons' tests measure the effect; this says whether it is there at all."""
    if memory._MALLOC_TRIM is None:
        pytest.skip("not glibc: freed heap pages stay with the allocator")
    assert memory.give_back() is True
