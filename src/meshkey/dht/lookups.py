"""The lookups one node runs at once: their ids, what each is for, each one's requests, and
the bound on how many run for callers.

Sans-IO bookkeeping for the engine. A :class:`~meshkey.dht.lookup.Lookup` may ask a peer
again (at another address, when the first failed or was slow): only its latest request to
that peer speaks for the peer, so a failure of an older one is no news
(:meth:`Lookups.settled`). When a lookup ends, every request it still has out is abandoned
(:meth:`Lookups.finish` hands them back to be closed; their late answers are then unknown
and dropped).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from meshkey.dht.events import Purpose
from meshkey.dht.lookup import Lookup
from meshkey.errors import MeshkeyError
from meshkey.identity.node_id import NodeId

#: Lookups for callers (``/peer/NODEID`` routes, ``peer find``...) running at once; past it
#: :meth:`Lookups.admit` refuses with :class:`LookupLimitError` rather than queue. A lookup
#: is started on someone's behalf, often for a message being routed: with 64 already running
#: the node is being flooded or the network is failing, and a queue would only hold memory
#: and answer after the caller's own timeout; refused, the caller fails at once (a route: as
#: for a peer nobody found) and may try again. The engine's own lookups have bounds of
#: their own (MAX_REFRESHES at once; one per bucket during a join; one per record).
MAX_LOOKUPS = 64


class LookupLimitError(MeshkeyError):
    """:data:`MAX_LOOKUPS` lookups for callers are running already."""

    default_kind = "busy"


class Lookups:
    def __init__(self) -> None:
        self._running: dict[int, tuple[Lookup, Purpose]] = {}
        self._latest: dict[tuple[int, NodeId], bytes] = {}  # (lookup, peer) -> txid
        self._requests: dict[int, set[bytes]] = {}  # lookup -> txids out
        self._purposes: Counter[Purpose] = Counter()  # how many run, by what they are for
        self.next_id = 1  # the id the next lookup gets

    def __len__(self) -> int:
        return len(self._running)

    def __iter__(self) -> Iterator[tuple[int, Lookup, Purpose]]:
        """The running lookups (a copy: a caller may start or finish some meanwhile)."""
        return iter([(i, lookup, purpose) for i, (lookup, purpose) in self._running.items()])

    def running(self, purpose: Purpose) -> int:
        """How many lookups for ``purpose`` run (the engine bounds those of callers)."""
        return self._purposes[purpose]

    def admit(self, purpose: Purpose) -> None:
        """Whether a lookup for ``purpose`` may start now: :class:`LookupLimitError` if not."""
        if purpose is Purpose.USER and self._purposes[purpose] >= MAX_LOOKUPS:
            raise LookupLimitError(f"{MAX_LOOKUPS} lookups are running: try again later")

    def add(self, lookup: Lookup, purpose: Purpose) -> int:
        lookup_id = self.next_id
        self.next_id += 1
        self._running[lookup_id] = (lookup, purpose)
        self._purposes[purpose] += 1
        return lookup_id

    def get(self, lookup_id: int) -> tuple[Lookup, Purpose] | None:
        return self._running.get(lookup_id)

    def sent(self, lookup_id: int, peer: NodeId, txid: bytes) -> None:
        """The lookup asked ``peer`` with request ``txid`` (now its latest to that peer)."""
        self._latest[(lookup_id, peer)] = txid
        self._requests.setdefault(lookup_id, set()).add(txid)

    def settled(self, lookup_id: int, peer: NodeId, txid: bytes) -> bool:
        """Request ``txid`` to ``peer`` was answered or failed: False if a newer request to
        that peer is out (this one was abandoned, and its failure says nothing)."""
        if self._latest.get((lookup_id, peer)) == txid:
            del self._latest[(lookup_id, peer)]
        requests = self._requests.get(lookup_id)
        if requests is not None:
            requests.discard(txid)
        return (lookup_id, peer) not in self._latest

    def given_up(self, lookup_id: int, peer: NodeId) -> bytes | None:
        """The lookup gave up on ``peer``: its latest request to it (to close), if any."""
        return self._latest.pop((lookup_id, peer), None)

    def finish(self, lookup_id: int) -> set[bytes]:
        """Forgets a lookup that ended; returns the requests it still had out."""
        entry = self._running.pop(lookup_id, None)
        if entry is not None:
            self._purposes[entry[1]] -= 1
        for key in [key for key in self._latest if key[0] == lookup_id]:
            del self._latest[key]
        return self._requests.pop(lookup_id, set())

    def next_deadline(self) -> float | None:
        deadlines = [lookup.next_deadline() for lookup, _ in self._running.values()]
        present = [d for d in deadlines if d is not None]
        return min(present) if present else None


__all__ = ["MAX_LOOKUPS", "LookupLimitError", "Lookups"]
