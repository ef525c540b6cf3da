"""The NAT lab: real kernel NATs in network namespaces joined by a userspace WAN with delay and
loss, running real meshkey daemons. See ``lab.py`` for the topology and the API, ``switch.py``
for the WAN, ``state.py`` for run ownership and the stale-lab sweep, and ``python -m
tests.natlab --help`` for using it by hand."""

from .lab import (
    CommandFailed,
    ConntrackEntry,
    Host,
    Lab,
    LabError,
    MeshkeyNode,
    NatKind,
    Router,
    Wan,
    live_labs,
    standard_lab_hosts,
)

__all__ = [
    "CommandFailed",
    "ConntrackEntry",
    "Host",
    "Lab",
    "LabError",
    "MeshkeyNode",
    "NatKind",
    "Router",
    "Wan",
    "live_labs",
    "standard_lab_hosts",
]
