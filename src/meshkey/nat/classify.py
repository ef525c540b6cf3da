"""NAT classification of the one UDP socket (DESIGN.md decision 10), sans-IO.

Theory of operation
-------------------
The node asks several *observers* (seeds, relays, DHT servers: nodes with public addresses)
for the reflexive address of its one socket (WHOAMI, :mod:`meshkey.wire.udp`) and compares
the answers. Observers count per endpoint, IP *and* port, but at most
:data:`PORTS_PER_OBSERVER_IP` (two) per IP, so that one operator with many ports cannot
outvote everyone else. Two ports of one IP are enough to tell the common NATs apart (DESIGN.md
decision 16): an endpoint-dependent NAT such as Linux ``--random-fully`` maps per destination
port too, so it gives the two ports two mappings, and users often have exactly one rendezvous
(their seed), which answers on a second port for this (STUN's alternate port: a WHOAMI answer
names it, and the round asks it as well). A NAT that maps per destination *address* only looks
endpoint-independent to one IP's two ports; the punch's own evidence (where the peer saw our
probes come from) contradicts that and brings a new round. Per endpoint, the first answer
counts.

:func:`classify` is a pure function of those answers:

- no UDP answer at all, while TCP works → ``udp-blocked``; no answer and no TCP evidence →
  ``unknown`` (the node may simply be offline);
- fewer than :data:`MIN_OBSERVERS` observers answered → ``unknown``;
- every answer is one of the socket's local addresses → ``public``;
- one mapping seen by enough observers → ``endpoint-independent``. "Enough" is HyperDHT's rule
  generalised: all of two or three, or at least three quarters of four or more (HyperDHT: ≥ 3
  equal of ~4 → consistent). We take it because one observer that answers strangely (a
  conntrack clash on the observer's flow, a lying observer, an observer on the same LAN) must
  not turn an easy NAT into a hard one: that would make the peer start a 2,000-probe birthday
  punch for nothing, or refuse to punch at all;
- every answer different (or the public IP varying) → ``endpoint-dependent``;
- partial agreement (2 of 4) → ``unknown`` ("inconsistent"): no rule can tell a port-
  preserving symmetric NAT from a cone NAT with one clash, and the punch strategy for
  ``unknown`` (a plain punch, no birthday) is cheap to try and retried later.

``confidence`` is the fraction of counted observers consistent with the verdict, scaled by
``min(1, n / 4)`` so that fewer than four observers never claim full confidence (go-libp2p
trusts an observed address only once four peers confirm it).

:class:`ClassificationRound` runs one round: it hands out WHOAMI requests as commands,
retransmits them on a :class:`~meshkey.retry.RetrySchedule` (250 ms, 500 ms, then every 1 s),
matches answers by transaction id *and* source address, and classifies when every observer
answered or the timeout passed. :class:`RecheckPolicy` says when to run the next round:
at once on a network change, soon (but at most every ``min_spacing``) when peers contradict
the classification, on a backoff while the verdict is ``unknown``, otherwise every
``period`` (jittered).

The injected ``rng`` makes the transaction ids: the daemon passes ``random.SystemRandom()``
so that an off-path attacker cannot guess them and forge an answer.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from meshkey.retry import RetrySchedule
from meshkey.wire.net import Endpoint, NatClass
from meshkey.wire.udp import (
    TXID_SIZE,
    WhoamiRequest,
    WhoamiResponse,
    encode_control_packet,
)

__all__ = [
    "ClassificationRound",
    "Classification",
    "Classified",
    "NatClass",
    "Observation",
    "RecheckPolicy",
    "SendWhoami",
    "classify",
]

MIN_OBSERVERS = 2
FULL_CONFIDENCE_OBSERVERS = 4
MAX_OBSERVERS = 16  # a round asks at most this many: bounds its state and its traffic
PORTS_PER_OBSERVER_IP = 2  # an observer's main and alternate port


@dataclass(frozen=True, slots=True)
class Observation:
    """What one observer said about the socket; ``reflexive`` is None if it never answered."""

    observer: Endpoint
    reflexive: Endpoint | None


@dataclass(frozen=True, slots=True)
class Classification:
    nat_class: NatClass
    confidence: float
    reason: str
    at: float
    observations: tuple[Observation, ...] = ()
    mappings: tuple[Endpoint, ...] = ()  # distinct reflexive addresses, most often seen first
    port_preserved: bool | None = None  # the mapping kept the local port (MASQUERADE does)

    @property
    def public_address(self) -> Endpoint | None:
        """The address peers can punch to: the one mapping of a public or EIM socket."""
        if self.nat_class in (NatClass.PUBLIC, NatClass.ENDPOINT_INDEPENDENT) and self.mappings:
            return self.mappings[0]
        return None

    @property
    def public_ip(self) -> str | None:
        """The NAT's public IP (also for an endpoint-dependent NAT: birthday probes go there)."""
        return self.mappings[0][0] if self.mappings else None


