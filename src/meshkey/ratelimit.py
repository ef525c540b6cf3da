"""A token bucket, sans-IO: ``allow(now)`` spends a token if there is one.

Used wherever a peer (or anyone who can send a packet) could make a node do expensive work
as often as it likes: new QUIC connections, DHT requests, punch probes. ``rate`` tokens per
second refill it, up to ``burst``. Time comes in with every call; nothing here reads a clock.

Imports nothing from meshkey: every layer may use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    rate: float
    burst: float
    _tokens: float = field(init=False)
    _stamp: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self._tokens = self.burst

    def allow(self, now: float, cost: float = 1.0) -> bool:
        self._refill(now)
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    def available(self, now: float) -> float:
        self._refill(now)
        return self._tokens

    def _refill(self, now: float) -> None:
        if self._stamp is not None and now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        if self._stamp is None or now > self._stamp:
            self._stamp = now
