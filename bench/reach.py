"""Reach a node by its NodeId with nothing but a seed (issue 18), in the one-public-node NAT
lab (as root): for each of the 16 ordered pairs of sides (public, EIM, EDM, UDP-blocked; A
sends, B receives), fresh nodes made with ``meshkey node create NAME --seed NODEID@HOST:PORT``
and nothing else, each try in a network of its own (its own seed node on the seed host,
203.0.113.10), timed through the daemons' control sockets (no CLI start-up in the figures):

- first reply: from B's ``node create`` returning until A, which knew nothing of B, has the
  first answer from ``/peer/B/service/uppercase`` (A retries every 0.25 s while B's signed
  record is not published yet: "knows no path"); "no" within 20 s;
- send: how long that first answered ``message.send`` itself took (the lookup, the
  connection through the relay or direct, one round trip);
- final path: from ``channel.create`` to ``/peer/B/service/api`` until A's channel is on the
  path NATLAB.md's matrix says (direct, or relayed with a reason); "not" within 15 s;
- fallback (pairs that went direct over UDP): B's side drops UDP from A's public address;
  from then until a message through the channel is answered, and until a ``/peer/B`` message
  is ("no" within 10 s); which side dialled the punched hop (the lower NodeId) is shown;
- renumber (B behind a router, reached once): B's router's WAN address changes (conntrack
  flushed); from then until ``/peer/B`` answers again ("no" within 20 s).

Each figure is the median over the tries that produced one (``n/tries`` says how many); the
tries run one after another, so the machine's load is one pair's.

    python -m bench reach [--quick]       # --quick: one try per pair (default 3)
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from tests.natlab.lab import (
    SEED_PORT,
    Host,
    Lab,
    MeshkeyNode,
    NatKind,
    expected_direct,
    on_final_path,
    one_public_node_hosts,
)

from bench.common import save
from meshkey.node.control_client import ControlError

SIDES = list(NatKind)
PAIRS = [(a, b) for a in SIDES for b in SIDES]
RECORD_WAIT = 20.0
FINAL_WAIT = 15.0
FALLBACK_WAIT = 10.0
RENUMBER_WAIT = 20.0
FIGURES = ("first_reply", "send", "final_path", "fallback_channel", "fallback_peer", "renumber")

_ports = itertools.count(SEED_PORT + 100)
_names = itertools.count()


@dataclass
class Try:
    """One try's figures in seconds (None: not reached in time; absent: not applicable)."""

    figures: dict[str, float | None] = field(default_factory=dict)
    final: str = ""  # the path A's channel ended on
    dialler: str = ""  # which of A and B dialled the punched hop
    notes: list[str] = field(default_factory=list)


def until(check: Callable[[], bool], within: float, pause: float = 0.1) -> float | None:
    """Seconds until ``check()`` held, polling; None if not within ``within``."""
    started = time.monotonic()
    while time.monotonic() - started <= within:
        try:
            if check():
                return time.monotonic() - started
        except ControlError:
            pass
        time.sleep(pause)
    return None


def answered(node: MeshkeyNode, route: str, since: float, within: float) -> float | None:
    """Seconds from ``since`` until ``route`` answered an upper-casing, retrying failures."""
    while time.monotonic() - since <= within:
        try:
            if node.control_send(route, b"x", timeout=5) == b"X":
                return time.monotonic() - since
        except ControlError:
            time.sleep(0.05)
    return None


def channel_path(node: MeshkeyNode, address: str) -> dict[str, Any]:
    for channel in node.control("channel.list"):
        if channel.get("address") == address:
            return dict(channel.get("path") or {})
    return {}


def fallback(a: MeshkeyNode, b: MeshkeyNode, channel: str, result: Try) -> None:
    where = b.host.router or b.host  # a router or a public host: both have wan0
    pool = concurrent.futures.ThreadPoolExecutor(2)
    try:
        with where.blocking_udp(a.host.public_address, "in"):
            blocked_at = time.monotonic()
            through = pool.submit(
                answered, a, f"{channel}/service/uppercase", blocked_at, FALLBACK_WAIT
            )
            peer = pool.submit(
                answered, a, f"/peer/{b.node_id}/service/uppercase", blocked_at, FALLBACK_WAIT
            )
            result.figures["fallback_channel"] = through.result()
            result.figures["fallback_peer"] = peer.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def renumber(a: MeshkeyNode, b: MeshkeyNode, result: Try) -> None:
    router = b.host.router
    assert router is not None
    old = router.renumber(f"203.0.113.{150 + next(_names) % 100}")
    try:
        at = time.monotonic()
        result.figures["renumber"] = answered(
            a, f"/peer/{b.node_id}/service/uppercase", at, RENUMBER_WAIT
        )
    finally:
        router.renumber(old)


