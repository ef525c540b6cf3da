"""Whether a secure channel's peer is still there, sans-IO: time in, a deadline out.

The hops under a channel have their own liveness, but only the channel's two ends can tell
whether the *peer* is still reachable through everything between them, and only sealed
messages prove it (a node on the route can forge errors, never a sealed PONG). So the channel
keeps its own evidence:

* **heard**: the last time an authentic message came from the peer (data, PING, PONG...).
* **keepalive** (initiator only, so the two ends do not both ping): a sealed PING whenever
  nothing was heard for ``keepalive_interval``. It keeps every hop and NAT mapping on the
  route fresh (20 s, below the usual 30 s UDP mapping lifetime and QUIC's 60 s idle timeout),
  so a channel outlives idle periods, and the responder learns its initiator is alive.
* **probe**: a message sent after ``probe_quiet`` of silence is followed by a PING, and the
  peer must answer within ``answer_timeout`` (at least 4 x the measured RTT): a far end that
  died is noticed within seconds of the next send, and what was in flight is answered.
* **unreachable**: a missed answer, or an error from a node on the route, makes the channel
  UNREACHABLE: sends fail at once, saying why. It keeps pinging, backing off
  (``retry``); the first authentic message makes it OPEN again. An initiator that missed
  ``rehandshake_after`` answers in a row, or learns that the far node does not know the
  channel any more (it restarted), asks for a new handshake (:class:`Rehandshake`) over the
  route it was created with, keeping the channel's address.
* **expiry** (responder only): an initiator not heard from for ``responder_dead_after`` is
  gone (its keepalives stopped): :class:`Expired`.
* **half-open** (responder only): a handshake that has not finished by ``handshake_by`` (the
  glue sets it to :data:`HANDSHAKE_TIMEOUT` after the HELLO, and clears it with
  :meth:`ChannelLiveness.handshake_done`) was abandoned, or was a flood:
  :class:`HandshakeExpired`, and the channel is forgotten without a word.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

from meshkey.retry import RetrySchedule
from meshkey.timing import RttEstimate

#: How long a handshake may take: a responder forgets a half-open one after this, and an
#: initiator's re-handshake gives up (a few round trips over the slowest relayed route).
HANDSHAKE_TIMEOUT = 10.0


class Health(enum.Enum):
    OPEN = "open"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True, slots=True)
class LivenessConfig:
    keepalive_interval: float = 20.0
    #: Short: a far end that died right after its last answer must still be noticed at the
    #: next send. Busy channels hear from their peer all the time and never probe.
    probe_quiet: float = 0.2
    answer_timeout: float = 3.0
    rehandshake_after: int = 2
    responder_dead_after: float = 90.0
    retry_first: float = 1.0
    retry_max: float = 30.0


@dataclass(frozen=True, slots=True)
class SendPing:
    """Send a sealed PING to the peer."""


@dataclass(frozen=True, slots=True)
class Rehandshake:
    """Initiator: open a new session over the original route (same channel address)."""

    reason: str


@dataclass(frozen=True, slots=True)
class BecameUnreachable:
    reason: str


@dataclass(frozen=True, slots=True)
class BecameReachable:
    pass


@dataclass(frozen=True, slots=True)
class Expired:
    reason: str


@dataclass(frozen=True, slots=True)
class HandshakeExpired:
    """Responder: the handshake did not finish in time (forget the half-open channel)."""


Command = SendPing | Rehandshake
Event = BecameUnreachable | BecameReachable | Expired | HandshakeExpired


@dataclass
class ChannelLiveness:
    initiator: bool
    now: float
    config: LivenessConfig = LivenessConfig()
    rng: random.Random = field(default_factory=random.Random, repr=False)
    health: Health = Health.OPEN
    reason: str | None = None  # why it is unreachable
    #: Responder: when its half-open handshake expires (None once it finished, or never set).
    handshake_by: float | None = None
    last_heard: float = field(init=False)
    _answer_by: float | None = field(default=None, init=False)
    _awaiting: float | None = field(default=None, init=False)  # ping if nothing by then
    _next_ping: float | None = field(default=None, init=False)  # while unreachable
    _missed: int = field(default=0, init=False)
    _ping_sent_at: float | None = field(default=None, init=False)
    _last_ping: float = field(default=float("-inf"), init=False)
    _rehandshaking: bool = field(default=False, init=False)
    _expired: bool = field(default=False, init=False)
    _commands: list[Command] = field(default_factory=list, init=False)
    _events: list[Event] = field(default_factory=list, init=False)
    _retry: RetrySchedule = field(init=False)
    _rtt: RttEstimate = field(default_factory=RttEstimate, init=False, repr=False)

    def __post_init__(self) -> None:
        self.last_heard = self.now
        self._retry = RetrySchedule(self.config.retry_first, self.config.retry_max, rng=self.rng)

    @property
    def rtt(self) -> float | None:
        """The smoothed round trip of PING to PONG (RFC 6298), None before the first."""
        return self._rtt.srtt

    # -- outputs ----------------------------------------------------------------------

    def commands(self) -> list[Command]:
        out, self._commands = self._commands, []
        return out

    def events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> float | None:
        if self._expired:
            return None
        config = self.config
        deadlines = []
        if self.handshake_by is not None:
            deadlines.append(self.handshake_by)
        if self._answer_by is not None:
            deadlines.append(self._answer_by)
        if self._awaiting is not None:
            deadlines.append(self._awaiting)
        if self.health is Health.UNREACHABLE:
            if self._next_ping is not None:
                deadlines.append(self._next_ping)
        elif self.initiator:
            deadlines.append(self._keepalive_due())
        if not self.initiator:
            deadlines.append(self.last_heard + config.responder_dead_after)
        return min(deadlines) if deadlines else None

    # -- inputs (then drain commands and events, and re-read the deadline) -------------

    def heard(self, now: float, *, pong: bool = False) -> None:
        """An authentic message came from the peer."""
        self.last_heard = now
        if pong and self._ping_sent_at is not None:
            self._rtt.add(now - self._ping_sent_at)
            self._ping_sent_at = None
        self._answer_by = self._awaiting = None
        self._missed = 0
        self._retry.reset()
        if self.health is Health.UNREACHABLE:
            self.health, self.reason, self._next_ping = Health.OPEN, None, None
            self._events.append(BecameReachable())

    def handshake_done(self) -> None:
        """The handshake finished: no half-open expiry any more."""
        self.handshake_by = None

    def sent(self, now: float) -> None:
        """A message went to the peer: something must come back. After a silence a PING goes
        along at once; on a busy channel only if nothing came back a little later."""
        if self._answer_by is not None or self._awaiting is not None:
            return
        if now - self.last_heard >= self.config.probe_quiet:
            self._ping(now)
            self._answer_by = now + self._answer_timeout()
        else:
            self._awaiting = now + max(self.config.probe_quiet, 4 * (self.rtt or 0.0))

    def route_error(self, now: float, reason: str) -> None:
        """A node on the route could not deliver to the peer (unauthenticated: it makes
        sends fail fast until the peer is heard again, and a probe checks it)."""
        self._unreachable(now, reason)
        if self._answer_by is None:
            self._ping(now)
            self._answer_by = now + self._answer_timeout()

    def session_unknown(self, now: float, reason: str) -> None:
        """The far node says it has no such channel: it lost the session (restarted)."""
        self._unreachable(now, reason)
        if self.initiator:
            self._request_rehandshake(reason)

    def rehandshake_done(self, now: float, ok: bool, reason: str = "") -> None:
        self._rehandshaking = False
        if ok:
            self.heard(now)
            return
        self._unreachable(now, reason or "the new handshake failed")
        delay = self._retry.next_delay()
        self._next_ping = now + (delay if delay is not None else self.config.retry_max)

    def on_timer(self, now: float) -> None:
        config = self.config
        if self._expired:
            return
        if self.handshake_by is not None and now >= self.handshake_by:
            self._events.append(HandshakeExpired())
            self._expired = True
            return
        if not self.initiator and now >= self.last_heard + config.responder_dead_after:
            quiet = now - self.last_heard
            self._events.append(Expired(f"the initiator was not heard from for {quiet:.0f}s"))
            self._expired = True
            return
        if self._awaiting is not None and now >= self._awaiting:
            self._awaiting = None  # a send on a busy channel got nothing back: ask now
            if self._answer_by is None:
                self._ping(now)
                self._answer_by = now + self._answer_timeout()
            return
        if self._answer_by is not None and now >= self._answer_by:
            self._answer_by = None
            self._missed += 1
            quiet = now - self.last_heard
            self._unreachable(now, f"the peer did not answer for {quiet:.1f}s")
            if self.initiator and self._missed >= config.rehandshake_after:
                self._request_rehandshake(f"no answer from the peer for {quiet:.0f}s")
            else:
                delay = self._retry.next_delay()
                self._next_ping = now + (delay if delay is not None else config.retry_max)
            return
        if self.health is Health.UNREACHABLE:
            if self._next_ping is not None and now >= self._next_ping and not self._rehandshaking:
                self._next_ping = None
                self._ping(now)
                self._answer_by = now + self._answer_timeout()
            return
        if self.initiator and now >= self._keepalive_due():
            self._ping(now)

    # -- internals --------------------------------------------------------------------

    def _keepalive_due(self) -> float:
        interval = self.config.keepalive_interval
        return max(self.last_heard + interval, self._last_ping + interval)

    def _answer_timeout(self) -> float:
        measured = 4 * self.rtt if self.rtt is not None else 0.0
        return max(self.config.answer_timeout, measured)

    def _ping(self, now: float) -> None:
        self._commands.append(SendPing())
        self._last_ping = now
        if self._ping_sent_at is None:
            self._ping_sent_at = now

    def _unreachable(self, now: float, reason: str) -> None:
        self.reason = reason
        if self.health is Health.OPEN:
            self.health = Health.UNREACHABLE
            self._events.append(BecameUnreachable(reason))

    def _request_rehandshake(self, reason: str) -> None:
        if not self._rehandshaking:
            self._rehandshaking = True
            self._answer_by = self._next_ping = None
            self._commands.append(Rehandshake(reason))
