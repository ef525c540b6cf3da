"""Whether and how to punch, from both sides' NAT classes; and the probe schedules.

:func:`decide` is a pure function and symmetric: both sides run it on the same two CONNECT
messages (their own and the peer's) and reach the same verdict, so neither has to trust the
other's. The table (NATLAB.md's matrix):

=================  ===========================================================
both sides         verdict
=================  ===========================================================
public / EIM /     PUNCH: both probe every candidate of the other; an endpoint-
unknown, any mix   dependent side against a *public* one also punches (the public
(also with one     side does not filter; it answers the EDM side's probes and
EDM side if the    probes back the address they came from)
other is public)
EIM ↔ EDM          BIRTHDAY: the EDM side opens 256 extra sockets, the EIM side
                   sprays random ports of the EDM side's public IP
unknown ↔ EDM      PUNCH (cheap; birthday costs 2,000 probes and needs to know)
EDM ↔ EDM          refuse: both endpoint-dependent (stay on the relay)
UDP blocked ↔      TCP_DIAL: the blocked side dials the public side's TCP
public (with TCP)  address; no probes
UDP blocked ↔      refuse: UDP blocked
anything else
=================  ===========================================================

A :class:`PunchConfig` holds the timing. :data:`MESHKEY` is the default; :data:`POLYKEY` and
:data:`OCKAM` reproduce the reference systems' schedules (ANCHORS.md) with the same session
code, for the benchmark: they neither classify (they punch whatever the classes), nor
synchronise (each side starts when it hears of the other), nor send low-TTL openers, nor do
birthday.

Why the default schedule: the first probe round goes out at the synchronised start (after the
low-TTL openers have had ``opener_lead`` to leave), then a round every 25 ms for 0.5 s, every
100 ms to 2 s and every 250 ms to 5 s. Between two EIM NATs on a 40 ms-RTT WAN, the first
round's probes cross and are answered within one RTT (~40 ms); a probe that arrived before
the peer's mapping existed is followed 25 ms later — less than the 20 ms one-way delay plus
a probe's flight, so a lost or early round costs at most one extra RTT. Rounds hold one probe
per candidate (at most 16), so the tight phase sends at most 21 x 16 probes of 64 bytes
(about 21 KB); after 0.5 s the path is either open or something other than timing is in the
way (loss, a clash), and sparser probes only keep trying until the 5 s budget ends, when the
attempt is retried later with backoff (:class:`~meshkey.nat.puncher.UpgradeRetry`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from meshkey.wire.net import NatClass
from meshkey.wire.punch import AbortReason, Capability, Connect


def _span(start: float, stop: float, step: float) -> tuple[float, ...]:
    count = round((stop - start) / step)
    return tuple(round(start + i * step, 6) for i in range(count))


DEFAULT_SCHEDULE = _span(0.0, 0.5, 0.025) + _span(0.5, 2.0, 0.1) + _span(2.0, 5.0, 0.25)


@dataclass(frozen=True, slots=True)
class PunchConfig:
    """Timing and features of a punch; one instance per strategy compared in the benchmark."""

    name: str = "meshkey"
    #: Offsets (seconds after the start) of the probe rounds.
    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    #: Probing ends, unanswered, this long after the start.
    give_up: float = 5.0
    #: Both sides start together: by a timed start (the responder's reply says when it
    #: starts, RTT/2 after sending it; the initiator starts then, on the reply) or, when the
    #: responder has no RTT estimate, by DCUtR's SYNC (the initiator waits RTT/2 after SYNC,
    #: the responder starts on SYNC). Without it, the responder starts on CONNECT and the
    #: initiator on the reply.
    synchronise: bool = True
    #: TTL of the openers sent toward the peer's public address before the first probe
    #: (HyperDHT's trick), or None for none.
    low_ttl: int | None = 5
    #: How long after the openers the first probe round goes: the synchronisation error the
    #: openers can absorb (a peer probe reaching our NAT before our own first packet left
    #: would clash with it; NATLAB.md). Together with the direct path's one-way time it is the
    #: start skew a punch survives: 30 ms + 20 ms here covers even a responder that starts on
    #: CONNECT (a timed start from an estimate of 0) 40 ms before the initiator — the
    #: margin a timed start relies on, so it stays at 30 ms (without openers at all the
    #: lab's EIM pairs succeed too, as the low-TTL control showed, but with no margin).
    opener_lead: float = 0.03
    #: Whether :func:`decide` may refuse (both EDM, UDP blocked) and choose birthday.
    respect_classes: bool = True
    birthday: bool = True
    birthday_sockets: int = 256
    birthday_max_probes: int = 2048
    #: One random-port probe per this interval (500 a second: 32 KB/s of 64-byte probes).
    spray_interval: float = 0.002
    #: Openers from every birthday socket at these offsets (two, in case one is lost).
    birthday_openers: tuple[float, ...] = (0.0, 0.5)
    #: TTL of those openers, or None to send them at the full TTL (then they reach the
    #: sprayer's NAT, as any probe would: the benchmark's control for low-TTL openers).
    birthday_opener_ttl: int | None = 5
    birthday_give_up: float = 6.0
    #: Nodes space birthday punches at least this far apart (HyperDHT: 20 s).
    birthday_spacing: float = 20.0
    signalling_timeout: float = 5.0
    #: After winning, keep answering the peer's probes this long so it can finish too.
    linger: float = 3.0
    #: A hot socket (one that received a valid probe) probes its sender this often.
    triggered_interval: float = 0.025

    def __post_init__(self) -> None:
        if not self.schedule or any(
            b < a for a, b in zip(self.schedule, self.schedule[1:], strict=False)
        ):
            raise ValueError("a punch schedule is a non-empty sorted list of offsets")
        if self.give_up <= self.schedule[0] or self.spray_interval <= 0:
            raise ValueError("a punch must give up after its first round")


MESHKEY = PunchConfig()
POLYKEY = PunchConfig(
    name="polykey",
    schedule=(0.0, 1.0, 3.0, 7.0),
    give_up=15.0,
    synchronise=False,
    low_ttl=None,
    respect_classes=False,
    birthday=False,
)
OCKAM = PunchConfig(
    name="ockam",
    schedule=tuple(float(i) for i in range(10)),
    give_up=10.0,
    synchronise=False,
    low_ttl=None,
    respect_classes=False,
    birthday=False,
)
REFERENCE_CONFIGS = (POLYKEY, OCKAM)
#: meshkey without any low-TTL packet (neither the synchronised punch's openers nor the
#: birthday sockets'): the benchmark's control for "do low-TTL openers help?" (issue 13).
MESHKEY_NO_TTL = PunchConfig(name="meshkey-nottl", low_ttl=None, birthday_opener_ttl=None)
#: By name, for the benchmark's ``MESHKEY_PUNCH_STRATEGY`` knob.
STRATEGIES = {config.name: config for config in (MESHKEY, MESHKEY_NO_TTL, *REFERENCE_CONFIGS)}


class Strategy(enum.Enum):
    PUNCH = "punch"
    BIRTHDAY = "birthday"
    TCP_DIAL = "tcp-dial"


class BirthdayRole(enum.Enum):
    NONE = "none"
    OPENER = "opener"  # the endpoint-dependent side: opens the extra sockets
    SPRAYER = "sprayer"  # the other side: probes random ports of the opener's public IP


@dataclass(frozen=True, slots=True)
class Plan:
    strategy: Strategy
    birthday_role: BirthdayRole = BirthdayRole.NONE
    tcp_dialer: bool = False  # TCP_DIAL: this side dials


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: AbortReason
    detail: str
    retryable: bool  # worth trying again later (classes may change) at the normal pace
    retry_after: float = 0.0  # not before this many seconds (a busy birthday gate)


_EDM = NatClass.ENDPOINT_DEPENDENT
_BLOCKED = NatClass.UDP_BLOCKED
_PUBLIC = NatClass.PUBLIC


def decide(
    mine: Connect, theirs: Connect, config: PunchConfig, *, direct_allowed: bool = True
) -> Plan | Refusal:
    """This side's plan for a punch between ``mine`` and ``theirs`` (both CONNECTs)."""
    if not direct_allowed:
        return Refusal(AbortReason.DIRECT_DISABLED, "direct paths are turned off", False)
    if not config.respect_classes:
        return Plan(Strategy.PUNCH)
    a, b = mine.nat_class, theirs.nat_class
    if _BLOCKED in (a, b):
        blocked_is_me = a is _BLOCKED
        public_side = theirs if blocked_is_me else mine
        other_class = b if blocked_is_me else a
        if other_class is _PUBLIC and public_side.tcp:
            dialer = mine if blocked_is_me else theirs
            if Capability.TCP_DIAL in dialer.capabilities:
                return Plan(Strategy.TCP_DIAL, tcp_dialer=blocked_is_me)
        if a is _BLOCKED and b is _BLOCKED:
            who = "both sides"
        else:
            who = "this node" if blocked_is_me else "the peer"
        return Refusal(AbortReason.UDP_BLOCKED, f"UDP is blocked on {who}", False)
    if a is _EDM and b is _EDM:
        return Refusal(
            AbortReason.BOTH_ENDPOINT_DEPENDENT,
            "both sides are behind endpoint-dependent NATs",
            False,
        )
    if _EDM in (a, b) and _PUBLIC not in (a, b) and NatClass.UNKNOWN not in (a, b):
        if not config.birthday or not all(
            Capability.BIRTHDAY in side.capabilities for side in (mine, theirs)
        ):
            return Refusal(
                AbortReason.NO_CAPABILITY,
                "one side is endpoint-dependent and birthday punching is not available",
                False,
            )
        if not (mine.reflexive and theirs.reflexive):
            return Refusal(AbortReason.NO_CANDIDATES, "a side has no public address", True)
        role = BirthdayRole.OPENER if a is _EDM else BirthdayRole.SPRAYER
        return Plan(Strategy.BIRTHDAY, birthday_role=role)
    if not (theirs.local or theirs.reflexive):
        return Refusal(
            AbortReason.NO_CANDIDATES, "the peer named no address this node may probe", True
        )
    return Plan(Strategy.PUNCH)
