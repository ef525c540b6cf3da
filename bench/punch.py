"""Hole punching through real kernel NATs (the NAT lab, as root): time to a direct path and
first-attempt success, per pair of NAT kinds, for meshkey's punch schedule and the reference
schedules of Polykey and Ockam (issue 13).

Topology (as ``tests/natlab/test_punch.py``): a relay and a second observer on public hosts;
one side of each kind for the responder (blue) and another for the initiator (yellow), each
behind its own router. Blue registers a relay; yellow opens a secure channel to blue's
``api`` listener through it and, as in the matrix test, nothing else is asked: the channel's
path manager punches on its own. Both know their NAT class (two observers) before the channel
is opened. The daemons of one run are started with ``MESHKEY_PUNCH_STRATEGY`` set to the
strategy measured (``meshkey``, ``meshkey-nottl``, ``polykey``, ``ockam``:
``meshkey.nat.strategy``), the same session code with the reference schedules (no
classification, no synchronisation, no low-TTL openers, no birthday for the references).

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

Also per try (both read without touching the daemons' code paths):

- *signalling cost*: the relay node runs with ``MESHKEY_CAPTURE``; the secure channel's DATA
  messages it routed during the try (between ``channel.create`` and ``channel.delete``), as
  they entered it (routing header + channel payload; a message it forwards is captured twice
  with the same sealed payload and counted once). The try sends no data of its own, so these
  are the path service's punch signals and relay-path pings; the channel's handshake, its own
  PING/PONG and CLOSE would be there without an upgrade and are not counted;
- *packets per punch*: both sides' ``PunchStats`` (logged with ``punch.succeeded`` /
  ``punch.failed``): full probes (the birthday spray included), low-TTL openers, and the
  spray alone.

Tries per strategy: meshkey ``--tries`` (50), the references ``--reference-tries`` (10: they
fail between NATs by their whole budget, 15 and 10 s a try, and are the same session code),
``meshkey-nottl`` ``--control-tries`` (20) on EIM <- EIM and EDM <- EIM only: meshkey with no
low-TTL packet at all (``nat.strategy.MESHKEY_NO_TTL``: no openers before the synchronised
punch's first round, and the birthday sockets' openers at full TTL), the control for "do the
low-TTL openers help?". ``--strategies`` and ``--pairs`` pick a subset (results then go to
``punch-STRATEGIES[-some-pairs].json``); ``--pairs udp-blocked<-eim`` adds the relay-only pair
(meshkey refuses to punch it and keeps the relayed channel: its figure is the channel's set-up).

What the TTL control showed (50 tries each): between two EIM NATs the synchronised start
alone avoids the clash (meshkey-nottl 50/50, and ~30 ms faster: no ``opener_lead``), so
there the openers are insurance against a bad RTT estimate; in the birthday punch they are
what makes it work (full-TTL openers: 2/50 direct, "no probe was answered"; with TTL 5:
50/50). The likely cause (not yet confirmed with ``conntrack -L``): each opener that
reaches the sprayer's NAT leaves an inbound entry that the spray probe to that port then
clashes with — NATLAB.md's clash, 256 times over.

HyperDHT 6.34 in the same lab: ``bench/hyperdht.py`` (``python -m bench hyperdht``), which
reads this benchmark's ``bench/results/punch.json`` for meshkey's ratios to it.

    python -m bench punch [--quick] [--tries N]
    python -m bench.punch [--tries N] [--reference-tries N] [--control-tries N]
        [--strategies meshkey,...] [--pairs eim<-eim,...]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import datetime
import os
import re
import statistics
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.natlab import Host, Lab, MeshkeyNode, NatKind

from bench.common import percentile, save
from meshkey.nat.strategy import STRATEGIES, PunchConfig
from meshkey.node import launcher
from meshkey.node.control_client import ControlClient
from meshkey.node.state import Home
from meshkey.routing.message import Message
from meshkey.wire.channel import ChannelKind, Sealed, decode_channel
from meshkey.wire.errors import WireError
from meshkey.wire.punch import AbortReason

STRATEGY_NAMES = ("meshkey", "polykey", "ockam")
#: meshkey without low-TTL packets (``nat.strategy.MESHKEY_NO_TTL``): does the trick help?
TTL_CONTROL = "meshkey-nottl"
#: (blue's kind, yellow's kind): yellow initiates.
PAIRS = [
    (NatKind.EIM, NatKind.EIM),
    (NatKind.EDM, NatKind.EIM),
    (NatKind.PUBLIC, NatKind.EIM),
    (NatKind.PUBLIC, NatKind.EDM),
]
#: Measured on request only (``--pairs``): meshkey keeps this pair on the relay (the matrix),
#: so its figure is the relayed channel's set-up; HyperDHT (bench/hyperdht.py) never connects.
EXTRA_PAIRS = [(NatKind.UDP_BLOCKED, NatKind.EIM)]
#: The pairs where low-TTL packets can matter (both sides filter): the TTL control's pairs.
TTL_PAIRS = [(NatKind.EIM, NatKind.EIM), (NatKind.EDM, NatKind.EIM)]
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
    rtt_ms: float | None = None  # the direct path's, once switched
    upgrade: str = ""
    path: str = ""
    #: What the relay routed for the upgrade: the channel's DATA messages (punch signals,
    #: relay-path pings; the try sends no data of its own), routing-layer bytes (header +
    #: channel payload) as each message entered the relay.
    relayed_messages: int = 0
    relayed_bytes: int = 0
    #: Both sides' PunchStats of the attempt (from their logs): full probes (birthday spray
    #: included), low-TTL openers, random-port probes alone.
    probes: int = 0
    openers: int = 0
    sprayed: int = 0
    stats_found: bool = False  # a side logged its attempt's PunchStats


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


_STATS = re.compile(
    r"punch\.(?:succeeded|failed) .*probes_sent=(\d+), openers_sent=(\d+), sprayed=(\d+)"
)


def punch_stats(node: MeshkeyNode) -> tuple[int, int, int] | None:
    """(probes, openers, sprayed) of the node's punch attempts, from its log (a fresh node
    punches once per try, so this is the attempt's), or None if it logged none."""
    totals = [0, 0, 0]
    found_any = False
    with contextlib.suppress(OSError):
        for found in _STATS.finditer(node.log()):
            found_any = True
            for index in range(3):
                totals[index] += int(found.group(index + 1))
    return (totals[0], totals[1], totals[2]) if found_any else None


