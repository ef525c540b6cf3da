"""The node daemon: ``python -m meshkey.node.daemon --home DIR --name NAME``.

Holds the node's lock for its whole life, listens where it listened before when it can,
serves the control API (its operations: :mod:`meshkey.node.handlers`) and, if the node was
created with them, the HTTP status endpoints, and shuts down cleanly on SIGTERM/SIGINT or a
``stop`` request.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import errno
import fcntl
import json
import os
import signal
import struct
import sys
from pathlib import Path
from typing import Any, BinaryIO

from meshkey.dht.peers import parse_seed
from meshkey.identity.errors import IdentityError
from meshkey.identity.node_id import NodeId
from meshkey.log import EventLogger, configure_logging
from meshkey.nat.strategy import STRATEGIES, PunchConfig
from meshkey.node.control import ControlServer, HttpStatusServer
from meshkey.node.core import Node
from meshkey.node.handlers import ControlHandlers
from meshkey.node.state import (
    Home,
    NodeDir,
    NodeStateError,
    listen_default,
    parse_listen,
)
from meshkey.node.store import NodeStore
from meshkey.routing.address import (
    RouteError,
    TransportAddress,
    parse_address,
)
from meshkey.routing.message import Message
from meshkey.wire.dht import Mode
from meshkey.wire.net import Endpoint

log = EventLogger("node.daemon")


class DaemonError(Exception):
    pass


class Daemon:
    def __init__(self, home: Home, name: str) -> None:
        self.home = home
        self.name = name
        self.dir: NodeDir = home.node(name)
        self.node: Node | None = None
        self.store: NodeStore | None = None
        self.started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self._stop = asyncio.Event()
        self.http_address: str | None = None
        self.handlers: ControlHandlers | None = None
        self._lock_fd: int | None = None

    def request_stop(self) -> None:
        """Stops the daemon (the control API's ``stop``, SIGTERM, SIGINT)."""
        self._stop.set()

    def _lock(self) -> None:
        fd = os.open(self.dir.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DaemonError(f"node {self.name!r} is already running") from None
        self._lock_fd = fd

    async def run(self) -> None:
        if not self.dir.exists():
            raise DaemonError(f"no node named {self.name!r}")
        self._lock()
        config = self.dir.config()
        passphrase = os.environ.get("MESHKEY_PASSPHRASE")
        identity = self.home.identities.load(
            config["identity"], passphrase.encode() if passphrase else None
        )
        self.node = Node(
            identity=identity,
            tcp=None,
            udp=None,
            udp_batching=os.environ.get("MESHKEY_UDP_BATCHING", "1") != "0",
            home=self.home,
            name=self.name,
            store=(store := NodeStore(self.dir)),
            observers=json.loads(config.get("observers") or "[]"),
            direct=config.get("direct", "on") != "off",
            punch=_punch_strategy(),
            seeds=_seeds(config),
            dht_mode=_dht_mode(config),
            auto_relay=config.get("auto_relay", "on") != "off",
        )
        self.store = store
        await self.node.start()
        capture = os.environ.get("MESHKEY_CAPTURE")
        if capture:
            self.node.router.capture = _capture_to(Path(capture))
        try:
            bound = {
                f"{protocol}_bound": str(await self._listen(config, protocol))
                for protocol in ("udp", "tcp")
            }
            self.dir.set_config({"node_id": str(identity.node_id), **bound})
            self.node.announce_restart()
            self.node.path_service.wake()  # listening now: classify the NAT
            self.node.join_graph()  # and join the node graph
            self.node.auto_relays.start()  # and keep a relay if nobody can dial in
            for extra in store.tcp_listeners():
                try:
                    await self.node.tcp.listen(*parse_listen(extra))
                except OSError as exc:
                    log.warning("listen.failed", transport="tcp", address=extra, reason=str(exc))
            self.dir.pid_path.write_text(f"{os.getpid()}\n")
            self.handlers = ControlHandlers(self)
            control = ControlServer(self.handlers.table())
            await control.start(self.dir.socket_path)
            http = await self._start_http(config)
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self._stop.set)
            log.info("daemon.ready", name=self.name, node_id=identity.node_id, **bound)
            await self._stop.wait()
            log.info("daemon.stopping", name=self.name)
            await control.close()
            if http is not None:
                await http.close()
        finally:
            await self.node.stop()
            self.dir.socket_path.unlink(missing_ok=True)
            self.dir.pid_path.unlink(missing_ok=True)

    async def _start_http(self, config: dict[str, str]) -> HttpStatusServer | None:
        """The HTTP status endpoints, if the node was created with them (``--http-server``);
        where they listen is written to the node's configuration for ``node show``."""
        given = config.get("http_server")
        if not given:
            return None

        async def alive() -> tuple[bytes, str]:
            return b"Alive\n", "text/plain"

        async def show() -> tuple[bytes, str]:
            assert self.handlers is not None
            overview = await self.handlers.overview({})
            return json.dumps(overview, default=str, indent=2).encode(), "application/json"

        http = HttpStatusServer(
            {"/": (alive, frozenset({"GET", "HEAD"})), "/show": (show, frozenset({"GET"}))}
        )
        try:
            host, port = await http.start(*parse_listen(given))
        except OSError as exc:
            log.warning("http.listen_failed", address=given, reason=str(exc))
            self.dir.set_config({"http_server_bound": ""})
            return None
        self.dir.set_config({"http_server_bound": f"{host}:{port}"})
        self.http_address = f"{host}:{port}"
        return http

    async def _listen(self, config: dict[str, str], protocol: str) -> TransportAddress:
        assert self.node is not None
        transport = self.node.udp if protocol == "udp" else self.node.tcp
        given = config.get(protocol) or listen_default(h for _, (h, _) in _seeds(config))
        host, port = parse_listen(given)
        previous = config.get(f"{protocol}_bound")
        if port == 0 and previous:
            # The OS chose the port last time: ask for the same one, so routes stay valid.
            old = parse_address(previous)
            if isinstance(old, TransportAddress) and old.host == host:
                try:
                    return await transport.listen(host, old.port)
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        raise
                    log.info("listen.port_taken", transport=protocol, port=old.port)
        try:
            return await transport.listen(host, port)
        except OSError as exc:
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise DaemonError(
                f"cannot listen on {protocol.upper()} {host}:{port}: {reason}"
            ) from exc


def _seeds(config: dict[str, str]) -> list[tuple[NodeId, Endpoint]]:
    """The node's seeds (``node create --seed``) and those of ``MESHKEY_SEEDS`` (separated
    by commas or spaces), parsed at start: a bad one is an error, not a silent skip."""
    seeds = list(json.loads(config.get("seeds") or "[]"))
    seeds += os.environ.get("MESHKEY_SEEDS", "").replace(",", " ").split()
    try:
        return [parse_seed(seed) for seed in seeds]
    except RouteError as exc:
        raise DaemonError(str(exc)) from exc


def _dht_mode(config: dict[str, str]) -> Mode | None:
    """``auto`` (the default): dial-backs decide whether this node answers DHT queries."""
    return {"server": Mode.SERVER, "client": Mode.CLIENT}.get(config.get("dht_mode", "auto"))


def _punch_strategy() -> PunchConfig:
    """The punch schedule: meshkey's, or a reference system's for ``bench/punch.py``."""
    name = os.environ.get("MESHKEY_PUNCH_STRATEGY", "meshkey")
    try:
        return STRATEGIES[name]
    except KeyError:
        known = ", ".join(sorted(STRATEGIES))
        raise DaemonError(f"MESHKEY_PUNCH_STRATEGY={name!r}: expected one of {known}") from None


def _capture_to(path: Path) -> Any:
    """A router capture writing every routed message (u32 length + wire bytes) to ``path``.

    For debugging and for tests that must see what a node sees after hop decryption (such as
    proving a relay handles only ciphertext).
    """
    handle: BinaryIO = path.open("ab")

    def capture(message: Message) -> None:
        try:
            data = message.to_wire()
        except ValueError:
            return
        handle.write(struct.pack("!I", len(data)) + data)
        handle.flush()

    return capture


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshkey-daemon")
    parser.add_argument("--home", required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    home = Home(args.home)
    return run(home, args.name, log_file=home.node(args.name).log_path)


def run(home: Home, name: str, *, log_file: Path | None = None) -> int:
    """Runs a daemon in this process until it is stopped; returns the exit status.

    It logs to ``log_file`` (rotated by size) when given (a background daemon), else to
    stderr (``--foreground``); what escapes logging goes to stderr either way."""
    configure_logging(os.environ.get("MESHKEY_LOG", "info"), sys.stderr, file=log_file)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    try:
        runner(Daemon(home, name).run())
    except (DaemonError, IdentityError, NodeStateError, RouteError) as exc:
        log.error("daemon.failed", reason=str(exc))
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
