"""The probe schedule of one punch: which probes go where and when, sans-IO.

Theory of operation
-------------------
A :class:`~meshkey.nat.punch.PunchSession` settles the strategy, the punch key and the start
with its :class:`~meshkey.nat.signalling.Signalling`, and owns the punch's state and endings;
the probing it hands to a :class:`ProbeSchedule`, which turns a plan into PUNCH_PROBE /
PUNCH_ACK packets (:mod:`meshkey.wire.udp`) on the node's one UDP socket and the birthday
sockets, and reports the first answered probe. It never decides the strategy or the state of
the punch: the session says which plan to run (:meth:`ProbeSchedule.start_direct`,
:meth:`~ProbeSchedule.start_opener`, :meth:`~ProbeSchedule.start_spray`), when its time has
come (:meth:`~ProbeSchedule.on_timer`, only while the punch is probing) and when to stop
(:meth:`~ProbeSchedule.stop`).

*Direct punch* (:meth:`~ProbeSchedule.start_direct`). When both sides filter (no public
side), the start sends low-TTL *openers* (a probe with TTL ``low_ttl``) toward the peer's
public addresses: they open its own NAT's mapping but die before the peer's NAT, so the first
real probe of the peer, whenever it comes, matches a mapping instead of creating an unreplied
inbound conntrack entry that would make our NAT move our flow to another port (NATLAB.md,
"the conntrack clash"). Probe rounds follow ``opener_lead`` later, on the config's schedule,
one probe per (socket, peer candidate). A public side filters nothing, so against one there
are no openers and the rounds start at once. Probing gives up ``give_up`` after the first
round.

*Birthday* (exactly one side endpoint-dependent; :mod:`meshkey.nat.birthday`). The
endpoint-dependent side (*opener*, :meth:`~ProbeSchedule.start_opener`) sends low-TTL openers
from each of its extra sockets toward the peer's public address at ``birthday_openers`` —
never full probes, which would leave unreplied entries in the peer's NAT and make it move the
sprayer's flow on exactly the port that matched; the other side (*sprayer*,
:meth:`~ProbeSchedule.start_spray`) probes distinct random ports of the opener's public IP,
one every ``spray_interval`` (never more than :data:`MAX_SPRAY_BURST` back to back, however
late the timer fires), at most ``birthday_max_probes``. A probe that lands on an opened
mapping reaches a birthday socket, which answers and probes back (hot, below).

*Answers.* Probes and ACKs carry the punch id, the sender's role, a counter and a MAC keyed
by the punch key (:mod:`meshkey.nat.token`): a probe that fails the MAC, claims our own role,
or repeats a counter is dropped without an answer. A valid probe is answered with one ACK
(smaller than the probe: no amplification) and, while the punch is live, makes its (socket,
source) pair *hot*: we probe the source back at once and every ``triggered_interval`` (ICE's
triggered check), which is how a public side finds an endpoint-dependent peer's port and how a
birthday socket answers the sprayer. A valid ACK counts only if it names a counter we sent
*from that socket to that source address*. **The first one wins**: it becomes
:attr:`ProbeSchedule.answer` and the one :class:`ProbeAnswered` event; later ones are checked
and change nothing.

Output: :meth:`~ProbeSchedule.commands` (:class:`SendDatagram`) and
:meth:`~ProbeSchedule.events` (:class:`ProbeAnswered`); drain both after every input and
re-read :meth:`~ProbeSchedule.next_deadline`.

Limits: at most :data:`MAX_TARGETS` peer candidates are probed (8 local + 8 reflexive, as the
wire allows), :data:`MAX_HOT` hot pairs are tracked, and at most :data:`MAX_ANSWERED` probe
counters are remembered, so a peer cannot make a punch grow; the counters we sent are bounded
by the schedule and the spray limit.

What the peer's say-so may cost (:mod:`meshkey.nat.allowance`): every datagram is first
charged to the punch's :class:`~meshkey.nat.allowance.PunchAllowance` (three times what the
peer sent; valid probes and ACKs from it earn), and scheduled probes to addresses the peer
only *claimed* stop after :data:`~meshkey.nat.allowance.CLAIMED_PROBES`. A probe, opener or
ACK the allowance refuses is not sent (counted in ``stats.refused``), with two exceptions that
wait for the credit the peer sends (:meth:`ProbeSchedule.resume`): the birthday sockets'
openers (a backlog) and the spray (it pauses where it stopped).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from meshkey.nat.allowance import CLAIMED_PROBES, PunchAllowance
from meshkey.nat.birthday import spray_targets
from meshkey.nat.strategy import PunchConfig
from meshkey.nat.token import PunchKey
from meshkey.wire.net import Endpoint
from meshkey.wire.udp import (
    MAX_COUNTER,
    PUNCH_PROBE_SIZE,
    PunchAck,
    PunchProbe,
    PunchRole,
    encode_control_packet,
)

MAIN_SOCKET = 0  # the node's one UDP socket; birthday sockets get other ids
MAX_TARGETS = 16
MAX_HOT = 16
MAX_ANSWERED = 8192
MAX_SPRAY_BURST = 4  # random-port probes sent back to back when the timer fired late


@dataclass(frozen=True, slots=True)
class SendDatagram:
    """Send ``data`` from socket ``socket`` to ``destination``; ``ttl`` None: the default."""

    socket: int
    destination: Endpoint
    data: bytes
    ttl: int | None = None


@dataclass(frozen=True, slots=True)
class ProbeAnswered:
    """The first valid ACK: the pair (``socket``, ``remote``) works both ways."""

    socket: int
    remote: Endpoint
    rtt: float  # of the probe it answers
    seen_as: Endpoint  # where the peer saw that probe come from


@dataclass(slots=True)
class PunchStats:
    probes_sent: int = 0
    openers_sent: int = 0
    sprayed: int = 0  # birthday random-port probes (also counted in probes_sent)
    acks_sent: int = 0
    ignored: int = 0  # probes and ACKs dropped: bad MAC, wrong role, replay, unknown counter
    refused: int = 0  # datagrams not sent: beyond what the peer's say-so allows

    def copy(self) -> PunchStats:
        return PunchStats(
            self.probes_sent,
            self.openers_sent,
            self.sprayed,
            self.acks_sent,
            self.ignored,
            self.refused,
        )


@dataclass(slots=True)
class _Target:
    socket: int
    destination: Endpoint
    opener_only: bool = False  # birthday sockets: low-TTL openers, never full probes


@dataclass(frozen=True, slots=True)
class _Sent:
    socket: int
    destination: Endpoint
    at: float


class ProbeSchedule:
    """The probes of one punch, for ``role``; keyed (:attr:`key`) once the session derived
    the punch key. Probes and ACKs before that are ignored (counted in :attr:`stats`).
    ``allowance``: what the punch may send (default: unlimited, for tests of the schedule
    alone); ``claimed``: whether an address rests on the peer's word alone."""

    def __init__(
        self,
        role: PunchRole,
        config: PunchConfig,
        rng: random.Random,
        stats: PunchStats | None = None,
        *,
        allowance: PunchAllowance | None = None,
        claimed: Callable[[Endpoint], bool] = lambda address: False,
    ) -> None:
        self.role = role
        self.config = config
        self.stats = stats if stats is not None else PunchStats()
        self.allowance = allowance
        self._claimed = claimed
        #: Sources of valid probes and ACKs: where the peer was seen (at most MAX_HOT).
        self.seen: dict[Endpoint, None] = {}
        self.key: PunchKey | None = None
        self.answer: ProbeAnswered | None = None  # the first valid ACK
        self.sockets: tuple[int, ...] = ()  # the birthday sockets in use, besides the main one
        self.gives_up_at = math.inf  # probing ends, unanswered, then
        self._rng = rng
        self._round_base = 0.0
        self._round_index = 0
        self._targets: list[_Target] = []
        self._sent: dict[int, _Sent] = {}
        self._counter = 0
        self._answered: set[int] = set()
        self._hot: dict[tuple[int, Endpoint], float] = {}  # pair -> last probe sent to it
        self._spray: list[Endpoint] = []
        self._spray_index = 0
        self._spray_next: float | None = None
        self._spray_starved = False  # the spray waits for credit
        self._opener_times: list[float] = []
        self._backlog: list[_Target] = []  # birthday openers that wait for credit
        self._commands: list[SendDatagram] = []
        self._events: list[ProbeAnswered] = []

    # -- plans (each sends what is due at once) ---------------------------------------

    def start_direct(
        self,
        local: tuple[Endpoint, ...],
        reflexive: tuple[Endpoint, ...],
        now: float,
        *,
        openers: bool,
    ) -> None:
        """Probe the peer's ``local`` and ``reflexive`` candidates from the main socket, in
        rounds; ``openers``: both sides filter, so open our NAT toward ``reflexive`` first."""
        remote = list(dict.fromkeys(local + reflexive))[:MAX_TARGETS]
        self._targets = [_Target(MAIN_SOCKET, address) for address in remote]
        self._round_base = now
        if openers and self.config.low_ttl is not None:
            for address in reflexive:
                self._probe(MAIN_SOCKET, address, now, ttl=self.config.low_ttl)
            if reflexive:
                self._round_base = now + self.config.opener_lead
        self.gives_up_at = self._round_base + self.config.give_up
        self.on_timer(now)

    def start_opener(
        self, sockets: tuple[int, ...], reflexive: tuple[Endpoint, ...], now: float
    ) -> None:
        """Birthday, the endpoint-dependent side: openers from each of ``sockets`` (already
        asked of the glue) toward the peer's first public address; no probe rounds."""
        self._birthday(now)
        self.sockets = sockets
        self._targets = [
            _Target(socket, address, opener_only=True)
            for socket in sockets
            for address in reflexive[:1]
        ]
        self._opener_times = [now + offset for offset in self.config.birthday_openers]
        self.on_timer(now)

    def start_spray(self, host: str, now: float) -> None:
        """Birthday, the other side: distinct random ports of ``host``, rate-limited."""
        self._birthday(now)
        self._spray = spray_targets(self._rng, host, self.config.birthday_max_probes)
        self._spray_next = now
        self.on_timer(now)

    def _birthday(self, now: float) -> None:
        self._round_base = now
        self._round_index = len(self.config.schedule)  # no scheduled rounds: openers or spray
        self.gives_up_at = now + self.config.birthday_give_up

    # -- inputs -----------------------------------------------------------------------

    def on_timer(self, now: float) -> None:
        """Sends every probe that is due: rounds, openers, the spray, hot pairs."""
        schedule = self.config.schedule
        while (
            self._round_index < len(schedule)
            and self._round_base + schedule[self._round_index] <= now
        ):
            self._round_index += 1
            for target in self._targets:
                if not target.opener_only and self._may_claim(target.destination):
                    self._probe(target.socket, target.destination, now)
        while self._opener_times and self._opener_times[0] <= now:
            self._opener_times.pop(0)
            self._backlog.extend(t for t in self._targets if t.opener_only)
        self._send_backlog(now)
        burst = 0
        while self._spray_next is not None and self._spray_next <= now:
            if self._spray_index >= len(self._spray):
                self._spray_next = None
                break
            if burst == MAX_SPRAY_BURST:  # a late timer must not turn into a flood
                self._spray_next = now + self.config.spray_interval
                break
            if not self._probe(MAIN_SOCKET, self._spray[self._spray_index], now):
                self._spray_next, self._spray_starved = None, True  # until credit comes
                break
            self.stats.sprayed += 1
            self._spray_index += 1
            burst += 1
            self._spray_next += self.config.spray_interval
        for pair, last in list(self._hot.items()):
            if last + self.config.triggered_interval <= now:
                self._probe(pair[0], pair[1], now)
                self._hot[pair] = now

    def on_probe(
        self, socket: int, source: Endpoint, probe: PunchProbe, now: float, *, probe_back: bool
    ) -> None:
        """A PUNCH_PROBE arrived on ``socket`` from ``source``: answered once if valid;
        ``probe_back`` (the punch is live): the pair turns hot and is probed back."""
        key = self.key
        if (
            key is None
            or probe.role is not self.role.other
            or not key.verify(probe)
            or probe.counter in self._answered
            or len(self._answered) >= MAX_ANSWERED
            or (socket != MAIN_SOCKET and socket not in self.sockets)
        ):
            self.stats.ignored += 1
            return
        self._answered.add(probe.counter)
        self._earn(PUNCH_PROBE_SIZE, source)
        ack = encode_control_packet(key.ack(self.role, probe.counter, source))
        if self._spend(len(ack), now):
            self._commands.append(SendDatagram(socket, source, ack))
            self.stats.acks_sent += 1
        if probe_back:  # a triggered check
            pair = (socket, source)
            if pair not in self._hot and len(self._hot) < MAX_HOT:
                self._hot[pair] = -math.inf
            if pair in self._hot and self._hot[pair] + self.config.triggered_interval <= now:
                self._probe(socket, source, now)
                self._hot[pair] = now
            self.resume(now)

    def on_ack(self, socket: int, source: Endpoint, ack: PunchAck, now: float) -> None:
        """A PUNCH_ACK arrived on ``socket`` from ``source``; the first valid one wins."""
        key = self.key
        sent = self._sent.get(ack.counter)
        if (
            key is None
            or ack.role is not self.role.other
            or sent is None
            or sent.socket != socket
            or sent.destination != source
            or not key.verify(ack)
        ):
            self.stats.ignored += 1
            return
        self._earn(len(encode_control_packet(ack)), source)
        if self.answer is None:
            self.answer = ProbeAnswered(socket, source, now - sent.at, ack.observed)
            self._events.append(self.answer)
        self.resume(now)

    def resume(self, now: float) -> None:
        """Credit came (the peer's CREDIT, probe or ACK): what waited for it goes out."""
        self._send_backlog(now)
        if self._spray_starved and self._spray_index < len(self._spray):
            self._spray_starved = False
            self._spray_next = now
            self.on_timer(now)

    def _send_backlog(self, now: float) -> None:
        ttl = self.config.birthday_opener_ttl
        sent = 0
        for target in self._backlog:
            if target.socket in self.sockets and not self._probe(
                target.socket, target.destination, now, ttl=ttl
            ):
                break
            sent += 1
        del self._backlog[:sent]

    def _may_claim(self, destination: Endpoint) -> bool:
        """Whether one more scheduled probe may go to ``destination``: always when it was
        observed, at most CLAIMED_PROBES per punch when the peer only claimed it."""
        if self.allowance is None or not self._claimed(destination):
            return True
        if self.allowance.claimed_probes >= CLAIMED_PROBES:
            return False
        self.allowance.claimed_probes += 1
        return True

    def _earn(self, size: int, source: Endpoint) -> None:
        if self.allowance is not None:
            self.allowance.earn(size)
        if source not in self.seen and len(self.seen) < MAX_HOT:
            self.seen[source] = None

    def _spend(self, size: int, now: float) -> bool:
        if self.allowance is None or self.allowance.spend(size, now):
            return True
        self.stats.refused += 1
        return False

    def drop_socket(self, socket: int) -> None:
        """A birthday socket could not be opened or broke: stop using it."""
        if socket in self.sockets:
            self.sockets = tuple(s for s in self.sockets if s != socket)
            self._targets = [t for t in self._targets if t.socket != socket]
            self._hot = {pair: at for pair, at in self._hot.items() if pair[0] != socket}

    def stop(self, keep: int | None) -> tuple[int, ...]:
        """No more probes (ACKs still go out); returns the birthday sockets to close: all
        but ``keep``, the winner's, which keeps answering the peer's probes."""
        closing = tuple(s for s in self.sockets if s != keep)
        self.sockets = tuple(s for s in self.sockets if s == keep)
        self._targets = []
        self._hot.clear()
        self._spray_next = None
        self._spray_starved = False
        self._opener_times = []
        self._backlog = []
        return closing

    # -- output -----------------------------------------------------------------------

    def hottest(self) -> tuple[int, Endpoint] | None:
        """The hot pair probed last: the one the peer's RESULT most likely confirms."""
        if not self._hot:
            return None
        return max(self._hot.items(), key=lambda item: item[1])[0]

    def next_deadline(self) -> float:
        candidates = [self.gives_up_at]
        if self._round_index < len(self.config.schedule):
            candidates.append(self._round_base + self.config.schedule[self._round_index])
        if self._spray_next is not None:
            candidates.append(self._spray_next)
        if self._opener_times:
            candidates.append(self._opener_times[0])
        if self._hot:
            candidates.append(min(self._hot.values()) + self.config.triggered_interval)
        return min(candidates)

    def commands(self) -> list[SendDatagram]:
        out, self._commands = self._commands, []
        return out

    def events(self) -> list[ProbeAnswered]:
        out, self._events = self._events, []
        return out

    def _probe(
        self, socket: int, destination: Endpoint, now: float, ttl: int | None = None
    ) -> bool:
        """Sends a probe (an opener with ``ttl``); False when the allowance refused it."""
        assert self.key is not None
        if self._counter > MAX_COUNTER:
            return True  # never reached in practice: the schedules are far shorter
        if not self._spend(PUNCH_PROBE_SIZE, now):
            return False
        counter = self._counter
        self._counter += 1
        self._sent[counter] = _Sent(socket, destination, now)
        packet = encode_control_packet(self.key.probe(self.role, counter))
        self._commands.append(SendDatagram(socket, destination, packet, ttl))
        if ttl is None:
            self.stats.probes_sent += 1
        else:
            self.stats.openers_sent += 1
        return True
