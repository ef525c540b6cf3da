"""``peer find`` on a network of real daemons (issue 11): 30 node daemons on loopback, each
its own process, started by the CLI and joined through 2 seeds (``node create --seed``).

Measured: the wall time of ``meshkey peer find NODEID --at SOURCE`` (the whole command, a new
Python process each time, as a user runs it) and the lookup's own duration as the daemon
reports it, for random pairs (p50/p95); finds of NodeIds that do not exist (exit code 3);
then the same for the living after a third of the daemons were killed with SIGKILL.

The network helpers are used by ``tests/integration/test_peer_network.py`` too.

    python -m bench dht-daemons [--nodes N] [--finds N]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import percentile, save


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


def summary(samples_ms: list[float]) -> dict[str, float]:
    if not samples_ms:
        return {"n": 0}
    return {
        "n": len(samples_ms),
        "p50_ms": round(percentile(samples_ms, 0.5), 1),
        "p95_ms": round(percentile(samples_ms, 0.95), 1),
    }


def _finds(home: Path, alive: list[Daemon], count: int, rng: random.Random) -> dict[str, Any]:
    walls, lookups, found = [], [], 0
    for _ in range(count):
        source, target = rng.sample(alive, 2)
        code, result, wall = find(home, source, target.node_id)
        walls.append(wall * 1000)
        if code == 0 and result is not None and target.udp in result["addresses"]:
            found += 1
            lookups.append(result["lookup"]["duration"] * 1000)
    return {
        "finds": count,
        "found": found,
        "success": round(found / count, 4),
        "cli_wall_ms": summary(walls),
        "lookup_ms": summary(lookups),
    }


def main(*, quick: bool = False, nodes: int = 30, finds: int = 100) -> None:
    if quick:
        finds = 20
    rng = random.Random(nodes)
    with tempfile.TemporaryDirectory(prefix="meshkey-dht-daemons-") as directory:
        home = Path(directory)
        started = time.perf_counter()
        daemons = start_network(home, nodes)
        try:
            wait_joined(home, daemons, minimum=2)
            out: dict[str, Any] = {
                "nodes": nodes,
                "start_seconds": round(time.perf_counter() - started, 1),
            }
            out["all_alive"] = _finds(home, daemons, finds, rng)
            missing_walls, missing_codes = [], []
            for _ in range(max(10, finds // 10)):
                code, _result, wall = find(home, rng.choice(daemons), random_node_id())
                missing_walls.append(wall * 1000)
                missing_codes.append(code)
            out["not_found"] = {
                "exit_3": sum(code == 3 for code in missing_codes),
                "tries": len(missing_codes),
                "cli_wall_ms": summary(missing_walls),
            }
            killed = rng.sample(daemons[2:], nodes // 3)
            for daemon in killed:
                kill(daemon)
            alive = [d for d in daemons if d not in killed]
            out["after_killing_a_third"] = _finds(home, alive, finds, rng)
        finally:
            stop_network(daemons)
    print(json.dumps(out, indent=2))
    save("dht_daemons", out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.dht_daemons")
    parser.add_argument("--nodes", type=int, default=30)
    parser.add_argument("--finds", type=int, default=100)
    options = parser.parse_args()
    main(nodes=options.nodes, finds=options.finds)
