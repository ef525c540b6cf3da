"""Creating, starting, stopping and deleting node daemons: what ``meshkey node`` does.

Nothing here imports asyncio or cryptography unless it has to (identity creation does), so
the CLI stays quick.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from meshkey.identity.errors import IdentityError, IdentityExists
from meshkey.node.control_client import ControlClient, ControlError
from meshkey.node.state import (
    Home,
    NodeDir,
    NodeStateError,
    check_listen_reaches_seeds,
    seed_host,
)

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


def create_node(
    home: Home,
    name: str,
    *,
    tcp: str | None,
    identity: str | None,
    udp: str | None = None,
    observers: list[str] | None = None,
    direct: bool = True,
    seeds: list[str] | None = None,
    dht_mode: str = "auto",
    auto_relay: bool = True,
    http_server: str | None = None,
) -> NodeDir:
    """Writes a new node's configuration (creating its identity if it has none yet)."""
    home.ensure()
    node = home.node(name)
    if node.exists():
        raise NodeStateError(f"node {name!r} already exists", "conflict")
    # Unset listeners follow the seeds when the daemon starts (MESHKEY_SEEDS may add some);
    # one given that the seeds could never reach is refused now.
    seed_hosts = [seed_host(seed) for seed in seeds or []]
    for given, option in ((tcp, "--tcp"), (udp, "--udp")):
        if given:
            check_listen_reaches_seeds(given, seed_hosts, option)
    identity_name = identity or name
    store = home.identities
    if not store.exists(identity_name):
        if identity is not None:
            raise NodeStateError(
                f"no identity named {identity!r} (create it with `meshkey identity create "
                f"{identity}`)",
                "not_found",
            )
        with contextlib.suppress(IdentityExists):  # a racing `node create` made it first
            store.create(identity_name)
    # A racing creator writes the key, then its metadata: wait for it to finish.
    for _ in range(50):
        with contextlib.suppress(IdentityError):
            store.info(identity_name)
            break
        time.sleep(0.02)
    info = store.info(identity_name)
    node.create(
        {
            "name": name,
            "identity": identity_name,
            "node_id": info.node_id,
            "tcp": tcp or "",
            "udp": udp or "",
            "observers": json.dumps(observers or []),
            "direct": "on" if direct else "off",
            "seeds": json.dumps(seeds or []),
            "dht_mode": dht_mode,
            "auto_relay": "on" if auto_relay else "off",
            "http_server": http_server or "",
            "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
    )
    return node


def _concrete(bound: str) -> list[str]:
    """A bound address as addresses one can use: ``/ip4/0.0.0.0/...`` (all interfaces) as one
    per interface address."""
    if not bound.startswith("/ip4/0.0.0.0/"):
        return [bound]
    from meshkey.transport.interfaces import interface_addresses

    return [bound.replace("/0.0.0.0/", f"/{a}/", 1) for a in interface_addresses()]


def start_node(home: Home, name: str, timeout: float = START_TIMEOUT) -> dict[str, Any]:
    """Starts the node's daemon in the background and waits until it answers."""
    node = home.node(name)
    if not node.exists():
        raise NodeStateError(f"no node named {name!r} (see `meshkey node list`)", "not_found")
    if node.is_running():
        raise NodeStateError(f"node {name!r} is already running", "conflict")
    with open(node.output_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "meshkey.node.daemon", "--home", str(home.path), "--name", name],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + timeout
    client = ControlClient(node.socket_path, timeout=1.0)
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = _last_error(node)
            if "already running" in error:  # another start won the node's lock
                raise NodeStateError(f"node {name!r} is already running", "conflict")
            raise NodeStateError(f"node {name!r} failed to start: {error}", "failed")
        if node.socket_path.exists():
            try:
                status: dict[str, Any] = client.call("status")
            except ControlError:
                pass
            else:
                if status.get("pid") == process.pid:  # ours, not a racing start's daemon
                    return status
        time.sleep(0.02)
    process.terminate()
    raise NodeStateError(f"node {name!r} did not start within {timeout:g}s", "timeout")


def stop_node(home: Home, name: str, timeout: float = STOP_TIMEOUT) -> None:
    node = home.node(name)
    if not node.exists():
        raise NodeStateError(f"no node named {name!r} (see `meshkey node list`)", "not_found")
    if not node.is_running():
        raise NodeStateError(f"node {name!r} is not running", "conflict")
    try:
        ControlClient(node.socket_path, timeout=2.0).call("stop")
    except ControlError:
        _signal(node, signal.SIGTERM)
    if _wait_stopped(node, timeout):
        return
    _signal(node, signal.SIGKILL)
    if not _wait_stopped(node, 2.0):
        raise NodeStateError(f"node {name!r} did not stop", "timeout")


def delete_node(home: Home, name: str, *, force: bool) -> None:
    node = home.node(name)
    if not node.exists():
        raise NodeStateError(f"no node named {name!r} (see `meshkey node list`)", "not_found")
    if node.is_running():
        if not force:
            raise NodeStateError(
                f"node {name!r} is running: stop it first (`meshkey node stop {name}`) "
                "or delete with --force",
                "conflict",
            )
        stop_node(home, name)
    node.delete()


#: What the daemon's status adds to a node's description (``node show``, create, start).
LIVE_FIELDS = (
    "addresses",
    "services",
    "connections",
    "started_at",
    "udp_stats",
    "unauthenticated",
    "nat",
    "peers",
    "graph",
    "http_server_address",
    "relays",
    "channels",
    "tcp_inlets",
    "tcp_outlets",
)


def node_summary(home: Home, name: str, *, live: bool = False) -> dict[str, Any]:
    """A node, described the same way by every command (one schema, see the README).

    ``status`` is the truth of the node's lock: ``running`` or ``stopped``, or ``broken`` when
    its state cannot be read (``error`` says why). Without ``live`` nothing asks the daemon
    (``node list`` stays quick); with it, the daemon's own status is merged in, and
    ``control`` says whether it answered."""
    node = home.node(name)
    try:
        config = node.config()
        running = node.is_running()
    except (NodeStateError, OSError) as exc:
        return {
            "name": name,
            "status": "broken",
            "error": str(exc),
            "node_id": None,
            "identity": None,
            "pid": None,
            "addresses": [],
            "listen": {},
            "created_at": None,
        }
    problem = _problem(home, node, config, running)
    summary: dict[str, Any] = {
        "name": name,
        "node_id": config.get("node_id"),
        "identity": config.get("identity"),
        "status": "running" if running else "broken" if problem and problem[1] else "stopped",
        "pid": node.pid() if running else None,
        "addresses": [
            address
            for key in ("udp_bound", "tcp_bound")
            if running and config.get(key)
            for address in _concrete(config[key])
        ],
        "listen": {"udp": config.get("udp") or "auto", "tcp": config.get("tcp") or "auto"},
        "created_at": config.get("created_at"),
        "error": problem[0] if problem else None,
        "http_server_address": None,
    }
    if live and running:
        try:
            status = ControlClient(node.socket_path, timeout=3.0).call("overview")
        except ControlError as exc:
            reason = (
                "its control socket is missing (restart it: `meshkey node stop "
                f"{name}`, then `meshkey node start {name}`)"
                if exc.code == "conflict"
                else exc.message
            )
            summary["control"] = f"not answering: {reason}"
        else:
            summary["control"] = "ok"
            summary.update({key: status[key] for key in LIVE_FIELDS if key in status})
    return summary


def _problem(
    home: Home, node: NodeDir, config: dict[str, str], running: bool
) -> tuple[str, bool] | None:
    """What is wrong with a node, and whether it keeps the node from starting: an identity
    whose files are unusable, or a daemon that ended without stopping (killed, or it
    crashed: it leaves its pid file behind)."""
    identity = config.get("identity")
    trouble = home.identity_problem(identity) if identity else "it has no identity"
    if trouble:
        later = " (it cannot start again)" if running else ""
        return f"identity {identity!r}: {trouble}{later}", True
    pid = node.pid()
    if not running and pid is not None:
        return (
            f"its daemon (pid {pid}) ended without stopping: killed, or it crashed (see "
            f"`meshkey node logs {node.name}`); `meshkey node start {node.name}` starts it",
            False,
        )
    return None


def _wait_stopped(node: NodeDir, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not node.is_running():
            return True
        time.sleep(0.02)
    return False


def _signal(node: NodeDir, signum: int) -> None:
    pid = node.pid()
    if pid is None or not _is_our_daemon(pid, node):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _is_our_daemon(pid: int, node: NodeDir) -> bool:
    """Guards against signalling a stranger that reused a stale pid."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"meshkey.node.daemon" in cmdline and node.name.encode() in cmdline


def _last_error(node: NodeDir) -> str:
    try:
        lines = node.output_path.read_text(errors="replace").splitlines()[-30:]
    except OSError:
        return "see its log"
    for line in reversed(lines):
        if line.startswith("error: "):
            return line.removeprefix("error: ")
    return lines[-1] if lines else "see its log"
