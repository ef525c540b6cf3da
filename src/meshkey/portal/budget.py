"""What a node's portals may hold, and for whom: sessions and buffered bytes, per peer and in
total (DESIGN.md decision 20), sans-IO.

A portal session holds bytes in two places: what the peer may send before the local socket
took it (its receive window, a promise it cannot take back), and what it read from the local
socket and the peer has not acknowledged (its send buffer). Both start small, at
:data:`INITIAL_CREDIT`, so opening a session costs little until the far side reads, and
each grows, doubling, to at most 1 MiB (:class:`~meshkey.portal.contract.SessionLimits`)
while its reader keeps up. Every growth is drawn from the node's one :class:`PortalBudget`
through the session's :class:`Credit`, and given back when the session ends.

Theory of operation
-------------------
:meth:`PortalBudget.open` admits a session for an ``owner`` (the authenticated identity of a
remote inlet, or a local inlet, whose clients are local) or raises :class:`BudgetExceeded`
saying why: the node holds :attr:`BudgetLimits.sessions` sessions, or its peers hold all but
:attr:`BudgetLimits.kept_for_local` of them (so peers, however many identities they make,
never take the last places from the node's own inlets and streams), or a remote peer holds
:attr:`BudgetLimits.sessions_per_peer` (local owners are bounded by the node's count only).
The session's first :data:`INITIAL_CREDIT` each way is not drawn from any pool: the session
counts bound it (1024 sessions hold at most 128 MiB of it). :meth:`Credit.grow` grants what
the owner's pool (:attr:`BudgetLimits.growth_per_peer`) and the node's
(:attr:`BudgetLimits.growth`) still have, possibly less than asked or nothing; a session that
gets nothing keeps its size and still works, more slowly. :meth:`Credit.release` gives all of
it back (once; later calls do nothing).

Why these values: 64 sessions per peer is more than a browser opens to one host, and makes
a peer that opens sessions and never reads cost at most 64 x 128 KiB; a quarter of the
node's 1024 sessions is kept for its own inlets and streams; 16 MiB of growth per
peer lets 16 sessions of one peer run at full speed (1 MiB windows) at once; 64 MiB in total
keeps four such peers from starving everyone else of memory while the node stays under about
200 MiB of portal buffers whatever its peers do.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

MiB = 1024 * 1024
#: What a session may hold in each direction before its reader has read anything.
INITIAL_CREDIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    """The node's bounds (see the module docstring for why these values)."""

    sessions: int = 1024
    kept_for_local: int = 256
    sessions_per_peer: int = 64
    growth: int = 64 * MiB
    growth_per_peer: int = 16 * MiB

    def __post_init__(self) -> None:
        if min(self.sessions, self.sessions_per_peer) < 1:
            raise ValueError("a portal budget admits at least one session")
        if not 0 <= self.kept_for_local < self.sessions:
            raise ValueError("kept_for_local must leave peers at least one session")
        if min(self.growth, self.growth_per_peer) < 0:
            raise ValueError("growth bounds cannot be negative")


#: No bound at all: for a core used on its own (a node always passes its budget).
UNLIMITED = BudgetLimits(
    sessions=2**62, kept_for_local=0, sessions_per_peer=2**62, growth=2**62, growth_per_peer=2**62
)


class BudgetExceeded(Exception):
    """A session the budget does not admit; the text says which bound is reached."""


class _Owner:
    __slots__ = ("grown", "key", "remote", "sessions")

    def __init__(self, key: Hashable, remote: bool) -> None:
        self.key = key
        self.remote = remote
        self.sessions = 0
        self.grown = 0


class Credit:
    """One session's share of the budget: what it grew beyond its initial credit."""

    __slots__ = ("_budget", "_owner", "_released", "grown")

    def __init__(self, budget: PortalBudget | None, owner: _Owner | None) -> None:
        self._budget = budget
        self._owner = owner
        self._released = False
        self.grown = 0

    def grow(self, wanted: int) -> int:
        """Up to ``wanted`` more bytes, as the pools allow (0 once released)."""
        if self._released or wanted <= 0:
            return 0
        budget, owner = self._budget, self._owner
        granted = wanted
        if budget is not None and owner is not None:
            limits = budget.limits
            granted = min(
                wanted,
                limits.growth - budget.grown,
                limits.growth_per_peer - owner.grown,
            )
            if granted <= 0:
                return 0
            budget.grown += granted
            owner.grown += granted
        self.grown += granted
        return granted

    def release(self) -> None:
        """The session ended: its growth and its place go back (idempotent)."""
        if self._released:
            return
        self._released = True
        if self._budget is not None and self._owner is not None:
            self._budget._give_back(self._owner, self.grown)


#: A credit outside any budget (a core used on its own, as unit tests do): it always grows.
def unlimited_credit() -> Credit:
    return Credit(None, None)


class PortalBudget:
    """The node's portal sessions and their growth, by owner (see the module docstring)."""

    def __init__(self, limits: BudgetLimits | None = None) -> None:
        self.limits = limits or BudgetLimits()
        self.sessions = 0
        self.remote_sessions = 0  # of them, held for peers
        self.grown = 0
        self.refused = 0
        self._owners: dict[Hashable, _Owner] = {}

    def open(self, owner: Hashable, *, remote: bool) -> Credit:
        """A credit for one more session of ``owner``; BudgetExceeded when the node, or a
        ``remote`` owner, holds as many sessions as it may."""
        limits = self.limits
        entry = self._owners.get(owner)
        refusal = None
        if self.sessions >= limits.sessions:
            refusal = f"this node holds {limits.sessions} portal sessions"
        elif remote and self.remote_sessions >= limits.sessions - limits.kept_for_local:
            refusal = f"this node holds {self.remote_sessions} portal sessions for its peers"
        elif remote and entry is not None and entry.sessions >= limits.sessions_per_peer:
            refusal = f"this peer holds {limits.sessions_per_peer} portal sessions"
        if refusal is not None:
            self.refused += 1
            raise BudgetExceeded(refusal)
        if entry is None:
            entry = self._owners[owner] = _Owner(owner, remote)
        entry.sessions += 1
        self.sessions += 1
        self.remote_sessions += entry.remote
        return Credit(self, entry)

    def held_by(self, owner: Hashable) -> tuple[int, int]:
        """(sessions, grown bytes) of ``owner``."""
        entry = self._owners.get(owner)
        return (entry.sessions, entry.grown) if entry is not None else (0, 0)

    def describe(self) -> dict[str, Any]:
        return {
            "sessions": self.sessions,
            "grown_bytes": self.grown,
            "owners": len(self._owners),
            "refused": self.refused,
        }

    def _give_back(self, entry: _Owner, grown: int) -> None:
        entry.sessions -= 1
        entry.grown -= grown
        self.sessions -= 1
        self.remote_sessions -= entry.remote
        self.grown -= grown
        if entry.sessions == 0:  # forget owners without sessions: the table stays small
            self._owners.pop(entry.key, None)
