"""A shared worker's mailbox: fair between senders, bounded per sender and in all."""

from __future__ import annotations

import asyncio

from meshkey.routing.mailbox import FairMailbox


async def test_senders_are_served_in_turn_whatever_their_backlog() -> None:
    box: FairMailbox[str] = FairMailbox(per_sender=100, total=1000)
    for index in range(50):
        await box.put("firehose", f"f{index}")
    await box.put("polite", "p0")
    await box.put("polite", "p1")
    taken = [await box.get() for _ in range(5)]
    assert taken == ["f0", "p0", "f1", "p1", "f2"]  # not behind all 50 of the firehose
    assert len(box) == 47


async def test_a_full_sender_waits_alone() -> None:
    box: FairMailbox[int] = FairMailbox(per_sender=2, total=10)
    await box.put("a", 1)
    await box.put("a", 2)
    blocked = asyncio.create_task(box.put("a", 3))
    await asyncio.sleep(0)
    assert not blocked.done()
    assert box.try_put("b", 10)  # another sender is not held up
    assert not box.try_put("a", 4)
    assert await box.get() == 1  # room for a again
    await asyncio.wait_for(blocked, 1)
    assert sorted([await box.get() for _ in range(3)]) == [2, 3, 10]


async def test_the_total_bounds_all_senders_together() -> None:
    box: FairMailbox[int] = FairMailbox(per_sender=10, total=3)
    for sender in ("a", "b", "c"):
        assert box.try_put(sender, 0)
    assert not box.try_put("d", 0)
    waiting = asyncio.create_task(box.put("d", 1))
    await asyncio.sleep(0)
    await box.get()
    await asyncio.wait_for(waiting, 1)
    assert len(box) == 3
