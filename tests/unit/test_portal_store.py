"""The state database's portal tables: migration 4 over an existing node, and round trips."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from meshkey.node.state import MIGRATIONS, SCHEMA_VERSION, Home, migration_sql
from meshkey.node.store import NodeStore


def test_a_node_written_before_portals_migrates_and_keeps_its_state(tmp_path: Path) -> None:
    node = Home(tmp_path).node("blue")
    node.path.mkdir(parents=True)
    before = next(
        i for i, m in enumerate(MIGRATIONS) if "CREATE TABLE tcp_outlets" in migration_sql(m)
    )
    with sqlite3.connect(node.db_path) as db:  # the schema a release before portals left
        for migration in MIGRATIONS[:before]:
            db.executescript(migration_sql(migration))
        db.execute("INSERT INTO config(key, value) VALUES ('identity', 'blue')")
        db.execute("INSERT INTO tcp_listeners(address) VALUES ('127.0.0.1:4000')")
        db.execute(f"PRAGMA user_version={before}")
    store = NodeStore(node)
    assert store.tcp_inlets() == [] and store.tcp_outlets() == []
    assert store.tcp_listeners() == ["127.0.0.1:4000"]
    assert node.config()["identity"] == "blue"
    with sqlite3.connect(node.db_path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_inlets_and_outlets_round_trip(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.ensure()
    node = home.node("yellow")
    node.create({"identity": "yellow"})
    store = NodeStore(node)
    outlet = {
        "alias": "db",
        "name": "outlet",
        "to": "127.0.0.1:5432",
        "allow": ["mkb", "mka"],
        "insecure": False,
        "created_at": "2026-01-01T00:00:00+00:00",
    }
    inlet = {
        "alias": "inlet-15432",
        "listen": "127.0.0.1:15432",
        "route": "/node/green/service/forward_to_blue/secure/api/service/outlet",
        "authorized": None,
        "insecure": True,
        "created_at": "2026-01-01T00:00:01+00:00",
    }
    store.save_tcp_outlet(outlet)
    store.save_tcp_inlet(inlet)
    assert store.tcp_outlets() == [{**outlet, "allow": ["mka", "mkb"]}]
    assert store.tcp_inlets() == [inlet]
    store.save_tcp_inlet({**inlet, "listen": "127.0.0.1:15433"})  # replaced, not added
    assert [r["listen"] for r in store.tcp_inlets()] == ["127.0.0.1:15433"]
    store.delete_tcp_inlet("inlet-15432")
    store.delete_tcp_outlet("db")
    assert store.tcp_inlets() == [] and store.tcp_outlets() == []
