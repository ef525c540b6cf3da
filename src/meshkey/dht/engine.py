"""The node graph's sans-IO engine: one object per node that the daemon and the simulator
both drive.

Theory of operation
-------------------
The engine composes the cores — :class:`~meshkey.dht.table.RoutingTable`,
:class:`~meshkey.dht.lookup.Lookup`, :class:`~meshkey.dht.records.RecordStore`,
:class:`~meshkey.dht.records.Publisher`, the per-peer :class:`~meshkey.dht.rtt.RttEstimator`
and rate limits — and adds what ties them together: transaction ids, bucket-full ping
rounds, join and refresh (maintenance), and the answers to other nodes' requests.

Inputs (each takes ``now``, monotonic seconds; records are judged at ``now + wall_offset``)::

    on_authenticated(node_id, address, direction, now)  the transport's HopAuthenticated
    on_request(peer, address, request, now) -> answer   a request that came over a hop
    on_answer(txid, peer, answer, now)                  the answer to one of our requests
    on_failure(txid, now, refused=)                     our request failed (hop refused...)
    on_timer(now)                                       at next_deadline()
    start_lookup / join / publish / expect_manual / set_mode

Output: :meth:`commands` (:class:`SendRequest`, :class:`DialBackJob`,
:class:`~meshkey.dht.records.PersistSequence`) and :meth:`events` (:class:`LookupFinished`,
:class:`Joined`, :class:`Published`, :class:`PingRoundSettled`). After every input: drain
both, then re-read :meth:`next_deadline`.

**Join / maintenance** (states IDLE → SEEDING → JOINING → REFRESHING → READY): ping the seeds
(each answer is an authenticated hop, which inserts the seed), look up our own NodeId (which
fills the buckets near us), then look up a random id in every bucket from the closest
non-empty one outwards (the far buckets), then READY. In READY, each bucket that saw no
traffic for about an hour (jittered) is refreshed with a lookup of a random id in its range,
at most :data:`MAX_REFRESHES` at once. :meth:`join` again re-joins (seeds may be none: a
restarted node re-joins from the graph it restored).

**Answers.** Only a server answers FIND_NODE, FIND_VALUE and STORE (a client answers
NOT_SERVER); everyone answers PING (liveness is what a full bucket asks about). FIND_NODE
hands out servers only, never the requester itself. Every request counts against the
requester's token bucket (:data:`REQUEST_RATE`), a STORE also against a slower one
(:data:`STORE_RATE`), a DIAL_BACK against a slower still (:data:`DIAL_BACK_RATE`; one
naming a third node as the target is only done for nodes in our graph): RATE_LIMITED past
them.

**Modes.** A peer's claimed mode comes with each of its RPCs. A peer that claims to be a
server, but that this node has only seen inbound, is pinged once over a new outbound hop
(:data:`VERIFY_INTERVAL` apart at most): if that hop authenticates, the table has seen it
reachable and hands it out; if not, it stays a client.
"""

from __future__ import annotations

import enum
import random
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from meshkey.dht.lookup import (
    ALPHA,
    Contact,
    Lookup,
    LookupDone,
    LookupKind,
    PeerAnswered,
    PeerUnresponsive,
    SendFindNode,
)
from meshkey.dht.records import (
    PersistSequence,
    Publisher,
    PublishRecord,
    RateLimiter,
    RecordContent,
    RecordError,
    RecordStore,
    record_or_none,
)
from meshkey.dht.rtt import RttEstimator
from meshkey.dht.table import (
    Added,
    BucketFull,
    K,
    Learned,
    RoutingTable,
    Updated,
    Verdict,
)
from meshkey.identity.keys import Identity
from meshkey.identity.node_id import NodeId
from meshkey.wire.dht import (
    NONCE_SIZE,
    TXID_SIZE,
    Answer,
    DhtError,
    DhtErrorCode,
    DialBack,
    FindNode,
    FindValue,
    Mode,
    Nodes,
    Ping,
    Pong,
    Request,
    Store,
    Stored,
    Value,
    WireContact,
)
from meshkey.wire.net import Endpoint

