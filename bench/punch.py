"""Hole punching through real kernel NATs (the NAT lab, as root): time to a direct path and
first-attempt success, per pair of NAT kinds, for meshkey's punch schedule and the reference
schedules of Polykey and Ockam (issue 13).

Topology (as ``tests/natlab/test_punch.py``): a relay and a second observer on public hosts;
one side of each kind for the responder (blue) and another for the initiator (yellow), each
behind its own router. Blue registers a relay; yellow opens a secure channel to blue's
``api`` listener through it and, as in the matrix test, nothing else is asked: the channel's
path manager punches on its own. Both know their NAT class (two observers) before the channel
is opened. The daemons of one run are started with ``MESHKEY_PUNCH_STRATEGY`` set to the
strategy measured (``meshkey``, ``polykey``, ``ockam``: ``meshkey.nat.strategy``), the same
session code with the reference schedules (no classification, no synchronisation, no
low-TTL openers, no birthday for the references).

Per try:

- the clock starts when yellow's daemon is asked ``channel.create`` (over its control socket,
  so no CLI start-up is in the figure) and a second figure starts when that call returns;
- the end is the path's ``switched_at`` (the daemon's own wall-clock stamp of its switch to
  the direct path, in milliseconds, read from the channel's description; the lab's
  namespaces share the machine's clock), so the polling interval (20 ms) only bounds how
  late we notice, not the figure;
- *first-attempt success*: the path is direct before the strategy's punch budget
  (``give_up``, or ``birthday_give_up`` where meshkey chooses birthday) plus 3 s for the
  signalling and the hop's handshake has passed. After a failed attempt the next one comes
  ``UpgradeRetry.first`` (40 s) later, so anything direct by then came from the first one.
  A try that is not direct by then counts as a failure and its time is not in p50/p95.

Each try is a fresh punch: **two new nodes per try** (new names, so new identities, and new
UDP ports on both hosts; blue registers a new relay name), and after the try both are
stopped and deleted and blue's registration removed. Neither side then holds any path state
for its peer (neither path manager has seen the other's NodeId, so none can revive an old
direct hop), and both source ports differ, so neither router has a mapping for the new flow
nor a filter entry that lets the other's address in: the punch has to open both again.
Restarting one node with the same identity would leave the other's stale direct path to it
(trivially valid when that side is public), and flushing conntrack alone would leave both
daemons believing in the old hop until it timed out. A fresh responder is also needed for
the birthday pairs: a node spaces birthday punches ``birthday_spacing`` (20 s) apart and
refuses one in between ("birthday-busy"), which back-to-back tries with one blue would
measure instead of the punch. On top of that, the routers' conntrack entries of the retired
nodes are deleted (by source port), so their tables do not grow with the tries. The relay
and the observer stay up for the whole run.

Pairs (blue <- yellow, yellow initiates): EIM <- EIM (synchronised punch), EDM <- EIM
(meshkey: birthday; the references punch plainly), public <- EIM and public <- EDM (the
public side answers whatever arrives). meshkey's p50/p95 and success are reported as ratios
to each reference (p50 ratio < 1 and success ratio >= 1 are better).

What the references show between two NATed sides (EIM <- EIM, EDM <- EIM): they fail in
this lab, and ``conntrack -L`` during a try shows why (NATLAB.md's clash): without
synchronisation the responder starts probing on CONNECT, before the initiator's first packet
to it has left; its probe reaches the initiator's router first and is recorded there as an
unreplied inbound flow (blue:4026 -> router:4066); the initiator's own outbound packet to
blue then clashes with that entry and MASQUERADE gives it another port (50088), which blue's
router filters (its mapping expects 4066). Both sides keep refreshing the stale entries for
the whole budget. meshkey's low-TTL openers and synchronised start exist for exactly this;
against a public side (no filter, no clash) all three succeed alike.

Still to do: the HyperDHT side-by-side (its holepuncher in the same lab).

    python -m bench punch [--quick] [--tries N]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from tests.natlab import Host, Lab, MeshkeyNode, NatKind

from bench.common import percentile, save
from meshkey.nat.strategy import STRATEGIES, PunchConfig
from meshkey.node import launcher
from meshkey.node.control_client import ControlClient
from meshkey.node.state import Home
from meshkey.wire.punch import AbortReason

STRATEGY_NAMES = ("meshkey", "polykey", "ockam")
#: (blue's kind, yellow's kind): yellow initiates.
PAIRS = [
    (NatKind.EIM, NatKind.EIM),
    (NatKind.EDM, NatKind.EIM),
    (NatKind.PUBLIC, NatKind.EIM),
    (NatKind.PUBLIC, NatKind.EDM),
]
POLL_SECONDS = 0.02
#: The path manager's punch status once an attempt ended without a path (``timeout: ...``,
#: ``birthday-busy: ...``, a refusal...): anything but these means it is still on.
GAVE_UP = (*(f"{reason.value}:" for reason in AbortReason), "punched, but")
SLACK_SECONDS = 3.0  # signalling and the hop's handshake, on top of the punch budget


def control(node: MeshkeyNode) -> ControlClient:
    return ControlClient(Home(node.host.home).node(node.name).socket_path, timeout=30)


def pair_label(blue: NatKind, yellow: NatKind) -> str:
    return f"{blue}<-{yellow}"


def budget(config: PunchConfig, blue: NatKind, yellow: NatKind) -> float:
    """How long the first attempt may take: the birthday budget where meshkey chooses it."""
    birthday = config.birthday and {blue, yellow} == {NatKind.EIM, NatKind.EDM}
    return (config.birthday_give_up if birthday else config.give_up) + SLACK_SECONDS


def wait_classified(node: MeshkeyNode, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    nat = "unknown"
    while time.monotonic() < deadline:
        nat = str(control(node).call("status", {}).get("nat", {}).get("class", "unknown"))
        if nat != "unknown":
            return nat
        time.sleep(0.1)
    return nat


def wall(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp).timestamp()


@dataclass
class Try:
    direct: bool
    from_request_ms: float | None = None
    from_created_ms: float | None = None
    create_ms: float = 0.0
    upgrade: str = ""
    path: str = ""


@dataclass
class Side:
    host: Host
    observers: list[str]
    env: dict[str, str]
    count: int = 0
    nodes: list[MeshkeyNode] = field(default_factory=list)

    def fresh(self, prefix: str) -> MeshkeyNode:
        self.count += 1
        node = self.host.create_node(f"{prefix}{self.count}", args=self.observers, env=self.env)
        self.nodes.append(node)
        return node


def retire(node: MeshkeyNode) -> None:
    """Stops and deletes ``node`` and drops its router's conntrack entries (by source port)."""
    home = Home(node.host.home)
    launcher.delete_node(home, node.name, force=True)
    router = node.host.router
    if router is not None:
        router.conntrack_delete(
            "-p", "udp", "--orig-src", node.host.address, "--sport", str(node.udp_port)
        )


