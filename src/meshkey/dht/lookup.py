"""The iterative lookup: Kademlia's node (and value) search as a sans-IO state machine.

(Just over 600 lines: one machine, the iterative lookup, with its theory of operation and
its record-keeping rules (the highest sequence among answers in flight) side by side.)

Theory of operation
-------------------
A lookup for ``target`` starts from the closest servers of this node's table and keeps a
list of *candidates* sorted by XOR distance to the target. Each candidate is NEW, IN_FLIGHT
(asked, within its soft timeout), SLOW (past the soft timeout, still waited for until the
hard one), ANSWERED or FAILED. The *window* is the :data:`K` closest candidates that are
neither FAILED nor SLOW.

- **alpha in flight, not in lockstep.** Whenever fewer than :data:`ALPHA` requests are
  IN_FLIGHT, the closest NEW candidate of the window is asked at once: an answer or a
  timeout frees a slot immediately, the lookup never waits for a whole round.
- **The tail in parallel.** Once alpha answers in a row bring no node closer than the
  closest known (a round without progress: the search has converged), the rest of the
  window is asked at once, up to k in flight: Kademlia's own rule ("resend the FIND_NODE to
  all of the k closest not yet queried"). A peer search (``stop_at_target``) keeps alpha:
  it hopes to stop at the target before the rest of the window is worth asking.
- **A slow peer does not stall it.** A request's soft timeout comes from the peer's
  measured round trip (:class:`~meshkey.dht.rtt.RttEstimator`); past it the peer is SLOW:
  it leaves the window and its slot, and the lookup moves on to the next candidate. Its
  answer is still used if it comes before the hard timeout (4 x soft, at least 2 s: QUIC
  may be retransmitting underneath); after that it is FAILED and reported
  (:class:`PeerUnresponsive`), so the table can learn.
- **Candidates only.** Contacts named in answers are candidates: a request to one goes over
  a hop pinned to its NodeId, so a forged contact fails authentication there (the glue
  reports :meth:`Lookup.on_refused`) and never answers. Only the first address of a
  contact in an answer is taken (an answer says where a node is, not five places to try).
  A refused hop is proof that whoever named that address lied: they become *suspects*,
  the addresses only they named are dropped from the candidates not yet asked, and their
  later answers add nothing — so a poisoner who floods an answer with made-up NodeIds next
  to the target costs one failed hop, not twenty, and cannot crowd the real nodes out of
  the candidate list. A candidate learned with several addresses (from several answers) is
  tried at the next address when one fails or passes its soft timeout, so a poisoner who
  names a real NodeId at a wrong address costs one message, not the node. An address that
  failed is never tried again for that candidate.
- **Dials on someone's say-so.** Asking a candidate at an address only answers named means
  dialling an address this node never observed, on the answerers' word: the caller's
  ``admit`` decides (:mod:`meshkey.dht.budget`, DESIGN.md decision 20). It may let the
  request go free (an address of our own table, or a peer we hold a hop to), charge it to
  the answerers who named the address, say *later* (their credit does not cover a
  dial now: the candidate waits, and the lookup ends without it if nothing it waits on is
  still out) or *never* (the address was found dead: it is dropped). Besides, at most
  :data:`MAX_DIALS_PER_ANSWER` dials of one lookup are charged to one answerer, so one
  answer never makes a lookup dial the whole of it; an address whose namers have all used
  their share is dropped.
- **The end.** FIND_NODE ends when every candidate of the window has ANSWERED (the k
  closest known nodes all answered), or when nothing is left to ask — except that a SLOW
  candidate closer than every answer (most often: the target itself, behind a lossy or
  busy link) is waited for, up to 4 x its soft timeout and at least 1 s (its *patience*).
  A peer search (``stop_at_target``) ends as soon as the target itself answered.
  FIND_VALUE ends once a record that ``verify`` accepts (signature, expiry and owner
  checked by the caller's verifier; a bad record is counted and ignored) is found — with
  ``rank`` (a record's sequence number), not at the first one: no new request goes out,
  the requests in flight are given until their soft timeouts, and the highest-ranked
  record of all the answers wins (a holder the newest STORE missed, such as one that was
  down for a moment, keeps an older record; taking whichever answered first made a finder
  see a relay failover late). A SLOW request is not waited for. The lookup then emits one
  :class:`LookupDone` and stays alive only until its outstanding requests are settled.

Bounds: at most :data:`MAX_CANDIDATES` candidates are kept (the farthest NEW ones are
dropped), at most :data:`~meshkey.wire.dht.MAX_CONTACTS` contacts are read per answer.

Statistics: *rounds* is the depth of the chain of answers that led to the farthest-down
request (the table's own candidates are round 1); *messages* counts every request sent.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from meshkey.dht.budget import Charge
from meshkey.dht.rtt import RttEstimator
from meshkey.dht.table import key_of
from meshkey.identity.node_id import NodeId
from meshkey.wire.dht import (
    MAX_ADDRESSES,
    MAX_CONTACTS,
    Mode,
)
from meshkey.wire.net import Endpoint

K = 20
ALPHA = 3
HARD_FACTOR = 4.0
HARD_MINIMUM = 2.0
PATIENCE_MINIMUM = 1.0
MAX_CANDIDATES = 8 * K
#: Dials of one lookup charged to one answerer: a lookup asks the alpha closest, then (in
#: its tail) the rest of its k-window, so one answer's contacts are rarely more than a few
#: of those asked; a forged answer of 20 made-up ones gets this many dials, not 20.
MAX_DIALS_PER_ANSWER = 6


class LookupKind(enum.Enum):
    FIND_NODE = "find_node"
    FIND_VALUE = "find_value"


@dataclass(frozen=True, slots=True)
class Contact:
    node_id: NodeId
    addresses: tuple[Endpoint, ...]
    mode: Mode = Mode.SERVER


@dataclass(frozen=True, slots=True)
class SendFindNode:
    peer: NodeId
    address: Endpoint
    target: NodeId
    charge: Charge | None = None  # who paid for a dial on their word, if it is one


@dataclass(frozen=True, slots=True)
class SendFindValue:
    peer: NodeId
    address: Endpoint
    key: NodeId
    charge: Charge | None = None


class Admission(enum.Enum):
    """What ``admit`` says of a dial it does not let go now."""

    LATER = "later"  # the namers' credit does not cover it now
    NEVER = "never"  # not at this address (found dead)


#: ``admit(peer, address, namers, now)``: None (free), the namers' charge, or an Admission.
Admit = Callable[[NodeId, Endpoint, frozenset[NodeId], float], "Charge | Admission | None"]


LookupCommand = SendFindNode | SendFindValue


@dataclass(frozen=True, slots=True)
class LookupStats:
    rounds: int
    messages: int
    nodes_asked: int
    answered: int
    failed: int
    slow: int
    late_answers: int
    bad_records: int
    suspects: int  # answerers caught naming a wrong NodeId for an address
    distrusted: int  # candidates dropped because only suspects named them
    skipped: int  # addresses not dialled: found dead, or their namers' share spent
    duration: float

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class LookupDone:
    target: NodeId
    kind: LookupKind
    closest: tuple[Contact, ...]  # answered, closest first
    found: bool  # the target answered itself (FIND_NODE), or a record was found
    record: Any  # what ``verify`` returned for the record found (FIND_VALUE), else None
    stats: LookupStats


@dataclass(frozen=True, slots=True)
class PeerUnresponsive:
    """``peer`` did not answer within its hard timeout (or its hop failed)."""

    peer: NodeId


@dataclass(frozen=True, slots=True)
class PeerAnswered:
    peer: NodeId
    rtt: float


LookupEvent = LookupDone | PeerUnresponsive | PeerAnswered
Verifier = Callable[[bytes, NodeId, float], Any]
#: What makes one verified record better than another (higher wins): its sequence number.
Rank = Callable[[Any], int]


class _State(enum.Enum):
    NEW = 0
    IN_FLIGHT = 1
    SLOW = 2
    ANSWERED = 3
    FAILED = 4


@dataclass(slots=True, eq=False)
class _Candidate:
    node_id: NodeId
    distance: int
    addresses: list[Endpoint]
    round: int
    state: _State = _State.NEW
    tried: int = 0  # addresses tried so far
    sent_at: float = 0.0
    soft_deadline: float = 0.0
    patience_deadline: float = 0.0
    hard_deadline: float = 0.0
    sort_key: tuple[int, bytes] = field(default=(0, b""))
    #: who named each address (empty: this node's own table); see Lookup.on_refused
    named_by: dict[Endpoint, set[NodeId]] = field(default_factory=dict)


class Lookup:
    """One lookup. Inputs return nothing: drain :meth:`commands` and :meth:`events`, then
    re-read :meth:`next_deadline`."""

    def __init__(
        self,
        own: NodeId,
        target: NodeId,
        start: Iterable[Contact],
        now: float,
        *,
        rtt: RttEstimator,
        kind: LookupKind = LookupKind.FIND_NODE,
        k: int = K,
        alpha: int = ALPHA,
        stop_at_target: bool = False,
        verify: Verifier | None = None,
        admit: Admit | None = None,
        rank: Rank | None = None,
    ) -> None:
        self.own = own
        self.target = target
        self.kind = kind
        self.k = k
        self.alpha = alpha
        self.stop_at_target = stop_at_target
        self.started = now
        self._goal = key_of(target)
        self._rtt = rtt
        self._verify = verify
        self._admit = admit
        self._rank = rank
        self._best: Any = None  # the best verified record so far (FIND_VALUE with rank)
        self._dials: dict[NodeId, int] = {}  # dials charged to each answerer
        self._skipped = 0
        self._candidates: dict[NodeId, _Candidate] = {}
        self._order: list[tuple[int, bytes]] = []
        self._by_sort: dict[tuple[int, bytes], _Candidate] = {}
        self._commands: list[LookupCommand] = []
        self._events: list[LookupEvent] = []
        self._in_flight = 0
        self._outstanding = 0
        self._waiting: set[_Candidate] = set()  # IN_FLIGHT or SLOW
        self._now = now
        self._messages = 0
        self._rounds = 0
        self._asked: set[NodeId] = set()
        self._slow = 0
        self._late = 0
        self._bad_records = 0
        self._suspects: set[NodeId] = set()
        self._distrusted = 0
        self._tail = False
        self._no_progress = 0
        self.done: LookupDone | None = None
        for contact in start:
            self._add(contact, 1, None)
        self._pump(now)

    # -- output -----------------------------------------------------------------------

    def commands(self) -> list[LookupCommand]:
        out, self._commands = self._commands, []
        return out

    def events(self) -> list[LookupEvent]:
        out, self._events = self._events, []
        return out

    @property
    def finished(self) -> bool:
        """Done, and no request is outstanding any more: the glue may forget it."""
        return self.done is not None and self._outstanding == 0

    def next_deadline(self) -> float | None:
        deadline: float | None = None
        for candidate in self._waiting:
            if candidate.state == _State.IN_FLIGHT:
                when = candidate.soft_deadline
            elif candidate.state == _State.SLOW:
                when = candidate.hard_deadline
                if self.done is None and candidate.patience_deadline > self._now:
                    when = candidate.patience_deadline
            else:
                continue
            if deadline is None or when < deadline:
                deadline = when
        return deadline

    # -- input ------------------------------------------------------------------------

    def on_reply(
        self, peer: NodeId, contacts: Iterable[Contact], now: float, record: bytes | None = None
    ) -> None:
        """``peer`` answered over a hop authenticated as ``peer``."""
        self._now = max(self._now, now)
        candidate = self._candidates.get(peer)
        if candidate is None:
            return
        if candidate.state == _State.NEW and candidate.tried:
            self._late += 1  # an abandoned attempt answered after all
        elif candidate.state == _State.SLOW:
            self._late += 1
            self._outstanding -= 1
        elif candidate.state == _State.IN_FLIGHT:
            self._in_flight -= 1
            self._outstanding -= 1
        else:
            return
        self._waiting.discard(candidate)
        candidate.state = _State.ANSWERED
        rtt = now - candidate.sent_at
        self._rtt.sample(peer, rtt)
        self._events.append(PeerAnswered(peer, rtt))
        if self.done is not None:
            return
        if record is not None and self.kind == LookupKind.FIND_VALUE:
            verified = self._verify(record, self.target, now) if self._verify else None
            rank = self._rank
            if verified is not None and rank is None:
                self._finish(now, found=True, record=verified)
                return
            if verified is None:
                self._bad_records += 1
            elif rank is not None and (self._best is None or rank(verified) > rank(self._best)):
                self._best = verified
        next_round = candidate.round + 1
        closest_before = self._order[0][0] if self._order else None
        if peer not in self._suspects:
            for contact in list(contacts)[:MAX_CONTACTS]:
                if contact.mode == Mode.SERVER:
                    self._add(contact, next_round, peer)
        if closest_before is not None and self._order and self._order[0][0] >= closest_before:
            self._no_progress += 1
        else:
            self._no_progress = 0
        if self._no_progress >= self.alpha and not self.stop_at_target:
            self._tail = True  # a round brought nothing closer: ask the rest of the window
        if self.stop_at_target and peer == self.target:
            self._finish(now, found=True, record=self._best)
            return
        self._pump(now)

    def on_failure(self, peer: NodeId, now: float) -> None:
        """The request to ``peer`` failed at once: its hop was refused (wrong NodeId) or its
        address was unreachable, or it answered with an error."""
        self._now = max(self._now, now)
        candidate = self._candidates.get(peer)
        if candidate is None or candidate.state not in (_State.IN_FLIGHT, _State.SLOW):
            return
        self._settle_failed(candidate, now)
        self._pump(now)

    def on_refused(self, peer: NodeId, now: float) -> None:
        """The hop to ``peer`` at the address tried authenticated *another* NodeId: whoever
        named that address lied (or is badly out of date). Those peers become suspects: the
        addresses only they named are dropped from every candidate not yet asked, and their
        later answers add nothing. Then it is a failure like any other."""
        self._now = max(self._now, now)
        candidate = self._candidates.get(peer)
        if candidate is None or candidate.state not in (_State.IN_FLIGHT, _State.SLOW):
            return
        tried = candidate.addresses[candidate.tried - 1]
        liars = candidate.named_by.get(tried, set())
        if liars:
            self._suspects |= liars
            self._distrust(candidate)
        # The address was wrong, not the peer: no PeerUnresponsive against it.
        self._settle_failed(candidate, now, blame=False)
        self._pump(now)

    def _distrust(self, exempt: _Candidate) -> None:
        for candidate in list(self._candidates.values()):
            if candidate.state != _State.NEW or candidate is exempt:
                continue
            kept = [
                a
                for i, a in enumerate(candidate.addresses)
                if i < candidate.tried
                or not candidate.named_by.get(a)
                or candidate.named_by[a] - self._suspects
            ]
            if len(kept) == len(candidate.addresses):
                continue
            if not kept[candidate.tried :]:
                self._drop(candidate)
            else:
                candidate.addresses = kept

    def _drop(self, candidate: _Candidate) -> None:
        position = bisect.bisect_left(self._order, candidate.sort_key)
        del self._order[position]
        del self._by_sort[candidate.sort_key]
        del self._candidates[candidate.node_id]
        self._distrusted += 1

    def on_timer(self, now: float) -> None:
        self._now = max(self._now, now)
        for candidate in list(self._waiting):
            if candidate.state == _State.IN_FLIGHT and candidate.soft_deadline <= now:
                self._in_flight -= 1
                self._slow += 1
                if self.done is None and candidate.tried < len(candidate.addresses):
                    # Another address is known: try it now rather than wait on this one
                    # (a late answer over the old one still counts).
                    candidate.state = _State.NEW
                    self._outstanding -= 1
                    self._waiting.discard(candidate)
                    continue
                candidate.state = _State.SLOW
            if candidate.state == _State.SLOW and candidate.hard_deadline <= now:
                self._settle_failed(candidate, now)
        self._pump(now)

    # -- internals --------------------------------------------------------------------

    def _settle_failed(self, candidate: _Candidate, now: float, *, blame: bool = True) -> None:
        if candidate.state == _State.IN_FLIGHT:
            self._in_flight -= 1
        self._outstanding -= 1
        self._waiting.discard(candidate)
        if self.done is None and candidate.tried < len(candidate.addresses):
            candidate.state = _State.NEW  # another address is known for this NodeId
        else:
            candidate.state = _State.FAILED
            if blame:
                self._events.append(PeerUnresponsive(candidate.node_id))

    def _add(self, contact: Contact, round_number: int, source: NodeId | None) -> None:
        if contact.node_id == self.own or not contact.addresses:
            return
        if source is not None:
            contact = Contact(contact.node_id, contact.addresses[:1], contact.mode)
        candidate = self._candidates.get(contact.node_id)
        if candidate is not None:
            for address in contact.addresses:
                if address in candidate.addresses:
                    if source is not None and candidate.named_by.get(address):
                        candidate.named_by[address].add(source)
                    elif source is None:
                        candidate.named_by[address] = set()  # our own table: trusted
                elif len(candidate.addresses) < MAX_ADDRESSES:
                    candidate.addresses.append(address)
                    candidate.named_by[address] = {source} if source else set()
                    if self.done is None and candidate.state == _State.FAILED:
                        candidate.state = _State.NEW  # failed at the addresses tried so far
                    elif self.done is None and candidate.state == _State.SLOW:
                        # Silent where it was asked; another answer says where it is.
                        candidate.state = _State.NEW
                        self._outstanding -= 1
                        self._waiting.discard(candidate)
            return
        distance = key_of(contact.node_id) ^ self._goal
        sort_key = (distance, contact.node_id.raw)
        if len(self._candidates) >= MAX_CANDIDATES and not self._drop_farthest_new(distance):
            return
        candidate = _Candidate(
            contact.node_id,
            distance,
            list(contact.addresses[:MAX_ADDRESSES]),
            round_number,
            sort_key=sort_key,
        )
        for address in candidate.addresses:
            candidate.named_by[address] = {source} if source else set()
        self._candidates[contact.node_id] = candidate
        self._by_sort[sort_key] = candidate
        bisect.insort(self._order, sort_key)

    def _drop_farthest_new(self, distance: int) -> bool:
        for position in range(len(self._order) - 1, -1, -1):
            sort_key = self._order[position]
            if sort_key[0] < distance:
                return False
            candidate = self._by_sort[sort_key]
            if candidate.state == _State.NEW:
                del self._order[position]
                del self._by_sort[sort_key]
                del self._candidates[candidate.node_id]
                return True
        return False

    def _window(self) -> list[_Candidate]:
        window = []
        for sort_key in self._order:
            candidate = self._by_sort[sort_key]
            if candidate.state in (_State.FAILED, _State.SLOW):
                continue
            window.append(candidate)
            if len(window) == self.k:
                break
        return window

    def _pump(self, now: float) -> None:
        if self.done is not None:
            return
        if self._best is not None:
            # A record is found: no new request; the ones in flight may bring a newer one.
            if self._in_flight == 0:
                self._finish(now, found=True, record=self._best)
            return
        parallel = self.k if self._tail else self.alpha
        waiting: set[_Candidate] = set()  # NEW, but their dial may not go now
        while True:
            window = self._window()
            dropped = False
            for candidate in window:
                if self._in_flight >= parallel:
                    break
                if candidate.state == _State.NEW and candidate not in waiting:
                    outcome = self._send(candidate, now)
                    if outcome is Admission.LATER:
                        waiting.add(candidate)
                    elif outcome is Admission.NEVER:
                        dropped = True  # it left the window: another may take its place
            if not dropped:
                break
        if any(
            c.state == _State.IN_FLIGHT or (c.state == _State.NEW and c not in waiting)
            for c in window
        ):
            return
        if waiting and self._outstanding:
            return  # an answer may bring the credit to ask them
        if not window and self._outstanding:
            return  # only slow requests remain: their answers may still bring candidates
        if self._slow_beats_answered(window):
            return  # the best candidate of all is slow: worth its hard timeout
        target = self._candidates.get(self.target)
        found = target is not None and target.state == _State.ANSWERED
        self._finish(now, found=found and self.kind == LookupKind.FIND_NODE)

    def _slow_beats_answered(self, window: list[_Candidate]) -> bool:
        slow = [
            c.distance
            for c in self._waiting
            if c.state == _State.SLOW and c.patience_deadline > self._now
        ]
        if not slow:
            return False
        answered = [c.distance for c in window if c.state == _State.ANSWERED]
        return not answered or min(slow) < min(answered)

    def _send(self, candidate: _Candidate, now: float) -> Admission | None:
        """Asks ``candidate`` at its best untried address that ``admit`` lets go; LATER when
        the best may go only later, NEVER when no address is left (it failed, unblamed)."""
        # Of the addresses not tried yet, the one most answerers agree on goes first (our
        # own table's counts most): a lone poisoner's address is the last resort.
        untried = candidate.addresses[candidate.tried :]
        if len(untried) > 1:
            untried.sort(key=lambda a: -(len(candidate.named_by.get(a) or ()) or 1000))
            candidate.addresses[candidate.tried :] = untried
        while candidate.tried < len(candidate.addresses):
            address = candidate.addresses[candidate.tried]
            verdict = self._admission(candidate, address, now)
            if verdict is Admission.LATER:
                return Admission.LATER
            if verdict is Admission.NEVER:
                del candidate.addresses[candidate.tried]
                candidate.named_by.pop(address, None)
                self._skipped += 1
                continue
            self._dispatch(candidate, address, verdict, now)
            return None
        candidate.state = _State.FAILED  # nowhere left to ask it: no one's fault
        return Admission.NEVER

    def _admission(
        self, candidate: _Candidate, address: Endpoint, now: float
    ) -> Charge | Admission | None:
        namers = candidate.named_by.get(address)
        if not namers or self._admit is None:
            return None  # our own table's address (or nobody counts): no say-so
        allowed = frozenset(n for n in namers if self._dials.get(n, 0) < MAX_DIALS_PER_ANSWER)
        if not allowed:
            return Admission.NEVER
        return self._admit(candidate.node_id, address, allowed, now)

    def _dispatch(
        self, candidate: _Candidate, address: Endpoint, charge: Charge | None, now: float
    ) -> None:
        for payer, _ in charge or ():
            self._dials[payer] = self._dials.get(payer, 0) + 1
        candidate.tried += 1
        candidate.state = _State.IN_FLIGHT
        candidate.sent_at = now
        soft = self._rtt.timeout(candidate.node_id)
        candidate.soft_deadline = now + soft
        candidate.patience_deadline = now + max(soft * HARD_FACTOR, PATIENCE_MINIMUM)
        candidate.hard_deadline = now + max(soft * HARD_FACTOR, HARD_MINIMUM)
        self._in_flight += 1
        self._outstanding += 1
        self._waiting.add(candidate)
        self._messages += 1
        self._asked.add(candidate.node_id)
        self._rounds = max(self._rounds, candidate.round)
        if self.kind == LookupKind.FIND_VALUE:
            self._commands.append(SendFindValue(candidate.node_id, address, self.target, charge))
        else:
            self._commands.append(SendFindNode(candidate.node_id, address, self.target, charge))

    def _finish(self, now: float, *, found: bool, record: Any = None) -> None:
        answered = [
            self._by_sort[s] for s in self._order if self._by_sort[s].state == _State.ANSWERED
        ]
        closest = tuple(Contact(c.node_id, (c.addresses[c.tried - 1],)) for c in answered[: self.k])
        stats = LookupStats(
            rounds=self._rounds,
            messages=self._messages,
            nodes_asked=len(self._asked),
            answered=len(answered),
            failed=sum(1 for c in self._candidates.values() if c.state == _State.FAILED),
            slow=self._slow,
            late_answers=self._late,
            bad_records=self._bad_records,
            suspects=len(self._suspects),
            distrusted=self._distrusted,
            skipped=self._skipped,
            duration=now - self.started,
        )
        self.done = LookupDone(self.target, self.kind, closest, found, record, stats)
        self._events.append(self.done)