def _consistent_needed(count: int) -> int:
    return count if count <= 3 else math.ceil(3 * count / 4)


def _confidence(support: int, count: int) -> float:
    if count == 0:
        return 0.0
    return round(support / count * min(1.0, count / FULL_CONFIDENCE_OBSERVERS), 3)


def classify(
    observations: Iterable[Observation],
    local: Iterable[Endpoint],
    *,
    tcp_works: bool | None,
    at: float,
) -> Classification:
    """The NAT class of a socket bound at ``local`` from what the observers saw."""
    seen = tuple(observations)
    locals_ = set(local)
    asked: dict[Endpoint, Endpoint | None] = {}
    ports: Counter[str] = Counter()
    for observation in seen:  # per observer endpoint, the first answer counts
        observer = observation.observer
        if observer not in asked:
            if ports[observer[0]] >= PORTS_PER_OBSERVER_IP:
                continue
            ports[observer[0]] += 1
            asked[observer] = observation.reflexive
        elif asked[observer] is None:
            asked[observer] = observation.reflexive
    answers = [reflexive for reflexive in asked.values() if reflexive is not None]

    def result(nat_class: NatClass, support: int, count: int, reason: str) -> Classification:
        ranked = tuple(address for address, _ in Counter(answers).most_common())
        preserved = None
        if ranked and locals_:
            preserved = ranked[0][1] in {port for _, port in locals_}
        return Classification(
            nat_class, _confidence(support, count), reason, at, seen, ranked, preserved
        )

    if not answers:
        if not asked:
            return result(NatClass.UNKNOWN, 0, 0, "no observer was asked")
        if tcp_works:
            return result(
                NatClass.UDP_BLOCKED,
                len(asked),
                len(asked),
                f"none of {len(asked)} observers answered over UDP, while TCP works",
            )
        return result(NatClass.UNKNOWN, 0, len(asked), f"none of {len(asked)} observers answered")
    if len(answers) < MIN_OBSERVERS:
        return result(
            NatClass.UNKNOWN,
            0,
            len(answers),
            f"only {len(answers)} observer answered (at least {MIN_OBSERVERS} needed)",
        )
    if all(answer in locals_ for answer in answers):
        count = len(answers)
        return result(
            NatClass.PUBLIC, count, count, f"{count} observers saw a local address: no NAT"
        )
    # An observer that sees a local address sits on this side of the NAT (the same LAN): it
    # says nothing about the NAT's mapping.
    answers = [answer for answer in answers if answer not in locals_]
    count = len(answers)
    if count < MIN_OBSERVERS:
        return result(
            NatClass.UNKNOWN,
            0,
            count,
            f"only {count} observer beyond the NAT answered (at least {MIN_OBSERVERS} needed)",
        )
    (top, support), *_ = Counter(answers).most_common(1)
    if support >= _consistent_needed(count):
        return result(
            NatClass.ENDPOINT_INDEPENDENT,
            support,
            count,
            f"{support} of {count} observers saw one mapping {top[0]}:{top[1]}",
        )
    public_ips = {host for host, _ in answers}
    distinct = len(set(answers))
    if support == 1 or len(public_ips) > 1:
        why = "the public IP varies" if len(public_ips) > 1 else "every port differs"
        return result(
            NatClass.ENDPOINT_DEPENDENT,
            distinct,
            count,
            f"{count} observers saw {distinct} mappings: {why}",
        )
    return result(
        NatClass.UNKNOWN,
        support,
        count,
        f"inconsistent: {support} of {count} observers agree on {top[0]}:{top[1]}",
    )


# -- one round of asking --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendWhoami:
    """Send ``packet`` (a WHOAMI request) from the one socket to ``observer``."""

    observer: Endpoint
    packet: bytes


@dataclass(frozen=True, slots=True)
class Classified:
    classification: Classification


@dataclass
class _Asked:
    observer: Endpoint
    txid: bytes
    packet: bytes
    reflexive: Endpoint | None = None


