"""One retry schedule for everything that tries again: whoami and NAT-classification
retransmits, the classification's re-check, the pace of punch attempts while relayed, relay
re-registration, the node graph's join, channel liveness, portal resolution and opens.

Sans-IO: it holds no timer. The caller asks :meth:`RetrySchedule.next_delay` how long to wait
before the next attempt (or :meth:`next_deadline` for an absolute time, given ``now``) and
calls :meth:`reset` after a success. Delays grow geometrically from ``first`` to ``maximum``;
each is spread by ``jitter`` (a fraction, drawn from the injected ``rng``) so that many nodes
that failed together do not retry together. ``attempts`` (optional) bounds the number of
delays handed out; after that :meth:`next_delay` returns None ("give up").

Imports nothing from meshkey: every layer may use it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class RetrySchedule:
    first: float
    maximum: float
    factor: float = 2.0
    jitter: float = 0.2
    attempts: int | None = None
    rng: random.Random = field(default_factory=random.Random, repr=False)
    _current: float = field(default=0.0, init=False, repr=False)
    _given: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.maximum:
            raise ValueError("a retry schedule needs 0 < first <= maximum")
        if self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError("a retry schedule needs factor >= 1 and 0 <= jitter < 1")
        self._current = self.first

    @property
    def given(self) -> int:
        """How many delays were handed out since the last reset."""
        return self._given

    def next_delay(self) -> float | None:
        """The wait before the next attempt, or None when the attempts are used up."""
        if self.attempts is not None and self._given >= self.attempts:
            return None
        base = self._current
        self._current = min(self._current * self.factor, self.maximum)
        self._given += 1
        if not self.jitter:
            return base
        return base * self.rng.uniform(1 - self.jitter, 1 + self.jitter)

    def next_deadline(self, now: float) -> float | None:
        delay = self.next_delay()
        return None if delay is None else now + delay

    def reset(self) -> None:
        """After a success: the next failure starts again from ``first``."""
        self._current = self.first
        self._given = 0
