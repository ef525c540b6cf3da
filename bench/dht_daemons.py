"""``peer find`` on a network of real daemons (issue 11): 30 node daemons on loopback, each
its own process, started by the CLI and joined through 2 seeds (``node create --seed``).

Measured: the wall time of ``meshkey peer find NODEID --at SOURCE`` (the whole command, a new
Python process each time, as a user runs it) and the lookup's own duration as the daemon
reports it, for random pairs (p50/p95); finds of NodeIds that do not exist (exit code 3);
then the same for the living after a third of the daemons were killed with SIGKILL.

The network helpers live in ``tests/integration/networks.py``.

    python -m bench dht-daemons [--nodes N] [--finds N]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.integration.networks import (
    Daemon,
    find,
    kill,
    random_node_id,
    start_network,
    stop_network,
    wait_joined,
)

from bench.common import percentile, save


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