def relayed(capture: Path, start: int, end: int) -> tuple[int, int]:
    """(messages, bytes) of the secure channel's DATA messages that the relay's router routed
    between byte offsets ``start`` and ``end`` of its capture. One try runs at a time, so
    the channel traffic there is the try's channel, and the benchmark sends no data of its
    own: every DATA message is the path service's (punch signals, relay-path pings) — the
    channel's handshake, CONFIRM, its own PING/PONG and CLOSE would be there without an
    upgrade and are not counted. A message the relay
    routes twice (in from a hop, then on from its forwarder) is counted once, as it entered:
    the same sealed payload (kind, nonce, ciphertext) is one message."""
    with capture.open("rb") as handle:
        handle.seek(start)
        data = handle.read(end - start)
    messages: list[tuple[Sealed, int]] = []
    offset = 0
    while offset + 4 <= len(data):
        length = struct.unpack("!I", data[offset : offset + 4])[0]
        raw = data[offset + 4 : offset + 4 + length]
        offset += 4 + length
        with contextlib.suppress(WireError, ValueError):
            message = Message.from_wire(raw)
            payload = decode_channel(message.payload)
            if isinstance(payload, Sealed) and payload.kind is ChannelKind.DATA:
                messages.append((payload, len(raw)))
    count, size, seen = 0, 0, set()
    for payload, length in messages:
        key = (payload.kind, payload.nonce, payload.ciphertext)
        if key in seen:  # the same message, re-routed by the relay's forwarder
            continue
        seen.add(key)
        count, size = count + 1, size + length
    return count, size


