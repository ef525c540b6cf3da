"""Freshness of IK first messages, sans-IO: the initiator's clock in, a verdict out.

Noise IK's first message can be replayed by anyone who saw it go by: it is the genuine
initiator's, so the responder reads it, authenticates the initiator, and answers. A replay can
never open a channel (the responder opens only on a sealed message from the initiator, which
takes the ephemeral private key the replayer does not have), but it would make the responder
work and answer, and hand the message's early data (a punch's candidates) to the layer above
again, which would then send probes on a replayer's say-so. So, as WireGuard does:

* the initiator stamps each IK_HELLO with its wall clock in nanoseconds, strictly increasing
  within the process (:class:`Timestamps`; the clock a restarted process reads is later);
* the responder keeps, per initiator NodeId, the timestamps it accepted (:class:`ReplayGuard`),
  and accepts one only if it is new and above a floor that follows the newest by
  :data:`WINDOW_NS` (WireGuard keeps only the newest; a window lets a few handshakes from one
  peer cross each other on the route). A refused IK_HELLO is answered USE_XX, so an initiator
  whose clock went back still connects, with XX.

Bounds: :data:`MAX_PER_PEER` timestamps per initiator (the floor rises past the oldest when
there are more), :data:`MAX_PEERS` initiators (the least recently seen is forgotten). What
is forgotten (an evicted initiator, or everything after a restart) can be replayed once more:
a half-open handshake that expires, nothing else.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

#: How far behind the newest timestamp seen from an initiator another may be (its handshakes
#: crossing on the route): the responder's half-open timeout, in nanoseconds.
WINDOW_NS = 10 * 1_000_000_000
MAX_PER_PEER = 64
MAX_PEERS = 4096


class Timestamps:
    """The initiator's side: a strictly increasing timestamp per IK_HELLO."""

    def __init__(self) -> None:
        self._last = 0

    def next(self, wall_ns: int) -> int:
        """A timestamp from ``wall_ns`` (the wall clock now), above every earlier one."""
        self._last = max(wall_ns, self._last + 1)
        return self._last


@dataclass(slots=True)
class _Seen:
    floor: int = 0  # only timestamps above it are accepted
    accepted: set[int] = field(default_factory=set)  # those above the floor


class ReplayGuard:
    """The responder's side: which IK_HELLO timestamps are fresh, per initiator."""

    def __init__(
        self,
        *,
        window_ns: int = WINDOW_NS,
        max_per_peer: int = MAX_PER_PEER,
        max_peers: int = MAX_PEERS,
    ) -> None:
        self._window = window_ns
        self._max_per_peer = max_per_peer
        self._max_peers = max_peers
        self._peers: OrderedDict[bytes, _Seen] = OrderedDict()

    def __len__(self) -> int:
        return len(self._peers)

    def accept(self, peer: bytes, timestamp: int) -> bool:
        """Whether an authenticated IK_HELLO from ``peer`` stamped ``timestamp`` is fresh;
        if so it is remembered, and the same timestamp is refused from then on."""
        seen = self._peers.get(peer)
        if seen is None:
            seen = self._peers[peer] = _Seen()
            while len(self._peers) > self._max_peers:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(peer)
        if timestamp <= seen.floor or timestamp in seen.accepted:
            return False
        seen.accepted.add(timestamp)
        seen.floor = max(seen.floor, max(seen.accepted) - self._window)
        seen.accepted = {t for t in seen.accepted if t > seen.floor}
        while len(seen.accepted) > self._max_per_peer:
            oldest = min(seen.accepted)
            seen.accepted.discard(oldest)
            seen.floor = oldest
        return True
