"""The punch scheduler: one hole-punching attempt between this node and a peer, sans-IO.

Theory of operation
-------------------
A punch is signalled end to end over a secure channel (usually through the peer's relay)
with the messages of :mod:`meshkey.wire.punch`, and carried out with PUNCH_PROBE / PUNCH_ACK
packets (:mod:`meshkey.wire.udp`) on the node's one UDP socket, plus the birthday sockets::

    initiator                                   responder
    SIGNALLING  -- CONNECT (candidates) ------>  decide (or refuse: ABORT)
                <-- CONNECT reply (start_in) --  WAITING start_in (RTT/2), then PROBING
    decide, RTT measured;
    WAITING start_in - RTT/2, then PROBING
                <====== probes / ACKs ========>
    first valid ACK: WON (RESULT ------------->) first valid ACK: WON
    the lower NodeId emits DialHop over the winning pair; both linger, still answering
    probes, for ``linger`` seconds; then CLOSED.  Any side may end it with ABORT: FAILED.

States: SIGNALLING → WAITING (when synchronising) → PROBING → WON → CLOSED, or FAILED from
any of them. The state and the reason are set before the event goes out.

Both sides run :func:`~meshkey.nat.strategy.decide` on the two CONNECTs and get the same
plan. With ``synchronise`` both start probing at the same moment, in one of two ways:

* *timed start* (the default): the initiator offers the ``timed-start`` capability, and a
  responder that knows the round trip of the signalling path (the glue passes its estimate,
  e.g. the secure channel's handshake or the relay path's pings) answers with a reply that
  says ``start_in`` = RTT/2 and starts that long after sending it, when the reply arrives.
  The initiator measures the CONNECT round trip itself and starts on the reply plus
  ``start_in`` - its own RTT/2 (at once when the estimates agree): the responder's estimate
  only has to be close, the initiator corrects it. Signalling costs one round trip.
* *SYNC* (libp2p DCUtR; the fallback when the responder has no estimate, or the initiator
  does not offer the capability): the initiator measures the CONNECT round trip and starts
  RTT/2 after sending SYNC, when the responder receives it. One and a half round trips.

A responder's estimate that is too large only delays both sides (the initiator waits as
long); one too small by 2e starts the responder e early, which the openers absorb up to
``opener_lead`` plus the direct path's one-way time. At the start each side sends low-TTL
*openers* (a probe with TTL ``low_ttl``) toward the peer's public addresses: they open its
own NAT's mapping but die before the peer's NAT, so the first real probe of the peer,
whenever it comes, matches a mapping instead of creating an unreplied inbound conntrack
entry that would make our NAT move our flow to another port (NATLAB.md, "the conntrack
clash"). Probe rounds follow ``opener_lead`` later, on the config's schedule, one probe per
(socket, peer candidate). When either side is public there is no synchronisation and no
opener: a public side filters nothing and answers whatever address a probe came from, so a
clash on the other side does no harm, and each side starts as soon as it knows the other's
candidates (saving the synchronisation and the lead).

Probes and ACKs carry the punch id, the sender's role, a counter and a MAC keyed by a secret
derived from both sides' key shares (:mod:`meshkey.nat.token`): a probe that fails the MAC,
claims our own role, or repeats a counter is dropped without an answer. A valid probe is
answered with one ACK (smaller than the probe: no amplification) and makes its (socket,
source) pair *hot*: we probe the source back at once and every ``triggered_interval`` (ICE's
triggered check), which is how a public side finds an endpoint-dependent peer's port and how
a birthday socket answers the sprayer. A valid ACK counts only if it names a counter we sent
*from that socket to that source address*; the first one wins.

Birthday (exactly one side endpoint-dependent; one at a time per node, see
:mod:`meshkey.nat.birthday`): the endpoint-dependent side (*opener*) asks the glue for
``birthday_sockets`` extra sockets (:class:`OpenBirthdaySockets`) and sends low-TTL openers
from each toward the peer's public address — never full probes, which would leave unreplied
entries in the peer's NAT and make it move the sprayer's flow on exactly the port that
matched; the other side (*sprayer*) probes distinct random ports of the opener's public IP,
one every ``spray_interval`` (never more than :data:`MAX_SPRAY_BURST` back to back, however
late the timer fires), at most ``birthday_max_probes``. A probe that lands on an opened
mapping reaches a birthday socket, which answers and probes back (hot). Every extra socket
but the winner is closed (:class:`CloseBirthdaySockets`) as soon as the punch ends, won or
lost.

Limits: at most :data:`MAX_TARGETS` peer candidates are probed (8 local + 8 reflexive, as the
wire allows), :data:`MAX_HOT` hot pairs are tracked, and at most :data:`MAX_ANSWERED` probe
counters are remembered, so a peer cannot make a session grow; the counters we sent are
bounded by the schedule and the spray limit.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from meshkey.identity.node_id import NodeId
from meshkey.nat.birthday import BirthdayGate, spray_targets
from meshkey.nat.strategy import (
    MESHKEY,
    BirthdayRole,
    Plan,
    PunchConfig,
    Refusal,
    Strategy,
    decide,
)
from meshkey.nat.token import PunchKey
from meshkey.wire.net import Endpoint, NatClass
from meshkey.wire.punch import (
    KEY_SHARE_SIZE,
    MAX_START_IN,
    PUNCH_ID_SIZE,
    Abort,
    AbortReason,
    Capability,
    Connect,
    PunchMessage,
    Result,
    Sync,
    encode_punch_message,
)
from meshkey.wire.udp import (
    MAX_COUNTER,
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

SocketAllocator = Callable[[int], tuple[int, ...]]


# -- inputs the glue describes ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalInfo:
    """This node's side of a punch: what goes into its CONNECT."""

    nat_class: NatClass
    local: tuple[Endpoint, ...] = ()
    reflexive: tuple[Endpoint, ...] = ()
    tcp: tuple[Endpoint, ...] = ()
    capabilities: frozenset[str] = frozenset()