def one_try(
    blue: MeshkeyNode, yellow: MeshkeyNode, to_blue: str, limit: float, capture: Path
) -> Try:
    mark = capture.stat().st_size if capture.exists() else 0
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
        result.rtt_ms = path.get("rtt_ms")
    if result.direct:
        time.sleep(0.2)  # the punch's last signals (RESULT, its answer) may still be relayed
    control(yellow).call("channel.delete", {"address": address})
    end = capture.stat().st_size if capture.exists() else 0
    result.relayed_messages, result.relayed_bytes = relayed(capture, mark, end)
    for node in (blue, yellow):
        stats = punch_stats(node)
        if stats is not None:
            result.stats_found = True
            result.probes += stats[0]
            result.openers += stats[1]
            result.sprayed += stats[2]
    return result


def rounded(values: Sequence[float], fraction: float) -> float:
    return round(percentile(values, fraction), 1)


def figures(tries: list[Try]) -> dict[str, Any]:
    won = [t for t in tries if t.direct]
    times = [t.from_created_ms for t in won if t.from_created_ms is not None]
    requested = [t.from_request_ms for t in won if t.from_request_ms is not None]
    # request -> the first reply a message sent at the switch would get over the direct path
    replied = [
        t.from_request_ms + t.rtt_ms
        for t in won
        if t.from_request_ms is not None and t.rtt_ms is not None
    ]
    creates = [t.create_ms for t in tries]
    out: dict[str, Any] = {
        "tries": len(tries),
        "direct": len(won),
        "success": round(len(won) / len(tries), 3),
        # Each try is one fresh punch observed until its first attempt's budget ends, so a
        # success here is a first-attempt success.
        "first_attempt": round(len(won) / len(tries), 3),
        "create_p50_ms": rounded(creates, 0.5),
    }
    if times:
        out |= {
            "p50_ms": rounded(times, 0.5),
            "p95_ms": rounded(times, 0.95),
            "from_request_p50_ms": rounded(requested, 0.5),
            "from_request_p95_ms": rounded(requested, 0.95),
        }
    if replied:
        out |= {
            "to_first_reply_p50_ms": rounded(replied, 0.5),
            "to_first_reply_p95_ms": rounded(replied, 0.95),
        }
    relayed_bytes = [t.relayed_bytes for t in tries]
    out["relay_signalling"] = {
        "bytes_p50": round(percentile(relayed_bytes, 0.5)),
        "bytes_mean": round(statistics.fmean(relayed_bytes)),
        "bytes_max": max(relayed_bytes),
        "messages_p50": round(percentile([t.relayed_messages for t in tries], 0.5)),
    }
    counted = [t for t in tries if t.stats_found]
    if counted:
        out["packets"] = {
            "tries": len(counted),  # attempts whose sides logged their PunchStats
            "probes_p50": round(percentile([t.probes for t in counted], 0.5)),
            "probes_max": max(t.probes for t in counted),
            "openers_p50": round(percentile([t.openers for t in counted], 0.5)),
            "sprayed_p50": round(percentile([t.sprayed for t in counted], 0.5)),
            "sprayed_max": max(t.sprayed for t in counted),
        }
    failures = sorted({t.upgrade for t in tries if not t.direct})
    if failures:
        out["failures"] = failures
    return out


@dataclass
class Topology:
    relay: MeshkeyNode
    capture: Path
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
    capture = lab.workdir / "relay.capture"
    relay = lab.add_public_host("relay", "203.0.113.10").create_node(
        "relay", env={"MESHKEY_CAPTURE": str(capture)}
    )
    observer = lab.add_public_host("observer", "198.51.100.10").create_node("observer")
    kinds = [kind for kind in NatKind if any(kind in pair for pair in (*PAIRS, *EXTRA_PAIRS))]
    a = {kind: lab.add_side(f"a-{kind}", kind) for kind in kinds}
    b = {kind: lab.add_side(f"b-{kind}", kind) for kind in kinds}
    return Topology(relay, capture, observer, a, b)


