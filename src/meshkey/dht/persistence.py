"""The node graph in its store: what comes back at start, what changed since the last write.

At start the table and the records held come back from the
:class:`~meshkey.dht.store.GraphStore` (:meth:`GraphPersistence.restore`): an entry's times
go from the wall clock to this process's clock (never later than now), and every record is
checked again (it may have expired while the node was down). :meth:`GraphPersistence.flush`
writes only the rows that changed since the last flush: entries whose stored form differs
(last-seen times rounded to a minute, so a busy peer is not a write per message) and records
of a new sequence; and it deletes what is gone. The glue calls it every few seconds and at
close. (The sequence number and the mode are written when they change, by the glue.)
"""

from __future__ import annotations

from meshkey.dht.engine import DhtEngine
from meshkey.dht.records import RecordError, verify_signed
from meshkey.dht.store import GraphStore, StoredPeer
from meshkey.dht.table import Entry, Learned
from meshkey.identity.node_id import NodeId
from meshkey.wire.dht import Mode


class GraphPersistence:
    def __init__(self, engine: DhtEngine, store: GraphStore, wall_offset: float) -> None:
        self.engine = engine
        self.store = store
        self.wall_offset = wall_offset
        self._written_peers: dict[NodeId, StoredPeer] = {}
        self._written_records: dict[NodeId, int] = {}  # owner -> sequence

    def restore(self, now: float) -> None:
        """Puts the stored graph and records into the engine (at start)."""
        for peer in self.store.load_peers():
            self.engine.table.restore(self._entry_from_store(peer, now))
        self._written_peers = {p.node_id: p for p in self._stored_entries()}
        for raw in self.store.load_records():
            try:
                record = verify_signed(raw)
            except RecordError:
                continue  # a row that does not verify is no proof of anything
            self.engine.records.restore(record, now + self.wall_offset)
            self._written_records[record.node_id] = record.sequence

    def flush(self) -> None:
        """Writes what changed in the graph and the records held since the last flush."""
        current = {p.node_id: p for p in self._stored_entries()}
        changed = [p for n, p in current.items() if self._written_peers.get(n) != p]
        removed = [n for n in self._written_peers if n not in current]
        if changed or removed:
            self.store.save_peers(changed, removed)
        self._written_peers = current
        held = {r.node_id: r for r in self.engine.records.newest()}
        new = [
            (n, r.raw, r.expiry)
            for n, r in held.items()
            if self._written_records.get(n) != r.sequence
        ]
        gone = [n for n in self._written_records if n not in held]
        if new or gone:
            self.store.save_records(new, gone)
        self._written_records = {n: r.sequence for n, r in held.items()}

    def _stored_entries(self) -> list[StoredPeer]:
        return [
            StoredPeer(
                e.node_id,
                tuple(e.addresses),
                e.reachable_at,
                None if e.claimed is None else int(e.claimed),
                e.learned.value,
                round(e.first_seen + self.wall_offset),
                round((e.last_seen + self.wall_offset) / 60) * 60,
            )
            for e in self.engine.table.entries()
        ]

    def _entry_from_store(self, peer: StoredPeer, now: float) -> Entry:
        return Entry(
            peer.node_id,
            int.from_bytes(peer.node_id.raw, "big"),
            list(peer.addresses),
            Learned(peer.learned) if peer.learned in Learned._value2member_map_ else Learned.LOOKUP,
            min(now, peer.first_seen - self.wall_offset),
            min(now, peer.last_seen - self.wall_offset),
            reachable_at=peer.reachable_at,
            claimed=None if peer.claimed is None else Mode(peer.claimed),
        )


__all__ = ["GraphPersistence"]
