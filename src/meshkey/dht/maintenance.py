"""The node graph's upkeep as a sans-IO core: joining (retried with backoff), finding out
whether other nodes can dial this one (its DHT mode), and publishing its signed record
whenever what it would say changes.

Theory of operation
-------------------
:class:`Maintenance` drives one :class:`~meshkey.dht.engine.DhtEngine`: it calls the
engine's ``join`` and ``publish`` and reads its table, and it hears the engine's events
(:meth:`Maintenance.on_engine_event`: ``Joined``, ``Published``). What it cannot do itself it
asks the glue for (:meth:`commands`): a round trip of its own (:class:`AskPeer`, a DIAL_BACK
or a PING, answered with :meth:`on_answer`, None when nothing came back), writing down the
mode it found (:class:`SaveMode`), and pinging the closest nodes when it became a server
(:class:`Announce`). What happened comes out as :meth:`events` (for the log, and for the
glue's ``join()``). It reads the node's state through three sensors given to it: whether the
node is behind a NAT (its NAT classification; None while unknown), the local address of its
UDP socket, and what its record would say now. After every input: drain both, then re-read
:meth:`next_deadline`.

States (:class:`Phase`)::

    IDLE --maintain()--> FIRST_NODE      no seeds and an empty graph: the first node of its
      |                                  network is a server at once (others check that
      |                                  claim before they hand it out); nothing follows
      +--maintain()--> JOINING --Joined, or JOIN_TIMEOUT--> CHECKING* --> attempt done
      +--join()------> JOINING ...  --> attempt done --> DONE (one attempt, no retry)

    attempt done, graph empty  --> BACKING_OFF --JOIN_RETRY_FIRST, doubling to _MAX--> JOINING
    attempt done, graph filled --> tick

    tick: reclassified, or a recheck due* --> CHECKING --> publish step
          publish step: the record would say something new --> PUBLISHING
                        --Published, or PUBLISH_TIMEOUT--> WAITING
                        else --> WAITING
    WAITING --RECORD_CHECK_INTERVAL, or record_changed()--> tick

(* only when the mode is not fixed.) Every state goes to CLOSED on :meth:`close`.

**The reachability check** (why a node is a server or a client). A node its NAT
classification puts behind a NAT is a client without asking: a dial-back reaches it only
through a mapping it opened itself, which says nothing about strangers reaching it.
Otherwise it asks the :data:`ASKS` closest servers of its graph, one after the other, for a
DIAL_BACK with a fresh nonce; the one asked has a third node (a *helper*) dial back when it
can, from an address this node never sent to, which is what a NAT's filter would stop. The
node is a server when a PING carrying one of its nonces arrived over an inbound hop
(:meth:`on_ping_nonce`). When only the asked nodes dialled back themselves (no helper), their
dial-back came from an address this node had sent to, which any NAT lets in: it proves
reachability only when no NAT translates this node's address (classified public, or the
first server asked sees it at its own socket's address). The check runs after each join
attempt, :data:`FIRST_RECHECK` after joining (the graph knows more servers then, and a
helper's answer is the better test), every :data:`RECHECK` after that (addresses and NATs
change), and at the next tick after the NAT classification changed.

**Publishing.** The record says what the NAT classification and the relays found, and both
come later than the join and change: it is compared every :data:`RECORD_CHECK_INTERVAL`
with what was last published, and published again when it differs (the engine itself
republishes before expiry). A publish whose round did not end within
:data:`PUBLISH_TIMEOUT` does not count as published: the next tick hands the same content to
the engine again, which re-signs only what changed, and waits for that round again.

**Calls.** :meth:`Maintenance.maintain` runs once (the node calls it when its socket listens,
and perhaps again); :meth:`Maintenance.join` (one attempt, for a caller that awaits it) only
in :data:`JOIN_ALLOWED`, else :class:`MaintenanceBusyError`. Bounds: one request of its own
out at a time; :data:`MAX_NONCES` dial-back nonces remembered.
"""

from __future__ import annotations

import enum
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from meshkey.dht.engine import DhtEngine, EngineEvent, Joined, Published
from meshkey.dht.records import RecordContent
from meshkey.errors import MeshkeyError
from meshkey.identity.node_id import NodeId
from meshkey.retry import RetrySchedule
from meshkey.wire.dht import (
    TXID_SIZE,
    Answer,
    DialBack,
    DialBackResult,
    Mode,
    Ping,
    Pong,
    Request,
)
from meshkey.wire.net import Endpoint