def measure_strategy(
    topology: Topology,
    strategy: str,
    tries: int,
    pairs: Sequence[tuple[NatKind, NatKind]] = PAIRS,
) -> dict[str, Any]:
    config = STRATEGIES[strategy]
    relay, observers = topology.relay, topology.observers()
    env = {"MESHKEY_PUNCH_STRATEGY": strategy}
    results: dict[str, Any] = {}
    prefix = {"meshkey": "mk", "meshkey-nottl": "mn", "polykey": "pk", "ockam": "oc"}[strategy]
    for blue_kind, yellow_kind in pairs:
        label = pair_label(blue_kind, yellow_kind)
        blue_side = Side(topology.a[blue_kind], observers, env)
        yellow_side = Side(topology.b[yellow_kind], observers, env)
        protocol = "tcp" if blue_kind is NatKind.UDP_BLOCKED else "udp"
        limit = budget(config, blue_kind, yellow_kind)
        samples: list[Try] = []
        for index in range(tries):
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                blue_started = pool.submit(blue_side.fresh, f"{prefix}blue")
                yellow_started = pool.submit(yellow_side.fresh, f"{prefix}yel")
                blue, yellow = blue_started.result(), yellow_started.result()
            name = f"{strategy}-{blue_kind}-{yellow_kind}-{index}"
            created = control(blue).call(
                "relay.create", {"name": name, "at": relay.route(protocol)}, timeout=30
            )
            wait_classified(blue)
            wait_classified(yellow)
            to_blue = f"{relay.route('udp')}{created['address']}/service/api"
            samples.append(one_try(blue, yellow, to_blue, limit, topology.capture))
            control(blue).call("relay.delete", {"name": name})
            retire(yellow)
            retire(blue)
            last = samples[-1]
            print(
                f"    {strategy:<14}{label:<16}{index:>3}"
                + (f"{last.from_created_ms:>8.0f} ms" if last.direct else "  failed  ")
                + f"  relay {last.relayed_bytes:>5} B/{last.relayed_messages:>2} msgs"
                + f"  probes {last.probes:>4} openers {last.openers:>3}  {last.upgrade}",
                flush=True,
            )
        results[label] = figures(samples) | {
            "budget_s": limit,
            "raw": [dataclasses.asdict(t) for t in samples],
        }
    return results


def ratio(mine: float | None, theirs: float | None) -> float | None:
    if mine is None or theirs is None or theirs == 0:
        return None
    return round(mine / theirs, 3)


