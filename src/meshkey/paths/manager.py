"""The path manager: every peer's paths, which one carries its traffic, and when to look for
a better one (DESIGN.md decision 12). Sans-IO.

(Over 600 lines on purpose: one machine, the per-peer path choice, whose rules (probe,
validate, fail, reselect, upgrade) read best together; its commands, events and reports are
the small dataclasses above it, and the path itself is :mod:`~meshkey.paths.path`.)

Theory of operation
-------------------
For each peer the manager keeps :class:`~meshkey.paths.path.Path` objects (a relay route,
direct addresses, punched addresses) and the key of the one in use. Traffic starts on
whatever works first — usually the relay the secure channel was opened through — and moves
as soon as :func:`~meshkey.paths.path.choose` prefers another: a direct path as soon as one
is validated, a path of the same tier only when it is at least ``rtt_gain`` (5 ms, as iroh)
faster. Every change is a :class:`PathSwitched` event with its reason.

Liveness. The glue reports what it sends (:meth:`PathManager.on_sent`) and receives
(:meth:`PathManager.on_received`, :meth:`PathManager.on_pong`) on each path. The first send
after the last receive starts the path's *unanswered* clock (which anything received stops
until ``suspect_after``; after that only a PONG to a PING on the path does, since a path
broken one way still carries the peer's packets): after ``suspect_after`` (0.3 s)
the manager pings, again every ``suspect_ping_interval``, and if nothing at all came back
``dead_after`` (1.5 s) after that first unanswered send, the path is FAILED and traffic falls
back (the relay): a message sent into a path that just died is answered over the relay
within 2 s (issue 18), its resend on the new path included. A path that is idle gets a ping
every ``keepalive_interval`` (20 s, below the 25-30 s after which home routers and Linux
conntrack forget a UDP mapping); a ping is a send, so an idle path that died is found dead
1.5 s after its keepalive. Relay paths are pinged
(for their RTT, and to keep their NAT mappings) but never declared dead here: the relay is the
last resort, and only the glue knows when its hop or channel is gone (:meth:`remove_path`).

Upgrades. While a peer is reached only through a relay (and ``no_direct`` is off for it), the
manager asks for a punch (:class:`StartPunch`) at once and then on
:class:`~meshkey.nat.puncher.UpgradeRetry`'s pace: backoff after failures, and every 60 s
while relayed. It learns the outcome from the puncher's events
(:meth:`PathManager.on_punch_event`); the path itself arrives with :meth:`add_path` once the
glue's hop over the punched address is authenticated.

Rebinding. Traffic from a peer arriving from an unknown direct address (its NAT gave its flow
a new port) makes a PROBING path with no send credit — at most ``amplification_factor``
times what came from it — which is pinged; once validated, if the old path has heard nothing
since, the manager moves to it (``REBOUND``).

Bounds: ``max_paths`` per peer (failed paths are forgotten first), ``MAX_OUTSTANDING`` probe
tokens per path, and state only for peers the glue added (an unknown peer's packets are
ignored).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from meshkey.identity.node_id import NodeId
from meshkey.nat.punch import (
    MAIN_SOCKET,
    PunchEvent,
    PunchFailed,
    PunchStarted,
    PunchSucceeded,
)
from meshkey.nat.puncher import UpgradeRetry
from meshkey.paths.path import (
    Path,
    PathKey,
    PathKind,
    PathState,
    SwitchReason,
    choose,
)


@dataclass(frozen=True, slots=True)
class PathConfig:
    keepalive_interval: float = 20.0
    relay_keepalive: float | None = 20.0
    probe_interval: float = 0.25
    validate_timeout: float = 5.0
    suspect_after: float = 0.3
    suspect_ping_interval: float = 0.5
    dead_after: float = 1.5
    rtt_gain: float = 0.005
    amplification_factor: int = 3
    ping_size: int = 64  # what a ping costs, for the anti-amplification budget
    probe_credit: int = 8 * 64  # a told address may get 8 pings before anything came back
    max_paths: int = 8
    upgrade_first: float = 40.0  # see UpgradeRetry: outlives a conntrack clash
    reprobe_interval: float = 60.0
    #: After a punch succeeded, how long the hop over it may take to be added.
    hop_timeout: float = 15.0
    #: A punch the glue never reported on is forgotten after this long.
    punch_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not self.suspect_after < self.dead_after <= self.keepalive_interval:
            raise ValueError("need suspect_after < dead_after <= keepalive_interval")


# -- commands ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendPathPing:
    """Ping ``peer`` over ``path`` with ``token`` and report the pong with :meth:`on_pong`."""

    peer: NodeId
    path: PathKey
    token: int


@dataclass(frozen=True, slots=True)
class StartPunch:
    """Start a punch with ``peer`` (``Puncher.start``)."""

    peer: NodeId


@dataclass(frozen=True, slots=True)
class CancelPunch:
    """Cancel the punch running with ``peer`` (``Puncher.cancel``): direct was turned off."""

    peer: NodeId


@dataclass(frozen=True, slots=True)
class ClosePath:
    """Close the hop (and the birthday socket, if ``path.local_socket``) of a failed path."""

    peer: NodeId
    path: PathKey


@dataclass(frozen=True, slots=True)
class CloseSocket:
    """Close birthday socket ``socket``: a punch won on it, but no hop came up over it."""

    socket: int


PathCommand = SendPathPing | StartPunch | CancelPunch | ClosePath | CloseSocket


# -- events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PathValidated:
    peer: NodeId
    path: PathKey
    rtt: float | None
    at: float


@dataclass(frozen=True, slots=True)
class PathFailed:
    peer: NodeId
    path: PathKey
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class PathSwitched:
    peer: NodeId
    old: PathKey | None
    new: PathKey | None
    reason: SwitchReason
    at: float


PathEvent = PathValidated | PathFailed | PathSwitched


# -- reports (for `secure-channel show`) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class PathReport:
    key: PathKey
    description: str
    state: PathState
    rtt: float | None
    last_answer: float | None
    bytes_sent: int
    bytes_received: int
    failure: str


@dataclass(frozen=True, slots=True)
class PeerReport:
    peer: NodeId
    current: PathKey | None
    description: str
    rtt: float | None
    switched_at: float | None
    switch_reason: SwitchReason | None
    previous: PathKey | None
    no_direct: bool
    punch: str  # what the last upgrade attempt did, or why none is made (for people)
    punching: bool  # a punch is asked for or under way now
    next_upgrade_at: float | None
    paths: tuple[PathReport, ...]


@dataclass
class _Peer:
    peer: NodeId
    no_direct: bool
    upgrade: UpgradeRetry
    paths: dict[PathKey, Path] = field(default_factory=dict)
    current: PathKey | None = None
    previous: PathKey | None = None
    switched_at: float | None = None
    switch_reason: SwitchReason | None = None
    upgrade_at: float | None = None
    punching_since: float | None = None
    awaiting_hop_until: float | None = None
    punch_status: str = "not tried yet"
    punched: PunchSucceeded | None = None  # the last success, until its hop is added
    tried: bool = False  # an upgrade was asked for since the peer was added (or re-allowed)
    #: Whether this side starts punches (the side that opened the relayed channel does, as
    #: in DCUtR); the other only answers them, so the two never send unsolicited signals
    #: through a route that did not ask for them.
    initiates: bool = True


class PathManager:
    """All peers' paths. Inputs return nothing; drain :meth:`commands` and :meth:`events`
    after each, and re-read :meth:`next_deadline`."""

    def __init__(
        self,
        config: PathConfig | None = None,
        *,
        rng: random.Random | None = None,
        no_direct: bool = False,
    ) -> None:
        self.config = config or PathConfig()
        self.no_direct_default = no_direct
        self._rng = rng or random.Random()
        self._peers: dict[NodeId, _Peer] = {}
        self._commands: list[PathCommand] = []
        self._events: list[PathEvent] = []

    # -- peers and paths ------------------------------------------------------------

    def add_peer(
        self,
        peer: NodeId,
        now: float,
        *,
        no_direct: bool | None = None,
        initiates: bool | None = None,
    ) -> None:
        """Starts keeping paths for ``peer``. ``initiates``: whether this side starts the
        punches with it (default yes; a channel's responder answers them instead)."""
        if peer not in self._peers:
            self._peers[peer] = _Peer(
                peer,
                self.no_direct_default if no_direct is None else no_direct,
                UpgradeRetry(
                    self.config.upgrade_first, self.config.reprobe_interval, rng=self._rng
                ),
                initiates=True if initiates is None else initiates,
            )
            return
        if initiates:
            self._peers[peer].initiates = True
        if no_direct is not None:
            self.set_no_direct(peer, no_direct, now)

    def remove_peer(self, peer: NodeId) -> None:
        state = self._peers.pop(peer, None)
        if state is not None:
            for path in state.paths.values():
                if path.key.kind.is_direct and path.state is not PathState.FAILED:
                    self._commands.append(ClosePath(peer, path.key))

    def add_path(
        self,
        peer: NodeId,
        key: PathKey,
        now: float,
        *,
        validated: bool = False,
        rtt: float | None = None,
    ) -> bool:
        """A new way to reach ``peer``: a relay route it was reached over, an address it told
        us, or a hop over a punched address (``validated``: already proven, e.g. an
        authenticated hop). False if the peer has too many paths."""
        self.add_peer(peer, now)
        state = self._peers[peer]
        existing = state.paths.get(key)
        if existing is not None and existing.state is not PathState.FAILED:
            if validated and existing.state is PathState.PROBING:
                self._validate(state, existing, now)
                self._reselect(state, now)
            return True
        if not self._make_room(state):
            return False
        path = Path(key, now, credit=self.config.probe_credit)
        state.paths[key] = path
        punched = state.punched
        if key.kind.is_direct:
            state.awaiting_hop_until = None
            if punched is not None and punched.remote == key.remote:
                rtt = rtt if rtt is not None else punched.rtt  # the winning probe's
            state.punched = None
        if rtt is not None:
            path.rtt_sample(rtt)
        if validated:
            self._validate(state, path, now)
        else:
            path.next_probe_at = now
        self._service(state, now)
        return True

    def remove_path(self, peer: NodeId, key: PathKey, reason: str, now: float) -> None:
        """The hop of a path closed (or the relay is gone)."""
        state = self._peers.get(peer)
        path = state.paths.get(key) if state else None
        if state is None or path is None or path.state is PathState.FAILED:
            return
        self._fail(state, path, reason, now, close=False)
        self._reselect(state, now, reason=SwitchReason.REMOVED)

    def set_no_direct(self, peer: NodeId, no_direct: bool, now: float) -> None:
        """``--no-direct`` for one peer: only relay paths carry its traffic, no punching."""
        state = self._peers.get(peer)
        if state is None or state.no_direct == no_direct:
            return
        state.no_direct = no_direct
        if no_direct:
            state.upgrade_at = None
            state.punch_status = "direct paths are turned off (--no-direct)"
            if state.punching_since is not None:
                state.punching_since = None
                self._commands.append(CancelPunch(peer))
        else:
            state.tried = False
            state.punch_status = "not tried yet"
        self._reselect(state, now, reason=SwitchReason.NO_DIRECT)
        self._service(state, now)

    # -- traffic --------------------------------------------------------------------

    def on_sent(self, peer: NodeId, key: PathKey, size: int, now: float) -> None:
        path = self._path(peer, key)
        if path is not None and path.state is not PathState.FAILED:
            path.record_sent(size, now)

    def on_received(self, peer: NodeId, key: PathKey, size: int, now: float) -> None:
        """Authenticated traffic from ``peer`` arrived over ``key`` (a new source address of a
        direct path is a new key: NAT rebinding)."""
        state = self._peers.get(peer)
        if state is None:
            return
        path = state.paths.get(key)
        if path is None:
            if not key.kind.is_direct or not self._make_room(state):
                return
            current = state.paths.get(state.current) if state.current else None
            path = Path(key, now, credit=0)
            if current is not None and current.key.kind.is_direct:
                path.rebound_from = current.key
            path.next_probe_at = now
            state.paths[key] = path
        if path.state is PathState.FAILED:
            return
        # Once a path is under suspicion (silent for suspect_after after we sent), traffic
        # from the peer no longer clears it: a path broken one way still carries the peer's
        # packets to us. Only a PONG to a PING sent on it does (on_pong).
        suspect = (
            path.waiting_since is not None
            and path.key.kind.is_direct
            and now - path.waiting_since >= self.config.suspect_after
        )
        path.record_received(size, now, answers=not suspect)
        self._service(state, now)

    def suspect_current(self, peer: NodeId, now: float, *, unanswered_for: float) -> None:
        """Evidence that ``peer``'s current direct path is broken toward the peer (its traffic
        came another way): treat the path as unanswered for ``unanswered_for`` already, so it
        is under suspicion now and pinged at once. A PONG clears it (the other way was only a
        straggler); silence makes it dead ``dead_after`` after that."""
        state = self._peers.get(peer)
        path = state.paths.get(state.current) if state and state.current else None
        if state is None or path is None or not path.key.kind.is_direct:
            return
        if path.state is not PathState.VALIDATED:
            return
        since = now - unanswered_for
        if path.waiting_since is None or path.waiting_since > since:
            path.waiting_since = since
        path.next_probe_at = now
        self._service(state, now)

    def on_pong(self, peer: NodeId, key: PathKey, token: int, now: float) -> None:
        state = self._peers.get(peer)
        path = state.paths.get(key) if state else None
        if state is None or path is None or path.state is PathState.FAILED:
            return
        sent_at = path.outstanding.pop(token, None)
        if sent_at is None:
            if path.state is PathState.VALIDATED:
                path.record_received(self.config.ping_size, now)  # late, but a sign of life
            return
        path.record_received(self.config.ping_size, now)
        path.last_pong = now
        path.rtt_sample(now - sent_at)
        if path.state is PathState.PROBING:
            self._validate(state, path, now)
        self._reselect(state, now)
        self._service(state, now)

    def may_send(self, peer: NodeId, key: PathKey, size: int) -> bool:
        """Whether sending ``size`` bytes on the path keeps within anti-amplification."""
        path = self._path(peer, key)
        return path is not None and path.send_allowance(self.config.amplification_factor) >= size

    # -- punching -------------------------------------------------------------------

    def on_punch_event(self, event: PunchEvent, now: float) -> None:
        """Every event of the node's :class:`~meshkey.nat.puncher.Puncher`."""
        state = self._peers.get(event.peer)
        if state is None:
            return
        if isinstance(event, PunchStarted):
            state.punching_since = state.punching_since or now
            state.punch_status = f"punching ({event.strategy.value})"
        elif isinstance(event, PunchSucceeded):
            state.punching_since = None
            state.upgrade.after_success()
            state.awaiting_hop_until = now + self.config.hop_timeout
            state.punched = event
            state.punch_status = (
                f"punched ({event.strategy.value}) in {event.elapsed * 1000:.0f} ms"
            )
        elif isinstance(event, PunchFailed):
            state.punching_since = None
            state.punch_status = f"{event.reason.value}: {event.detail}"
            if not state.no_direct:
                state.upgrade_at = state.upgrade.after_failure(
                    now, retryable=event.retryable, retry_after=event.retry_after
                )
        self._plan_upgrade(state, now)

    def on_punch_requested(self, peer: NodeId, now: float) -> None:
        """A punch with ``peer`` was started outside this manager's plan (negotiated in a
        channel handshake): count it as the upgrade attempt, so no second one supersedes it."""
        state = self._peers.get(peer)
        if state is None or state.no_direct:
            return
        state.upgrade_at = None
        state.punching_since = now
        state.tried = True
        state.punch_status = "punch requested (in the channel handshake)"

    def on_dial_failed(self, peer: NodeId, reason: str, now: float) -> None:
        """The hop over a punched address could not be set up."""
        state = self._peers.get(peer)
        if state is None:
            return
        state.awaiting_hop_until = None
        state.punch_status = f"punched, but the hop failed: {reason}"
        state.upgrade_at = state.upgrade.after_failure(now, retryable=True)
        self._release_punched(state)

    # -- choice and reports ---------------------------------------------------------

    def direct_allowed(self, peer: NodeId) -> bool:
        """False under ``--no-direct``: pass it to ``Puncher.on_signal`` for this peer."""
        state = self._peers.get(peer)
        return not (state.no_direct if state else self.no_direct_default)

    def current_path(self, peer: NodeId) -> PathKey | None:
        state = self._peers.get(peer)
        return state.current if state else None

    def best_path(self, peer: NodeId, now: float) -> PathKey | None:
        """The path :func:`choose` prefers now (pure: nothing changes)."""
        state = self._peers.get(peer)
        if state is None:
            return None
        return choose(
            state.paths.values(),
            state.current,
            no_direct=state.no_direct,
            rtt_gain=self.config.rtt_gain,
        ).key

    def paths(self, peer: NodeId) -> list[Path]:
        state = self._peers.get(peer)
        return list(state.paths.values()) if state else []

    def report(self, peer: NodeId) -> PeerReport | None:
        state = self._peers.get(peer)
        if state is None:
            return None
        current = state.paths.get(state.current) if state.current else None
        return PeerReport(
            peer,
            state.current,
            state.current.describe() if state.current else "no path",
            current.srtt if current else None,
            state.switched_at,
            state.switch_reason,
            state.previous,
            state.no_direct,
            state.punch_status,
            state.punching_since is not None,
            state.upgrade_at,
            tuple(
                PathReport(
                    p.key,
                    p.key.describe(),
                    p.state,
                    p.srtt,
                    p.last_received,
                    p.bytes_sent,
                    p.bytes_received,
                    p.failure,
                )
                for p in state.paths.values()
            ),
        )

    # -- time -----------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        deadlines = [
            d for state in self._peers.values() if (d := self._deadline(state)) is not None
        ]
        return min(deadlines, default=None)

    def on_timer(self, now: float) -> None:
        for state in list(self._peers.values()):
            deadline = self._deadline(state)
            if deadline is not None and deadline <= now:
                self._service(state, now)

    def commands(self) -> list[PathCommand]:
        out, self._commands = self._commands, []
        return out

    def events(self) -> list[PathEvent]:
        out, self._events = self._events, []
        return out

    # -- internals ------------------------------------------------------------------

    def _path(self, peer: NodeId, key: PathKey) -> Path | None:
        state = self._peers.get(peer)
        return state.paths.get(key) if state else None

    def _make_room(self, state: _Peer) -> bool:
        if len(state.paths) < self.config.max_paths:
            return True
        failed = [p for p in state.paths.values() if p.state is PathState.FAILED]
        if not failed:
            return False
        oldest = min(failed, key=lambda p: p.failed_at or 0.0)
        del state.paths[oldest.key]
        return True

    def _keepalive_interval(self, path: Path) -> float | None:
        if path.key.kind is PathKind.RELAY:
            return self.config.relay_keepalive
        return self.config.keepalive_interval

    def _path_deadline(self, path: Path) -> float | None:
        config = self.config
        if path.state is PathState.FAILED:
            return None
        if path.state is PathState.PROBING:
            candidates = [path.created_at + config.validate_timeout]
            if path.next_probe_at is not None:
                candidates.append(path.next_probe_at)
            return min(candidates)
        if path.waiting_since is not None and path.key.kind.is_direct:
            first_ping = path.waiting_since + config.suspect_after
            ping_at = path.next_probe_at
            if ping_at is None or ping_at < first_ping:
                ping_at = first_ping
            return min(path.waiting_since + config.dead_after, ping_at)
        interval = self._keepalive_interval(path)
        if interval is None:
            return None
        return _last_activity(path) + interval

    def _deadline(self, state: _Peer) -> float | None:
        candidates = [d for p in state.paths.values() if (d := self._path_deadline(p)) is not None]
        if state.upgrade_at is not None and self._wants_upgrade(state):
            candidates.append(state.upgrade_at)
        if state.awaiting_hop_until is not None:
            candidates.append(state.awaiting_hop_until)
        if state.punching_since is not None:
            candidates.append(state.punching_since + self.config.punch_timeout)
        return min(candidates, default=None)

    def _service(self, state: _Peer, now: float) -> None:
        """Does whatever is due for ``state`` at ``now``: pings, deaths, upgrades."""
        config = self.config
        for path in list(state.paths.values()):
            if path.state is PathState.PROBING:
                if now >= path.created_at + config.validate_timeout:
                    self._fail(state, path, "no answer to probes", now, close=True)
                    continue
                if path.next_probe_at is not None and now >= path.next_probe_at:
                    self._ping(state, path, now)
                    path.next_probe_at = now + config.probe_interval
            elif path.state is PathState.VALIDATED:
                if path.waiting_since is not None and path.key.kind.is_direct:
                    if now >= path.waiting_since + config.dead_after:
                        silent = now - path.waiting_since
                        self._fail(state, path, f"no answer for {silent:.1f} s", now, close=True)
                        continue
                    first_ping = path.waiting_since + config.suspect_after
                    if path.next_probe_at is None or path.next_probe_at < first_ping:
                        path.next_probe_at = first_ping
                    if now >= path.next_probe_at:
                        self._ping(state, path, now)
                        path.next_probe_at = now + config.suspect_ping_interval
                else:
                    path.next_probe_at = None
                    interval = self._keepalive_interval(path)
                    if interval is not None and now >= _last_activity(path) + interval:
                        self._ping(state, path, now)
                        path.next_probe_at = now + config.suspect_after
        self._reselect(state, now)
        if state.punching_since is not None and now >= state.punching_since + config.punch_timeout:
            state.punching_since = None
            state.punch_status = "the punch never reported back"
            state.upgrade_at = state.upgrade.after_failure(now, retryable=True)
        if state.awaiting_hop_until is not None and now >= state.awaiting_hop_until:
            state.awaiting_hop_until = None
            state.punch_status = "punched, but no hop came up over the address"
            state.upgrade_at = state.upgrade.after_failure(now, retryable=True)
            self._release_punched(state)
        self._plan_upgrade(state, now)
        if state.upgrade_at is not None and now >= state.upgrade_at and self._wants_upgrade(state):
            state.upgrade_at = None
            state.punching_since = now
            state.tried = True
            state.punch_status = "punch requested"
            self._commands.append(StartPunch(state.peer))

    def _release_punched(self, state: _Peer) -> None:
        punched, state.punched = state.punched, None
        if punched is not None and punched.socket != MAIN_SOCKET:
            self._commands.append(CloseSocket(punched.socket))

    def _ping(self, state: _Peer, path: Path, now: float) -> None:
        if path.send_allowance(self.config.amplification_factor) < self.config.ping_size:
            return
        token = self._rng.getrandbits(64)
        path.remember_token(token, now)
        path.record_sent(self.config.ping_size, now)
        self._commands.append(SendPathPing(state.peer, path.key, token))

    def _validate(self, state: _Peer, path: Path, now: float) -> None:
        path.state = PathState.VALIDATED
        path.validated_at = now
        path.next_probe_at = None
        path.waiting_since = None
        path.last_received = path.last_received or now
        self._events.append(PathValidated(state.peer, path.key, path.srtt, now))
        rebound = state.paths.get(path.rebound_from) if path.rebound_from else None
        if (
            rebound is not None
            and rebound.key == state.current
            and (rebound.last_received or 0.0) < path.created_at
        ):
            # The peer's NAT moved its flow: the old address has heard nothing since the new
            # one appeared. (The hop migrated with it, so there is nothing to close.)
            self._fail(state, rebound, "rebound to a new address", now, close=False)
            self._switch(state, path.key, SwitchReason.REBOUND, now)

    def _fail(self, state: _Peer, path: Path, reason: str, now: float, *, close: bool) -> None:
        path.fail(reason, now)
        self._events.append(PathFailed(state.peer, path.key, reason, now))
        if close and path.key.kind.is_direct:
            self._commands.append(ClosePath(state.peer, path.key))
        if path.key == state.current:
            self._plan_upgrade(state, now, lost_direct=path.key.kind.is_direct)

    def _reselect(self, state: _Peer, now: float, reason: SwitchReason | None = None) -> None:
        choice = choose(
            state.paths.values(),
            state.current,
            no_direct=state.no_direct,
            rtt_gain=self.config.rtt_gain,
        )
        if choice.key == state.current:
            return
        switch_reason = choice.reason or SwitchReason.DEAD
        if reason is not None and switch_reason in (SwitchReason.DEAD, SwitchReason.NO_DIRECT):
            switch_reason = reason
        self._switch(state, choice.key, switch_reason, now)

    def _switch(self, state: _Peer, new: PathKey | None, reason: SwitchReason, now: float) -> None:
        old = state.current
        state.previous, state.current = old, new
        state.switched_at, state.switch_reason = now, reason
        self._events.append(PathSwitched(state.peer, old, new, reason, now))

    def _has_direct(self, state: _Peer) -> bool:
        return any(
            p.key.kind.is_direct and p.state is not PathState.FAILED for p in state.paths.values()
        )

    def _wants_upgrade(self, state: _Peer) -> bool:
        return (
            not state.no_direct
            and state.initiates
            and state.punching_since is None
            and state.awaiting_hop_until is None
            and not self._has_direct(state)
            and any(p.key.kind is PathKind.RELAY and p.usable for p in state.paths.values())
        )

    def _plan_upgrade(self, state: _Peer, now: float, *, lost_direct: bool = False) -> None:
        if not self._wants_upgrade(state):
            if state.no_direct:
                state.upgrade_at = None
            return
        if lost_direct:
            state.upgrade_at = state.upgrade.after_path_lost(now)
        elif state.upgrade_at is None:
            state.upgrade_at = now + (self.config.reprobe_interval if state.tried else 0.0)


def _last_activity(path: Path) -> float:
    times = (path.last_sent, path.last_received, path.validated_at, path.created_at)
    return max(t for t in times if t is not None)
