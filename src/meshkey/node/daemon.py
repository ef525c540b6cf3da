"""The node daemon: ``python -m meshkey.node.daemon --home DIR --name NAME``.

Holds the node's lock for its whole life, listens where it listened before when it can,
serves the control API, and shuts down cleanly on SIGTERM/SIGINT or a ``stop`` request.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import errno
import fcntl
import os
import signal
import sys
from typing import Any

from meshkey.identity.errors import IdentityError
from meshkey.log import EventLogger, configure_logging
from meshkey.node.control import ControlServer
from meshkey.node.control_client import ControlError
from meshkey.node.core import Node
from meshkey.node.state import Home, NodeDir, NodeStateError, parse_listen
from meshkey.routing.address import RouteError, TransportAddress, parse_address
from meshkey.routing.errors import RemoteError

log = EventLogger("node.daemon")


class DaemonError(Exception):
    pass


class Daemon:
    def __init__(self, home: Home, name: str) -> None:
        self.home = home
        self.name = name
        self.dir: NodeDir = home.node(name)
        self.node: Node | None = None
        self.started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self._stop = asyncio.Event()
        self._lock_fd: int | None = None

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
        self.node = Node(identity=identity, tcp=None, home=self.home, name=self.name)
        await self.node.start()
        try:
            address = await self._listen(config)
            self.dir.set_config({"node_id": str(identity.node_id), "tcp_bound": str(address)})
            self.dir.pid_path.write_text(f"{os.getpid()}\n")
            control = ControlServer(self._handlers())
            await control.start(self.dir.socket_path)
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self._stop.set)
            log.info("daemon.ready", name=self.name, node_id=identity.node_id, tcp=address)
            await self._stop.wait()
            log.info("daemon.stopping", name=self.name)
            await control.close()
        finally:
            await self.node.stop()
            self.dir.socket_path.unlink(missing_ok=True)
            self.dir.pid_path.unlink(missing_ok=True)

    async def _listen(self, config: dict[str, str]) -> TransportAddress:
        assert self.node is not None
        host, port = parse_listen(config.get("tcp", "127.0.0.1:0"))
        previous = config.get("tcp_bound")
        if port == 0 and previous:
            # The OS chose the port last time: ask for the same one, so routes stay valid.
            old = parse_address(previous)
            if isinstance(old, TransportAddress) and old.host == host:
                try:
                    return await self.node.tcp.listen(host, old.port)
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        raise
                    log.info("listen.port_taken", port=old.port)
        try:
            return await self.node.tcp.listen(host, port)
        except OSError as exc:
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise DaemonError(f"cannot listen on {host}:{port}: {reason}") from exc

    def _handlers(self) -> dict[str, Any]:
        return {
            "status": self._status,
            "stop": self._request_stop,
            "message.send": self._message_send,
        }

    async def _status(self, args: dict[str, Any]) -> dict[str, Any]:
        assert self.node is not None
        return {**self.node.info(), "pid": os.getpid(), "started_at": self.started_at}

    async def _request_stop(self, args: dict[str, Any]) -> dict[str, Any]:
        asyncio.get_running_loop().call_soon(self._stop.set)
        return {"stopping": True}

    async def _message_send(self, args: dict[str, Any]) -> dict[str, Any]:
        assert self.node is not None
        route, payload = args.get("route"), args.get("payload")
        timeout = args.get("timeout", 10.0)
        if not isinstance(route, str) or not isinstance(payload, bytes):
            raise ControlError("invalid", "message.send needs a route (text) and a payload")
        if not isinstance(timeout, int | float) or not 0 < timeout <= 3600:
            raise ControlError("invalid", "timeout must be between 0 and 3600 seconds")
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            reply = await self.node.send(route, payload, timeout=float(timeout))
        except RouteError as exc:
            raise ControlError("invalid", str(exc)) from exc
        except NodeStateError as exc:
            raise ControlError(exc.code, str(exc)) from exc
        except RemoteError as exc:
            raise ControlError(exc.code.name.lower(), exc.text) from exc
        return {"payload": reply, "elapsed": loop.time() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshkey-daemon")
    parser.add_argument("--home", required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    return run(Home(args.home), args.name)


def run(home: Home, name: str) -> int:
    """Runs a daemon in this process until it is stopped; returns the exit status."""
    configure_logging(os.environ.get("MESHKEY_LOG", "info"), sys.stderr)
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
