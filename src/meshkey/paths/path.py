"""A path to a peer, holding its own evidence; and the pure choice between paths.

A :class:`Path` is one way to reach a peer: a relay route, a direct address, or an address a
punch found (possibly on a birthday socket). It keeps what is known about it — its state, the
time of its last answer, a smoothed RTT (RFC 6298), bytes each way, the probe tokens still
unanswered — and nothing else decides what it is worth: :func:`choose` is a pure function of
a peer's paths, the path in use and the time.

States: PROBING (not yet shown to round-trip) → VALIDATED (a pong with one of our tokens came
back, or the glue added it already proven, e.g. an authenticated QUIC hop) → FAILED (no
answer in time, closed, or superseded). A FAILED path never comes back: a new one is made.

Anti-amplification: until a path is VALIDATED, this node sends on it at most
``factor`` times what came back from it plus a small ``credit`` (QUIC's rule, RFC 9000
section 8): an address we only heard of (a packet from a new source, NAT rebinding) gets no
credit, so a forged source address cannot make us send much to its victim; an address the
peer told us over the secure channel gets enough credit for a few probes.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from meshkey.timing import RttEstimate
from meshkey.wire.net import Endpoint

MAX_OUTSTANDING = 8  # probe tokens remembered per path; the oldest is forgotten first


class PathKind(enum.Enum):
    RELAY = "relay"
    DIRECT = "direct"  # an address the peer published or told us
    PUNCHED = "punched"  # an address a punch found

    @property
    def is_direct(self) -> bool:
        return self is not PathKind.RELAY


class PathState(enum.Enum):
    PROBING = "probing"
    VALIDATED = "validated"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class PathKey:
    """Names a path: its kind, the far end (an address tuple, or a relay route as text), the
    local socket it leaves from (0: the main one) and the transport."""

    kind: PathKind
    remote: Endpoint | str
    local_socket: int = 0
    transport: str = "udp"

    def describe(self) -> str:
        if isinstance(self.remote, str):
            return f"{self.kind.value} via {self.remote}"
        host, port = self.remote
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        extra = "" if self.transport == "udp" else f" over {self.transport}"
        socket = f" (birthday socket {self.local_socket})" if self.local_socket else ""
        kind = " (punched)" if self.kind is PathKind.PUNCHED else ""
        return f"direct {where}{extra}{kind}{socket}"


@dataclass(slots=True)
class Path:
    key: PathKey
    created_at: float
    state: PathState = PathState.PROBING
    credit: int = 0  # bytes we may send before anything came back
    validated_at: float | None = None
    failed_at: float | None = None
    failure: str = ""
    rtt: RttEstimate = field(default_factory=RttEstimate)
    last_pong: float | None = None
    last_received: float | None = None
    last_sent: float | None = None
    #: When traffic started going unanswered: the first send after the last receive.
    waiting_since: float | None = None
    next_probe_at: float | None = None
    bytes_sent: int = 0
    bytes_received: int = 0
    outstanding: dict[int, float] = field(default_factory=dict)
    rebound_from: PathKey | None = None

    @property
    def usable(self) -> bool:
        return self.state is PathState.VALIDATED

    def send_allowance(self, factor: int) -> float:
        """Bytes this node may still send on the path (anti-amplification)."""
        if self.state is PathState.VALIDATED:
            return math.inf
        if self.state is PathState.FAILED:
            return 0
        return max(0, factor * self.bytes_received + self.credit - self.bytes_sent)

    def record_sent(self, size: int, now: float) -> None:
        self.bytes_sent += size
        self.last_sent = now
        if self.waiting_since is None:
            self.waiting_since = now

    def record_received(self, size: int, now: float, *, answers: bool = True) -> None:
        """Traffic came back; ``answers`` False: it does not prove the path works both ways
        (the path is under suspicion: only a PONG to a PING sent on it clears that)."""
        self.bytes_received += size
        self.last_received = now
        if answers:
            self.waiting_since = None

    def remember_token(self, token: int, now: float) -> None:
        if len(self.outstanding) >= MAX_OUTSTANDING:
            del self.outstanding[next(iter(self.outstanding))]
        self.outstanding[token] = now

    @property
    def srtt(self) -> float | None:
        return self.rtt.srtt

    def rtt_sample(self, rtt: float) -> None:
        self.rtt.add(rtt)

    def fail(self, reason: str, now: float) -> None:
        self.state = PathState.FAILED
        self.failed_at = now
        self.failure = reason
        self.outstanding.clear()
        self.next_probe_at = None
        self.waiting_since = None


class SwitchReason(enum.Enum):
    FIRST = "first path"
    DIRECT = "a direct path was validated"
    LOWER_RTT = "lower RTT"
    DEAD = "the path stopped answering"
    REMOVED = "the path was closed"
    NO_DIRECT = "direct paths turned off"
    REBOUND = "the peer's address changed (NAT rebinding)"


@dataclass(frozen=True, slots=True)
class Choice:
    key: PathKey | None
    reason: SwitchReason | None  # None: keep the current path


def _rank(path: Path) -> tuple[int, float]:
    return (0 if path.key.kind.is_direct else 1, path.srtt if path.srtt is not None else math.inf)


def choose(
    paths: Iterable[Path],
    current: PathKey | None,
    *,
    no_direct: bool,
    rtt_gain: float,
) -> Choice:
    """The path to use, given the one in use: pure, so a test can ask it anything.

    Only VALIDATED paths count (and only relay paths under ``no_direct``). Direct beats relay;
    between two of the same tier the lower smoothed RTT wins, but the path in use is kept
    unless the other is at least ``rtt_gain`` seconds faster (no flapping between two paths
    whose RTTs are within noise of each other) and both RTTs are measured.
    """
    usable = [p for p in paths if p.usable and (not no_direct or not p.key.kind.is_direct)]
    if not usable:
        return Choice(None, SwitchReason.DEAD if current is not None else None)
    best = min(usable, key=_rank)
    active = next((p for p in usable if p.key == current), None)
    if active is None:
        if current is None:
            return Choice(best.key, SwitchReason.FIRST)
        reason = SwitchReason.NO_DIRECT if no_direct and current.kind.is_direct else None
        return Choice(best.key, reason or SwitchReason.DEAD)
    if best.key == active.key:
        return Choice(active.key, None)
    best_tier, best_rtt = _rank(best)
    active_tier, active_rtt = _rank(active)
    if best_tier < active_tier:
        return Choice(best.key, SwitchReason.DIRECT)
    if (
        best_tier == active_tier
        and math.isfinite(active_rtt)
        and math.isfinite(best_rtt)
        and best_rtt + rtt_gain <= active_rtt
    ):
        return Choice(best.key, SwitchReason.LOWER_RTT)
    return Choice(active.key, None)
