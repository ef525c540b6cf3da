"""Time, shared by every layer: the one round-trip estimator and the one timer that drives a
sans-IO core from asyncio.

:class:`RttEstimate` is RFC 6298's estimator: the first sample ``r`` sets ``srtt = r`` and
``rttvar = r / 2``; each later one moves ``srtt`` by 1/8 and ``rttvar`` by 1/4 towards it.
Hops, channel liveness, paths, the node graph and portal sessions all measure round trips
this way (each keeps its own estimate; only the arithmetic is shared).

:class:`DeadlineTimer` is the glue half of STYLE.md's pattern 1 ("time goes in, a deadline
comes out"): after draining a core, the glue calls :meth:`DeadlineTimer.follow` with the
core's ``next_deadline()``. The timer moves only when the deadline changed (cancelling and
re-arming an asyncio handle on every message costs more than the work), and it fires with
``max(deadline, loop.time())``: uvloop wakes up to a millisecond early, and a core asked at
``now < deadline`` does nothing (qh3 ignores an early ``handle_timer`` outright), so without
the clamp the deadline would be missed until the next input.

Imports nothing from meshkey: every layer may use it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class RttEstimate:
    """One path's (or peer's) smoothed round trip: ``srtt``, ``rttvar``, samples taken."""

    __slots__ = ("rttvar", "samples", "srtt")

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.samples = 0

    def add(self, sample: float) -> None:
        sample = max(sample, 0.0)
        if self.srtt is None:
            self.srtt, self.rttvar = sample, sample / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - sample)
            self.srtt = 0.875 * self.srtt + 0.125 * sample
        self.samples += 1

    def timeout(
        self, *, default: float, minimum: float, maximum: float, granularity: float = 0.0
    ) -> float:
        """RFC 6298's RTO, ``srtt + max(granularity, 4 * rttvar)``, clamped; ``default``
        before the first sample."""
        if self.srtt is None:
            return default
        return min(maximum, max(minimum, self.srtt + max(granularity, 4 * self.rttvar)))


class DeadlineTimer:
    """One ``call_at`` that follows a sans-IO core's next deadline.

    ``fire(now)`` runs when the deadline is reached, with ``now`` never earlier than the
    deadline; it should feed the core ``on_timer(now)``, drain it, and call :meth:`follow`
    again with the new deadline (the timer is disarmed while ``fire`` runs).
    """

    __slots__ = ("_fire", "_handle", "_loop", "at")

    def __init__(
        self, fire: Callable[[float], None], loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self._fire = fire
        self._loop = loop or asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self.at: float | None = None  # the deadline armed now, if any

    def follow(self, deadline: float | None) -> None:
        """Arms the timer for ``deadline`` (None: disarm); does nothing if it is unchanged."""
        if deadline == self.at:
            return
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.at = deadline
        if deadline is not None:
            self._handle = self._loop.call_at(deadline, self._expired)

    def cancel(self) -> None:
        self.follow(None)

    def _expired(self) -> None:
        deadline, self._handle, self.at = self.at, None, None
        if deadline is None:
            return
        self._fire(max(deadline, self._loop.time()))
