"""How many secure channel handshakes a node holds half-open, sans-IO: a verdict per HELLO.

A HELLO costs the responder a Diffie-Hellman, a signature and a record until the initiator
finishes or the handshake expires (:data:`meshkey.channel.liveness.HANDSHAKE_TIMEOUT`), and
anyone who can reach a listener can send one. So half-open handshakes are counted per
*slot*, a (listener, source) pair, the source being the authenticated hop the HELLO came over
(or ``"local"``), and bounded three ways: per source, so that a flood over one connection
cannot crowd out handshakes that arrive over others; per listener; and in all. A refused
HELLO is answered (BUSY, with :meth:`HalfOpenLimits.refusal`'s reason) by the glue.
"""

from __future__ import annotations

from collections import Counter

MAX_HALF_OPEN = 1024
MAX_HALF_OPEN_PER_LISTENER = 256
#: Per authenticated hop (or this node itself): a flood over one connection cannot crowd
#: out handshakes that arrive over others.
MAX_HALF_OPEN_PER_SOURCE = 32

#: (listener name, source): what one half-open handshake holds.
Slot = tuple[str, str]


class HalfOpenLimits:
    def __init__(
        self,
        *,
        total: int = MAX_HALF_OPEN,
        per_listener: int = MAX_HALF_OPEN_PER_LISTENER,
        per_source: int = MAX_HALF_OPEN_PER_SOURCE,
    ) -> None:
        self.total = total
        self.per_listener = per_listener
        self.per_source = per_source
        self._held: Counter[Slot] = Counter()

    def __len__(self) -> int:
        return sum(self._held.values())

    def held(self, listener: str, source: str | None = None) -> int:
        """Half-open handshakes on ``listener`` (from ``source``, when given)."""
        if source is not None:
            return self._held[(listener, source)]
        return sum(n for (name, _), n in self._held.items() if name == listener)

    def refusal(self, listener: str, source: str) -> str | None:
        """None if one more handshake from ``source`` on ``listener`` may start, else why not
        (then :meth:`hold` its slot if it does start)."""
        if self._held[(listener, source)] >= self.per_source:
            return f"too many secure channel handshakes in progress from {source}"
        if self.held(listener) >= self.per_listener or len(self) >= self.total:
            return f"too many secure channel handshakes in progress on /service/{listener}"
        return None

    def hold(self, listener: str, source: str) -> Slot:
        slot = (listener, source)
        self._held[slot] += 1
        return slot

    def release(self, slot: Slot) -> None:
        """The handshake in ``slot`` finished, failed or expired (call once per hold)."""
        if self._held[slot] > 0:
            self._held[slot] -= 1
            if not self._held[slot]:
                del self._held[slot]