REQUEST_RATE = 50.0  # requests a second per peer, with a burst of REQUEST_BURST
REQUEST_BURST = 200.0
STORE_RATE = 0.5
STORE_BURST = 10.0
#: A dial-back makes this node open a QUIC connection (and, as a helper, to an address the
#: asker names): rare and slow, or a node could be used to spray handshakes at a victim.
DIAL_BACK_RATE = 0.1
DIAL_BACK_BURST = 3.0
MAX_REFRESHES = 4
MAX_LOOKUPS = 64
VERIFY_INTERVAL = 300.0
PING_TIMEOUT_FACTOR = 4.0
MAX_HINTS = 64


class Phase(enum.Enum):
    IDLE = "idle"
    SEEDING = "seeding"
    JOINING = "joining"
    REFRESHING = "refreshing"
    READY = "ready"


class Purpose(enum.Enum):
    USER = "user"
    JOIN = "join"
    REFRESH = "refresh"
    PUBLISH = "publish"


# -- commands and events ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendRequest:
    """Send ``request`` to ``peer`` at ``address`` over a hop pinned to ``peer``; report the
    answer with ``on_answer(txid, ...)`` or the failure with ``on_failure(txid, ...)``."""

    txid: bytes
    peer: NodeId
    address: Endpoint
    request: Request
    fresh: bool = False  # dial a new hop to ``address``; do not reuse a hop to ``peer``


@dataclass(frozen=True, slots=True)
class DialBackJob:
    """Answer ``request`` from ``peer`` (seen at ``address``) by dialling: open a new hop to
    ``address`` pinned to ``peer`` and ping it with the nonce, or have ``helper`` do it."""

    peer: NodeId
    address: Endpoint
    request: DialBack
    helper: Contact | None


@dataclass(frozen=True, slots=True)
class LookupFinished:
    lookup_id: int
    purpose: Purpose
    result: LookupDone


@dataclass(frozen=True, slots=True)
class Joined:
    neighbours: int


@dataclass(frozen=True, slots=True)
class Published:
    sequence: int
    stored_at: int
    asked: int


@dataclass(frozen=True, slots=True)
class PingRoundSettled:
    bucket: int
    alive: tuple[NodeId, ...]
    evicted: tuple[NodeId, ...]
    added: tuple[NodeId, ...]


EngineCommand = SendRequest | DialBackJob
EngineEvent = LookupFinished | Joined | Published | PingRoundSettled


@dataclass(slots=True)
class _PingRound:
    verdict: BucketFull
    waiting: set[NodeId]
    alive: set[NodeId] = field(default_factory=set)


@dataclass(slots=True)
class _Pending:
    peer: NodeId
    sent_at: float
    deadline: float | None  # None: the lookup owns the timeout
    lookup: int | None = None
    ping_round: _PingRound | None = None
    store: int | None = None  # the publish round it belongs to
    verify: bool = False  # a reachability check: failing it is no failure of the peer


@dataclass(slots=True)
class _PublishRound:
    sequence: int
    asked: int = 0
    waiting: int = 0
    stored: int = 0


