"""The node's event bus: transports (and later layers) publish, anyone subscribes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from meshkey.log import EventLogger

log = EventLogger("node.events")

Subscriber = Callable[[Any], None]


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Calls ``callback(event)`` for every event; returns a function that unsubscribes."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def publish(self, event: Any) -> None:
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                log.exception("subscriber.failed", kind=type(event).__name__)

    async def wait_for(self, predicate: Callable[[Any], bool], timeout: float) -> Any:
        """The first event matching ``predicate`` published from now on."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def check(event: Any) -> None:
            if not future.done() and predicate(event):
                future.set_result(event)

        unsubscribe = self.subscribe(check)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            unsubscribe()
