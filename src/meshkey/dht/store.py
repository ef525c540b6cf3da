"""Persistence of the node graph: the table's entries, the records held, our sequence number.

The engine never touches storage: :class:`~meshkey.dht.service.DhtService` restores from a
:class:`GraphStore` at start and writes *changes* back in small batches (every few seconds,
only the rows that changed), so the event loop never waits on a large write.

:data:`DDL` is the schema for the node's SQLite state database; the node adds it as a
schema migration and hands :class:`SqliteGraphStore` its ``sqlite3.Connection``. Times are
stored as wall-clock (unix) seconds: monotonic clocks restart with the process.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from meshkey.identity.errors import InvalidNodeIdError
from meshkey.identity.node_id import NodeId
from meshkey.wire.net import Endpoint

DDL = """
CREATE TABLE dht_peers (
    node_id TEXT PRIMARY KEY,
    addresses TEXT NOT NULL,      -- JSON list of [host, port], most recent first
    reachable_at TEXT,            -- JSON [host, port] where this node reached it, or NULL
    claimed INTEGER,              -- the mode it claims (0 client, 1 server), or NULL
    learned TEXT NOT NULL,        -- seed | inbound | outbound | manual | lookup
    first_seen REAL NOT NULL,     -- unix seconds
    last_seen REAL NOT NULL
);
CREATE TABLE dht_records (
    node_id TEXT PRIMARY KEY,
    record BLOB NOT NULL,         -- the signed peer record, as received
    expiry REAL NOT NULL
);
CREATE TABLE dht_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class StoredPeer:
    node_id: NodeId
    addresses: tuple[Endpoint, ...]
    reachable_at: Endpoint | None
    claimed: int | None
    learned: str
    first_seen: float
    last_seen: float


class GraphStore(Protocol):
    def load_peers(self) -> list[StoredPeer]: ...

    def save_peers(self, changed: Iterable[StoredPeer], removed: Iterable[NodeId]) -> None: ...

    def load_records(self) -> list[bytes]: ...

    def save_records(
        self, changed: Iterable[tuple[NodeId, bytes, float]], removed: Iterable[NodeId]
    ) -> None: ...

    def load_sequence(self) -> int: ...

    def save_sequence(self, sequence: int) -> None: ...

    def load_mode(self) -> int | None: ...

    def save_mode(self, mode: int) -> None: ...


class MemoryGraphStore:
    """A store that forgets at exit: for embedded nodes without a state directory, and
    tests."""

    def __init__(self) -> None:
        self.peers: dict[NodeId, StoredPeer] = {}
        self.records: dict[NodeId, bytes] = {}
        self.sequence = 0
        self.mode: int | None = None
        self.writes = 0

    def load_peers(self) -> list[StoredPeer]:
        return list(self.peers.values())

    def save_peers(self, changed: Iterable[StoredPeer], removed: Iterable[NodeId]) -> None:
        self.writes += 1
        for peer in changed:
            self.peers[peer.node_id] = peer
        for node_id in removed:
            self.peers.pop(node_id, None)

    def load_records(self) -> list[bytes]:
        return list(self.records.values())

    def save_records(
        self, changed: Iterable[tuple[NodeId, bytes, float]], removed: Iterable[NodeId]
    ) -> None:
        for node_id, record, _expiry in changed:
            self.records[node_id] = record
        for node_id in removed:
            self.records.pop(node_id, None)

    def load_sequence(self) -> int:
        return self.sequence

    def save_sequence(self, sequence: int) -> None:
        self.sequence = sequence

    def load_mode(self) -> int | None:
        return self.mode

    def save_mode(self, mode: int) -> None:
        self.mode = mode


def _endpoint(value: object) -> Endpoint | None:
    if (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    ):
        return value[0], value[1]
    return None


class SqliteGraphStore:
    """The graph in the node's SQLite state database (tables from :data:`DDL`)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def load_peers(self) -> list[StoredPeer]:
        rows = self.connection.execute(
            "SELECT node_id, addresses, reachable_at, claimed, learned, first_seen, last_seen "
            "FROM dht_peers"
        ).fetchall()
        peers = []
        for node_id, addresses, reachable_at, claimed, learned, first_seen, last_seen in rows:
            try:
                parsed = tuple(
                    e for e in (_endpoint(a) for a in json.loads(addresses)) if e is not None
                )
                reachable = _endpoint(json.loads(reachable_at)) if reachable_at else None
                peers.append(
                    StoredPeer(
                        NodeId.parse(node_id),
                        parsed,
                        reachable,
                        claimed,
                        learned,
                        float(first_seen),
                        float(last_seen),
                    )
                )
            except (InvalidNodeIdError, ValueError, TypeError):
                continue  # a row this version cannot read: the graph re-learns that peer
        return [p for p in peers if p.addresses]

    def save_peers(self, changed: Iterable[StoredPeer], removed: Iterable[NodeId]) -> None:
        with self.connection:
            self.connection.executemany(
                "INSERT OR REPLACE INTO dht_peers(node_id, addresses, reachable_at, claimed, "
                "learned, first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        str(p.node_id),
                        json.dumps([list(a) for a in p.addresses]),
                        json.dumps(list(p.reachable_at)) if p.reachable_at else None,
                        p.claimed,
                        p.learned,
                        p.first_seen,
                        p.last_seen,
                    )
                    for p in changed
                ],
            )
            self.connection.executemany(
                "DELETE FROM dht_peers WHERE node_id = ?", [(str(n),) for n in removed]
            )

    def load_records(self) -> list[bytes]:
        rows = self.connection.execute("SELECT record FROM dht_records").fetchall()
        return [bytes(record) for (record,) in rows]

    def save_records(
        self, changed: Iterable[tuple[NodeId, bytes, float]], removed: Iterable[NodeId]
    ) -> None:
        with self.connection:
            self.connection.executemany(
                "INSERT OR REPLACE INTO dht_records(node_id, record, expiry) VALUES (?, ?, ?)",
                [(str(n), record, expiry) for n, record, expiry in changed],
            )
            self.connection.executemany(
                "DELETE FROM dht_records WHERE node_id = ?", [(str(n),) for n in removed]
            )

    def load_sequence(self) -> int:
        row = self.connection.execute(
            "SELECT value FROM dht_state WHERE key = 'sequence'"
        ).fetchone()
        try:
            return int(row[0]) if row else 0
        except ValueError:
            return 0

    def save_sequence(self, sequence: int) -> None:
        self._save_state("sequence", str(sequence))

    def load_mode(self) -> int | None:
        row = self.connection.execute("SELECT value FROM dht_state WHERE key = 'mode'").fetchone()
        return int(row[0]) if row and str(row[0]).isdigit() else None

    def save_mode(self, mode: int) -> None:
        self._save_state("mode", str(mode))

    def _save_state(self, key: str, value: str) -> None:
        with self.connection:
            self.connection.execute(
                "INSERT OR REPLACE INTO dht_state(key, value) VALUES (?, ?)", (key, value)
            )
