"""The state directory: where identities, node configuration and runtime files live.

$MESHKEY_HOME (default ~/.meshkey), mode 0700
  identities/<name>.pem|.json
  nodes/<name>/state.db      SQLite (WAL): configuration and, later, relays, policies...
  nodes/<name>/node.log      the daemon's structured log (rotated: node.log.1 .. .3)
  nodes/<name>/daemon.out    the daemon's stdout/stderr (start-up errors)
  nodes/<name>/daemon.lock   held (flock) by the running daemon: the truth of "running"
  nodes/<name>/daemon.pid
  nodes/<name>/control.sock  the control API (Unix socket, mode 0600)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from meshkey.errors import MeshkeyError
from meshkey.identity.names import check_name
from meshkey.identity.node_id import NodeId

if TYPE_CHECKING:  # imported where used: the CLI's quick commands need none of them
    import sqlite3

    from meshkey.identity.store import IdentityStore
    from meshkey.routing.address import Route, TransportAddress


def _node_graph_schema() -> str:
    """The node graph's tables, owned by ``meshkey.dht.store`` (imported only to migrate:
    the CLI's quick commands need no DHT code)."""
    from meshkey.dht.store import DDL

    return DDL


# Each entry brings the schema from version i to i + 1; never edit one that has shipped.
# An entry is SQL, or a function returning the SQL of a layer that owns its tables.
MIGRATIONS: list[str | Callable[[], str]] = [
    "CREATE TABLE IF NOT EXISTS config (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """
    CREATE TABLE relays (name TEXT PRIMARY KEY, at TEXT NOT NULL, created_at TEXT NOT NULL);
    CREATE TABLE relay_claims (name TEXT PRIMARY KEY, owner TEXT NOT NULL,
                               claimed_at TEXT NOT NULL);
    CREATE TABLE policies (resource TEXT PRIMARY KEY, document TEXT NOT NULL);
    CREATE TABLE listeners (name TEXT PRIMARY KEY, authorized TEXT);
    """,
    "CREATE TABLE tcp_listeners (address TEXT PRIMARY KEY)",
    # Where the owners of relays hosted here were last seen (UDP), to nudge them at restart.
    "CREATE TABLE relay_owner_addresses (name TEXT PRIMARY KEY, address TEXT NOT NULL)",
    # TCP portals (inlets and outlets), as meshkey.portal.portals records them.
    """
    CREATE TABLE tcp_outlets (alias TEXT PRIMARY KEY, name TEXT NOT NULL, target TEXT NOT NULL,
                              allow TEXT, insecure INTEGER NOT NULL, created_at TEXT NOT NULL);
    CREATE TABLE tcp_inlets (alias TEXT PRIMARY KEY, listen TEXT NOT NULL, route TEXT NOT NULL,
                             authorized TEXT, insecure INTEGER NOT NULL, created_at TEXT NOT NULL);
    """,
    # The node graph (issue 11): peers, the records held, this node's record sequence.
    _node_graph_schema,
]
SCHEMA_VERSION = len(MIGRATIONS)


def migration_sql(migration: str | Callable[[], str]) -> str:
    return migration if isinstance(migration, str) else migration()


#: sockaddr_un holds 108 bytes; longer paths are reached through a chdir (see connect_unix).
_UNIX_PATH_LIMIT = 100


class NodeStateError(MeshkeyError):
    """A node's state is missing, inconsistent or in the wrong condition for the request."""

    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.code = code  # not_found | conflict | invalid | failed | timeout

    @property
    def kind(self) -> str:
        return self.code


def default_home() -> Path:
    return Path(os.environ.get("MESHKEY_HOME") or Path.home() / ".meshkey")


class Home:
    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else default_home()

    @property
    def identities(self) -> IdentityStore:
        from meshkey.identity.store import IdentityStore  # lazily: it loads cryptography

        return IdentityStore(self.path / "identities")

    def identity_problem(self, name: str) -> str | None:
        """What is wrong with identity ``name``'s files, if anything (read cheaply: without
        loading cryptography)."""
        from meshkey.identity.keyfile import key_file_problem

        directory = self.path / "identities"
        return key_file_problem(directory / f"{name}.pem", directory / f"{name}.json")

    @property
    def nodes_dir(self) -> Path:
        return self.path / "nodes"

    def ensure(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.nodes_dir.mkdir(exist_ok=True, mode=0o700)

    def node(self, name: str) -> NodeDir:
        check_name("node", name)
        return NodeDir(name, self.nodes_dir / name)

    @property
    def default_node_path(self) -> Path:
        return self.path / "default_node"

    def default_node(self) -> str | None:
        """The default node: the one `node default NAME` set, else the first created."""
        try:
            name = self.default_node_path.read_text().strip()
        except OSError:
            name = ""
        if name:
            try:
                if self.node(name).exists():
                    return name
            except ValueError:
                pass
        oldest: tuple[str, str] | None = None
        for each in self.node_names():
            try:
                created = self.node(each).config().get("created_at") or ""
            except NodeStateError:
                continue
            if oldest is None or (created, each) < oldest:
                oldest = (created, each)
        return oldest[1] if oldest else None

    def set_default_node(self, name: str) -> None:
        if not self.node(name).exists():
            raise NodeStateError(f"no node named {name!r} (see `meshkey node list`)", "not_found")
        self.ensure()
        self.default_node_path.write_text(f"{name}\n")

    def node_names(self) -> list[str]:
        if not self.nodes_dir.is_dir():
            return []
        return sorted(p.name for p in self.nodes_dir.iterdir() if (p / "state.db").exists())

    def resolve_node(
        self, name: str, protocol: str = "udp", *, last_known: bool = False
    ) -> TransportAddress:
        """``/node/NAME`` -> the running node's UDP (or TCP) address, pinned to its NodeId;
        with ``last_known``, a stopped node's last one (what a channel opened through it
        was keyed by)."""
        from meshkey.routing.address import TransportAddress, parse_address

        node = self.node(name)
        if not node.exists():
            raise NodeStateError(f"no node named {name!r} (see `meshkey node list`)", "not_found")
        if not last_known and not node.is_running():
            raise NodeStateError(
                f"node {name!r} is not running (start it with `meshkey node start {name}`)",
                "conflict",
            )
        config = node.config()
        bound = config.get(f"{protocol}_bound")
        if not bound:
            raise NodeStateError(f"node {name!r} has no {protocol.upper()} listener", "conflict")
        address = parse_address(bound)
        assert isinstance(address, TransportAddress)
        if address.host in ("0.0.0.0", "::"):  # listening everywhere: reach it here
            address = TransportAddress.from_socket(
                protocol, "127.0.0.1" if address.host == "0.0.0.0" else "::1", address.port
            )
        return address.with_node_id(NodeId.parse(config["node_id"]))


@dataclass
class NodeDir:
    name: str
    path: Path

    @property
    def db_path(self) -> Path:
        return self.path / "state.db"

    @property
    def log_path(self) -> Path:
        return self.path / "node.log"

    @property
    def output_path(self) -> Path:
        """The daemon's stdout and stderr: start-up errors and anything logging missed."""
        return self.path / "daemon.out"

    @property
    def lock_path(self) -> Path:
        return self.path / "daemon.lock"

    @property
    def pid_path(self) -> Path:
        return self.path / "daemon.pid"

    @property
    def socket_path(self) -> Path:
        return self.path / "control.sock"

    def exists(self) -> bool:
        return self.db_path.exists()

    def create(self, config: dict[str, str]) -> None:
        """Creates the node's state; of several racing to create one name, exactly one wins
        (the state database is claimed with an exclusive create), the others get a conflict."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            os.close(os.open(self.db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            raise NodeStateError(f"node {self.name!r} already exists", "conflict") from None
        try:
            self.set_config(config)
        except BaseException:
            self.db_path.unlink(missing_ok=True)
            raise

    def delete(self) -> None:
        import shutil

        shutil.rmtree(self.path)

    @contextlib.contextmanager
    def database(self) -> Iterator[sqlite3.Connection]:
        import sqlite3

        connection = sqlite3.connect(self.db_path, timeout=5)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            if connection.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                self._migrate(connection)
            with connection:
                yield connection
        except sqlite3.DatabaseError as exc:
            raise NodeStateError(f"node {self.name!r}: state database is unusable: {exc}") from exc
        finally:
            connection.close()

    def _migrate(self, connection: sqlite3.Connection) -> None:
        """Brings the schema up to date, once: the CLI and the daemon may open the database at
        the same moment, so the version is read and moved inside one write transaction."""
        previous = connection.isolation_level
        connection.isolation_level = None  # explicit BEGIN/COMMIT below
        connection.execute("BEGIN IMMEDIATE")
        try:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            for migration in MIGRATIONS[version:]:
                for statement in migration_sql(migration).split(";"):
                    if statement.strip():
                        connection.execute(statement)
            if version < SCHEMA_VERSION:
                connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        else:
            if version > SCHEMA_VERSION:
                raise NodeStateError(
                    f"node {self.name!r} was written by a newer meshkey (schema {version})"
                )
        finally:
            connection.isolation_level = previous

    def config(self) -> dict[str, str]:
        if not self.exists():
            raise NodeStateError(f"no node named {self.name!r}", "not_found")
        with self.database() as db:
            return dict(db.execute("SELECT key, value FROM config").fetchall())

    def set_config(self, values: dict[str, str]) -> None:
        with self.database() as db:
            db.executemany(
                "INSERT INTO config(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                list(values.items()),
            )

    def is_running(self) -> bool:
        """True while a daemon holds this node's lock (immune to stale pid files)."""
        if not self.lock_path.exists():
            return False
        fd = os.open(self.lock_path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    def pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None


def resolve_route(route: str | Route, home: Home | None, *, last_known: bool = False) -> Route:
    """Parses route text and replaces each ``/node/NAME`` with that node's pinned address
    (``last_known``: see :meth:`Home.resolve_node`)."""
    from meshkey.routing.address import NodeNameAddress, parse_route
    from meshkey.routing.errors import RemoteError
    from meshkey.wire.message import ErrorCode

    parsed = parse_route(route) if isinstance(route, str) else route
    if home is None:
        for address in parsed:
            if isinstance(address, NodeNameAddress):
                raise RemoteError(
                    ErrorCode.UNSUPPORTED, f"{address}: this node has no home to look names up in"
                )
        return parsed
    return tuple(
        home.resolve_node(a.name, last_known=last_known) if isinstance(a, NodeNameAddress) else a
        for a in parsed
    )


def seed_host(seed: str) -> str:
    """The host of a seed ``NODEID@HOST:PORT`` (or ``NODEID@/ip4/H/udp/P``), unchecked
    beyond that (the daemon parses seeds in full)."""
    from meshkey.routing.address import TransportAddress, parse_address

    address = seed.strip().partition("@")[2]
    if address.startswith("/"):
        parsed = parse_address(address)
        return parsed.host if isinstance(parsed, TransportAddress) else ""
    return parse_listen(address)[0]


LOOPBACK_LISTEN = "127.0.0.1:0"
ALL_INTERFACES_LISTEN = "0.0.0.0:0"


def listen_default(seed_hosts: Iterable[str]) -> str:
    """Where a node listens when not told (DESIGN.md decision 14): where its seeds can reach
    it. A seed on another machine must be able to dial back (and so must every peer it
    meets there), so any seed off loopback means all interfaces; otherwise loopback only, a
    node nobody outside can reach."""
    from meshkey.transport.interfaces import is_loopback

    if any(not is_loopback(host) for host in seed_hosts):
        return ALL_INTERFACES_LISTEN
    return LOOPBACK_LISTEN


def check_listen_reaches_seeds(listen: str, seed_hosts: Iterable[str], option: str) -> None:
    """Refuses (NodeStateError, "invalid") a loopback listener given with a seed that is not
    on loopback: the seed could never dial back, so the node would never join."""
    from meshkey.transport.interfaces import is_loopback

    host, _ = parse_listen(listen)
    remote = [h for h in seed_hosts if not is_loopback(h)]
    if is_loopback(host) and remote:
        raise NodeStateError(
            f"{option} {listen} listens on loopback only, so the seed at {remote[0]} can never "
            f"reach this node: leave {option} out (the node then listens on all interfaces), "
            f"or give an address the seed can reach, e.g. {option} 0.0.0.0:0",
            "invalid",
        )


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) for a listener; port 0 lets the OS choose."""
    from meshkey.routing.address import RouteError

    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise RouteError(
            f"invalid listen address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:4000"
        )
    return host, int(port)


@contextlib.contextmanager
def _short_path(path: Path) -> Iterator[str]:
    """A path to ``path`` that fits in sockaddr_un: itself, or its name after a chdir."""
    if len(os.fsencode(path)) <= _UNIX_PATH_LIMIT:
        yield str(path)
        return
    previous = os.getcwd()
    os.chdir(path.parent)
    try:
        yield path.name
    finally:
        os.chdir(previous)


def bind_unix(path: Path) -> socket.socket:
    """A listening Unix socket at ``path`` that only its owner can connect to."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        with _short_path(path) as short:
            sock.bind(short)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(64)
    sock.setblocking(False)
    return sock


def connect_unix(path: Path, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with _short_path(path) as short:
            sock.connect(short)
    except BaseException:
        sock.close()
        raise
    return sock