def compare(mine: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """meshkey over a reference, pair by pair: time ratios (< 1 is better), success ratio
    (>= 1 is better) and the success difference (a reference that never got through has no
    ratio: the difference says it)."""
    out: dict[str, Any] = {}
    for label, figures_mine in mine.items():
        if label not in theirs:
            continue
        figures_theirs = theirs[label]
        out[label] = {
            key: ratio(figures_mine.get(key), figures_theirs.get(key))
            for key in ("p50_ms", "p95_ms", "success")
        }
        out[label]["success_gain"] = round(figures_mine["success"] - figures_theirs["success"], 3)
    return out


def main(
    *,
    quick: bool = False,
    tries: int | None = None,
    reference_tries: int | None = None,
    control_tries: int | None = None,
    strategies: Sequence[str] | None = None,
    pairs: Sequence[str] | None = None,
) -> None:
    """``tries`` fresh punches per pair for meshkey (default 50), ``reference_tries`` for
    Polykey's and Ockam's schedules (default 10: they fail between NATs by their budget, 15
    and 10 s a try), ``control_tries`` for meshkey without low-TTL packets on the pairs where
    they can matter (default 20)."""
    if os.geteuid() != 0:
        print("punch: skipped (the NAT lab needs root)")
        return
    count = tries or (5 if quick else 50)
    counts = {
        "meshkey": count,
        "polykey": reference_tries or (3 if quick else 10),
        "ockam": reference_tries or (3 if quick else 10),
        TTL_CONTROL: control_tries or (3 if quick else 20),
    }
    chosen = list(strategies or (*STRATEGY_NAMES, TTL_CONTROL))
    by_strategy: dict[str, Any] = {}
    with Lab(purpose="bench-punch") as lab:
        topology = build(lab)
        for strategy in chosen:
            chosen_pairs = [
                pair
                for pair in (TTL_PAIRS if strategy == TTL_CONTROL else [*PAIRS, *EXTRA_PAIRS])
                if (pair_label(*pair) in pairs if pairs else pair not in EXTRA_PAIRS)
            ]
            started = time.monotonic()
            by_strategy[strategy] = measure_strategy(
                topology, strategy, counts[strategy], chosen_pairs
            )
            print(f"  {strategy}: {time.monotonic() - started:.0f} s", flush=True)
        delay = lab.delay_ms
    ratios: dict[str, Any] = {}
    if "meshkey" in by_strategy:
        for other in chosen:
            if other != "meshkey":
                ratios[other] = compare(by_strategy["meshkey"], by_strategy[other])
    save(
        "punch"
        if set(chosen) == {*STRATEGY_NAMES, TTL_CONTROL} and not pairs
        else "punch-" + "-".join(chosen) + ("-some-pairs" if pairs else ""),
        {
            "delay_ms_per_port": delay,
            "tries": {s: counts[s] for s in chosen},
            "strategies": by_strategy,
            "meshkey_over": ratios,
        },
    )
    print(
        f"Hole punching in the NAT lab (WAN {delay:g} ms per port; fresh punches: "
        + ", ".join(f"{s} {counts[s]}" for s in chosen)
        + " per pair)"
    )
    print(
        f"  {'strategy':<15}{'pair':<16}{'p50':>9}{'p95':>9}{'first':>7}"
        f"{'relay B':>9}{'probes':>8}{'openers':>8}"
    )
    for strategy, pairs_figures in by_strategy.items():
        for label, f in pairs_figures.items():
            p50 = f"{f['p50_ms']:>6.0f} ms" if "p50_ms" in f else "      -  "
            p95 = f"{f['p95_ms']:>6.0f} ms" if "p95_ms" in f else "      -  "
            print(
                f"  {strategy:<15}{label:<16}{p50}{p95}{f['first_attempt']:>7.0%}"
                f"{f['relay_signalling']['bytes_p50']:>9}"
                f"{f.get('packets', {}).get('probes_p50', '-'):>8}"
                f"{f.get('packets', {}).get('openers_p50', '-'):>8}"
            )
    for other, pairs_ratios in ratios.items():
        for label, r in pairs_ratios.items():
            print(
                f"  meshkey/{other:<14}{label:<16}"
                f"{r['p50_ms'] or '-':>9}{r['p95_ms'] or '-':>9}{r['success'] or '-':>9}"
                f"{r['success_gain']:>+8}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.punch")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tries", type=int, help="meshkey: fresh punches per pair (50)")
    parser.add_argument("--reference-tries", type=int, help="polykey, ockam: per pair (10)")
    parser.add_argument("--control-tries", type=int, help=f"{TTL_CONTROL}: per pair (20)")
    parser.add_argument(
        "--strategies",
        help=f"comma-separated, of {', '.join((*STRATEGY_NAMES, TTL_CONTROL))} (default: all)",
    )
    parser.add_argument(
        "--pairs",
        help="comma-separated blue<-yellow labels, of "
        + ", ".join(pair_label(*p) for p in (*PAIRS, *EXTRA_PAIRS))
        + " (default: the first four)",
    )
    arguments = parser.parse_args()
    main(
        pairs=arguments.pairs.split(",") if arguments.pairs else None,
        quick=arguments.quick,
        tries=arguments.tries,
        reference_tries=arguments.reference_tries,
        control_tries=arguments.control_tries,
        strategies=arguments.strategies.split(",") if arguments.strategies else None,
    )
    sys.exit(0)
