"""Bookkeeping of the birthday strategy: one at a time per node, and the random ports.

The birthday strategy (NATLAB.md) is the one exception to one UDP socket per node and the
one punch that sends thousands of packets, so a node runs at most one at a time and leaves
``spacing`` seconds between the end of one and the start of the next (HyperDHT: 20 s): a peer
with the same rule would otherwise refuse a burst of them, and a NAT's table would fill with
the extra sockets' mappings.

With ``n`` sockets open on the endpoint-dependent side, each random-port probe from the other
side hits one of their ``n`` public ports with probability ``n / 64512``, so ``k`` distinct
probes find one with probability ``1 - C(64512 - n, k) / C(64512, k)``
(:func:`hit_probability`): 256 sockets and 1,024 probes → 98.3 %, 2,048 probes → 99.97 %.
"""

from __future__ import annotations

import math
import random

from meshkey.wire.net import Endpoint

PORT_RANGE = (1024, 65535)  # MASQUERADE --random-fully picks from here for ports >= 1024


class BirthdayGate:
    """At most one birthday punch at a time, ``spacing`` seconds apart."""

    def __init__(self, spacing: float = 20.0) -> None:
        self.spacing = spacing
        self.holder: bytes | None = None
        self._last_end = -math.inf

    def try_acquire(self, punch_id: bytes, now: float) -> float | None:
        """None if ``punch_id`` may go now; else how many seconds until the gate may open."""
        if self.holder == punch_id:
            return None
        if self.holder is not None:
            return self.spacing
        wait = self._last_end + self.spacing - now
        if wait > 0:
            return wait
        self.holder = punch_id
        return None

    def release(self, punch_id: bytes, now: float) -> None:
        if self.holder == punch_id:
            self.holder = None
            self._last_end = now


def spray_ports(rng: random.Random, count: int) -> list[int]:
    """``count`` distinct random ports from :data:`PORT_RANGE`, in random order."""
    low, high = PORT_RANGE
    return rng.sample(range(low, high + 1), min(count, high - low + 1))


def spray_targets(rng: random.Random, host: str, count: int) -> list[Endpoint]:
    return [(host, port) for port in spray_ports(rng, count)]


def hit_probability(sockets: int, probes: int) -> float:
    """The chance that ``probes`` distinct random ports include one of ``sockets`` ports."""
    size = PORT_RANGE[1] - PORT_RANGE[0] + 1
    if sockets + probes > size:
        return 1.0
    miss = 0.0
    for i in range(probes):
        miss += math.log((size - sockets - i) / (size - i))
    return 1.0 - math.exp(miss)