JOIN_RETRY_FIRST = 1.0  # a join nobody answered is tried again after 1 s, 2 s, 4 s...
JOIN_RETRY_MAX = 60.0
JOIN_TIMEOUT = 30.0  # how long an attempt waits for the engine's join before going on
RECORD_CHECK_INTERVAL = 5.0  # how often the record is compared with what it would say
PUBLISH_TIMEOUT = 30.0
FIRST_RECHECK = 60.0  # after joining, whether others can dial in is asked again
RECHECK = 600.0  # and then every ten minutes (addresses and NATs change)
ASKS = 2  # servers asked for a dial-back per check
DIAL_BACK_ASK_TIMEOUT = 15.0  # the node asked may try a helper (5 s), then dial itself (5 s)
MAX_NONCES = 256  # dial-back nonces remembered (a check uses ASKS of them)


class Phase(enum.Enum):
    IDLE = "idle"
    FIRST_NODE = "first_node"
    JOINING = "joining"
    CHECKING = "checking"
    BACKING_OFF = "backing_off"
    PUBLISHING = "publishing"
    WAITING = "waiting"
    DONE = "done"
    CLOSED = "closed"


#: Where :meth:`Maintenance.join` (one attempt, for a caller who awaits it) may start: not
#: while an attempt or the node's own upkeep (:meth:`Maintenance.maintain`) is under way.
JOIN_ALLOWED = frozenset({Phase.IDLE, Phase.FIRST_NODE, Phase.DONE})


class MaintenanceBusyError(MeshkeyError):
    """``join()`` while a join attempt or the node's own upkeep runs."""

    default_kind = "conflict"


# -- commands and events ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AskPeer:
    """Send ``request`` to ``peer`` at ``address`` (a live hop to it may be used) and report
    the answer with ``on_answer(txid, answer, now)``: None when none came within
    ``timeout`` (None: the glue's own request timeout) or the request failed."""

    txid: bytes
    peer: NodeId
    address: Endpoint
    request: Request
    timeout: float | None


@dataclass(frozen=True, slots=True)
class SaveMode:
    """The mode found (already the engine's): keep it, so a restarted server answers from its
    first second."""

    mode: Mode


@dataclass(frozen=True, slots=True)
class Announce:
    """This node became a server: ping ``peers`` (its closest), whose next RPCs from it would
    otherwise come only at their next refresh; each checks the claim before handing it out."""

    peers: tuple[NodeId, ...]


MaintenanceCommand = AskPeer | SaveMode | Announce


@dataclass(frozen=True, slots=True)
class FirstNode:
    mode: Mode


@dataclass(frozen=True, slots=True)
class JoinSlow:
    """The engine's join did not finish within the attempt's timeout (the attempt goes on)."""

    peers: int


@dataclass(frozen=True, slots=True)
class JoinAttempted:
    """A join attempt ended (after its reachability check): ``peers`` in the graph."""

    peers: int


@dataclass(frozen=True, slots=True)
class GraphJoined:
    peers: int
    mode: Mode


@dataclass(frozen=True, slots=True)
class JoinRetry:
    """Nobody answered (no seed, no saved peer): the next attempt in ``delay`` seconds."""

    delay: float


@dataclass(frozen=True, slots=True)
class ModeFound:
    mode: Mode
    reason: str | None  # why, when no dial-back decided it
    answers: int  # the dial-backs that decided it


@dataclass(frozen=True, slots=True)
class PublishFailed:
    reason: str


MaintenanceEvent = (
    FirstNode | JoinSlow | JoinAttempted | GraphJoined | JoinRetry | ModeFound | PublishFailed
)


# -- the reachability check ---------------------------------------------------------------


@dataclass(slots=True)
class _Check:
    """One reachability check: the servers asked, one after the other, and their answers."""

    behind: bool | None
    servers: list[tuple[NodeId, Endpoint]]
    asked: int = 0
    results: list[tuple[bytes, DialBackResult]] = field(default_factory=list)
    waiting: bytes | None = None  # the txid of the one request out
    nonce: bytes = b""  # the nonce of the dial-back out
    local: Endpoint | None = None  # our socket's address, when asking whether it is translated


