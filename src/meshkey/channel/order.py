"""Delivery in the sender's order across a path switch, sans-IO.

A secure channel's messages carry nonces in the order their sender sealed them. Over one path
they arrive in that order; when traffic moves (relay to direct, or back), messages sent just
before the switch may arrive after those sent just after, and a path that died may have taken
some with it (they are resent on the new path, see :mod:`meshkey.channel.manager`). So the
receiver holds a message whose predecessors have not arrived yet, for at most ``hold``
seconds (or ``max_held`` messages), then releases what it holds in order: a gap that was not
filled by then is a message that is not coming. Every sealed message (pings and pongs too)
takes a nonce, so each one counts to close a gap; only data is held.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

HOLD = 0.3
MAX_HELD = 256


@dataclass
class InOrder(Generic[T]):
    hold: float = HOLD
    max_held: int = MAX_HELD
    expected: int = 0  # the next nonce in order
    _held: dict[int, T | None] = field(default_factory=dict)
    _deadline: float | None = None

    def accept(self, nonce: int, item: T | None, now: float) -> list[T]:
        """``item`` (None for a sealed message that is not data) arrived with ``nonce``;
        returns the items that may be delivered now, in order. Then re-read the deadline."""
        if nonce < self.expected:  # released late after a gap closed without it: late, not lost
            return [] if item is None else [item]
        self._held[nonce] = item
        out = self._release_in_order()
        if self._held and self._deadline is None:
            self._deadline = now + self.hold
        if len(self._held) > self.max_held:
            out += self._release_all()
        return out

    def next_deadline(self) -> float | None:
        return self._deadline

    def on_timer(self, now: float) -> list[T]:
        if self._deadline is None or now < self._deadline:
            return []
        return self._release_all()

    def reset(self) -> list[T]:
        """A new session (its nonces start again at 0): what is held goes first."""
        out = self._release_all()
        self.expected = 0
        return out

    def _release_in_order(self) -> list[T]:
        out: list[T] = []
        while self.expected in self._held:
            item = self._held.pop(self.expected)
            self.expected += 1
            if item is not None:
                out.append(item)
        if not self._held:
            self._deadline = None
        return out

    def _release_all(self) -> list[T]:
        out: list[T] = []
        for nonce in sorted(self._held):
            item = self._held.pop(nonce)
            if item is not None:
                out.append(item)
            self.expected = nonce + 1
        self._deadline = None
        return out
