"""Networks of real nodes for the tests and the benchmarks: daemons started by the CLI
(:func:`start_network`, each its own process, joined through seeds with ``node create
--seed``) and embedded nodes with real QUIC hops on loopback (:func:`loopback_network`).
``bench`` uses them too (the tests never import ``bench``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Daemon:
    name: str
    node_id: str
    udp: str  # HOST:PORT
    pid: int


def meshkey(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshkey", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "MESHKEY_HOME": str(home)},
        timeout=timeout,
        check=False,
    )


def _create(home: Path, name: str, seeds: list[str]) -> Daemon:
    args = ["node", "create", name, "--output", "json"]
    for seed in seeds:
        args += ["--seed", seed]
    result = meshkey(home, *args)
    if result.returncode != 0:
        raise RuntimeError(f"node create {name}: {result.stderr.strip()}")
    summary_ = json.loads(result.stdout)
    udp = next(a for a in summary_["addresses"] if "/udp/" in a).split("/")
    return Daemon(name, summary_["node_id"], f"{udp[2]}:{udp[4]}", int(summary_["pid"]))


def start_network(home: Path, count: int, seeds: int = 2, parallel: int = 6) -> list[Daemon]:
    """``count`` daemons named n00, n01...; the first ``seeds`` are the seeds (the second
    joins through the first), every other joins through all of them."""
    first = _create(home, "n00", [])
    daemons = [first]
    for index in range(1, seeds):
        daemons.append(_create(home, f"n{index:02d}", [f"{first.node_id}@{first.udp}"]))
    seed_texts = [f"{d.node_id}@{d.udp}" for d in daemons]
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        names = [f"n{index:02d}" for index in range(seeds, count)]
        daemons += list(pool.map(lambda name: _create(home, name, seed_texts), names))
    return daemons


def wait_joined(home: Path, daemons: list[Daemon], minimum: int, timeout: float = 60) -> None:
    """Until every daemon's graph holds at least ``minimum`` peers (joins run in the
    background of ``node create``)."""
    deadline = time.monotonic() + timeout
    pending = list(daemons)
    while pending:
        pending = [d for d in pending if len(peers(home, d)) < minimum]
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} daemons have fewer than {minimum} peers")
        if pending:
            time.sleep(0.5)


def peers(home: Path, daemon: Daemon) -> list[dict[str, Any]]:
    result = meshkey(home, "peer", "list", "--at", daemon.name, "--output", "json")
    if result.returncode != 0:
        raise RuntimeError(f"peer list --at {daemon.name}: {result.stderr.strip()}")
    listed: list[dict[str, Any]] = json.loads(result.stdout)["peers"]
    return listed


def find(home: Path, source: Daemon, target: str) -> tuple[int, dict[str, Any] | None, float]:
    """``peer find TARGET --at SOURCE -o json``: (exit code, result, wall seconds)."""
    started = time.perf_counter()
    result = meshkey(home, "peer", "find", target, "--at", source.name, "--output", "json")
    wall = time.perf_counter() - started
    return result.returncode, json.loads(result.stdout) if result.stdout.strip() else None, wall


def kill(daemon: Daemon) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(daemon.pid, signal.SIGKILL)


def stop_network(daemons: list[Daemon]) -> None:
    for daemon in daemons:
        kill(daemon)


def random_node_id() -> str:
    from meshkey.identity.keys import Identity

    return str(Identity.generate().node_id)


async def loopback_network(count: int, seeds: int = 2) -> tuple[list[Any], list[Any]]:
    """``count`` embedded nodes (real QUIC hops on loopback) with their node graphs; the
    first ``seeds`` are the seeds, every other node joins through them."""
    from meshkey.node.core import Node
    from meshkey.wire.dht import Mode

    nodes, graphs = [], []
    for _ in range(count):
        node = await Node(tcp=None, dht_mode=Mode.SERVER).start()
        nodes.append(node)
        graphs.append(node.graph)
    contacts = []
    for seed in nodes[:seeds]:
        address = seed.udp.address
        assert address is not None
        contacts.append((seed.node_id, (address.host, address.port)))
    await graphs[1].join(contacts[:1], timeout=20)
    for start in range(seeds, count, 10):
        await asyncio.gather(*(g.join(contacts, timeout=30) for g in graphs[start : start + 10]))
    return nodes, graphs