class Maintenance:
    """The upkeep of one node's graph; see the module's theory of operation."""

    def __init__(
        self,
        engine: DhtEngine,
        *,
        fixed_mode: Mode | None,
        behind_nat: Callable[[], bool | None] = lambda: None,
        local_address: Callable[[], Endpoint | None] = lambda: None,
        rng: random.Random | None = None,
    ) -> None:
        """``fixed_mode`` None finds the mode out (reachability checks); a fixed one is kept.
        ``behind_nat``: True behind a NAT, False public, None unknown (the node's NAT
        classification). ``local_address``: where the node's UDP socket is bound."""
        self.engine = engine
        self.fixed_mode = fixed_mode
        self.behind_nat = behind_nat
        self.local_address = local_address
        self.phase = Phase.IDLE
        self._retry = RetrySchedule(JOIN_RETRY_FIRST, JOIN_RETRY_MAX, rng=rng or random.Random())
        self._maintained = False  # maintain() was called (it runs once)
        self._joining_since: float | None = None  # the upkeep's first attempt began
        self._joined = False
        self._failed_attempts = 0
        self._changed = False  # record_changed() came while a publish or a check ran
        self._upkeep = False  # the attempt under way is the upkeep's (retried), not join()'s
        self._seeds: list[tuple[NodeId, Endpoint]] = []
        self._join_timeout = JOIN_TIMEOUT
        self._record: Callable[[], RecordContent] | None = None
        self._deadline: float | None = None
        self._check: _Check | None = None
        self._check_in_attempt = False  # a check after a join attempt, not a tick's recheck
        self._classified: bool | None = None
        self._recheck_at = 0.0
        self._published: RecordContent | None = None
        self._publishing: tuple[RecordContent, int] | None = None  # content, sequence
        self._nonces_seen: OrderedDict[bytes, bool] = OrderedDict()  # nonce -> over inbound
        self._commands: list[MaintenanceCommand] = []
        self._events: list[MaintenanceEvent] = []

    # -- output -------------------------------------------------------------------------

    def commands(self) -> list[MaintenanceCommand]:
        out, self._commands = self._commands, []
        return out

    def events(self) -> list[MaintenanceEvent]:
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` is due: the join attempt's timeout, the next attempt, the
        publish's timeout or the next tick. None while waiting on answers only."""
        return self._deadline

    # -- inputs -------------------------------------------------------------------------

    def maintain(
        self,
        seeds: Sequence[tuple[NodeId, Endpoint]],
        now: float,
        *,
        record: Callable[[], RecordContent],
    ) -> None:
        """Starts the node's upkeep (once; later calls do nothing): the first node of its
        network becomes a server; any other joins through ``seeds`` or the graph it
        restored, again and again until someone answered, then keeps its mode and its
        record (``record``: what it would say now) up to date."""
        if self._maintained or self.phase not in (Phase.IDLE, Phase.DONE):
            return
        self._maintained = True
        self._record = record
        self._seeds = list(seeds)
        if not self._seeds and len(self.engine.table) == 0:
            if self.fixed_mode is None:
                self._set_mode(Mode.SERVER)
            self.phase = Phase.FIRST_NODE
            self._events.append(FirstNode(self.engine.mode))
            return
        self._upkeep = True
        self._join_timeout = JOIN_TIMEOUT
        self._joining_since = now
        self._attempt(now)

    def record_changed(self, now: float) -> None:
        """What the record would say may have changed (a relay came up or went, the NAT
        mapping moved): compare and publish now instead of at the next tick (or, while a
        publish or a check runs, as soon as it ends)."""
        if self.phase is Phase.WAITING:
            self._tick(now)
        elif self.phase is Phase.PUBLISHING:
            self._publish_step(now)  # a newer record supersedes the one on its way
        else:
            self._changed = True

    def status(self, now: float) -> str:
        """Where the node stands in the graph, for ``node show``: ``first node``,
        ``joined``, or ``joining (...)`` with how long nobody answered."""
        if self.phase is Phase.FIRST_NODE:
            return "first node of its network"
        if self._joined:
            return "joined"
        if self._joining_since is None:
            return "not started"
        seeds = ", ".join(f"{host}:{port}" for _, (host, port) in self._seeds) or "saved graph"
        waited = now - self._joining_since
        tries = f", {self._failed_attempts} attempts" if self._failed_attempts > 1 else ""
        return f"joining (seed {seeds}: no answer for {waited:.0f} s{tries})"

    def join(self, seeds: Sequence[tuple[NodeId, Endpoint]], now: float, *, timeout: float) -> None:
        """One join attempt through ``seeds`` (or from the graph alone), its end reported as
        :class:`JoinAttempted`: the engine's join, given up to ``timeout``, then (the mode
        not fixed) a reachability check. :class:`MaintenanceBusyError` outside
        :data:`JOIN_ALLOWED`."""
        if self.phase not in JOIN_ALLOWED:
            raise MaintenanceBusyError(f"the node graph is {self.phase.value}: join later")
        self._seeds = list(seeds)
        self._upkeep = False
        self._join_timeout = timeout
        self._attempt(now)

    def on_engine_event(self, event: EngineEvent, now: float) -> None:
        """Every event the engine emitted (those of no interest here are ignored)."""
        if isinstance(event, Joined) and self.phase == Phase.JOINING:
            self._deadline = None
            self._after_join(now)
        elif isinstance(event, Published) and self.phase == Phase.PUBLISHING:
            assert self._publishing is not None
            content, sequence = self._publishing
            if event.sequence == sequence:
                self._published, self._publishing = content, None
                self._wait(now)

    def on_answer(self, txid: bytes, answer: Answer | None, now: float) -> None:
        """The outcome of an :class:`AskPeer`: its answer, or None (no answer, refused...)."""
        check = self._check
        if self.phase != Phase.CHECKING or check is None or txid != check.waiting:
            return  # late, or from a check that is over
        check.waiting = None
        if check.local is not None:  # the question: does the server see our own address?
            untranslated = isinstance(answer, Pong) and answer.observed == check.local
            self._conclude(check, now, untranslated=untranslated)
            return
        if isinstance(answer, DialBackResult):
            check.results.append((check.nonce, answer))
        self._ask_next(check, now)

    def on_ping_nonce(self, nonce: bytes, *, inbound: bool) -> None:
        """A PING carrying ``nonce`` arrived, over an inbound hop or not: a dial-back."""
        self._nonces_seen[nonce] = inbound
        self._nonces_seen.move_to_end(nonce)
        while len(self._nonces_seen) > MAX_NONCES:
            self._nonces_seen.popitem(last=False)

    def on_timer(self, now: float) -> None:
        if self._deadline is None or now < self._deadline:
            return
        self._deadline = None
        if self.phase == Phase.JOINING:
            self._events.append(JoinSlow(len(self.engine.table)))
            self._after_join(now)
        elif self.phase == Phase.BACKING_OFF:
            self._attempt(now)
        elif self.phase == Phase.PUBLISHING:
            self._publishing = None
            self._events.append(PublishFailed("no answer in time"))
            self._wait(now)
        elif self.phase == Phase.WAITING:
            self._tick(now)

    def close(self) -> None:
        self.phase = Phase.CLOSED
        self._deadline = None
        self._check = None

    # -- joining ------------------------------------------------------------------------

    def _attempt(self, now: float) -> None:
        self.phase = Phase.JOINING
        self._deadline = now + self._join_timeout
        self.engine.join(self._seeds, now)

    def _after_join(self, now: float) -> None:
        if self.fixed_mode is None:
            self._start_check(now, in_attempt=True)
        else:
            self._attempt_done(now)

    def _attempt_done(self, now: float) -> None:
        peers = len(self.engine.table)
        self._events.append(JoinAttempted(peers))
        if not self._upkeep:
            self.phase = Phase.DONE
        elif peers > 0:
            self._joined = True
            self._events.append(GraphJoined(peers, self.engine.mode))
            self._classified = self.behind_nat()
            self._recheck_at = now + FIRST_RECHECK
            self._tick(now)
        else:
            self._failed_attempts += 1
            delay = self._retry.next_delay() or JOIN_RETRY_MAX
            self._events.append(JoinRetry(delay))
            self.phase = Phase.BACKING_OFF
            self._deadline = now + delay

    # -- the ticks: recheck and publish -------------------------------------------------

    def _tick(self, now: float) -> None:
        classified = self.behind_nat()
        if classified != self._classified:  # reclassified: ask now
            self._classified, self._recheck_at = classified, now
        if self.fixed_mode is None and now >= self._recheck_at:
            self._start_check(now, in_attempt=False)
            return
        self._publish_step(now)

    def _publish_step(self, now: float) -> None:
        assert self._record is not None
        content = self._record()
        if content == self._published:
            self._wait(now)
            return
        self.phase = Phase.PUBLISHING
        self._deadline = now + PUBLISH_TIMEOUT
        self.engine.publish(content, now)
        self._publishing = (content, self.engine.publisher.sequence)

    def _wait(self, now: float) -> None:
        self.phase = Phase.WAITING
        self._deadline = now + RECORD_CHECK_INTERVAL
        if self._changed:  # the record changed while a publish or a check ran: now
            self._changed = False
            self._deadline = now

    # -- the reachability check -----------------------------------------------------------

    def _start_check(self, now: float, *, in_attempt: bool) -> None:
        self.phase = Phase.CHECKING
        self._check_in_attempt = in_attempt
        behind = self.behind_nat()
        if behind:
            self._set_mode(Mode.CLIENT)
            self._events.append(ModeFound(Mode.CLIENT, "behind a NAT (classified)", 0))
            self._check_done(now)
            return
        servers = [
            (entry.node_id, entry.address)
            for entry in self.engine.table.closest(self.engine.own, ASKS)
        ]
        if not servers:
            self._check_done(now)
            return
        check = self._check = _Check(behind, servers)
        self._ask_next(check, now)

    def _ask_next(self, check: _Check, now: float) -> None:
        if check.asked < len(check.servers):
            peer, address = check.servers[check.asked]
            check.asked += 1
            check.nonce = self.engine.nonce()
            request = DialBack(self._txid(), self.engine.mode, check.nonce)
            self._ask(check, peer, address, request, DIAL_BACK_ASK_TIMEOUT)
            return
        helped = [r for r in check.results if r[1].helper]
        if helped or not check.results:
            self._decide(helped, now)
        elif check.behind is False:
            self._decide(check.results, now)
        else:
            check.local = self.local_address()
            if check.local is None:
                self._conclude(check, now, untranslated=False)
                return
            peer, address = check.servers[0]
            self._ask(check, peer, address, Ping(self._txid(), self.engine.mode), None)

    def _conclude(self, check: _Check, now: float, *, untranslated: bool) -> None:
        """Only the asked nodes dialled back: their answers count if nothing translates."""
        if untranslated:
            self._decide(check.results, now)
            return
        self._set_mode(Mode.CLIENT)
        self._events.append(ModeFound(Mode.CLIENT, "behind a NAT, no third node", 0))
        self._check_done(now)

    def _decide(self, helped: list[tuple[bytes, DialBackResult]], now: float) -> None:
        if helped:
            reachable = any(result.ok and self._nonces_seen.get(nonce) for nonce, result in helped)
            before = self.engine.mode
            mode = Mode.SERVER if reachable else Mode.CLIENT
            self._set_mode(mode)
            self._events.append(ModeFound(mode, None, len(helped)))
            if before is not Mode.SERVER and mode is Mode.SERVER:
                table = self.engine.table
                closest = table.closest(self.engine.own, table.k)
                self._commands.append(Announce(tuple(entry.node_id for entry in closest)))
        self._check_done(now)

    def _check_done(self, now: float) -> None:
        self._check = None
        if self._check_in_attempt:
            self._attempt_done(now)
        else:
            self._recheck_at = now + RECHECK
            self._publish_step(now)

    # -- internals ----------------------------------------------------------------------

    def _ask(
        self,
        check: _Check,
        peer: NodeId,
        address: Endpoint,
        request: Request,
        timeout: float | None,
    ) -> None:
        check.waiting = request.txid
        self._commands.append(AskPeer(request.txid, peer, address, request, timeout))

    def _set_mode(self, mode: Mode) -> None:
        self.engine.set_mode(mode)
        self._commands.append(SaveMode(mode))

    def _txid(self) -> bytes:
        return self.engine.rng.randbytes(TXID_SIZE)


__all__ = [
    "JOIN_ALLOWED",
    "Announce",
    "AskPeer",
    "FirstNode",
    "GraphJoined",
    "JoinAttempted",
    "JoinRetry",
    "JoinSlow",
    "Maintenance",
    "MaintenanceBusyError",
    "MaintenanceCommand",
    "MaintenanceEvent",
    "ModeFound",
    "Phase",
    "PublishFailed",
    "SaveMode",
]
