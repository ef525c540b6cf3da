"""Automatic relays (DESIGN.md decision 15): which reachable node holds this node's relay.

Theory of operation
-------------------
A node nobody outside can dial (a *client*: behind a NAT, or UDP-blocked) can still be
reached through a relay, a ``forward_to_NAME`` it registers on a reachable node and names in
its signed peer record. :class:`RelayKeeper` decides where, sans-IO; the glue creates and
deletes the relays and reports how they fare.

- **Whether.** The glue says what the node knows of itself (:meth:`RelayKeeper.set_reachable`):
  reachable (a server: no relay, any automatic one is dropped), not reachable (keep
  ``wanted`` relays, one by default), or not known (yet, or again): none before the first
  is wanted, the ones held are kept (and replaced when they fail).
- **Where.** Candidates are reachable nodes the glue knows (:meth:`RelayKeeper.set_candidates`):
  seeds first, then servers of the node graph, each by measured round trip (unmeasured ones
  last). A candidate that failed is skipped for a while (``retry_after``, doubling per
  failure up to ``retry_max``), so a dead seed does not stall the choice.
- **Failover.** The glue reports each relay's state (:meth:`RelayKeeper.on_relay_state`): an
  automatic relay that is not active ``grace`` seconds after it was created, or
  ``down_grace`` after it stopped being active (short: the hop to a relay node is watched,
  so "down" already means seconds of silence), counts as failed: a replacement is created on
  the next candidate at once, and the failed one is deleted once the replacement is active
  (until then it keeps trying in the background, and may come back first). So a relay node
  that dies is replaced within its hop's watch (a PING every 2 s, answered within 2 s),
  ``down_grace`` and one registration: seconds.

Inputs return nothing; drain :meth:`RelayKeeper.commands` and re-read
:meth:`RelayKeeper.next_deadline`.

Bounds: at most ``wanted`` + 1 automatic relays at once (the extra one only while a
replacement registers); candidates are whatever the glue passes (it passes a bounded list).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from meshkey.identity.node_id import NodeId
from meshkey.wire.net import Endpoint

GRACE = 3.0  # an automatic relay not active this long after creation counts as failed
DOWN_GRACE = 1.5  # one that was active and went down: its node is watched, so this is short
RETRY_AFTER = 10.0
RETRY_MAX = 300.0


class AutoRelayState(enum.Enum):
    PENDING = "pending"  # created, not (yet) active
    ACTIVE = "active"
    DOWN = "down"  # was active, is not now (its supervisor re-registers)
    REFUSED = "refused"  # refused for good (policy, name taken, limits)


@dataclass(frozen=True, slots=True)
class RelayCandidate:
    node_id: NodeId
    endpoint: Endpoint
    seed: bool = False
    rtt: float | None = None


@dataclass(frozen=True, slots=True)
class CreateAutoRelay:
    """Register an automatic relay on ``at`` (reached at ``endpoint``, pinned to its id)."""

    at: NodeId
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class DeleteAutoRelay:
    at: NodeId
    reason: str


KeeperCommand = CreateAutoRelay | DeleteAutoRelay


@dataclass
class _Held:
    candidate: RelayCandidate
    state: AutoRelayState
    since: float  # created, or last became active / down


@dataclass
class _Failure:
    count: int
    until: float


@dataclass
class RelayKeeper:
    wanted: int = 1
    grace: float = GRACE
    down_grace: float = DOWN_GRACE
    retry_after: float = RETRY_AFTER
    retry_max: float = RETRY_MAX
    enabled: bool = True
    reachable: bool | None = None
    manual_active: int = 0  # relays the user made that are active: they count
    _candidates: list[RelayCandidate] = field(default_factory=list)
    _held: dict[NodeId, _Held] = field(default_factory=dict)
    _failures: dict[NodeId, _Failure] = field(default_factory=dict)
    _commands: list[KeeperCommand] = field(default_factory=list)
    status: str = "not needed yet"

    # -- inputs ---------------------------------------------------------------------------

    def set_reachable(self, reachable: bool | None, now: float) -> None:
        self.reachable = reachable
        self._plan(now)

    def set_enabled(self, enabled: bool, now: float) -> None:
        self.enabled = enabled
        self._plan(now)

    def set_manual_active(self, count: int, now: float) -> None:
        """How many relays the user created by hand are active now (they count towards
        ``wanted``: a node with its own relay needs no automatic one)."""
        self.manual_active = count
        self._plan(now)

    def set_candidates(self, candidates: list[RelayCandidate], now: float) -> None:
        """Reachable nodes this node could use, in any order (the keeper ranks them)."""
        self._candidates = list(candidates)
        self._plan(now)

    def on_relay_state(self, at: NodeId, state: AutoRelayState, now: float) -> None:
        held = self._held.get(at)
        if held is None:
            return
        if state is AutoRelayState.PENDING and held.state in (
            AutoRelayState.ACTIVE,
            AutoRelayState.DOWN,
        ):
            state = AutoRelayState.DOWN  # registering again after it was active: it is down
        if held.state is state:
            return
        if state is AutoRelayState.ACTIVE:
            self._failures.pop(at, None)
        held.state, held.since = state, now
        if state is AutoRelayState.REFUSED:
            self._failed(at, now)
        self._plan(now)

    def on_timer(self, now: float) -> None:
        self._plan(now)

    # -- outputs --------------------------------------------------------------------------

    def commands(self) -> list[KeeperCommand]:
        out, self._commands = self._commands, []
        return out

    def next_deadline(self) -> float | None:
        deadlines = [
            held.since + self._grace(held)
            for held in self._held.values()
            if held.state in (AutoRelayState.PENDING, AutoRelayState.DOWN)
        ]
        if self._needed() and self._usable_count() < self.wanted:
            deadlines += [f.until for f in self._failures.values()]
        return min(deadlines, default=None)

    def held(self) -> dict[NodeId, AutoRelayState]:
        return {at: held.state for at, held in self._held.items()}

    def ranked(self, now: float) -> list[RelayCandidate]:
        """Candidates in the order they would be used: seeds, then by RTT (unmeasured
        last), skipping those that failed recently."""
        usable = [
            c
            for c in self._candidates
            if c.node_id not in self._failures or self._failures[c.node_id].until <= now
        ]
        return sorted(usable, key=lambda c: (not c.seed, c.rtt if c.rtt is not None else math.inf))

    # -- internals ------------------------------------------------------------------------

    def _needed(self) -> bool:
        # Reachability gone unknown again (a hint that flipped, a new network) keeps the
        # relays there are, failover included: dropping and re-creating them would churn.
        kept = self.reachable is None and bool(self._held)
        wanted = self.reachable is False or kept
        return self.enabled and wanted and self.manual_active < self.wanted

    def _usable_count(self) -> int:
        return sum(
            1
            for held in self._held.values()
            if held.state is AutoRelayState.ACTIVE or (held.state is AutoRelayState.PENDING)
        )

    def _grace(self, held: _Held) -> float:
        return self.down_grace if held.state is AutoRelayState.DOWN else self.grace

    def _failed(self, at: NodeId, now: float) -> None:
        failure = self._failures.get(at)
        count = failure.count + 1 if failure else 1
        delay = min(self.retry_max, self.retry_after * 2 ** (count - 1))
        self._failures[at] = _Failure(count, now + delay)

    def _plan(self, now: float) -> None:
        if not self._needed():
            if not self.enabled:
                reason = "turned off (--no-auto-relay)"
            elif self.reachable:
                reason = "not needed (reachable)"
            elif self.reachable is None:
                reason = "not needed yet (reachability unknown)"
            else:
                reason = "not needed (a relay made by hand is active)"
            for at in list(self._held):
                self._drop(at, reason)
            self.status = reason
            return
        # Relays that never became active, or stopped being active, for ``grace``: failed.
        for at, held in list(self._held.items()):
            overdue = now >= held.since + self._grace(held)
            waiting = held.state in (AutoRelayState.PENDING, AutoRelayState.DOWN)
            if overdue and waiting and at not in self._failures:
                self._failed(at, now)
        working = [a for a, h in self._held.items() if h.state is AutoRelayState.ACTIVE]
        trying = [
            a
            for a, h in self._held.items()
            if h.state in (AutoRelayState.PENDING, AutoRelayState.DOWN)
            and now < h.since + self._grace(h)
        ]
        # Replace what failed: one new candidate per missing relay.
        missing = self.wanted - len(working) - len(trying)
        for candidate in self.ranked(now):
            if missing <= 0:
                break
            if candidate.node_id in self._held:
                continue
            self._held[candidate.node_id] = _Held(candidate, AutoRelayState.PENDING, now)
            self._commands.append(CreateAutoRelay(candidate.node_id, candidate.endpoint))
            missing -= 1
        # Failed relays keep trying in the background, but only the newest one beside those
        # that work or are still within their grace: the set stays bounded.
        spare = sorted(
            (h.since, at)
            for at, h in self._held.items()
            if (at not in working and at not in trying and h.state is not AutoRelayState.PENDING)
            or (h.state is AutoRelayState.PENDING and now >= h.since + self.grace)
        )
        while len(self._held) > self.wanted + 1 and spare:
            self._drop(spare.pop(0)[1], "failed, and replaced")
        # Once enough are active, the failed ones go (they kept trying meanwhile).
        if len(working) >= self.wanted:
            for at, held in list(self._held.items()):
                if held.state is not AutoRelayState.ACTIVE and at not in working[: self.wanted]:
                    self._drop(at, "replaced")
            for at in working[self.wanted :]:
                self._drop(at, "more relays than wanted")
        active = [h.candidate for h in self._held.values() if h.state is AutoRelayState.ACTIVE]
        if active:
            self.status = "active"
        elif self._held:
            self.status = "registering"
        else:
            self.status = "no reachable node to hold a relay yet"

    def _drop(self, at: NodeId, reason: str) -> None:
        if self._held.pop(at, None) is not None:
            self._commands.append(DeleteAutoRelay(at, reason))
