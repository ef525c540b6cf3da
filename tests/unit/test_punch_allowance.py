"""No amplifier (DESIGN.md decision 20), on a fake clock: a peer that may signal a punch
cannot make a node probe addresses of its choosing, nor send more than three times what the
peer sent, whatever its CONNECT claims; and a superseded birthday punch gives the gate back.

Mallory is a peer with a secure channel to the node (its messages arrive as they would), and
sends what it likes: CONNECTs naming foreign addresses, claims of an endpoint-dependent NAT,
one CONNECT a second. The node is a real :class:`~meshkey.nat.puncher.Puncher`."""

from __future__ import annotations

import dataclasses
import random

import pytest

from meshkey.identity.node_id import NodeId
from meshkey.nat.allowance import (
    AMPLIFICATION,
    CLAIMED_PROBES,
    PEER_DATAGRAMS_PER_MINUTE,
    PeerLimits,
    networks_of,
    plausible,
)
from meshkey.nat.punch import (
    CloseBirthdaySockets,
    LocalCandidates,
    OpenBirthdaySockets,
    PunchFailed,
    SendDatagram,
    SendSignal,
)
from meshkey.nat.puncher import Puncher
from meshkey.nat.strategy import MESHKEY
from meshkey.nat.token import PunchKey
from meshkey.wire.net import Endpoint, NatClass
from meshkey.wire.punch import (
    MAX_CREDIT_PAD,
    AbortReason,
    Capability,
    Connect,
    Credit,
    decode_punch_message,
    encode_punch_message,
)
from meshkey.wire.udp import PunchRole, encode_control_packet
from tests.natsim.wiring import Wiring
from tests.unit.test_punch_session import CAPS, EIM_A, EIM_B

NODE = NodeId(b"\x01" * 32)
MALLORY = NodeId(b"\x09" * 32)
NODE_LOCAL = ("192.168.7.10", 4000)
NODE_INFO = LocalCandidates(
    NatClass.ENDPOINT_INDEPENDENT,
    local=(NODE_LOCAL,),
    reflexive=(("198.51.100.1", 4000),),
    capabilities=CAPS | {Capability.TIMED_START},
)
#: 16 addresses of hosts that run no meshkey: Mallory's victims.
FOREIGN_LOCAL = tuple((f"10.9.0.{i}", 53) for i in range(1, 9))
FOREIGN_PUBLIC = tuple((f"203.0.113.{i}", 443) for i in range(1, 9))


def mallory_connect(rng: random.Random, **changes: object) -> Connect:
    connect = Connect(
        rng.randbytes(16),
        reply=False,
        key_share=rng.randbytes(32),
        nat_class=NatClass.ENDPOINT_INDEPENDENT,
        local=FOREIGN_LOCAL,
        reflexive=FOREIGN_PUBLIC,
        capabilities=frozenset({Capability.BIRTHDAY, Capability.TIMED_START}),
    )
    return dataclasses.replace(connect, **changes)  # type: ignore[arg-type]


class Victim:
    """The node, driven by hand: every datagram it sends is logged with its time."""

    def __init__(self, info: LocalCandidates = NODE_INFO) -> None:
        self.puncher = Puncher(NODE, rng=random.Random(7), local=info)
        self.now = 0.0
        self.sent: list[SendDatagram] = []
        self.signals: list[bytes] = []
        self.commands: list[object] = []
        self.failed: list[PunchFailed] = []

    def signal(self, data: bytes, **options: object) -> None:
        self.puncher.on_signal(MALLORY, data, self.now, signalling_rtt=0.05, **options)  # type: ignore[arg-type]
        self.drain()

    def drain(self) -> None:
        for command in self.puncher.commands():
            self.commands.append(command)
            if isinstance(command, SendDatagram):
                self.sent.append(command)
            elif isinstance(command, SendSignal):
                self.signals.append(command.data)
        self.failed += [e for e in self.puncher.events() if isinstance(e, PunchFailed)]

    def run_until(self, end: float) -> None:
        while True:
            deadline = self.puncher.next_deadline()
            if deadline is None or deadline > end:
                break
            self.now = max(self.now, deadline)
            self.puncher.on_timer(self.now)
            self.drain()
        self.now = end

    @property
    def bytes_sent(self) -> int:
        return sum(len(d.data) for d in self.sent)


