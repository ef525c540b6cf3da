"""The node graph's simulator, for ``python -m bench dht``: it lives in
:mod:`tests.natsim.dht`, on the one simulator's clock that the path and portal scenarios use
too. The names the benchmark has always used are kept here."""

from __future__ import annotations

from tests.natsim.dht import (
    START,
    WALL_OFFSET,
    DhtNetwork,
    DhtNode,
    LookupReport,
    forged_entries,
    identity_from_seed,
    run_lookups,
    sybil_clustering,
    true_closest,
)

SimNet = DhtNetwork
SimNode = DhtNode

__all__ = [
    "START",
    "WALL_OFFSET",
    "DhtNetwork",
    "DhtNode",
    "LookupReport",
    "SimNet",
    "SimNode",
    "forged_entries",
    "identity_from_seed",
    "run_lookups",
    "sybil_clustering",
    "true_closest",
]