@dataclass
class ClassificationRound:
    """One round of WHOAMI requests to ``observers``, then a classification.

    Drive it like every sans-IO core: after :meth:`start` and each input, drain
    :meth:`commands` and :meth:`events` and re-read :meth:`next_deadline`.
    """

    observers: Sequence[Endpoint]
    local: Sequence[Endpoint]
    tcp_works: bool | None = None
    timeout: float = 3.0
    rng: random.Random = field(default_factory=random.Random, repr=False)
    retransmit: RetrySchedule | None = None
    result: Classification | None = field(default=None, init=False)
    _asked: dict[bytes, _Asked] = field(default_factory=dict, init=False, repr=False)
    _deadline: float | None = field(default=None, init=False, repr=False)
    _ends_at: float = field(default=0.0, init=False, repr=False)
    _commands: list[SendWhoami] = field(default_factory=list, init=False, repr=False)
    _events: list[Classified] = field(default_factory=list, init=False, repr=False)

    def start(self, now: float) -> None:
        if self._asked or self.result is not None:
            raise RuntimeError("a classification round starts once")
        if self.retransmit is None:
            self.retransmit = RetrySchedule(0.25, 1.0, jitter=0.1, rng=self.rng)
        unique = list(dict.fromkeys(self.observers))[:MAX_OBSERVERS]
        for observer in unique:
            txid = self.rng.randbytes(TXID_SIZE)
            packet = encode_control_packet(WhoamiRequest(txid))
            self._asked[txid] = _Asked(observer, txid, packet)
        self._ends_at = now + self.timeout
        if not self._asked:
            self._finish(now)
            return
        self._send_pending(now)

    def _send_pending(self, now: float) -> None:
        for asked in self._asked.values():
            if asked.reflexive is None:
                self._commands.append(SendWhoami(asked.observer, asked.packet))
        assert self.retransmit is not None
        delay = self.retransmit.next_delay() or self.timeout
        self._deadline = min(now + delay, self._ends_at)

    def on_response(self, source: Endpoint, response: WhoamiResponse, now: float) -> None:
        """A WHOAMI response arrived on the socket from ``source``; unmatched ones are ignored.
        One that names an alternate port adds that port of the same IP to the round."""
        asked = self._asked.get(response.txid)
        if self.result is not None or asked is None or asked.observer != source:
            return
        if asked.reflexive is None:
            asked.reflexive = (response.host, response.port)
        alternate = (source[0], response.alternate_port)
        if (
            response.alternate_port
            and alternate != source
            and all(a.observer != alternate for a in self._asked.values())
            and len(self._asked) < MAX_OBSERVERS
        ):
            txid = self.rng.randbytes(TXID_SIZE)
            packet = encode_control_packet(WhoamiRequest(txid))
            self._asked[txid] = _Asked(alternate, txid, packet)
            self._commands.append(SendWhoami(alternate, packet))
        if all(a.reflexive is not None for a in self._asked.values()):
            self._finish(now)

    def on_timer(self, now: float) -> None:
        if self._deadline is None or now < self._deadline:
            return
        if now >= self._ends_at:
            self._finish(now)
        else:
            self._send_pending(now)

    def next_deadline(self) -> float | None:
        return self._deadline

    def _finish(self, now: float) -> None:
        self._deadline = None
        observations = [Observation(a.observer, a.reflexive) for a in self._asked.values()]
        self.result = classify(observations, self.local, tcp_works=self.tcp_works, at=now)
        self._events.append(Classified(self.result))

    def commands(self) -> list[SendWhoami]:
        out, self._commands = self._commands, []
        return out

    def events(self) -> list[Classified]:
        out, self._events = self._events, []
        return out


# -- when to ask again ----------------------------------------------------------------


@dataclass
class RecheckPolicy:
    """When the next classification round is due (:meth:`next_deadline`)."""

    period: float = 600.0
    min_spacing: float = 30.0
    rng: random.Random = field(default_factory=random.Random, repr=False)
    unknown_retry: RetrySchedule | None = None
    _due: float | None = field(default=0.0, init=False)  # never classified: due at once
    _last_round: float = field(default=-math.inf, init=False)
    _periodic: RetrySchedule = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.unknown_retry is None:
            self.unknown_retry = RetrySchedule(5.0, 300.0, jitter=0.2, rng=self.rng)
        # Every period, spread by 10 % so that nodes started together do not ask together.
        self._periodic = RetrySchedule(self.period, self.period, jitter=0.1, rng=self.rng)

    def next_deadline(self) -> float | None:
        return self._due

    def due(self, now: float) -> bool:
        return self._due is not None and now >= self._due

    def on_round_started(self, now: float) -> None:
        self._last_round = now
        self._due = None

    def on_classified(self, classification: Classification, now: float) -> None:
        assert self.unknown_retry is not None
        if classification.nat_class is NatClass.UNKNOWN:
            self._due = now + (self.unknown_retry.next_delay() or self.period)
        else:
            self.unknown_retry.reset()
            self._due = now + (self._periodic.next_delay() or self.period)

    def on_network_change(self, now: float) -> None:
        """Local addresses or the default route changed: every mapping may be new."""
        self._due = now

    def on_contradiction(self, now: float) -> None:
        """A peer saw this socket at an address the classification does not predict."""
        soonest = self._last_round + self.min_spacing
        candidate = max(now, soonest)
        if self._due is None or candidate < self._due:
            self._due = candidate