# -- commands (what the glue must do) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendSignal:
    """Seal ``data`` (an encoded punch message) on the secure channel to ``peer``."""

    peer: NodeId
    data: bytes


@dataclass(frozen=True, slots=True)
class SendDatagram:
    """Send ``data`` from socket ``socket`` to ``destination``; ``ttl`` None: the default."""

    socket: int
    destination: Endpoint
    data: bytes
    ttl: int | None = None


@dataclass(frozen=True, slots=True)
class OpenBirthdaySockets:
    """Open one UDP socket per id (any free port, same family as the main socket)."""

    punch_id: bytes
    sockets: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CloseBirthdaySockets:
    punch_id: bytes
    sockets: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class DialHop:
    """Dial a hop to ``peer`` (pinned to its NodeId) at ``remote``, from socket ``socket``."""

    peer: NodeId
    socket: int
    remote: Endpoint
    transport: str  # "udp" (QUIC on that socket) or "tcp"


PunchCommand = SendSignal | SendDatagram | OpenBirthdaySockets | CloseBirthdaySockets | DialHop


# -- events --------------------------------------------------------------------------------


@dataclass(slots=True)
class PunchStats:
    probes_sent: int = 0
    openers_sent: int = 0
    sprayed: int = 0  # birthday random-port probes (also counted in probes_sent)
    acks_sent: int = 0
    ignored: int = 0  # probes and ACKs dropped: bad MAC, wrong role, replay, unknown counter

    def copy(self) -> PunchStats:
        return PunchStats(
            self.probes_sent, self.openers_sent, self.sprayed, self.acks_sent, self.ignored
        )


@dataclass(frozen=True, slots=True)
class PunchStarted:
    peer: NodeId
    punch_id: bytes
    strategy: Strategy
    at: float


@dataclass(frozen=True, slots=True)
class PunchSucceeded:
    peer: NodeId
    punch_id: bytes
    strategy: Strategy
    socket: int
    remote: Endpoint | None  # None: a TCP dial this side only waits for
    dial: bool  # this side emitted the DialHop
    transport: str
    rtt: float | None  # of the winning probe
    elapsed: float  # since the punch was asked for
    stats: PunchStats
    #: Where the peer saw this side's winning probe come from (its ACK says, or its RESULT):
    #: for the main socket of an endpoint-independent NAT, the classified public address.
    #: Anything else is a contradiction worth a re-classification (``RecheckPolicy``).
    seen_as: Endpoint | None = None