def test_a_connect_naming_foreign_addresses_probes_one_at_most_three_times_its_size() -> None:
    """The finding: one 406-byte CONNECT naming 16 foreign addresses made a node send 760
    probes there (120x)."""
    victim = Victim()
    connect = encode_punch_message(mallory_connect(random.Random(1)))
    assert len(connect) > 350
    victim.signal(connect)
    victim.run_until(30.0)
    assert victim.sent, "the first claimed public address is still tried"
    # Only its first public address, as a claim; no local address (not on the node's LAN).
    assert {d.destination for d in victim.sent} == {FOREIGN_PUBLIC[0]}
    assert victim.bytes_sent <= AMPLIFICATION * len(connect)
    assert len(victim.sent) <= CLAIMED_PROBES


def test_a_connect_a_second_stays_within_three_times_what_it_costs() -> None:
    """The finding: one CONNECT a second kept a node at 366 probes/s."""
    victim = Victim()
    rng = random.Random(2)
    paid = 0
    for second in range(60):
        victim.run_until(float(second))
        connect = encode_punch_message(mallory_connect(rng))
        paid += len(connect)
        victim.signal(connect)
    victim.run_until(90.0)
    assert victim.bytes_sent <= AMPLIFICATION * paid
    assert {d.destination for d in victim.sent} <= {FOREIGN_PUBLIC[0]}


def test_a_claimed_endpoint_dependent_nat_buys_no_spray_it_did_not_pay_for() -> None:
    """The finding: a CONNECT claiming an endpoint-dependent NAT made the node spray 2,048
    random ports of a named IP (646x). Now the spray goes as far as Mallory pays, 3:1."""
    victim = Victim()
    rng = random.Random(3)
    edm = mallory_connect(rng, nat_class=NatClass.ENDPOINT_DEPENDENT, local=())
    data = encode_punch_message(edm)
    victim.signal(data)
    victim.run_until(10.0)
    assert victim.sent
    assert {d.destination[0] for d in victim.sent} == {FOREIGN_PUBLIC[0][0]}
    assert victim.bytes_sent <= AMPLIFICATION * len(data)
    # Paying buys probes, never more than three bytes for one.
    victim = Victim()
    victim.signal(data)
    paid = len(data)
    for _ in range(3):
        credit = encode_punch_message(Credit(edm.punch_id, MAX_CREDIT_PAD))
        paid += len(credit)
        victim.signal(credit)
    victim.run_until(10.0)
    assert 3 * len(data) < victim.bytes_sent <= AMPLIFICATION * paid


def test_with_an_observed_address_a_claimed_public_ip_elsewhere_is_never_probed() -> None:
    victim = Victim()
    rng = random.Random(4)
    seen: Endpoint = ("198.51.100.77", 61000)
    # Observed: Mallory's public addresses that match are all probed, the others never.
    matching = (("198.51.100.77", 5000), ("198.51.100.77", 5001))
    victim.signal(
        encode_punch_message(mallory_connect(rng, reflexive=(*FOREIGN_PUBLIC[:3], *matching))),
        observed=(seen,),
    )
    victim.run_until(10.0)
    assert {d.destination for d in victim.sent} == set(matching)
    # And a birthday claim toward an IP nobody observed is refused before any probe.
    victim = Victim()
    edm = mallory_connect(rng, nat_class=NatClass.ENDPOINT_DEPENDENT)
    victim.signal(encode_punch_message(edm), observed=(seen,))
    victim.run_until(10.0)
    assert victim.sent == []
    assert [f.reason for f in victim.failed] == [AbortReason.NO_CANDIDATES]


def test_local_candidates_are_probed_only_on_the_nodes_own_lan() -> None:
    victim = Victim()
    rng = random.Random(5)
    neighbour = ("192.168.7.99", 4000)  # the node's /24
    victim.signal(encode_punch_message(mallory_connect(rng, local=(*FOREIGN_LOCAL[:3], neighbour))))
    victim.run_until(10.0)
    assert {d.destination for d in victim.sent} == {neighbour, FOREIGN_PUBLIC[0]}
    # Networks the glue gives win over the /24 guess.
    nets = networks_of([NODE_LOCAL], ["10.9.0.0/16"])
    found = plausible(FOREIGN_LOCAL, (), (), observed=(), networks=nets)
    assert found.local == FOREIGN_LOCAL
    assert networks_of([("127.0.0.1", 1)])[0].prefixlen == 8


