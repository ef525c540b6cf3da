"""30 real daemons on loopback, joined through 2 seeds by ``node create --seed`` (issue 11):
every node finds every other; a NodeId that does not exist ends in "not found" (exit code 3)
within the lookup's budget; after a third of the daemons are killed with SIGKILL, lookups
of the living still succeed. Finds go through each daemon's control socket (870 CLI
processes would take minutes), a sample through the CLI itself."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from meshkey.node.control_client import ControlClient
from tests.integration.networks import (
    Daemon,
    find,
    kill,
    random_node_id,
    start_network,
    stop_network,
    wait_joined,
)

pytestmark = pytest.mark.integration

NODES = 30


def control_find(home: Path, source: Daemon, target: str) -> dict[str, Any]:
    client = ControlClient(home / "nodes" / source.name / "control.sock", timeout=35)
    result: dict[str, Any] = client.call("peer.find", {"node_id": target, "timeout": 30})
    return result


def test_thirty_daemons_find_each_other_and_survive_losing_a_third(tmp_path: Path) -> None:
    home = tmp_path / "home"
    daemons = start_network(home, NODES)
    try:
        wait_joined(home, daemons, minimum=2)
        missed = []
        for source in daemons:
            for target in daemons:
                if target is source:
                    continue
                found = control_find(home, source, target.node_id)
                if not (found["found"] and target.udp in found["addresses"]):
                    missed.append((source.name, target.name))
        assert missed == [], f"{len(missed)} of {NODES * (NODES - 1)} finds missed: {missed[:5]}"

        rng = random.Random(11)
        for source, target in (rng.sample(daemons, 2) for _ in range(3)):
            code, result, _wall = find(home, source, target.node_id)  # through the CLI
            assert code == 0 and result is not None and target.udp in result["addresses"]
        for _ in range(3):
            code, result, _wall = find(home, rng.choice(daemons), random_node_id())
            assert code == 3 and result is not None and result["found"] is False
            assert result["lookup"]["nodes_asked"] >= 2  # it converged, it did not give up

        killed = rng.sample(daemons[2:], NODES // 3)
        for daemon in killed:
            kill(daemon)
        alive = [d for d in daemons if d not in killed]
        missed = []
        for source in alive:
            for target in rng.sample([d for d in alive if d is not source], 5):
                found = control_find(home, source, target.node_id)
                if not (found["found"] and target.udp in found["addresses"]):
                    missed.append((source.name, target.name))
        assert missed == [], f"after the kill, {len(missed)} finds missed: {missed[:5]}"
    finally:
        stop_network(daemons)
