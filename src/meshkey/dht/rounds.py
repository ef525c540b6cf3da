"""Rounds: one request to each of several peers, settled once every one answered or failed.

- :class:`PingRound`: a full bucket's oldest entries (:class:`~meshkey.dht.table.BucketFull`)
  are pinged; the round settles into the table's verdict (those that answered stay, the
  others make room for the newcomer and the replacement cache).
- :class:`StoreRound`: this node's record (one sequence) is sent to the k closest servers a
  lookup found; the round settles into :class:`~meshkey.dht.events.Published`.

Sans-IO: the engine sends the requests and reports each outcome; ``answered`` says when the
round is over.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshkey.dht.events import PingRoundSettled, Published
from meshkey.dht.table import BucketFull, Entry
from meshkey.identity.node_id import NodeId


@dataclass(slots=True, eq=False)
class PingRound:
    verdict: BucketFull
    waiting: set[NodeId]
    alive: set[NodeId] = field(default_factory=set)

    def answered(self, peer: NodeId, *, alive: bool) -> bool:
        """``peer`` answered (``alive``) or failed; True once nobody is waited for."""
        if alive:
            self.alive.add(peer)
        self.waiting.discard(peer)
        return not self.waiting

    def settled(self, added: list[Entry]) -> PingRoundSettled:
        """What the round came to, ``added`` being who the table let in after it."""
        asked = self.verdict.to_ping
        return PingRoundSettled(
            self.verdict.bucket,
            tuple(n for n in asked if n in self.alive),
            tuple(n for n in asked if n not in self.alive),
            tuple(e.node_id for e in added),
        )


@dataclass(slots=True, eq=False)
class StoreRound:
    sequence: int
    asked: int = 0
    waiting: int = 0
    stored: int = 0

    def asking(self) -> None:
        self.asked += 1
        self.waiting += 1

    def answered(self, *, stored: bool) -> bool:
        """One server answered (``stored``: it took the record) or failed; True when the
        last one did."""
        self.waiting -= 1
        self.stored += stored
        return self.waiting <= 0

    def published(self) -> Published:
        return Published(self.sequence, self.stored, self.asked)


__all__ = ["PingRound", "StoreRound"]