@dataclass(frozen=True, slots=True)
class PunchFailed:
    peer: NodeId
    punch_id: bytes
    reason: AbortReason
    detail: str
    retryable: bool
    retry_after: float
    by_peer: bool
    elapsed: float
    stats: PunchStats


PunchEvent = PunchStarted | PunchSucceeded | PunchFailed


class PunchState(enum.Enum):
    SIGNALLING = "signalling"
    WAITING = "waiting"
    PROBING = "probing"
    WON = "won"
    FAILED = "failed"
    CLOSED = "closed"


_LIVE = frozenset({PunchState.SIGNALLING, PunchState.WAITING, PunchState.PROBING})
_RETRYABLE = frozenset(
    {
        AbortReason.TIMEOUT,
        AbortReason.SIGNALLING_TIMEOUT,
        AbortReason.BIRTHDAY_BUSY,
        AbortReason.NO_CANDIDATES,
        AbortReason.CANCELLED,
        AbortReason.SUPERSEDED,
        AbortReason.PROTOCOL_ERROR,
    }
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


class PunchSession:
    """One punch with one peer: an initiator (then :meth:`start`) or a responder to a CONNECT
    (then :meth:`accept`).

    After each call, drain :meth:`commands` and :meth:`events` and re-read
    :meth:`next_deadline`; call :meth:`on_timer` at that time (or later).
    """

    def __init__(
        self,
        *,
        role: PunchRole,
        local_id: NodeId,
        peer: NodeId,
        me: LocalInfo,
        punch_id: bytes,
        now: float,
        config: PunchConfig = MESHKEY,
        rng: random.Random | None = None,
        gate: BirthdayGate | None = None,
        sockets: SocketAllocator | None = None,
        direct_allowed: bool = True,
        binding: bytes = b"",
    ) -> None:
        if len(punch_id) != PUNCH_ID_SIZE:
            raise ValueError(f"a punch id is {PUNCH_ID_SIZE} bytes")
        self.role = role
        self.local_id = local_id
        self.peer = peer
        self.punch_id = punch_id
        self.config = config
        self.state = PunchState.SIGNALLING
        self.created_at = now
        self.stats = PunchStats()
        self.plan: Plan | None = None
        self.failure: PunchFailed | None = None
        self.success: PunchSucceeded | None = None
        self.signalling_rtt: float | None = None
        self.started_at: float | None = None
        self._rng = rng or random.Random()
        self._gate = gate if gate is not None else BirthdayGate(config.birthday_spacing)
        self._allocate = sockets or _counting_allocator()
        self._direct_allowed = direct_allowed
        self._binding = binding
        self._share = self._rng.randbytes(KEY_SHARE_SIZE)
        capabilities = frozenset(me.capabilities)
        if config.synchronise:
            capabilities |= {Capability.TIMED_START}
        self._mine = Connect(
            punch_id,
            reply=role is PunchRole.RESPONDER,
            key_share=self._share,
            nat_class=me.nat_class,
            local=me.local[:8],
            reflexive=me.reflexive[:8],
            tcp=me.tcp[:8],
            capabilities=capabilities,
        )
        self._theirs: Connect | None = None
        self._key: PunchKey | None = None
        self._commands: list[PunchCommand] = []
        self._events: list[PunchEvent] = []
        # timing
        self._connect_sent_at = now
        self._signal_deadline: float | None = now + config.signalling_timeout
        self._start_at: float | None = None
        self._round_base = 0.0
        self._round_index = 0
        self._give_up_at = math.inf
        self._linger_until: float | None = None
        # probing
        self._targets: list[_Target] = []
        self._sent: dict[int, _Sent] = {}
        self._counter = 0
        self._answered: set[int] = set()
        self._hot: dict[tuple[int, Endpoint], float] = {}  # pair -> last probe sent to it
        self._spray: list[Endpoint] = []
        self._spray_index = 0
        self._spray_next: float | None = None
        self._opener_times: list[float] = []
        self._birthday_sockets: tuple[int, ...] = ()
        self._synchronised = config.synchronise

    # -- the first input ----------------------------------------------------------

    def start(self) -> None:
        """Initiator: sends the CONNECT (drain :meth:`commands`)."""
        if self.role is not PunchRole.INITIATOR or self._theirs is not None:
            raise RuntimeError("only a new initiator session starts")
        self._signal(self._mine)

    def accept(self, connect: Connect, now: float, *, signalling_rtt: float | None = None) -> None:
        """Responder: answers the peer's CONNECT with a CONNECT reply, or an ABORT saying why
        not. ``signalling_rtt``: the glue's estimate of the round trip of the path the
        signals travel (None: unknown), for a timed start; without one the initiator's SYNC
        starts the punch."""
        if self.role is not PunchRole.RESPONDER or self._theirs is not None:
            raise RuntimeError("only a new responder session accepts a CONNECT")
        if connect.punch_id != self.punch_id or connect.reply:
            raise ValueError("not the CONNECT this session was made for")
        if signalling_rtt is not None and math.isfinite(signalling_rtt) and signalling_rtt >= 0:
            self.signalling_rtt = signalling_rtt
        self._on_connect(connect, now)

    # -- output ---------------------------------------------------------------------

    def commands(self) -> list[PunchCommand]:
        out, self._commands = self._commands, []
        return out

    def events(self) -> list[PunchEvent]:
        out, self._events = self._events, []
        return out

    @property
    def live(self) -> bool:
        return self.state in _LIVE

    @property
    def finished(self) -> bool:
        """Nothing left to do: the owner may forget the session."""
        return self.state in (PunchState.FAILED, PunchState.CLOSED)

    @property
    def is_dialer(self) -> bool:
        return self.local_id < self.peer

    def next_deadline(self) -> float | None:
        if self.state is PunchState.SIGNALLING:
            return self._signal_deadline
        if self.state is PunchState.WAITING:
            return self._start_at
        if self.state is PunchState.WON:
            return self._linger_until
        if self.state is not PunchState.PROBING:
            return None
        candidates = [self._give_up_at]
        if self._round_index < len(self.config.schedule):
            candidates.append(self._round_base + self.config.schedule[self._round_index])
        if self._spray_next is not None:
            candidates.append(self._spray_next)
        if self._opener_times:
            candidates.append(self._opener_times[0])
        if self._hot:
            candidates.append(min(self._hot.values()) + self.config.triggered_interval)
        return min(candidates)

    # -- inputs ---------------------------------------------------------------------

    def on_signal(self, message: PunchMessage, now: float) -> None:
        """A punch message from the peer (already decoded, for this punch id)."""
        if message.punch_id != self.punch_id or self.finished:
            return
        match message:
            case Abort(reason=reason, detail=detail, retry_after=retry_after):
                if self.state is PunchState.WON:
                    return  # we already have our pair; the peer just could not finish
                retryable = reason in _RETRYABLE
                self._fail(
                    reason,
                    f"the peer: {detail or reason.value}",
                    now,
                    retryable,
                    retry_after=retry_after,
                    tell_peer=False,
                    by_peer=True,
                )
            case Connect(reply=True) if (
                self.role is PunchRole.INITIATOR and self.state is PunchState.SIGNALLING
            ):
                self._on_connect(message, now)
            case Sync() if (
                self.role is PunchRole.RESPONDER
                and self.state is PunchState.SIGNALLING
                and self._key is not None
            ):
                self._start_probing(now)
            case Result(remote=remote):
                self._on_peer_result(remote, now)
            case _:
                pass  # a duplicate or out-of-turn message: the channel is reliable, ignore it

    def on_probe(self, source: Endpoint, probe: PunchProbe, now: float, *, socket: int = 0) -> None:
        """A PUNCH_PROBE for this punch arrived on ``socket`` from ``source``."""
        key = self._key
        if (
            key is None
            or self.finished
            or probe.role is not self.role.other
            or not key.verify(probe)
            or probe.counter in self._answered
            or len(self._answered) >= MAX_ANSWERED
            or (socket != MAIN_SOCKET and socket not in self._birthday_sockets)
        ):
            self.stats.ignored += 1
            return
        self._answered.add(probe.counter)
        ack = key.ack(self.role, probe.counter, source)
        self._commands.append(SendDatagram(socket, source, encode_control_packet(ack)))
        self.stats.acks_sent += 1
        if self.live:  # the key exists, so the plan does: probe back (a triggered check)
            pair = (socket, source)
            if pair not in self._hot and len(self._hot) < MAX_HOT:
                self._hot[pair] = -math.inf
            if pair in self._hot and self._hot[pair] + self.config.triggered_interval <= now:
                self._probe(socket, source, now)
                self._hot[pair] = now

    def on_ack(self, source: Endpoint, ack: PunchAck, now: float, *, socket: int = 0) -> None:
        """A PUNCH_ACK for this punch arrived on ``socket`` from ``source``."""
        key = self._key
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
        if self.live:
            self._win(socket, source, now - sent.at, now, seen_as=ack.observed)

    def on_socket_error(self, socket: int, now: float) -> None:
        """A birthday socket could not be opened or broke: stop using it."""
        if socket in self._birthday_sockets:
            self._birthday_sockets = tuple(s for s in self._birthday_sockets if s != socket)
            self._targets = [t for t in self._targets if t.socket != socket]
            self._hot = {pair: at for pair, at in self._hot.items() if pair[0] != socket}

    def cancel(self, reason: AbortReason, now: float, detail: str = "") -> None:
        """Ends the punch from this side (the peer is told); no-op once it is over."""
        if self.live:
            self._fail(reason, detail or reason.value, now, reason in _RETRYABLE)

    def on_timer(self, now: float) -> None:
        if self.state is PunchState.SIGNALLING:
            if self._signal_deadline is not None and now >= self._signal_deadline:
                what = "reply" if self.role is PunchRole.INITIATOR else "SYNC"
                self._fail(AbortReason.SIGNALLING_TIMEOUT, f"no {what} from the peer", now, True)
            return
        if self.state is PunchState.WAITING:
            if self._start_at is not None and now >= self._start_at:
                self._start_probing(now)
            return
        if self.state is PunchState.WON:
            if self._linger_until is not None and now >= self._linger_until:
                self.state = PunchState.CLOSED
                self._linger_until = None
            return
        if self.state is PunchState.PROBING:
            self._probe_due(now)
            if self.state is PunchState.PROBING and now >= self._give_up_at:
                self._fail(AbortReason.TIMEOUT, "no probe was answered", now, True)

    # -- signalling -----------------------------------------------------------------

    def _signal(self, message: PunchMessage) -> None:
        self._commands.append(SendSignal(self.peer, encode_punch_message(message)))

    def _on_connect(self, theirs: Connect, now: float) -> None:
        self._theirs = theirs
        if self.role is PunchRole.INITIATOR:
            self.signalling_rtt = now - self._connect_sent_at
        verdict = decide(self._mine, theirs, self.config, direct_allowed=self._direct_allowed)
        if isinstance(verdict, Refusal):
            self._fail(verdict.reason, verdict.detail, now, verdict.retryable)
            return
        if verdict.strategy is Strategy.BIRTHDAY:
            wait = self._gate.try_acquire(self.punch_id, now)
            if wait is not None:
                self._fail(
                    AbortReason.BIRTHDAY_BUSY,
                    "another birthday punch is running or ended recently",
                    now,
                    True,
                    retry_after=wait,
                )
                return
        self.plan = verdict
        initiator_share, responder_share = (
            (self._share, theirs.key_share)
            if self.role is PunchRole.INITIATOR
            else (theirs.key_share, self._share)
        )
        self._key = PunchKey.derive(self.punch_id, initiator_share, responder_share, self._binding)
        # Synchronising guards against the conntrack clash of two filtering NATs; a public
        # side filters nothing (it answers whatever address a probe came from), so against one
        # the RTT/2 wait would only cost time.
        self._synchronised = self.config.synchronise and self._synchronised_kind()
        if self.role is PunchRole.RESPONDER:
            if not self._synchronised:
                self._signal(self._mine)
                self._start_probing(now)
                return
            start_in = self._timed_start(theirs)
            if start_in is None:  # wait for the initiator's SYNC
                self._signal(self._mine)
                self._signal_deadline = now + self.config.signalling_timeout
                return
            self._signal(dataclasses.replace(self._mine, start_in=start_in))
            self._wait_until(now + start_in, now)
            return
        if not self._synchronised:
            self._start_probing(now)
            return
        one_way = (self.signalling_rtt or 0.0) / 2
        if theirs.start_in is not None:
            # The responder starts start_in after sending its reply, which took one_way to
            # get here: start then too (at once when its estimate was low: it is already on).
            self._wait_until(now + max(0.0, theirs.start_in - one_way), now)
        else:
            self._signal(Sync(self.punch_id))
            self._wait_until(now + one_way, now)

    def _timed_start(self, theirs: Connect) -> float | None:
        """Responder: the ``start_in`` of its reply, or None for the SYNC exchange (the
        initiator cannot do a timed start, or the signalling RTT is unknown)."""
        rtt = self.signalling_rtt
        if Capability.TIMED_START not in theirs.capabilities or rtt is None:
            return None
        start_in = rtt / 2
        return round(start_in, 6) if start_in <= MAX_START_IN else None

    def _wait_until(self, start_at: float, now: float) -> None:
        if start_at <= now:
            self._start_probing(now)
            return
        self.state = PunchState.WAITING
        self._signal_deadline = None
        self._start_at = start_at

    def _synchronised_kind(self) -> bool:
        """Both sides filter (no public side): the pair that needs sync and openers."""
        assert self._theirs is not None
        return NatClass.PUBLIC not in (self._mine.nat_class, self._theirs.nat_class)

    def _on_peer_result(self, seen_as: Endpoint, now: float) -> None:
        """The peer found a pair. If a probe of it reached us, that pair works both ways."""
        if not self.live or self._key is None or not self._hot:
            return
        socket, source = max(self._hot.items(), key=lambda item: item[1])[0]
        self._win(socket, source, None, now, seen_as=seen_as)

    # -- probing --------------------------------------------------------------------

    def _start_probing(self, now: float) -> None:
        assert self.plan is not None
        assert self._theirs is not None
        self.state = PunchState.PROBING
        self.started_at = now
        self._signal_deadline = None
        self._events.append(PunchStarted(self.peer, self.punch_id, self.plan.strategy, now))
        theirs = self._theirs
        if self.plan.strategy is Strategy.TCP_DIAL:
            self._win_tcp(now)
            return
        if self.plan.strategy is Strategy.BIRTHDAY:
            self._start_birthday(now)
            return
        remote = list(dict.fromkeys(theirs.local + theirs.reflexive))[:MAX_TARGETS]
        self._targets = [_Target(MAIN_SOCKET, address) for address in remote]
        self._round_base = now
        # Openers protect our NAT from a clash with the peer's early probes; with a public side
        # on either end a clash does no harm (see _on_connect), so they would only cost time.
        if self.config.low_ttl is not None and self._synchronised_kind():
            for address in theirs.reflexive:
                self._probe(MAIN_SOCKET, address, now, ttl=self.config.low_ttl)
            if theirs.reflexive:
                self._round_base = now + self.config.opener_lead
        self._give_up_at = self._round_base + self.config.give_up
        self._probe_due(now)

    def _start_birthday(self, now: float) -> None:
        assert self.plan is not None
        assert self._theirs is not None
        theirs = self._theirs
        self._round_base = now
        self._round_index = len(self.config.schedule)  # no scheduled rounds: openers or spray
        self._give_up_at = now + self.config.birthday_give_up
        if self.plan.birthday_role is BirthdayRole.OPENER:
            self._birthday_sockets = self._allocate(self.config.birthday_sockets)
            self._commands.append(OpenBirthdaySockets(self.punch_id, self._birthday_sockets))
            self._targets = [
                _Target(socket, address, opener_only=True)
                for socket in self._birthday_sockets
                for address in theirs.reflexive[:1]
            ]
            self._opener_times = [now + offset for offset in self.config.birthday_openers]
        else:
            host = theirs.reflexive[0][0]
            self._spray = spray_targets(self._rng, host, self.config.birthday_max_probes)
            self._spray_next = now
        self._probe_due(now)

    def _probe_due(self, now: float) -> None:
        schedule = self.config.schedule
        while (
            self.state is PunchState.PROBING
            and self._round_index < len(schedule)
            and self._round_base + schedule[self._round_index] <= now
        ):
            self._round_index += 1
            for target in self._targets:
                if not target.opener_only:
                    self._probe(target.socket, target.destination, now)
        while (
            self.state is PunchState.PROBING and self._opener_times and self._opener_times[0] <= now
        ):
            self._opener_times.pop(0)
            ttl = self.config.birthday_opener_ttl
            for target in self._targets:
                if target.opener_only:
                    self._probe(target.socket, target.destination, now, ttl=ttl)
        burst = 0
        while (
            self.state is PunchState.PROBING
            and self._spray_next is not None
            and self._spray_next <= now
        ):
            if self._spray_index >= len(self._spray):
                self._spray_next = None
                break
            if burst == MAX_SPRAY_BURST:  # a late timer must not turn into a flood
                self._spray_next = now + self.config.spray_interval
                break
            self._probe(MAIN_SOCKET, self._spray[self._spray_index], now)
            self.stats.sprayed += 1
            self._spray_index += 1
            burst += 1
            self._spray_next += self.config.spray_interval
        for pair, last in list(self._hot.items()):
            if self.state is PunchState.PROBING and last + self.config.triggered_interval <= now:
                self._probe(pair[0], pair[1], now)
                self._hot[pair] = now

    def _probe(
        self, socket: int, destination: Endpoint, now: float, ttl: int | None = None
    ) -> None:
        assert self._key is not None
        if self._counter > MAX_COUNTER:
            return
        counter = self._counter
        self._counter += 1
        self._sent[counter] = _Sent(socket, destination, now)
        packet = encode_control_packet(self._key.probe(self.role, counter))
        self._commands.append(SendDatagram(socket, destination, packet, ttl))
        if ttl is None:
            self.stats.probes_sent += 1
        else:
            self.stats.openers_sent += 1

    # -- endings --------------------------------------------------------------------

    def _win(
        self,
        socket: int,
        remote: Endpoint,
        rtt: float | None,
        now: float,
        *,
        seen_as: Endpoint | None = None,
    ) -> None:
        assert self.plan is not None
        self.state = PunchState.WON
        self._linger_until = now + self.config.linger
        self._signal(Result(self.punch_id, remote))
        dial = self.is_dialer
        if dial:
            self._commands.append(DialHop(self.peer, socket, remote, "udp"))
        self._close_birthday(keep=socket, now=now)
        self.success = PunchSucceeded(
            self.peer,
            self.punch_id,
            self.plan.strategy,
            socket,
            remote,
            dial,
            "udp",
            rtt,
            now - self.created_at,
            self.stats.copy(),
            seen_as,
        )
        self._events.append(self.success)

    def _win_tcp(self, now: float) -> None:
        assert self.plan is not None
        assert self._theirs is not None
        self.state = PunchState.WON
        self._linger_until = now
        remote = self._theirs.tcp[0] if self.plan.tcp_dialer else None
        if remote is not None:
            self._commands.append(DialHop(self.peer, MAIN_SOCKET, remote, "tcp"))
        self.success = PunchSucceeded(
            self.peer,
            self.punch_id,
            Strategy.TCP_DIAL,
            MAIN_SOCKET,
            remote,
            remote is not None,
            "tcp",
            None,
            now - self.created_at,
            self.stats.copy(),
        )
        self._events.append(self.success)

    def _fail(
        self,
        reason: AbortReason,
        detail: str,
        now: float,
        retryable: bool,
        *,
        retry_after: float = 0.0,
        tell_peer: bool = True,
        by_peer: bool = False,
    ) -> None:
        self.state = PunchState.FAILED
        if tell_peer:
            self._signal(Abort(self.punch_id, reason, detail, retry_after))
        self._close_birthday(keep=None, now=now)
        self.failure = PunchFailed(
            self.peer,
            self.punch_id,
            reason,
            detail,
            retryable,
            retry_after,
            by_peer,
            now - self.created_at,
            self.stats.copy(),
        )
        self._events.append(self.failure)

    def _close_birthday(self, keep: int | None, now: float) -> None:
        if self.plan is not None and self.plan.strategy is Strategy.BIRTHDAY:
            self._gate.release(self.punch_id, now)
        closing = tuple(s for s in self._birthday_sockets if s != keep)
        if closing:
            self._commands.append(CloseBirthdaySockets(self.punch_id, closing))
        self._birthday_sockets = tuple(s for s in self._birthday_sockets if s == keep)
        self._targets = []
        self._hot.clear()
        self._spray_next = None
        self._opener_times = []


def _counting_allocator() -> SocketAllocator:
    next_id = MAIN_SOCKET + 1

    def allocate(count: int) -> tuple[int, ...]:
        nonlocal next_id
        ids = tuple(range(next_id, next_id + count))
        next_id += count
        return ids

    return allocate
