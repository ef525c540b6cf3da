"""The one simulator: a path scenario, a node graph scenario and a portal scenario run side by
side on one :class:`~tests.natsim.net.SimNet` (one clock, one event queue, one seeded rng),
each through the daemon's own sans-IO cores, and the whole run is deterministic."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from meshkey.paths.path import PathKey, PathKind
from tests.natsim.dht import DhtNetwork, run_lookups
from tests.natsim.net import NatKind, SimNet
from tests.natsim.portal import Pair, SimApp
from tests.natsim.scenario import build_pair


@dataclass(frozen=True)
class Outcome:
    joined_in: float
    direct_at: tuple[float | None, float | None]
    path: PathKey | None
    found: float
    messages: float
    sent: str
    delivered: str
    echoed: str
    portal_lost: int
    wan_deliveries: int
    end: float


def _digest(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def _run_all_three(seed: int) -> Outcome:
    net = SimNet(seed)
    paths = build_pair(NatKind.EIM, NatKind.EDM, seed=seed, net=net)  # a birthday punch
    portal = Pair(seed=seed, loss=0.1, duplicate=0.05, reorder=0.004, net=net)
    payload = net.rng.randbytes(1_000_000)
    client = SimApp(outgoing=payload)
    session = portal.open(client)
    graph = DhtNetwork(net=net)
    started = net.now
    graph.build(40, seeds=2, batch=10)  # joining runs the clock: the others move on too
    assert paths.both_direct() and client.outcome is not None  # done while the graph joined
    lookups = run_lookups(graph, 20, stop_at_target=True)
    server = portal.apps["b"][session]
    return Outcome(
        joined_in=net.now - started,
        direct_at=(paths.a.timeline.direct_at, paths.b.timeline.direct_at),
        path=paths.a.paths.current_path(paths.b.node_id),
        found=lookups.success,
        messages=lookups.messages,
        sent=_digest(payload),
        delivered=_digest(server.received),
        echoed=_digest(client.received),
        portal_lost=portal.path.lost,
        wan_deliveries=net.delivered,
        end=net.now,
    )


def test_paths_graph_and_portal_scenarios_share_one_simulation() -> None:
    outcome = _run_all_three(seed=5)
    assert outcome.path is not None and outcome.path.kind is PathKind.PUNCHED
    assert None not in outcome.direct_at
    assert outcome.found == 1.0
    assert outcome.delivered == outcome.echoed == outcome.sent  # intact, both ways
    assert outcome.portal_lost > 0  # the WAN did lose some of the portal's packets


def test_the_shared_simulation_is_the_same_run_for_the_same_seed() -> None:
    assert _run_all_three(seed=6) == _run_all_three(seed=6)