class DhtEngine:
    def __init__(
        self,
        identity: Identity,
        now: float,
        *,
        rng: random.Random | None = None,
        k: int = K,
        alpha: int = ALPHA,
        mode: Mode = Mode.CLIENT,
        wall_offset: float = 0.0,
        sequence: int = 0,
        record_capacity: int | None = None,
        refresh_interval: float | None = None,
    ) -> None:
        self.identity = identity
        self.own = identity.node_id
        self.rng = rng or random.Random()
        self.k = k
        self.alpha = alpha
        self.mode = mode
        self.wall_offset = wall_offset
        table_options: dict[str, float] = {}
        if refresh_interval is not None:
            table_options["refresh_interval"] = refresh_interval
        self.table = RoutingTable(self.own, k=k, rng=self.rng, **table_options)  # type: ignore[arg-type]
        self.rtt = RttEstimator()
        self.records = (
            RecordStore(self.own)
            if record_capacity is None
            else RecordStore(self.own, capacity=record_capacity)
        )
        self.publisher = Publisher(identity, sequence=sequence, rng=self.rng)
        self.requests = RateLimiter(REQUEST_RATE, REQUEST_BURST)
        self.stores = RateLimiter(STORE_RATE, STORE_BURST)
        self.dial_backs = RateLimiter(DIAL_BACK_RATE, DIAL_BACK_BURST)
        self.phase = Phase.IDLE
        self._commands: list[EngineCommand | PersistSequence] = []
        self._events: list[EngineEvent] = []
        self._pending: dict[bytes, _Pending] = {}
        self._timed: set[bytes] = set()  # pending txids with a deadline of their own
        self._lookups: dict[int, tuple[Lookup, Purpose]] = {}
        self._lookup_txids: dict[tuple[int, NodeId], bytes] = {}  # the latest attempt
        self._txids_of_lookup: dict[int, set[bytes]] = {}
        self._next_lookup = 1
        self._ping_rounds: dict[int, _PingRound] = {}
        self._seeds_waiting: set[bytes] = set()
        self._seed_ids: set[NodeId] = set()
        self._join_lookups: set[int] = set()
        self._refreshing: set[int] = set()
        self._publish_rounds: dict[int, _PublishRound] = {}
        self._manual: dict[NodeId, bool] = {}
        self._verified: OrderedDict[NodeId, float] = OrderedDict()
        self._hints: OrderedDict[NodeId, Endpoint] = OrderedDict()
        self.started = now

    # -- output -----------------------------------------------------------------------

    def commands(self) -> list[EngineCommand | PersistSequence]:
        out, self._commands = self._commands, []
        return out

    def events(self) -> list[EngineEvent]:
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> float | None:
        candidates = [self.publisher.next_deadline(), self.records.next_deadline()]
        if self.phase == Phase.READY:
            candidates.append(self.table.next_deadline())
        candidates.extend(self._pending[t].deadline for t in self._timed)
        candidates.extend(lookup.next_deadline() for lookup, _ in self._lookups.values())
        present = [c for c in candidates if c is not None]
        return min(present) if present else None

    @property
    def lookups_running(self) -> int:
        return len(self._lookups)

    # -- the way in for peers ----------------------------------------------------------

    def on_authenticated(
        self, node_id: NodeId, address: Endpoint, direction: str, now: float
    ) -> Verdict:
        """A hop to ``node_id`` authenticated at ``address``: the only way into the table."""
        force = self._manual.pop(node_id, None)
        if force is not None:
            verdict = (
                self.table.force(node_id, address, direction, now)
                if force
                else self.table.observe_authenticated(
                    node_id, address, direction, now, learned=Learned.MANUAL
                )
            )
        else:
            verdict = self.table.observe_authenticated(node_id, address, direction, now)
        if isinstance(verdict, Added) and node_id in self._hints:
            del self._hints[node_id]
        if isinstance(verdict, BucketFull):
            self._start_ping_round(verdict, now)
        return verdict

    def expect_manual(self, node_id: NodeId, *, force: bool) -> None:
        """``peer add``: the glue dials ``node_id`` on a fresh hop to the address given; it
        enters the table when that hop authenticates (evicting the bucket's oldest if
        ``force``), learned as manual."""
        self._manual[node_id] = force

    def manual_pending(self, node_id: NodeId) -> bool:
        return node_id in self._manual

    def forget_manual(self, node_id: NodeId) -> None:
        self._manual.pop(node_id, None)

    def add_hint(self, node_id: NodeId, address: Endpoint) -> None:
        """A contact known without proof (``peer add --no-ping``): used to start lookups,
        inserted only once a hop to it authenticates."""
        self._hints[node_id] = address
        self._hints.move_to_end(node_id)
        while len(self._hints) > MAX_HINTS:
            self._hints.popitem(last=False)

    def remove(self, node_id: NodeId) -> bool:
        self._hints.pop(node_id, None)
        return self.table.remove(node_id)

    def set_mode(self, mode: Mode) -> None:
        self.mode = mode

    # -- answering ---------------------------------------------------------------------

    def on_request(
        self, peer: NodeId, address: Endpoint, request: Request, now: float
    ) -> Answer | DialBackJob:
        """The answer to ``request`` from ``peer`` (authenticated, seen at ``address``), or a
        dial-back job for the glue."""
        txid, mode = request.txid, self.mode
        self._peer_claims(peer, address, request.mode, now)
        if not self.requests.allow(peer, now):
            return DhtError(txid, mode, DhtErrorCode.RATE_LIMITED, "too many requests")
        if isinstance(request, Ping):
            return Pong(txid, mode, address)
        if mode != Mode.SERVER:
            return DhtError(txid, mode, DhtErrorCode.NOT_SERVER, "this node is a client")
        if isinstance(request, FindNode):
            return Nodes(txid, mode, self._contacts_for(NodeId(request.target), peer))
        if isinstance(request, FindValue):
            key = NodeId(request.key)
            record = self._record_for(key, now)
            if record is not None:
                return Value(txid, mode, record, ())
            return Value(txid, mode, None, self._contacts_for(key, peer))
        if isinstance(request, Store):
            if not self.stores.allow(peer, now):
                return DhtError(txid, mode, DhtErrorCode.RATE_LIMITED, "too many stores")
            try:
                self.records.put(request.record, now + self.wall_offset)
            except RecordError as exc:
                return DhtError(txid, mode, exc.code, exc.reason)
            return Stored(txid, mode)
        assert isinstance(request, DialBack)
        if not self.dial_backs.allow(peer, now):
            return DhtError(txid, mode, DhtErrorCode.RATE_LIMITED, "too many dial-backs")
        if request.target is not None and self.table.get(peer) is None:
            # Dialling for someone else is a favour to nodes in our graph only.
            return DhtError(txid, mode, DhtErrorCode.UNAVAILABLE, "unknown asker")
        helper = None
        if request.target is None:
            choices = [
                e
                for e in self.table.closest(self.table.random_id_in_bucket(255), self.k)
                if e.node_id != peer
            ]
            if choices:
                pick = self.rng.choice(choices)
                helper = Contact(pick.node_id, (pick.address,))
        return DialBackJob(peer, address, request, helper)

    def _peer_claims(self, peer: NodeId, address: Endpoint, mode: Mode, now: float) -> None:
        entry = self.table.claim_mode(peer, mode)
        if entry is None or mode != Mode.SERVER or entry.reachable_at is not None:
            return
        if peer not in self.table:
            return  # waiting in a replacement cache: checked if it ever gets a place
        last = self._verified.get(peer)
        if last is not None and now - last < VERIFY_INTERVAL:
            return
        self._verified[peer] = now
        self._verified.move_to_end(peer)
        while len(self._verified) > 4096:
            self._verified.popitem(last=False)
        # A new outbound hop to where it was seen: if that authenticates, it is reachable.
        txid = self._send(
            peer, address, Ping(self._txid(), self.mode), now, deadline=True, fresh=True
        )
        self._pending[txid].verify = True

    def _contacts_for(self, target: NodeId, requester: NodeId) -> tuple[WireContact, ...]:
        return tuple(
            WireContact(e.node_id.raw, Mode.SERVER, (e.address,))
            for e in self.table.closest(target, self.k, exclude=requester)
        )

    def _record_for(self, key: NodeId, now: float) -> bytes | None:
        if key == self.own:
            current = self.publisher.current
            if current is not None and current.expiry > now + self.wall_offset:
                return current.raw
            return None
        held = self.records.get(key, now + self.wall_offset)
        return held.raw if held is not None else None

    # -- our requests' outcomes --------------------------------------------------------

    def on_answer(self, txid: bytes, peer: NodeId, answer: Answer, now: float) -> None:
        pending = self._pending.get(txid)
        if pending is None or pending.peer != peer:
            return  # unknown, late past its deadline, or from someone else
        if isinstance(answer, DhtError):
            self.on_failure(txid, now)
            return
        del self._pending[txid]
        self._timed.discard(txid)
        self.table.claim_mode(peer, answer.mode)
        self.table.record_success(peer, now)
        if pending.lookup is not None:
            self._forget_lookup_txid(pending.lookup, peer, txid)
            entry = self._lookups.get(pending.lookup)
            if entry is not None:
                lookup = entry[0]
                contacts: tuple[WireContact, ...] = ()
                record: bytes | None = None
                if isinstance(answer, Nodes):
                    contacts = answer.contacts
                elif isinstance(answer, Value):
                    contacts, record = answer.contacts, answer.record
                lookup.on_reply(peer, [_contact(c) for c in contacts], now, record)
                self._after_lookup(pending.lookup)
            return
        self.rtt.sample(peer, now - pending.sent_at)
        if pending.ping_round is not None:
            pending.ping_round.alive.add(peer)
            self._ping_answered(pending.ping_round, peer, now)
        if pending.store is not None and isinstance(answer, Stored):
            self._publish_answered(pending.store, stored=True)
        if txid in self._seeds_waiting:
            self._seed_settled(txid, now)

    def on_failure(self, txid: bytes, now: float, *, refused: bool = False) -> None:
        """Our request failed. ``refused``: its hop authenticated another NodeId than the
        one it was pinned to (the address does not belong to that peer)."""
        pending = self._pending.pop(txid, None)
        self._timed.discard(txid)
        if pending is None:
            return
        if pending.lookup is not None:
            self._forget_lookup_txid(pending.lookup, pending.peer, txid)
            if self._lookup_txids.get((pending.lookup, pending.peer)) not in (None, txid):
                return  # an abandoned attempt failed; a newer one is out
            entry = self._lookups.get(pending.lookup)
            if entry is not None:
                if refused:
                    entry[0].on_refused(pending.peer, now)
                else:
                    entry[0].on_failure(pending.peer, now)
                self._after_lookup(pending.lookup)
            return
        self._manual.pop(pending.peer, None)
        if not pending.verify:
            self.table.record_failure(pending.peer, now)
        if pending.ping_round is not None:
            self._ping_answered(pending.ping_round, pending.peer, now)
        if pending.store is not None:
            self._publish_answered(pending.store, stored=False)
        if txid in self._seeds_waiting:
            self._seed_settled(txid, now)

    def on_timer(self, now: float) -> None:
        for txid in list(self._timed):
            pending = self._pending.get(txid)
            if pending is not None and pending.deadline is not None and pending.deadline <= now:
                self.on_failure(txid, now)
        for lookup_id in list(self._lookups):
            entry = self._lookups.get(lookup_id)
            if entry is None:
                continue
            deadline = entry[0].next_deadline()
            if deadline is not None and deadline <= now:
                entry[0].on_timer(now)
                self._after_lookup(lookup_id)
        self.records.expire(now + self.wall_offset)
        self.publisher.on_timer(now + self.wall_offset)
        self._drain_publisher(now)
        if self.phase == Phase.READY:
            for index in self.table.due_refreshes(now):
                if len(self._refreshing) >= MAX_REFRESHES:
                    break
                self.table.touch_bucket(index, now)
                target = self.table.random_id_in_bucket(index)
                self._refreshing.add(self.start_lookup(target, now, purpose=Purpose.REFRESH))

    # -- lookups -----------------------------------------------------------------------

    def start_lookup(
        self,
        target: NodeId,
        now: float,
        *,
        kind: LookupKind = LookupKind.FIND_NODE,
        stop_at_target: bool = False,
        purpose: Purpose = Purpose.USER,
    ) -> int:
        """Starts a lookup; its result comes as a :class:`LookupFinished` event."""
        lookup_id = self._next_lookup
        self._next_lookup += 1
        start = [Contact(e.node_id, (e.address,)) for e in self.table.closest(target, self.k)]
        known = {c.node_id for c in start}
        start.extend(Contact(n, (a,)) for n, a in self._hints.items() if n not in known)
        if target != self.own and len(self.table) and purpose != Purpose.REFRESH:
            self.table.touch_bucket(self.table.bucket_of(target), now)
        lookup = Lookup(
            self.own,
            target,
            start,
            now,
            rtt=self.rtt,
            kind=kind,
            k=self.k,
            alpha=self.alpha,
            stop_at_target=stop_at_target,
            verify=self._verify_record,
        )
        self._lookups[lookup_id] = (lookup, purpose)
        self._after_lookup(lookup_id)
        return lookup_id

    def _forget_lookup_txid(self, lookup_id: int, peer: NodeId, txid: bytes) -> None:
        if self._lookup_txids.get((lookup_id, peer)) == txid:
            del self._lookup_txids[(lookup_id, peer)]
        txids = self._txids_of_lookup.get(lookup_id)
        if txids is not None:
            txids.discard(txid)

    def _verify_record(self, data: bytes, owner: NodeId, now: float) -> object:
        return record_or_none(data, owner, now + self.wall_offset)

    def _after_lookup(self, lookup_id: int) -> None:
        lookup, purpose = self._lookups[lookup_id]
        for command in lookup.commands():
            request: Request
            if isinstance(command, SendFindNode):
                request = FindNode(self._txid(), self.mode, command.target.raw)
            else:
                request = FindValue(self._txid(), self.mode, command.key.raw)
            txid = request.txid
            self._pending[txid] = _Pending(command.peer, 0.0, None, lookup=lookup_id)
            self._lookup_txids[(lookup_id, command.peer)] = txid
            self._txids_of_lookup.setdefault(lookup_id, set()).add(txid)
            self._commands.append(SendRequest(txid, command.peer, command.address, request))
        for event in lookup.events():
            if isinstance(event, PeerUnresponsive):
                txid_gone = self._lookup_txids.pop((lookup_id, event.peer), None)
                if txid_gone is not None:
                    self._pending.pop(txid_gone, None)
                self.table.record_failure(event.peer, lookup.started)
            elif isinstance(event, PeerAnswered):
                continue
            elif isinstance(event, LookupDone):
                self._events.append(LookupFinished(lookup_id, purpose, event))
                self._lookup_done(lookup_id, purpose, event)
        if lookup.finished:
            self._lookups.pop(lookup_id, None)
            for key in [key for key in self._lookup_txids if key[0] == lookup_id]:
                del self._lookup_txids[key]
            for txid in self._txids_of_lookup.pop(lookup_id, ()):
                self._pending.pop(txid, None)

    # -- bucket-full ping rounds -------------------------------------------------------

    def _start_ping_round(self, verdict: BucketFull, now: float) -> None:
        ping_round = _PingRound(verdict, set(verdict.to_ping))
        self._ping_rounds[verdict.bucket] = ping_round
        for node_id in verdict.to_ping:
            entry = self.table.get(node_id)
            if entry is None:
                ping_round.waiting.discard(node_id)
                continue
            txid = self._send(
                node_id, entry.address, Ping(self._txid(), self.mode), now, deadline=True
            )
            self._pending[txid].ping_round = ping_round
        if not ping_round.waiting:
            self._settle_round(ping_round, now)

    def _ping_answered(self, ping_round: _PingRound, peer: NodeId, now: float) -> None:
        ping_round.waiting.discard(peer)
        if not ping_round.waiting:
            self._settle_round(ping_round, now)

    def _settle_round(self, ping_round: _PingRound, now: float) -> None:
        verdict = ping_round.verdict
        if self._ping_rounds.get(verdict.bucket) is ping_round:
            del self._ping_rounds[verdict.bucket]
        added = self.table.settle(verdict, ping_round.alive, now)
        evicted = tuple(n for n in verdict.to_ping if n not in ping_round.alive)
        self._events.append(
            PingRoundSettled(
                verdict.bucket,
                tuple(n for n in verdict.to_ping if n in ping_round.alive),
                evicted,
                tuple(e.node_id for e in added),
            )
        )

    # -- join and refresh --------------------------------------------------------------

    def join(self, seeds: Iterable[tuple[NodeId, Endpoint]], now: float) -> None:
        """Joins (or re-joins): ping the seeds, look up our own id, refresh the far buckets."""
        self.phase = Phase.SEEDING
        self._seeds_waiting.clear()
        self._seed_ids.clear()
        for node_id, address in seeds:
            if node_id == self.own:
                continue
            txid = self._send(node_id, address, Ping(self._txid(), self.mode), now, deadline=True)
            self._seeds_waiting.add(txid)
            self._seed_ids.add(node_id)
        if not self._seeds_waiting:
            self._join_lookup(now)

    def _seed_settled(self, txid: bytes, now: float) -> None:
        self._seeds_waiting.discard(txid)
        if not self._seeds_waiting and self.phase == Phase.SEEDING:
            for node_id in self._seed_ids:
                self.table.set_learned(node_id, Learned.SEED)
            self._join_lookup(now)

    def _join_lookup(self, now: float) -> None:
        self.phase = Phase.JOINING
        self._join_lookups = set()
        self._start_join_lookup(self.own, now)

    def _start_join_lookup(self, target: NodeId, now: float) -> None:
        # Registered before it starts: a lookup with nobody to ask (no seed answered) ends
        # inside start_lookup, and the join must see it end.
        self._join_lookups.add(self._next_lookup)
        self.start_lookup(target, now, purpose=Purpose.JOIN)

    def _lookup_done(self, lookup_id: int, purpose: Purpose, done: LookupDone) -> None:
        now = done.stats.duration + self._lookups[lookup_id][0].started
        if purpose == Purpose.REFRESH:
            self._refreshing.discard(lookup_id)
        elif purpose == Purpose.PUBLISH:
            self._publish_to(lookup_id, done, now)
        elif purpose == Purpose.JOIN and lookup_id in self._join_lookups:
            self._join_lookups.discard(lookup_id)
            if self.phase == Phase.JOINING:
                self.phase = Phase.REFRESHING
                floor = self.table.closest_bucket()
                if floor is not None:
                    for index in range(floor + 1, 256):
                        self.table.touch_bucket(index, now)
                        self._start_join_lookup(self.table.random_id_in_bucket(index), now)
            if self.phase == Phase.REFRESHING and not self._join_lookups:
                self.phase = Phase.READY
                self._events.append(Joined(len(self.table)))

    # -- publishing --------------------------------------------------------------------

    def publish(self, content: RecordContent, now: float) -> None:
        """Sets what this node's record says; it is (re)published when it changes and before
        it expires."""
        self.publisher.set_content(content, now + self.wall_offset)
        self._drain_publisher(now)

    def republish(self, now: float) -> None:
        self.publisher.republish_now(now + self.wall_offset)
        self._drain_publisher(now)

    def _drain_publisher(self, now: float) -> None:
        for command in self.publisher.commands():
            if isinstance(command, PublishRecord):
                lookup_id = self.start_lookup(self.own, now, purpose=Purpose.PUBLISH)
                self._publish_rounds[lookup_id] = _PublishRound(command.record.sequence)
            else:
                self._commands.append(command)

    def _publish_to(self, lookup_id: int, done: LookupDone, now: float) -> None:
        publish_round = self._publish_rounds.pop(lookup_id, None)
        current = self.publisher.current
        if publish_round is None or current is None:
            return
        if current.sequence != publish_round.sequence:
            return  # a newer record is on its way
        round_id = lookup_id
        self._publish_rounds[-round_id] = publish_round
        for contact in done.closest[: self.k]:
            txid = self._send(
                contact.node_id,
                contact.addresses[0],
                Store(self._txid(), self.mode, current.raw),
                now,
                deadline=True,
            )
            self._pending[txid].store = -round_id
            publish_round.asked += 1
            publish_round.waiting += 1
        if not publish_round.waiting:
            self._publish_answered(-round_id, stored=False, count=False)

    def _publish_answered(self, round_id: int, *, stored: bool, count: bool = True) -> None:
        publish_round = self._publish_rounds.get(round_id)
        if publish_round is None:
            return
        if count:
            publish_round.waiting -= 1
            publish_round.stored += stored
        if publish_round.waiting <= 0:
            del self._publish_rounds[round_id]
            self._events.append(
                Published(publish_round.sequence, publish_round.stored, publish_round.asked)
            )

    # -- internals ---------------------------------------------------------------------

    def _txid(self) -> bytes:
        while True:
            txid = self.rng.randbytes(TXID_SIZE)
            if txid not in self._pending:
                return txid

    def nonce(self) -> bytes:
        return self.rng.randbytes(NONCE_SIZE)

    def _send(
        self,
        peer: NodeId,
        address: Endpoint,
        request: Request,
        now: float,
        *,
        deadline: bool,
        fresh: bool = False,
    ) -> bytes:
        timeout = self.rtt.timeout(peer) * PING_TIMEOUT_FACTOR
        self._pending[request.txid] = _Pending(peer, now, now + timeout if deadline else None)
        if deadline:
            self._timed.add(request.txid)
        self._commands.append(SendRequest(request.txid, peer, address, request, fresh))
        return request.txid


def _contact(wire: WireContact) -> Contact:
    return Contact(NodeId(wire.node_id), wire.addresses, wire.mode)


__all__ = [
    "DhtEngine",
    "DialBackJob",
    "EngineCommand",
    "EngineEvent",
    "Joined",
    "LookupFinished",
    "Phase",
    "PingRoundSettled",
    "Published",
    "Purpose",
    "SendRequest",
    "Updated",
]
