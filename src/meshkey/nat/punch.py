"""The punch session: one hole-punching attempt between this node and a peer, sans-IO.

(Over 600 lines on purpose: one machine, whose sub-machines already live in
:mod:`~meshkey.nat.signalling` and :mod:`~meshkey.nat.probes`; a fifth of it is this
theory of operation, and its endings and state table read best next to each other.)

Theory of operation
-------------------
A punch is signalled end to end over a secure channel (usually through the peer's relay)
with the messages of :mod:`meshkey.wire.punch`, and carried out with PUNCH_PROBE / PUNCH_ACK
packets on the node's one UDP socket, plus the birthday sockets. A :class:`PunchSession`
composes the two sub-machines and owns the punch's state and its endings:
:class:`~meshkey.nat.signalling.Signalling` (the CONNECT exchange, the strategy, when to
start) and :class:`~meshkey.nat.probes.ProbeSchedule` (which probes go where and when, the
first answer)::

    initiator                                   responder
    NEW --start--> SIGNALLING
                -- CONNECT (candidates) ------>  NEW --accept--> decide (or refuse: ABORT)
                <-- CONNECT reply (start_in) --  WAITING start_in (RTT/2), then PROBING
    decide, RTT measured;
    WAITING start_in - RTT/2, then PROBING
                <====== probes / ACKs ========>
    first valid ACK: WON (RESULT ------------->) first valid ACK: WON
    the lower NodeId emits DialHop over the winning pair; both linger, still answering
    probes, for ``linger`` seconds; then CLOSED.  Any side may end it with ABORT: FAILED.

(Without a timed start the initiator sends SYNC on the reply and the responder waits for it
in SIGNALLING; without synchronisation both go straight to PROBING.)

States: NEW → SIGNALLING → WAITING (when synchronising) → PROBING → WON → CLOSED, or FAILED
from any live one (SIGNALLING, WAITING, PROBING). The state and the reason are set before the
event goes out. What each state takes, and where each input may lead, is one table,
:data:`~meshkey.nat.punch_state.TRANSITIONS` (h11's ``_state.py`` is the model): every input
is looked up there first and the state it ended in is checked against it. An input the table
does not list changes nothing: :meth:`PunchSession.start` and :meth:`~PunchSession.accept`
raise :class:`~meshkey.nat.punch_state.PunchLocalError`; the peer's messages out of turn are
ignored (the channel is reliable: they are duplicates or a confused peer), and so are probes
and ACKs (counted in ``stats.ignored``), timers and cancels.

The plan picks the schedule: a direct punch, or birthday (exactly one side endpoint-
dependent; one at a time per node, see :mod:`meshkey.nat.birthday`), where the endpoint-
dependent side asks the glue for ``birthday_sockets`` extra sockets
(:class:`OpenBirthdaySockets`) and every extra socket but the winner is closed
(:class:`CloseBirthdaySockets`) as soon as the punch ends, won or lost. The first answered
probe wins; so does a RESULT from the peer when one of its probes reached us (that pair works
both ways). TCP_DIAL (UDP blocked against a public side) wins as it starts: the blocked side
dials.

What a punch may send on its peer's say-so is bounded (DESIGN.md decision 20,
:mod:`meshkey.nat.allowance`): its :attr:`PunchSession.allowance` earns what the peer sends
(punch messages, valid probes and ACKs, CREDIT) and pays for every datagram, at most three
to one; a birthday punch's asking side pays with CREDIT as the plan is settled.

:class:`~meshkey.nat.signalling.LocalCandidates`,
:class:`~meshkey.nat.probes.SendDatagram`, :class:`~meshkey.nat.probes.PunchStats` and
:data:`~meshkey.nat.probes.MAIN_SOCKET` are part of this module's interface too.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from meshkey.identity.node_id import NodeId
from meshkey.nat.allowance import AMPLIFICATION, PeerLimits, PunchAllowance
from meshkey.nat.birthday import BirthdayGate
from meshkey.nat.probes import MAIN_SOCKET, ProbeSchedule, PunchStats, SendDatagram
from meshkey.nat.punch_state import (
    LIVE,
    LOCAL_INPUTS,
    TRANSITIONS,
    PunchInput,
    PunchLocalError,
    PunchState,
)
from meshkey.nat.signalling import LocalCandidates, Signalling
from meshkey.nat.strategy import MESHKEY, BirthdayRole, Plan, PunchConfig, Refusal, Strategy
from meshkey.wire.net import Endpoint
from meshkey.wire.punch import (
    MAX_CREDIT_PAD,
    PUNCH_ID_SIZE,
    Abort,
    AbortReason,
    Connect,
    Credit,
    PunchMessage,
    Result,
    Sync,
    encode_punch_message,
)
from meshkey.wire.udp import PUNCH_PROBE_SIZE, PunchAck, PunchProbe, PunchRole

__all__ = [
    "MAIN_SOCKET",
    "TRANSITIONS",
    "CloseBirthdaySockets",
    "DialHop",
    "LocalCandidates",
    "OpenBirthdaySockets",
    "PunchCommand",
    "PunchEvent",
    "PunchFailed",
    "PunchInput",
    "PunchLocalError",
    "PunchSession",
    "PunchStarted",
    "PunchState",
    "PunchStats",
    "PunchSucceeded",
    "SendDatagram",
    "SendSignal",
    "SocketAllocator",
    "counting_allocator",
]

SocketAllocator = Callable[[int], tuple[int, ...]]


# -- commands (what the glue must do) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendSignal:
    """Seal ``data`` (an encoded punch message) on the secure channel to ``peer``."""

    peer: NodeId
    data: bytes


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
        me: LocalCandidates,
        punch_id: bytes,
        now: float,
        config: PunchConfig = MESHKEY,
        rng: random.Random | None = None,
        gate: BirthdayGate | None = None,
        sockets: SocketAllocator | None = None,
        direct_allowed: bool = True,
        binding: bytes = b"",
        observed: tuple[Endpoint, ...] = (),
        seen: tuple[Endpoint, ...] = (),
        limits: PeerLimits | None = None,
    ) -> None:
        if len(punch_id) != PUNCH_ID_SIZE:
            raise ValueError(f"a punch id is {PUNCH_ID_SIZE} bytes")
        self.role = role
        self.local_id = local_id
        self.peer = peer
        self.punch_id = punch_id
        self.config = config
        self.state = PunchState.NEW
        self.created_at = now
        self.stats = PunchStats()
        self.plan: Plan | None = None
        rng = rng or random.Random()
        self._gate = gate if gate is not None else BirthdayGate(config.birthday_spacing)
        self._allocate = sockets or counting_allocator()
        self._signalling = Signalling(
            role=role,
            punch_id=punch_id,
            me=me,
            now=now,
            config=config,
            rng=rng,
            gate=self._gate,
            direct_allowed=direct_allowed,
            binding=binding,
            observed=observed,
            seen=seen,
        )
        #: What this punch may send on the peer's say-so (:mod:`meshkey.nat.allowance`).
        self.allowance = PunchAllowance(limit=limits, peer=peer)
        self._probes = ProbeSchedule(
            role, config, rng, self.stats, allowance=self.allowance, claimed=self._claimed
        )
        self._commands: list[PunchCommand] = []
        self._events: list[PunchEvent] = []
        self._signal_deadline: float | None = now + config.signalling_timeout
        self._start_at: float | None = None
        self._linger_until: float | None = None

    # -- the first input ----------------------------------------------------------

    def start(self) -> None:
        """Initiator: sends the CONNECT (drain :meth:`commands`). Raises PunchLocalError
        unless this is a NEW initiator."""
        self._apply(PunchInput.START, self._start)

    def _start(self) -> None:
        self.state = PunchState.SIGNALLING
        self._signal(self._signalling.mine)

    def accept(
        self,
        connect: Connect,
        now: float,
        *,
        signalling_rtt: float | None = None,
        size: int | None = None,
    ) -> None:
        """Responder: answers the peer's CONNECT with a CONNECT reply, or an ABORT saying why
        not. ``signalling_rtt``: the glue's estimate of the round trip of the path the
        signals travel (None: unknown), for a timed start; without one the initiator's SYNC
        starts the punch. ``size``: the CONNECT's bytes as they came (default: encoded
        again), what the peer paid. Raises PunchLocalError unless this is a NEW responder,
        and ValueError (the state unchanged) for another punch's CONNECT or a reply."""
        self._check(PunchInput.ACCEPT)
        if connect.punch_id != self.punch_id or connect.reply:
            raise ValueError("not the CONNECT this session was made for")

        def accept() -> None:
            self.allowance.earn(_size_of(connect, size))
            if signalling_rtt is not None and math.isfinite(signalling_rtt) and signalling_rtt >= 0:
                self._signalling.rtt = signalling_rtt
            self.state = PunchState.SIGNALLING
            self._on_connect(connect, now)

        self._apply(PunchInput.ACCEPT, accept)

    # -- output ---------------------------------------------------------------------

    def commands(self) -> list[PunchCommand]:
        out, self._commands = self._commands, []
        return out

    def events(self) -> list[PunchEvent]:
        out, self._events = self._events, []
        return out

    @property
    def live(self) -> bool:
        return self.state in LIVE

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
        if self.state is PunchState.PROBING:
            return self._probes.next_deadline()
        return None

    # -- inputs ---------------------------------------------------------------------

    @property
    def seen(self) -> tuple[Endpoint, ...]:
        """Where valid probes and ACKs of the peer came from: addresses observed for it."""
        return tuple(self._probes.seen)

    def on_signal(self, message: PunchMessage, now: float, *, size: int | None = None) -> None:
        """A punch message from the peer (already decoded, for this punch id); ``size``: its
        bytes as they came (default: encoded again), what the peer paid for this punch."""
        if message.punch_id != self.punch_id:
            return
        if self.live or self.state is PunchState.WON:
            self.allowance.earn(_size_of(message, size))
        match message:
            case Abort(reason=reason, detail=detail, retry_after=retry_after):
                self._apply(
                    PunchInput.ABORT,
                    lambda: self._fail(
                        reason,
                        f"the peer: {detail or reason.value}",
                        now,
                        reason in _RETRYABLE,
                        retry_after=retry_after,
                        tell_peer=False,
                        by_peer=True,
                    ),
                )
            case Connect(reply=True):
                self._apply(PunchInput.REPLY, lambda: self._on_connect(message, now))
            case Connect():
                self._apply(PunchInput.CONNECT, lambda: None)
            case Sync():
                self._apply(PunchInput.SYNC, lambda: self._start_probing(now))
            case Result(remote=remote):
                self._apply(PunchInput.RESULT, lambda: self._on_peer_result(remote, now))
            case Credit():
                self._apply(PunchInput.CREDIT, lambda: self._on_credit(now))

    def on_probe(self, source: Endpoint, probe: PunchProbe, now: float, *, socket: int = 0) -> None:
        """A PUNCH_PROBE for this punch arrived on ``socket`` from ``source``."""

        def answer() -> None:
            self._probes.on_probe(socket, source, probe, now, probe_back=self.live)
            self._pull()

        self._apply(PunchInput.PROBE, answer)

    def on_ack(self, source: Endpoint, ack: PunchAck, now: float, *, socket: int = 0) -> None:
        """A PUNCH_ACK for this punch arrived on ``socket`` from ``source``."""

        def check() -> None:
            self._probes.on_ack(socket, source, ack, now)
            self._pull()
            for answer in self._probes.events():
                if self.live:
                    self._win(answer.socket, answer.remote, answer.rtt, now, seen_as=answer.seen_as)

        self._apply(PunchInput.ACK, check)

    def on_socket_error(self, socket: int, now: float) -> None:
        """A birthday socket could not be opened or broke: stop using it."""
        self._apply(PunchInput.SOCKET_ERROR, lambda: self._probes.drop_socket(socket))

    def cancel(
        self, reason: AbortReason, now: float, detail: str = "", *, tell_peer: bool = True
    ) -> None:
        """Ends the punch from this side (the peer is told unless ``tell_peer`` is False);
        no-op unless it is live. A birthday punch gives the gate back."""
        self._apply(
            PunchInput.CANCEL,
            lambda: self._fail(
                reason, detail or reason.value, now, reason in _RETRYABLE, tell_peer=tell_peer
            ),
        )

    def on_timer(self, now: float) -> None:
        self._apply(PunchInput.TIMER, lambda: self._on_timer(now))

    def _on_timer(self, now: float) -> None:
        if self.state is PunchState.SIGNALLING:
            if self._signal_deadline is not None and now >= self._signal_deadline:
                what = "reply" if self.role is PunchRole.INITIATOR else "SYNC"
                self._fail(AbortReason.SIGNALLING_TIMEOUT, f"no {what} from the peer", now, True)
        elif self.state is PunchState.WAITING:
            if self._start_at is not None and now >= self._start_at:
                self._start_probing(now)
        elif self.state is PunchState.WON:
            if self._linger_until is not None and now >= self._linger_until:
                self.state = PunchState.CLOSED
                self._linger_until = None
        else:
            self._probes.on_timer(now)
            self._pull()
            if now >= self._probes.gives_up_at:
                self._fail(AbortReason.TIMEOUT, "no probe was answered", now, True)

    # -- the table ------------------------------------------------------------------

    def _check(self, what: PunchInput) -> frozenset[PunchState] | None:
        """The states ``what`` may lead to from here, or None: ignored (probes and ACKs
        counted). Raises PunchLocalError for a local call the table does not list."""
        allowed = TRANSITIONS[self.role][self.state].get(what)
        if allowed is None:
            if what in LOCAL_INPUTS:
                raise PunchLocalError(
                    f"a {self.role.value} session cannot {what.value} when {self.state.value}"
                )
            if what in (PunchInput.PROBE, PunchInput.ACK):
                self.stats.ignored += 1
        return allowed

    def _apply(self, what: PunchInput, handler: Callable[[], None]) -> None:
        before = self.state
        allowed = self._check(what)
        if allowed is None:
            return
        handler()
        if self.state not in allowed:  # a bug in this module, never the peer's doing
            raise AssertionError(f"{before} --{what}--> {self.state}: not in TRANSITIONS")

    # -- signalling -----------------------------------------------------------------

    def _signal(self, message: PunchMessage) -> None:
        self._commands.append(SendSignal(self.peer, encode_punch_message(message)))

    def _pull(self) -> None:
        """The probe schedule's packets join the commands in the order they were made."""
        self._commands.extend(self._probes.commands())

    def _on_connect(self, theirs: Connect, now: float) -> None:
        verdict = self._signalling.on_connect(theirs, now)
        if isinstance(verdict, Refusal):
            self._fail(
                verdict.reason,
                verdict.detail,
                now,
                verdict.retryable,
                retry_after=verdict.retry_after,
            )
            return
        self.plan = verdict.plan
        self._probes.key = verdict.key
        if verdict.reply is not None:
            self._signal(verdict.reply)
        if verdict.sync:
            self._signal(Sync(self.punch_id))
        self._pay(verdict.plan)
        if verdict.start_at is None:  # the responder waits for the initiator's SYNC
            self._signal_deadline = now + self.config.signalling_timeout
        elif verdict.start_at <= now:
            self._start_probing(now)
        else:
            self.state = PunchState.WAITING
            self._signal_deadline = None
            self._start_at = verdict.start_at

    def _on_credit(self, now: float) -> None:
        """The peer paid (earned above): what waited for credit goes out."""
        if self.state is PunchState.PROBING:
            self._probes.resume(now)
            self._pull()

    def _pay(self, plan: Plan) -> None:
        """A birthday punch asks the peer for more than three times what a CONNECT is worth:
        pay a third of it in CREDIT padding (the opener pays for the spray, the sprayer for
        the openers of every birthday socket)."""
        if plan.birthday_role is BirthdayRole.OPENER:
            asked = self.config.birthday_max_probes
        elif plan.birthday_role is BirthdayRole.SPRAYER:
            asked = self.config.birthday_sockets * len(self.config.birthday_openers)
        else:
            return
        owed = -(-asked * PUNCH_PROBE_SIZE // AMPLIFICATION)
        while owed > 0:
            padding = min(owed, MAX_CREDIT_PAD)
            self._signal(Credit(self.punch_id, padding))
            owed -= padding

    def _claimed(self, address: Endpoint) -> bool:
        found = self._signalling.plausible
        return found is None or found.claimed(address)

    def _on_peer_result(self, seen_as: Endpoint, now: float) -> None:
        """The peer found a pair. If a probe of it reached us, that pair works both ways."""
        pair = self._probes.hottest() if self._probes.key is not None else None
        if pair is not None:
            self._win(pair[0], pair[1], None, now, seen_as=seen_as)

    # -- probing --------------------------------------------------------------------

    def _start_probing(self, now: float) -> None:
        plan, theirs = self.plan, self._signalling.theirs
        assert plan is not None
        assert theirs is not None
        self.state = PunchState.PROBING
        self._signal_deadline = None
        self._events.append(PunchStarted(self.peer, self.punch_id, plan.strategy, now))
        if plan.strategy is Strategy.TCP_DIAL:
            self._win_tcp(now)
            return
        if plan.strategy is Strategy.BIRTHDAY:
            if plan.birthday_role is BirthdayRole.OPENER:
                sockets = self._allocate(self.config.birthday_sockets)
                self._commands.append(OpenBirthdaySockets(self.punch_id, sockets))
                self._probes.start_opener(sockets, theirs.reflexive, now)
            else:
                self._probes.start_spray(theirs.reflexive[0][0], now)
        else:
            # Openers protect our NAT from a clash with the peer's early probes; with a
            # public side on either end a clash does no harm, so they would only cost time.
            openers = self._signalling.both_filter
            self._probes.start_direct(theirs.local, theirs.reflexive, now, openers=openers)
        self._pull()

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
        self._events.append(
            PunchSucceeded(
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
        )

    def _win_tcp(self, now: float) -> None:
        theirs = self._signalling.theirs
        assert self.plan is not None
        assert theirs is not None
        self.state = PunchState.WON
        self._linger_until = now
        remote = theirs.tcp[0] if self.plan.tcp_dialer else None
        if remote is not None:
            self._commands.append(DialHop(self.peer, MAIN_SOCKET, remote, "tcp"))
        self._events.append(
            PunchSucceeded(
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
        )

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
        self._events.append(
            PunchFailed(
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
        )

    def _close_birthday(self, keep: int | None, now: float) -> None:
        if self.plan is not None and self.plan.strategy is Strategy.BIRTHDAY:
            self._gate.release(self.punch_id, now)
        closing = self._probes.stop(keep)
        if closing:
            self._commands.append(CloseBirthdaySockets(self.punch_id, closing))


def _size_of(message: PunchMessage, size: int | None) -> int:
    return len(encode_punch_message(message)) if size is None else size


def counting_allocator() -> SocketAllocator:
    """Birthday socket ids 1, 2, 3, ... (0 is the main socket); one per node, so the ids of
    two punches never collide."""
    next_id = MAIN_SOCKET + 1

    def allocate(count: int) -> tuple[int, ...]:
        nonlocal next_id
        ids = tuple(range(next_id, next_id + count))
        next_id += count
        return ids

    return allocate