def test_valid_probes_of_the_peer_pay_for_the_answers_and_are_remembered() -> None:
    """A real peer's probes earn: each 64-byte probe pays for the ACK and a probe back, and
    where they came from is observed for the next punch."""
    victim = Victim()
    rng = random.Random(6)
    connect = mallory_connect(rng, reflexive=(("203.0.113.50", 7000),), local=())
    victim.signal(encode_punch_message(connect))
    (reply,) = [decode_punch_message(d) for d in victim.signals]
    assert isinstance(reply, Connect)
    key = PunchKey.derive(connect.punch_id, connect.key_share, reply.key_share)
    victim.run_until(1.0)
    before = len(victim.sent)
    source = ("203.0.113.50", 7100)  # its NAT moved the port: seen here, not where claimed
    for counter in range(200):
        victim.now += 0.03
        packet = encode_control_packet(key.probe(PunchRole.INITIATOR, counter))
        victim.puncher.on_control_packet(0, source, packet, victim.now)
        victim.drain()
    answers = [d for d in victim.sent[before:] if d.destination == source]
    assert len(answers) >= 2 * 200 - 10  # an ACK and a probe back for (nearly) every probe
    assert victim.puncher.seen(MALLORY) == (source,)
    # A hint, not a rule: the next punch probes the peer's public addresses at that IP...
    hinted = plausible((), (("203.0.113.50", 1), ("192.0.2.1", 2)), (), observed=(),
                       networks=(), seen=(source,))  # fmt: skip
    assert hinted.reflexive == (("203.0.113.50", 1),)
    # ... and, its router renumbered, still its first claimed one.
    moved = plausible((), (("192.0.2.1", 2),), (), observed=(), networks=(), seen=(source,))
    assert moved.reflexive == (("192.0.2.1", 2),) and moved.claimed(("192.0.2.1", 2))


def test_per_peer_and_node_limits_hold_whatever_the_credit() -> None:
    limits = PeerLimits(per_second=1000.0, burst=5000.0)
    allowed = sum(limits.allow(MALLORY, 0.0) for _ in range(10_000))
    assert allowed == PEER_DATAGRAMS_PER_MINUTE
    assert not limits.allow(MALLORY, 0.0)
    assert limits.allow(NODE, 0.0)  # another peer has its own
    assert limits.allow(MALLORY, 1.0)  # a minute's worth refills over a minute
    crowd = PeerLimits(per_second=10.0, burst=20.0)
    peers = [NodeId(bytes([i]) * 32) for i in range(2, 40)]
    assert sum(crowd.allow(p, 0.0) for p in peers) == 20  # the node's cap, for all


def test_a_superseded_birthday_punch_gives_the_gate_back() -> None:
    """The finding: a birthday punch superseded by a new CONNECT never released the gate, so
    every later birthday punch on that node was refused."""
    edm_b = dataclasses.replace(EIM_B, nat_class=NatClass.ENDPOINT_DEPENDENT)
    wiring = Wiring(EIM_A, edm_b, drop=lambda side, command: True)
    first = wiring.start("a")
    wiring.run(0.5)  # b (the opener) holds the gate for the first punch
    assert wiring.b.gate.holder == first
    second = wiring.start("a")  # a new CONNECT supersedes it on b
    wiring.run(0.5)
    assert wiring.b.gate.holder != first
    opened = [
        s
        for x in wiring.commands("b", OpenBirthdaySockets)
        for s in x.command.sockets  # type: ignore[union-attr]
    ]
    closed = [
        s
        for x in wiring.commands("b", CloseBirthdaySockets)
        for s in x.command.sockets  # type: ignore[union-attr]
    ]
    assert len(opened) == MESHKEY.birthday_sockets and sorted(closed) == sorted(opened)
    reasons = [e.reason for _, e in wiring.events["b"] if isinstance(e, PunchFailed)]
    assert reasons == [AbortReason.SUPERSEDED, AbortReason.BIRTHDAY_BUSY]
    assert second != first
    wiring.run(25.0)  # the spacing passes: the next birthday punch runs
    wiring.start("a")
    wiring.run(0.5)
    assert wiring.b.gate.holder is not None
    reopened = wiring.commands("b", OpenBirthdaySockets)
    assert len(reopened) == 2


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_honest_punches_still_win_within_the_allowance(seed: int) -> None:
    for a, b in (
        (EIM_A, EIM_B),
        (EIM_A, dataclasses.replace(EIM_B, nat_class=NatClass.ENDPOINT_DEPENDENT)),
    ):
        wiring = Wiring(a, b, seed=seed)
        wiring.start("a")
        wiring.run(10.0)
        for side in ("a", "b"):
            assert not [e for _, e in wiring.events[side] if isinstance(e, PunchFailed)]
