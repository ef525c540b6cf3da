"""Round-trip estimates per peer, and the request timeouts that follow from them.

Each peer's estimate is a :class:`meshkey.timing.RttEstimate` (RFC 6298: the first sample
``r`` sets ``srtt = r`` and ``rttvar = r / 2``; each later one moves them by 1/8 and 1/4). A
request to a peer times out after ``srtt + 4 * rttvar``, clamped to [``minimum``,
``maximum``]. A peer never measured gets the same formula
over every sample this node took (so a node on a 1 ms LAN does not wait a WAN's second for
a stranger), or ``default`` before the first sample. The table is bounded: past
``capacity`` peers the least recently sampled is forgotten.

Why: the reference Kademlia waits a fixed 5 s for every request, so each dead contact costs
5 s; here a dead contact costs a few round trips of the living.
"""

from __future__ import annotations

from collections import OrderedDict

from meshkey.identity.node_id import NodeId
from meshkey.timing import RttEstimate

DEFAULT_TIMEOUT = 1.0
MIN_TIMEOUT = 0.05
MAX_TIMEOUT = 3.0
CAPACITY = 4096


class RttEstimator:
    def __init__(
        self,
        *,
        default: float = DEFAULT_TIMEOUT,
        minimum: float = MIN_TIMEOUT,
        maximum: float = MAX_TIMEOUT,
        capacity: int = CAPACITY,
    ) -> None:
        self.default = default
        self.minimum = minimum
        self.maximum = maximum
        self.capacity = capacity
        self._peers: OrderedDict[NodeId, RttEstimate] = OrderedDict()
        self._overall = RttEstimate()  # over every sample: what a stranger is given

    def sample(self, peer: NodeId, rtt: float) -> None:
        estimate = self._peers.pop(peer, None) or RttEstimate()
        estimate.add(rtt)
        self._peers[peer] = estimate  # the most recently sampled last
        while len(self._peers) > self.capacity:
            self._peers.popitem(last=False)
        self._overall.add(rtt)

    def srtt(self, peer: NodeId) -> float | None:
        estimate = self._peers.get(peer)
        return None if estimate is None else estimate.srtt

    def timeout(self, peer: NodeId) -> float:
        estimate = self._peers.get(peer) or self._overall
        return estimate.timeout(default=self.default, minimum=self.minimum, maximum=self.maximum)
