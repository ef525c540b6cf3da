"""Automatic relay failover (issue 18, DESIGN 15), in a network with two public nodes: the
seed and a second server joined through it. A client behind an EIM router keeps its relay
on one of them (the seed first); a finder behind another EIM router reaches the client by
``/peer/CLIENT``. Then the relay node the client uses dies (``node stop``, or SIGKILL with
no goodbye): the client's signed record, as ``peer find`` on the finder shows it, must name
a relay on another node within 10 s, and ``/peer/CLIENT`` must work again.

The second server is started as the README tells users (``--seed`` only), and, in a second
variant, with ``--dht-mode server`` as well, as an operator who knows the machine is public
may start it: the first variant also shows whether a public node that only knows its seed
ever becomes a relay candidate at all.

Each case has a network of its own (its own seed host and server host), so killing one
case's relay node leaves the others alone.
"""

from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import dataclass
from typing import Any

import pytest

from .lab import Host, Lab, MeshkeyNode, NatKind

pytestmark = [pytest.mark.natlab, pytest.mark.timeout(300)]

RECORD_WAIT = 20.0
RELAY_WAIT = 15.0
FAILOVER_BOUND = 10.0  # issue 18: the record names a new relay within 10 s
WATCH = 30.0  # how long the test watches for the new relay (so it can say how long it took)
KILLS = ("stop", "sigkill")
SERVER_MODES = ("auto", "server")


def relay_node(route: str) -> str:
    """The NodeId of the node a relay route (``/ip4/A/udp/P/id/NODEID/service/...``) is on."""
    found = re.search(r"/id/(mk[a-z2-7]+)", route)
    assert found, route
    return found.group(1)


def record_relays(finder: MeshkeyNode, node_id: str) -> list[str]:
    """The relays in ``node_id``'s signed record as ``peer find`` on ``finder`` shows it."""
    record = finder.find(node_id).get("record") or {}
    return list(record.get("relays") or [])


def active_relays(node: MeshkeyNode) -> list[dict[str, Any]]:
    return [r for r in node.relays() if r.get("status") == "active"]


@dataclass
class Network:
    seed: MeshkeyNode
    server: MeshkeyNode
    client: MeshkeyNode
    finder: MeshkeyNode


def build(lab: Lab, kill: str, mode: str, index: int) -> Network:
    tag = f"fo-{kill}-{mode}"
    seed_host = lab.add_public_host(f"{tag}-seed", f"203.0.113.{20 + index}")
    server_host: Host = lab.add_public_host(f"{tag}-srv", f"203.0.113.{30 + index}")
    seed = seed_host.create_seed_node()
    server = server_host.join(
        "server", seed, args=["--dht-mode", "server"] if mode == "server" else []
    )
    client = lab.add_side(f"{tag}-cl", NatKind.EIM).join("client", seed)
    finder = lab.add_side(f"{tag}-fi", NatKind.EIM).join("finder", seed)
    return Network(seed, server, client, finder)


def kill_node(node: MeshkeyNode, how: str) -> None:
    if how == "stop":
        node.stop()
    else:
        os.kill(node.pid(), signal.SIGKILL)


#: Cases that fail because the product lacks something, with what it lacks (strict xfails).
#: None left: after a SIGKILL the record named the new relay 10.2-11.7 s after the kill
#: while it named the dead relay beside the new one until the dead one was deleted (and a
#: deletion was published only at the next 5 s tick); 5.1-7.3 s since (2.5-2.8 s after a
#: stop).
MISSING: dict[tuple[str, str], str] = {}


@pytest.mark.parametrize(
    ("kill", "mode"),
    [
        pytest.param(
            kill,
            mode,
            id=f"{kill}-server-{mode}",
            marks=[pytest.mark.xfail(reason=MISSING[(kill, mode)], strict=True)]
            if (kill, mode) in MISSING
            else [],
        )
        for kill in KILLS
        for mode in SERVER_MODES
    ],
)
def test_a_dead_relay_node_is_replaced_within_10s(lab: Lab, kill: str, mode: str) -> None:
    index = KILLS.index(kill) * len(SERVER_MODES) + SERVER_MODES.index(mode)
    net = build(lab, kill, mode, index)
    client, finder = net.client, net.finder
    to_client = f"/peer/{client.node_id}/service/uppercase"
    result, seconds, _ = finder.send_until_answered("hi", to_client, RECORD_WAIT)
    assert result.stdout == "HI\n", f"after {seconds:.1f} s: {result.stderr.strip()}"
    deadline = time.monotonic() + RELAY_WAIT
    while not (relays := active_relays(client)):
        assert time.monotonic() < deadline, client.relays()
        time.sleep(0.2)
    used = relay_node(relays[0]["at"])
    dead = {net.seed.node_id: net.seed, net.server.node_id: net.server}[used]
    survivor = net.server if dead is net.seed else net.seed
    kill_node(dead, kill)
    killed_at = time.monotonic()
    named: list[str] = []
    moved_after = None
    while time.monotonic() - killed_at < WATCH:
        named = record_relays(finder, client.node_id)
        if named and all(relay_node(r) != used for r in named):
            moved_after = time.monotonic() - killed_at
            break
        time.sleep(0.5)
    result, seconds, sends = finder.send_until_answered("again", to_client, RECORD_WAIT)
    print(
        f"relay on {dead.name} ({kill}): record names {named} after "
        f"{'-' if moved_after is None else f'{moved_after:.1f} s'}; /peer/ again after "
        f"{seconds:.1f} s more ({sends} sends)"
    )
    assert moved_after is not None, (
        f"after {WATCH:.0f} s the record names {named}; the client's relays: {client.relays()}"
    )
    assert all(relay_node(r) == survivor.node_id for r in named), named
    assert moved_after <= FAILOVER_BOUND, f"the record named a new relay after {moved_after:.1f} s"
    assert result.stdout == "AGAIN\n", f"{sends} sends in {seconds:.1f} s: {result.stderr.strip()}"