def one_try(blue: MeshkeyNode, yellow: MeshkeyNode, to_blue: str, limit: float) -> Try:
    requested = time.time()
    described = control(yellow).call(
        "channel.create",
        {"route": to_blue, "authorized": [blue.node_id], "timeout": 30.0, "no_direct": False},
        timeout=40,
    )
    created = time.time()
    address = described["address"]
    path: dict[str, Any] = {}
    while time.time() < requested + limit:
        channels = control(yellow).call("channel.list", {})
        found = [c for c in channels if c["address"] == address]
        path = dict((found[0].get("path") if found else None) or {})
        if path.get("direct"):
            break
        if str(path.get("upgrade") or "").startswith(GAVE_UP):
            break  # the first attempt reported its failure; the next is 40 s away
        time.sleep(POLL_SECONDS)
    result = Try(direct=bool(path.get("direct")), create_ms=(created - requested) * 1000)
    result.upgrade, result.path = str(path.get("upgrade") or ""), str(path.get("now") or "")
    if result.direct and path.get("switched_at"):
        switched = wall(str(path["switched_at"]))
        result.from_request_ms = (switched - requested) * 1000
        result.from_created_ms = max(0.0, (switched - created) * 1000)
    control(yellow).call("channel.delete", {"address": address})
    return result


def figures(tries: list[Try]) -> dict[str, Any]:
    times = [t.from_created_ms for t in tries if t.direct and t.from_created_ms is not None]
    requested = [t.from_request_ms for t in tries if t.direct and t.from_request_ms is not None]
    creates = [t.create_ms for t in tries]
    out: dict[str, Any] = {
        "tries": len(tries),
        "direct": sum(t.direct for t in tries),
        "success": round(sum(t.direct for t in tries) / len(tries), 3),
        "create_p50_ms": round(percentile(creates, 0.5), 1),
    }
    if times:
        out |= {
            "p50_ms": round(percentile(times, 0.5), 1),
            "p95_ms": round(percentile(times, 0.95), 1),
            "from_request_p50_ms": round(percentile(requested, 0.5), 1),
            "from_request_p95_ms": round(percentile(requested, 0.95), 1),
        }
    failures = sorted({t.upgrade for t in tries if not t.direct})
    if failures:
        out["failures"] = failures
    return out


@dataclass
class Topology:
    relay: MeshkeyNode
    observer: MeshkeyNode
    a: dict[NatKind, Host]  # blue's sides
    b: dict[NatKind, Host]  # yellow's sides

    def observers(self) -> list[str]:
        return [
            "--observer",
            f"{self.relay.host.address}:{self.relay.udp_port}",
            "--observer",
            f"{self.observer.host.address}:{self.observer.udp_port}",
        ]


