"""What a daemon keeps across restarts, in its SQLite state database.

:class:`meshkey.node.core.Node` writes through a store when it has one (a daemon's) and keeps
everything in memory when it has none (an embedded node).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable
from typing import Any

from meshkey.channel.policy import Policy
from meshkey.dht.store import SqliteGraphStore, StoredPeer
from meshkey.identity.node_id import NodeId
from meshkey.node.state import NodeDir


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class NodeStore:
    def __init__(self, node: NodeDir) -> None:
        self._node = node

    # relays this node registered elsewhere
    def relays(self) -> list[tuple[str, str]]:
        with self._node.database() as db:
            return [(n, a) for n, a in db.execute("SELECT name, at FROM relays ORDER BY name")]

    def save_relay(self, name: str, at: str) -> None:
        with self._node.database() as db:
            db.execute(
                "INSERT OR REPLACE INTO relays(name, at, created_at) VALUES (?, ?, ?)",
                (name, at, _now()),
            )

    def delete_relay(self, name: str) -> None:
        with self._node.database() as db:
            db.execute("DELETE FROM relays WHERE name = ?", (name,))

    # relay names other nodes claimed here
    def relay_claims(self) -> dict[str, NodeId]:
        with self._node.database() as db:
            rows = db.execute("SELECT name, owner FROM relay_claims").fetchall()
        return {name: NodeId.parse(owner) for name, owner in rows}

    def claim_relay(self, name: str, owner: NodeId) -> None:
        with self._node.database() as db:
            db.execute(
                "INSERT OR REPLACE INTO relay_claims(name, owner, claimed_at) VALUES (?, ?, ?)",
                (name, str(owner), _now()),
            )

    def release_relay(self, name: str) -> None:
        with self._node.database() as db:
            db.execute("DELETE FROM relay_claims WHERE name = ?", (name,))
            db.execute("DELETE FROM relay_owner_addresses WHERE name = ?", (name,))

    def relay_owner_addresses(self) -> list[tuple[str, int]]:
        with self._node.database() as db:
            rows = db.execute("SELECT address FROM relay_owner_addresses").fetchall()
        addresses = []
        for (text,) in rows:
            host, _, port = str(text).rpartition(":")
            if host and port.isdigit():
                addresses.append((host.strip("[]"), int(port)))
        return addresses

    def save_relay_owner_address(self, name: str, address: tuple[str, int]) -> None:
        with self._node.database() as db:
            db.execute(
                "INSERT OR REPLACE INTO relay_owner_addresses(name, address) VALUES (?, ?)",
                (name, f"{address[0]}:{address[1]}"),
            )

    # policies
    def policies(self) -> list[Policy]:
        with self._node.database() as db:
            rows = db.execute("SELECT resource, document FROM policies").fetchall()
        return [Policy.from_document(resource, json.loads(doc)) for resource, doc in rows]

    def save_policy(self, policy: Policy) -> None:
        with self._node.database() as db:
            db.execute(
                "INSERT OR REPLACE INTO policies(resource, document) VALUES (?, ?)",
                (policy.resource, json.dumps(policy.document())),
            )

    def delete_policy(self, resource: str) -> None:
        with self._node.database() as db:
            db.execute("DELETE FROM policies WHERE resource = ?", (resource,))

    # secure channel listeners added by users (the default one is not stored)
    def listeners(self) -> list[tuple[str, frozenset[NodeId] | None]]:
        with self._node.database() as db:
            rows = db.execute("SELECT name, authorized FROM listeners ORDER BY name").fetchall()
        return [
            (name, frozenset(NodeId.parse(n) for n in json.loads(auth)) if auth else None)
            for name, auth in rows
        ]

    def save_listener(self, name: str, authorized: frozenset[NodeId] | None) -> None:
        document = json.dumps(sorted(str(n) for n in authorized)) if authorized else None
        with self._node.database() as db:
            db.execute(
                "INSERT OR REPLACE INTO listeners(name, authorized) VALUES (?, ?)",
                (name, document),
            )

    # more TCP listeners (the node's own --tcp one is in its configuration)
    def tcp_listeners(self) -> list[str]:
        with self._node.database() as db:
            return [a for (a,) in db.execute("SELECT address FROM tcp_listeners ORDER BY address")]

    def save_tcp_listener(self, address: str) -> None:
        with self._node.database() as db:
            db.execute("INSERT OR REPLACE INTO tcp_listeners(address) VALUES (?)", (address,))

    def delete_tcp_listener(self, address: str) -> None:
        with self._node.database() as db:
            db.execute("DELETE FROM tcp_listeners WHERE address = ?", (address,))

    def delete_listener(self, name: str) -> None:
        with self._node.database() as db:
            db.execute("DELETE FROM listeners WHERE name = ?", (name,))

    # TCP outlets and inlets (portals), as Portals' records give them
    def tcp_outlets(self) -> list[dict[str, Any]]:
        with self._node.database() as db:
            rows = db.execute(
                "SELECT alias, name, target, allow, insecure, created_at FROM tcp_outlets "
                "ORDER BY alias"
            ).fetchall()
        return [
            {
                "alias": alias,
                "name": name,
                "to": target,
                "allow": json.loads(allow) if allow else None,
                "insecure": bool(insecure),
                "created_at": created_at,
            }
            for alias, name, target, allow, insecure, created_at in rows
        ]

    def save_tcp_outlet(self, record: dict[str, Any]) -> None:
        allow = record.get("allow")
        with self._node.database() as db:
            db.execute(
                "INSERT OR REPLACE INTO tcp_outlets(alias, name, target, allow, insecure, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record["alias"],
                    record["name"],
                    record["to"],
                    json.dumps(sorted(allow)) if allow is not None else None,
                    int(bool(record.get("insecure"))),
                    record.get("created_at") or _now(),
                ),
            )

    def delete_tcp_outlet(self, alias: str) -> None:
        with self._node.database() as db:
            db.execute("DELETE FROM tcp_outlets WHERE alias = ?", (alias,))

    def tcp_inlets(self) -> list[dict[str, Any]]:
        with self._node.database() as db:
            rows = db.execute(
                "SELECT alias, listen, route, authorized, insecure, created_at FROM tcp_inlets "
                "ORDER BY alias"
            ).fetchall()
        return [
            {
                "alias": alias,
                "listen": listen,
                "route": route,
                "authorized": json.loads(authorized) if authorized else None,
                "insecure": bool(insecure),
                "created_at": created_at,
            }
            for alias, listen, route, authorized, insecure, created_at in rows
        ]

    def save_tcp_inlet(self, record: dict[str, Any]) -> None:
        authorized = record.get("authorized")
        with self._node.database() as db:
            db.execute(
                "INSERT OR REPLACE INTO tcp_inlets(alias, listen, route, authorized, insecure, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record["alias"],
                    record["listen"],
                    record["route"],
                    json.dumps(sorted(authorized)) if authorized is not None else None,
                    int(bool(record.get("insecure"))),
                    record.get("created_at") or _now(),
                ),
            )

    def delete_tcp_inlet(self, alias: str) -> None:
        with self._node.database() as db:
            db.execute("DELETE FROM tcp_inlets WHERE alias = ?", (alias,))

    # the node graph
    def graph_store(self) -> NodeGraphStore:
        return NodeGraphStore(self._node)


class NodeGraphStore:
    """:class:`~meshkey.dht.store.GraphStore` on the node's state database: the tables are
    the DHT layer's, the connection is opened per call as for everything else here (the
    daemon's writes are small batches every few seconds)."""

    def __init__(self, node: NodeDir) -> None:
        self._node = node

    def load_peers(self) -> list[StoredPeer]:
        with self._node.database() as db:
            return SqliteGraphStore(db).load_peers()

    def save_peers(self, changed: Iterable[StoredPeer], removed: Iterable[NodeId]) -> None:
        with self._node.database() as db:
            SqliteGraphStore(db).save_peers(changed, removed)

    def load_records(self) -> list[bytes]:
        with self._node.database() as db:
            return SqliteGraphStore(db).load_records()

    def save_records(
        self, changed: Iterable[tuple[NodeId, bytes, float]], removed: Iterable[NodeId]
    ) -> None:
        with self._node.database() as db:
            SqliteGraphStore(db).save_records(changed, removed)

    def load_sequence(self) -> int:
        with self._node.database() as db:
            return SqliteGraphStore(db).load_sequence()

    def save_sequence(self, sequence: int) -> None:
        with self._node.database() as db:
            SqliteGraphStore(db).save_sequence(sequence)

    def load_mode(self) -> int | None:
        with self._node.database() as db:
            return SqliteGraphStore(db).load_mode()

    def save_mode(self, mode: int) -> None:
        with self._node.database() as db:
            SqliteGraphStore(db).save_mode(mode)
