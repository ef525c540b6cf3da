"""NATLAB.md's 4 x 4 matrix in the simulator: two nodes that talk through a relay, each
behind a NAT of one kind, upgrade to a direct path (or stay relayed and say why).

One run (:func:`run_pair`): both nodes classify their NAT with four public observers, open
the channel through the relay (40 ms one way: 10 ms per WAN port, as the lab's switch, and
the relay between them; node a opened it), and from then on everything is up to the cores:
a's path manager asks for a punch, the punchers signal through the relay, probe and dial,
the hop comes up and the paths switch. ``time_to_direct`` is from the moment the relayed
channel existed to the moment *both* sides' traffic moved to the direct path, in simulated
seconds.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from meshkey.nat.punch import PunchStarted
from meshkey.nat.strategy import MESHKEY, PunchConfig
from tests.natsim.net import NatKind, SimNet, build_lab
from tests.natsim.node import Observer, Relay, SimNode

KINDS = (NatKind.PUBLIC, NatKind.EIM, NatKind.EDM, NatKind.UDP_BLOCKED)
_P, _I, _D, _B = KINDS
#: NATLAB.md's matrix: the pairs that must end direct (the rest stay on the relay).
EXPECTED_DIRECT = frozenset(
    frozenset(pair) for pair in [(_P, _P), (_P, _I), (_P, _D), (_P, _B), (_I, _I), (_I, _D)]
)


def expected_direct(a: NatKind, b: NatKind) -> bool:
    return frozenset((a, b)) in EXPECTED_DIRECT


@dataclass(frozen=True)
class PairResult:
    a: NatKind
    b: NatKind
    strategy: str
    seed: int
    direct: bool
    time_to_direct: float | None
    path: str  # a's path at the end
    reason: str  # what a's last punch did (why it stayed relayed)
    probes: tuple[int, int]  # full probes sent by a and b
    openers: tuple[int, int]
    sprayed: int
    attempts: int  # punches started, both sides together
    relay_messages: int  # messages the relay carried for the pair (signalling and pings)
    relay_bytes: int
    birthday_opened: int
    birthday_closed: int
    clashes: int  # conntrack clashes in the two NATs

    @property
    def total_probes(self) -> int:
        return sum(self.probes)


@dataclass
class SimPair:
    """A built and classified pair, for tests that go on after the upgrade."""

    net: SimNet
    a: SimNode
    b: SimNode
    relay: Relay
    requested_at: float

    def both_direct(self) -> bool:
        return (
            self.a.timeline.direct_at is not None
            and self.b.timeline.direct_at is not None
            and _is_direct(self.a)
            and _is_direct(self.b)
        )


def _is_direct(node: SimNode) -> bool:
    key = node.paths.current_path(node.peer) if node.peer is not None else None
    return key is not None and key.kind.is_direct


def build_pair(
    a_kind: NatKind,
    b_kind: NatKind,
    *,
    config: PunchConfig = MESHKEY,
    seed: int = 1,
    wan_hops: int = 8,
    relay_one_way: float = 0.040,
    port_delay: float = 0.010,
    loss: float = 0.0,
    nat_timeout: float = 30.0,
    observers: int = 4,
    b_config: PunchConfig | None = None,
    channel_rtt: bool = True,
    rtt_error: float = 0.0,
    net: SimNet | None = None,
) -> SimPair:
    """``net``: the simulation to build the pair in (it then shares the clock with whatever
    else runs there; the lab's addresses must be free in it), else a new one."""
    net = net or SimNet(seed, wan_hops=wan_hops)
    lab = build_lab(
        net,
        a_kind,
        b_kind,
        observers=observers,
        port_delay=port_delay,
        loss=loss,
        timeout=nat_timeout,
    )
    for host in (lab.a, lab.b, *lab.observers):
        host.port_delay, host.loss = port_delay, loss
    seen = [Observer(host).address for host in lab.observers]
    a = SimNode(net, lab.a, "a", config=config, seed=seed * 2 + 1, tcp_listener=True)
    b = SimNode(net, lab.b, "b", config=b_config or config, seed=seed * 2 + 2, tcp_listener=True)
    relay = Relay(net, relay_one_way)
    relay.join(a)
    relay.join(b)
    a.classify(seen)
    b.classify(seen)
    net.run_until(
        lambda: a.classification is not None and b.classification is not None,
        limit=net.now + 5.0,
    )
    requested_at = net.now
    # The channel's handshake went through the relay: both ends know its round trip
    # (``channel_rtt`` False: neither does, and a punch falls back to the SYNC exchange;
    # ``rtt_error`` makes the measurement wrong by that much).
    handshake_rtt = max(0.0, 2 * relay_one_way + rtt_error) if channel_rtt else None
    a.connect_via_relay(b.node_id, handshake_rtt=handshake_rtt)
    b.connect_via_relay(a.node_id, handshake_rtt=handshake_rtt, initiator=False)
    return SimPair(net, a, b, relay, requested_at)


def run_pair(
    a_kind: NatKind,
    b_kind: NatKind,
    *,
    config: PunchConfig = MESHKEY,
    seed: int = 1,
    limit: float = 30.0,
    **options: float,
) -> PairResult:
    pair = build_pair(a_kind, b_kind, config=config, seed=seed, **options)  # type: ignore[arg-type]
    net, a, b = pair.net, pair.a, pair.b
    net.run_until(pair.both_direct, limit=pair.requested_at + limit)
    direct = pair.both_direct()
    time_to_direct = None
    if direct:
        assert a.timeline.direct_at is not None and b.timeline.direct_at is not None
        time_to_direct = max(a.timeline.direct_at, b.timeline.direct_at) - pair.requested_at
    report = a.paths.report(b.node_id)
    assert report is not None
    a_probes, a_openers, a_sprayed = a.punch_stats()
    b_probes, b_openers, b_sprayed = b.punch_stats()
    attempts = sum(
        isinstance(event, PunchStarted) for node in (a, b) for event in node.timeline.punches
    )
    clashes = sum(nat.clashes for nat in (a.host.nat, b.host.nat) if nat is not None)
    return PairResult(
        a_kind,
        b_kind,
        config.name,
        seed,
        direct,
        time_to_direct,
        report.description,
        report.punch,
        (a_probes, b_probes),
        (a_openers, b_openers),
        a_sprayed + b_sprayed,
        attempts,
        pair.relay.carried,
        pair.relay.carried_bytes,
        a.birthday_opened + b.birthday_opened,
        a.birthday_closed + b.birthday_closed,
        clashes,
    )


def run_matrix(
    config: PunchConfig = MESHKEY, *, seeds: range = range(1, 2), limit: float = 30.0
) -> list[PairResult]:
    return [
        run_pair(a, b, config=config, seed=seed, limit=limit)
        for a in KINDS
        for b in KINDS
        for seed in seeds
    ]


def format_matrix(results: list[PairResult]) -> str:
    """A table like NATLAB.md's: per pair, how many runs ended direct and their median time."""
    name = results[0].strategy if results else "?"
    header = f"{name:>12} | " + " | ".join(f"{kind.value:^22}" for kind in KINDS)
    lines = [header, "-" * len(header)]
    for a in KINDS:
        cells = []
        for b in KINDS:
            runs = [r for r in results if r.a is a and r.b is b]
            wins = [r for r in runs if r.direct]
            times = [r.time_to_direct for r in wins if r.time_to_direct is not None]
            probes = statistics.median(r.total_probes for r in runs) if runs else 0
            if wins:
                cell = f"direct {len(wins)}/{len(runs)} {statistics.median(times):.2f}s"
            else:
                cell = f"relay {len(runs)}/{len(runs)}"
            cells.append(f"{cell} p{probes:.0f}".center(22))
        lines.append(f"{a.value:>12} | " + " | ".join(cells))
    return "\n".join(lines)


def format_details(results: list[PairResult]) -> str:
    lines = []
    for r in results:
        when = f"{r.time_to_direct:.3f}s" if r.time_to_direct is not None else "-"
        lines.append(
            f"{r.strategy:8} {r.a.value:>11} <-> {r.b.value:<11} seed {r.seed}: "
            f"{'direct' if r.direct else 'relay':6} {when:>8}  probes {r.probes[0]}+{r.probes[1]}"
            f" openers {r.openers[0]}+{r.openers[1]} sprayed {r.sprayed} attempts {r.attempts}"
            f" relay msgs {r.relay_messages} ({r.relay_bytes} B) clashes {r.clashes}"
            f" birthday sockets {r.birthday_opened}/{r.birthday_closed}  [{r.path}; {r.reason}]"
        )
    return "\n".join(lines)