def build(lab: Lab) -> Topology:
    relay = lab.add_public_host("relay", "203.0.113.10").create_node("relay")
    observer = lab.add_public_host("observer", "198.51.100.10").create_node("observer")
    kinds = [kind for kind in NatKind if any(kind in pair for pair in PAIRS)]
    a = {kind: lab.add_side(f"a-{kind}", kind) for kind in kinds}
    b = {kind: lab.add_side(f"b-{kind}", kind) for kind in kinds}
    return Topology(relay, observer, a, b)


def measure_strategy(topology: Topology, strategy: str, tries: int) -> dict[str, Any]:
    config = STRATEGIES[strategy]
    relay, observers = topology.relay, topology.observers()
    env = {"MESHKEY_PUNCH_STRATEGY": strategy}
    results: dict[str, Any] = {}
    for blue_kind, yellow_kind in PAIRS:
        label = pair_label(blue_kind, yellow_kind)
        blue_side = Side(topology.a[blue_kind], observers, env)
        yellow_side = Side(topology.b[yellow_kind], observers, env)
        protocol = "tcp" if blue_kind is NatKind.UDP_BLOCKED else "udp"
        limit = budget(config, blue_kind, yellow_kind)
        samples: list[Try] = []
        for index in range(tries):
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                blue_started = pool.submit(blue_side.fresh, f"{strategy[:2]}blue")
                yellow_started = pool.submit(yellow_side.fresh, f"{strategy[:2]}yel")
                blue, yellow = blue_started.result(), yellow_started.result()
            name = f"{strategy}-{blue_kind}-{yellow_kind}-{index}"
            created = control(blue).call(
                "relay.create", {"name": name, "at": relay.route(protocol)}, timeout=30
            )
            wait_classified(blue)
            wait_classified(yellow)
            to_blue = f"{relay.route('udp')}{created['address']}/service/api"
            samples.append(one_try(blue, yellow, to_blue, limit))
            control(blue).call("relay.delete", {"name": name})
            retire(yellow)
            retire(blue)
            last = samples[-1]
            print(
                f"    {strategy:<8}{label:<16}"
                + (f"{last.from_created_ms:>8.0f} ms" if last.direct else "  failed  ")
                + f"  {last.upgrade}",
                flush=True,
            )
        results[label] = figures(samples) | {"budget_s": limit}
    return results


def ratio(mine: float | None, theirs: float | None) -> float | None:
    if mine is None or theirs is None or theirs == 0:
        return None
    return round(mine / theirs, 3)


def main(*, quick: bool = False, tries: int | None = None) -> None:
    if os.geteuid() != 0:
        print("punch: skipped (the NAT lab needs root)")
        return
    count = tries or (5 if quick else 50)
    by_strategy: dict[str, Any] = {}
    with Lab(purpose="bench-punch") as lab:
        topology = build(lab)
        for strategy in STRATEGY_NAMES:
            by_strategy[strategy] = measure_strategy(topology, strategy, count)
        delay = lab.delay_ms
    ratios: dict[str, Any] = {}
    for reference in STRATEGY_NAMES[1:]:
        ratios[reference] = {}
        for label, mine in by_strategy["meshkey"].items():
            theirs = by_strategy[reference][label]
            ratios[reference][label] = {
                key: ratio(mine.get(key), theirs.get(key))
                for key in ("p50_ms", "p95_ms", "success")
            }
            # A reference that never got through has no ratio: the difference says it.
            ratios[reference][label]["success_gain"] = round(mine["success"] - theirs["success"], 3)
    save(
        "punch",
        {
            "delay_ms_per_port": delay,
            "tries": count,
            "strategies": by_strategy,
            "meshkey_over": ratios,
        },
    )
    print(f"Hole punching in the NAT lab (WAN {delay:g} ms per port; {count} fresh punches each)")
    print(f"  {'strategy':<10}{'pair':<16}{'p50':>9}{'p95':>9}{'success':>9}")
    for strategy, pairs in by_strategy.items():
        for label, f in pairs.items():
            p50 = f"{f['p50_ms']:>6.0f} ms" if "p50_ms" in f else "      -  "
            p95 = f"{f['p95_ms']:>6.0f} ms" if "p95_ms" in f else "      -  "
            print(f"  {strategy:<10}{label:<16}{p50}{p95}{f['success']:>9.0%}")
    for reference, pairs in ratios.items():
        for label, r in pairs.items():
            print(
                f"  meshkey/{reference:<8}{label:<16}"
                f"{r['p50_ms'] or '-':>9}{r['p95_ms'] or '-':>9}{r['success'] or '-':>9}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.punch")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tries", type=int)
    arguments = parser.parse_args()
    main(quick=arguments.quick, tries=arguments.tries)
    sys.exit(0)
