"""The node graph in a daemon's state database: migration 6 over an existing node, and the
graph store's round trip through the node's own connection handling."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from meshkey.dht.store import StoredPeer
from meshkey.identity.keys import Identity
from meshkey.node.state import MIGRATIONS, SCHEMA_VERSION, Home, migration_sql
from meshkey.node.store import NodeStore


def test_a_node_written_before_the_graph_migrates_and_keeps_its_state(tmp_path: Path) -> None:
    node = Home(tmp_path).node("blue")
    node.path.mkdir(parents=True)
    before = next(i for i, m in enumerate(MIGRATIONS) if "dht_peers" in migration_sql(m))
    with sqlite3.connect(node.db_path) as db:  # the schema a release before the graph left
        for migration in MIGRATIONS[:before]:
            db.executescript(migration_sql(migration))
        db.execute("INSERT INTO config(key, value) VALUES ('identity', 'blue')")
        db.execute(f"PRAGMA user_version={before}")
    graph = NodeStore(node).graph_store()
    assert graph.load_peers() == [] and graph.load_sequence() == 0
    assert node.config()["identity"] == "blue"
    with sqlite3.connect(node.db_path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_peers_records_and_sequence_round_trip(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.ensure()
    node = home.node("yellow")
    node.create({"identity": "yellow"})
    graph = NodeStore(node).graph_store()
    a, b = Identity.generate().node_id, Identity.generate().node_id
    peer_a = StoredPeer(a, (("10.0.0.1", 4000),), ("10.0.0.1", 4000), 1, "seed", 100.0, 160.0)
    peer_b = StoredPeer(b, (("10.0.0.2", 4001),), None, None, "inbound", 100.0, 120.0)
    graph.save_peers([peer_a, peer_b], [])
    graph.save_peers([], [b])
    assert graph.load_peers() == [peer_a]
    graph.save_records([(a, b"signed", 999.0)], [])
    assert graph.load_records() == [b"signed"]
    graph.save_records([], [a])
    assert graph.load_records() == []
    graph.save_sequence(7)
    assert NodeStore(node).graph_store().load_sequence() == 7


def test_the_mode_found_out_is_kept(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.ensure()
    node = home.node("green")
    node.create({"identity": "green"})
    graph = NodeStore(node).graph_store()
    assert graph.load_mode() is None
    graph.save_mode(1)
    assert NodeStore(node).graph_store().load_mode() == 1
