"""A worker's mailbox that is fair between the peers feeding it.

A service such as ``echo`` serves everyone who can reach it. With one FIFO, a peer sending as
fast as it can fills the queue and every other peer waits behind it. Here each sender (the
identity a message arrived with: its channel peer, else its hop peer, else "this node") has
its own queue, bounded by ``per_sender``; the worker takes one message from each non-empty
queue in turn. A sender whose queue is full waits, which stops the reading of *its*
connection (backpressure on that peer only); the others go on. ``total`` bounds the sum.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from typing import Generic, TypeVar

T = TypeVar("T")
Key = object


class FairMailbox(Generic[T]):
    def __init__(self, per_sender: int, total: int) -> None:
        self._per_sender = per_sender
        self._total = total
        self._queues: OrderedDict[Key, deque[T]] = OrderedDict()
        self._size = 0
        self._not_empty = asyncio.Event()
        self._room: dict[Key, asyncio.Event] = {}

    def __len__(self) -> int:
        return self._size

    def _full(self, key: Key) -> bool:
        queue = self._queues.get(key)
        return self._size >= self._total or (queue is not None and len(queue) >= self._per_sender)

    async def put(self, key: Key, item: T) -> None:
        while not self.try_put(key, item):
            room = self._room.setdefault(key, asyncio.Event())
            room.clear()
            await room.wait()

    def try_put(self, key: Key, item: T) -> bool:
        """Puts without waiting; False (and nothing queued) when there is no room."""
        if self._full(key):
            return False
        self._queues.setdefault(key, deque()).append(item)
        self._size += 1
        self._not_empty.set()
        return True

    async def get(self) -> T:
        while not self._size:
            self._not_empty.clear()
            await self._not_empty.wait()
        key, queue = next(iter(self._queues.items()))
        item = queue.popleft()
        self._size -= 1
        if queue:
            self._queues.move_to_end(key)  # round robin: this sender goes last
        else:
            del self._queues[key]
        self._wake(key)
        return item

    def _wake(self, key: Key) -> None:
        room = self._room.get(key)
        if room is not None:
            room.set()
            if key not in self._queues:
                del self._room[key]
        if self._size < self._total:  # a slot for anyone waiting on the total
            for other in list(self._room.values()):
                other.set()