def try_pair(hosts: dict[str, Host], a_kind: NatKind, b_kind: NatKind) -> Try:
    result = Try()
    n = next(_names)
    seed = hosts["seed"].create_seed_node(f"seed{n}", port=next(_ports))
    b = hosts[f"b-{b_kind}"].join(f"b{n}", seed)
    joined = time.monotonic()
    a = hosts[f"a-{a_kind}"].join(f"a{n}", seed)
    try:
        to_peer = f"/peer/{b.node_id}/service/uppercase"
        while True:
            started = time.monotonic()
            try:
                a.control_send(to_peer, b"hi", timeout=5)
                result.figures["send"] = time.monotonic() - started
                result.figures["first_reply"] = time.monotonic() - joined
                break
            except ControlError as exc:
                if time.monotonic() - joined > RECORD_WAIT:
                    result.figures["first_reply"] = None
                    result.notes.append(f"no reply: {exc}")
                    return result
                time.sleep(0.25)
        want = expected_direct(a_kind, b_kind)
        started = time.monotonic()
        try:
            route = f"/peer/{b.node_id}/service/api"
            created = a.control("channel.create", {"route": route, "timeout": 30}, timeout=40)
        except ControlError as exc:
            result.notes.append(f"channel: {exc}")
            return result
        address = created["address"]
        result.figures["final_path"] = until(
            lambda: on_final_path([channel_path(a, address)], want), FINAL_WAIT
        )
        if result.figures["final_path"] is not None:
            result.figures["final_path"] = time.monotonic() - started
        path = channel_path(a, address)
        result.final = str(path.get("now") or "")
        if not path.get("direct") and path.get("upgrade"):
            result.final += f" ({path['upgrade']})"
        if path.get("direct") and "over tcp" not in result.final:
            result.dialler = "A" if "punch.dial" in a.log() else "B"
            fallback(a, b, address, result)
        if b.host.router is not None:
            renumber(a, b, result)
        return result
    finally:
        for node in (a, b, seed):
            node.meshkey("node", "stop", node.name, check=False)


def median(values: list[float | None]) -> tuple[float | None, int]:
    got = [v for v in values if v is not None]
    return (statistics.median(got) if got else None), len(got)


def main(*, quick: bool = False) -> None:
    if os.geteuid() != 0:
        print("reach: skipped (the NAT lab needs root)")
        return
    tries = 1 if quick else 3
    results: dict[str, list[Try]] = {}
    with Lab(purpose="bench") as lab:
        hosts = one_public_node_hosts(lab)
        for a_kind, b_kind in PAIRS:
            key = f"{a_kind}->{b_kind}"
            results[key] = [try_pair(hosts, a_kind, b_kind) for _ in range(tries)]
    save(
        "reach",
        {
            "delay_ms_per_port": lab.delay_ms,
            "tries": tries,
            "pairs": {k: [asdict(t) for t in v] for k, v in results.items()},
        },
    )
    print(
        f"Reach by NodeId, one public node (seed = relay = observer), WAN {lab.delay_ms:g} ms "
        f"per port (40 ms RTT between two NATed hosts); medians over {tries} tries, seconds"
    )
    heads = ("first reply", "send", "final path", "fallback ch", "fallback /peer", "renumber")
    print(
        f"  {'A -> B':<26}"
        + "".join(f"{h:>15}" for h in heads)
        + "  dialled  final path (last try)"
    )
    for key, pair_tries in results.items():
        cells = []
        for figure in FIGURES:
            values = [t.figures[figure] for t in pair_tries if figure in t.figures]
            if not values:
                cells.append("-")
                continue
            value, n = median(values)
            shown = "no" if value is None else f"{value:.2f}"
            cells.append(shown if n == len(pair_tries) else f"{shown} ({n}/{len(pair_tries)})")
        last = pair_tries[-1]
        final = last.final or (last.notes[0] if last.notes else "")
        dialled = ",".join(t.dialler for t in pair_tries if t.dialler) or "-"
        print(f"  {key:<26}" + "".join(f"{c:>15}" for c in cells) + f"  {dialled:<8} {final[:60]}")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.reach")
    parser.add_argument("--quick", action="store_true", help="one try per pair")
    main(quick=parser.parse_args().quick)
