"""The node graph's sans-IO engine: one object per node that the daemon and the simulator
both drive.

(Over 600 lines on purpose: the composite that joins the node graph's sub-machines, each in
its own module (:mod:`~meshkey.dht.transactions`, :mod:`~meshkey.dht.responder`,
:mod:`~meshkey.dht.lookups`, :mod:`~meshkey.dht.rounds`, :mod:`~meshkey.dht.maintenance`);
what is left is the routing between them and the budgets that bound what peers cause.)

Theory of operation
-------------------
The engine composes the cores — :class:`~meshkey.dht.table.RoutingTable`,
:class:`~meshkey.dht.lookup.Lookup`, :class:`~meshkey.dht.records.RecordStore`,
:class:`~meshkey.dht.records.Publisher`, the per-peer :class:`~meshkey.dht.rtt.RttEstimator`,
the requests in flight (:class:`~meshkey.dht.transactions.Transactions`), the lookups
running (:class:`~meshkey.dht.lookups.Lookups`), the answering half
(:class:`~meshkey.dht.responder.Responder`) and the rounds of pings and stores
(:mod:`meshkey.dht.rounds`) — and adds what ties them together: join and refresh,
publishing, and routing each answer or failure to what asked for it (its transaction's
tag). The upkeep around it (joining again, the mode, what the record says) is
:mod:`meshkey.dht.maintenance`; what it emits is in :mod:`meshkey.dht.events`.

Inputs (each takes ``now``, monotonic seconds; records are judged at ``now + wall_offset``)::

    on_authenticated(node_id, address, direction, now)  the transport's HopAuthenticated
    on_request(peer, address, request, now, size=) -> answer   a request over a hop
    on_answer(txid, peer, answer, now, size=)           the answer to one of our requests
    on_failure(txid, now, refused=)                     our request failed (hop refused...)
    on_timer(now)                                       at next_deadline()
    start_lookup / join / publish / expect_manual / set_mode

Output: :meth:`commands` (:class:`~meshkey.dht.transactions.SendRequest`,
:class:`~meshkey.dht.records.PersistSequence`), the answer (or a
:class:`~meshkey.dht.responder.DialBackJob`) returned by :meth:`on_request`, and
:meth:`events` (:class:`LookupFinished`, :class:`Joined`, :class:`Published`,
:class:`PingRoundSettled`). After every input: drain both, then re-read
:meth:`next_deadline`.

**Join / maintenance** (states IDLE → SEEDING → JOINING → REFRESHING → READY): ping the seeds
(each answer is an authenticated hop, which inserts the seed), look up our own NodeId (which
fills the buckets near us), then look up a random id in every bucket from the closest
non-empty one outwards (the far buckets), then READY. In READY, each bucket that saw no
traffic for about an hour (jittered) is refreshed with a lookup of a random id in its range,
at most :data:`MAX_REFRESHES` at once. :meth:`join` again re-joins (seeds may be none: a
restarted node re-joins from the graph it restored).

**Answers** are the :class:`~meshkey.dht.responder.Responder`'s (which request kinds are
answered in which mode is its table, :data:`~meshkey.dht.responder.ANSWERED`).

**Dials on someone's say-so** (DESIGN.md decision 20, :mod:`meshkey.dht.budget`). A lookup
asking a candidate at an address only answers named (not this node's own table, and no hop
to it is up: the ``connected`` sensor) dials on the namers' word: the engine charges the
dial to them (:class:`~meshkey.dht.budget.DialBudget`: 3x the bytes each sent), marks
the request for the glue to close the dial after
:data:`~meshkey.dht.budget.DIAL_PATIENCE`, gives the charge back when the answer comes (the
address was true) and keeps it, and the address as dead, when the request fails. Every
request and answer earns its sender credit (its size, given by the glue), every hop that
authenticates too (:data:`~meshkey.dht.budget.HOP_BYTES`).

**Modes.** A peer's claimed mode comes with each of its RPCs. A peer that claims to be a
server, but that this node has only seen inbound, is pinged once over a new outbound hop
(:data:`VERIFY_INTERVAL` apart at most): if that hop authenticates, the table has seen it
reachable and hands it out; if not, it stays a client.
"""

from __future__ import annotations

import enum
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from meshkey.dht.budget import DIAL_PATIENCE, HOP_BYTES, Charge, DialBudget
from meshkey.dht.diversity import DEFAULT as DEFAULT_DIVERSITY
from meshkey.dht.diversity import Diversity
from meshkey.dht.events import (
    EngineCommand,
    EngineEvent,
    Joined,
    LookupFinished,
    PingRoundSettled,
    Published,
    Purpose,
)
from meshkey.dht.lookup import (
    ALPHA,
    Admission,
    Contact,
    Lookup,
    LookupDone,
    LookupKind,
    PeerAnswered,
    PeerUnresponsive,
    SendFindNode,
)
from meshkey.dht.lookups import MAX_LOOKUPS, LookupLimitError, Lookups
from meshkey.dht.records import (
    PeerRecord,
    Publisher,
    PublishRecord,
    RecordContent,
    RecordStore,
    record_or_none,
)
from meshkey.dht.responder import DialBackJob, Responder
from meshkey.dht.rounds import PingRound, StoreRound
from meshkey.dht.rtt import RttEstimator
from meshkey.dht.table import (
    Added,
    BucketFull,
    K,
    Learned,
    RoutingTable,
    Verdict,
)
from meshkey.dht.transactions import SendRequest, Transactions
from meshkey.identity.keys import Identity
from meshkey.identity.node_id import NodeId
from meshkey.wire.dht import (
    NONCE_SIZE,
    Answer,
    DhtError,
    FindNode,
    FindValue,
    Mode,
    Nodes,
    Ping,
    Request,
    Store,
    Stored,
    Value,
    WireContact,
    encode_rpc,
)
from meshkey.wire.net import Endpoint

MAX_REFRESHES = 4
VERIFY_INTERVAL = 300.0
PING_TIMEOUT_FACTOR = 4.0
MAX_HINTS = 64


class Phase(enum.Enum):
    IDLE = "idle"
    SEEDING = "seeding"
    JOINING = "joining"
    REFRESHING = "refreshing"
    READY = "ready"


@dataclass(slots=True)
class _RequestFor:
    """What one of our requests is for (its transaction's tag): at most one field set."""

    lookup: int | None = None
    ping_round: PingRound | None = None
    store: StoreRound | None = None
    verify: bool = False  # a reachability check: failing it is no failure of the peer


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
        diversity: Diversity = DEFAULT_DIVERSITY,
        connected: Callable[[NodeId], bool] | None = None,
    ) -> None:
        """``connected(peer)``: whether a hop to ``peer`` is up (a request to it then needs
        no dial); without it, every request to an address only others named is a dial."""
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
        self.table = RoutingTable(
            self.own,
            k=k,
            rng=self.rng,
            diversity=diversity,
            **table_options,  # type: ignore[arg-type]
        )
        self.rtt = RttEstimator()
        self.records = (
            RecordStore(self.own)
            if record_capacity is None
            else RecordStore(self.own, capacity=record_capacity)
        )
        self.publisher = Publisher(identity, sequence=sequence, rng=self.rng)
        self.responder = Responder(
            self.table, self.records, self._own_record, self.rng, k=k, wall_offset=wall_offset
        )
        self.tx: Transactions[_RequestFor] = Transactions(self.rng)
        self.phase = Phase.IDLE
        self._commands: list[EngineCommand] = []
        self._events: list[EngineEvent] = []
        self.lookups = Lookups()
        self._seeds_waiting: set[bytes] = set()
        self._seed_ids: set[NodeId] = set()
        self._join_lookups: set[int] = set()
        self._refreshing: set[int] = set()
        self._publishing: dict[int, int] = {}  # publish lookup -> the record's sequence
        self._manual: dict[NodeId, bool] = {}
        self._verified: OrderedDict[NodeId, float] = OrderedDict()
        self._hints: OrderedDict[NodeId, Endpoint] = OrderedDict()
        self.budget = DialBudget()
        self._connected = connected or (lambda peer: False)
        self._charged: dict[bytes, Charge] = {}  # txid of a dial on someone's word -> who paid
        self.started = now

    # -- output -----------------------------------------------------------------------

    def commands(self) -> list[EngineCommand]:
        out, self._commands = self._commands, []
        return out

    def events(self) -> list[EngineEvent]:
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> float | None:
        candidates = [
            self.publisher.next_deadline(),
            self.records.next_deadline(),
            self.tx.next_deadline(),
            self.lookups.next_deadline(),
        ]
        if self.phase == Phase.READY:
            candidates.append(self.table.next_deadline())
        present = [c for c in candidates if c is not None]
        return min(present) if present else None

    # -- the way in for peers ----------------------------------------------------------

    def on_authenticated(
        self, node_id: NodeId, address: Endpoint, direction: str, now: float
    ) -> Verdict:
        """A hop to ``node_id`` authenticated at ``address``: the only way into the table."""
        self.budget.earned(node_id, HOP_BYTES)
        self.budget.alive(address)
        # A manual add waits for the hop it dials (outbound); the peer dialling in meanwhile
        # (say, to check this node's own claim to be a server) is not that proof.
        force = self._manual.pop(node_id, None) if direction == "outbound" else None
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
        self,
        peer: NodeId,
        address: Endpoint,
        request: Request,
        now: float,
        *,
        size: int | None = None,
    ) -> Answer | DialBackJob:
        """The answer to ``request`` from ``peer`` (authenticated, seen at ``address``; its
        ``size`` in bytes as it came, None: as encoded here), or a dial-back job for the
        glue; a peer claiming to be a server may be checked first."""
        self.budget.earned(peer, len(encode_rpc(request)) if size is None else size)
        self._peer_claims(peer, address, request.mode, now)
        return self.responder.answer(peer, address, request, self.mode, now)

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
        ping = Ping(self.tx.new_txid(), self.mode)
        self._send(peer, address, ping, now, _RequestFor(verify=True), fresh=True)

    def _own_record(self, wall_now: float) -> PeerRecord | None:
        current = self.publisher.current
        return current if current is not None and current.expiry > wall_now else None

    # -- our requests' outcomes --------------------------------------------------------

    def on_answer(
        self, txid: bytes, peer: NodeId, answer: Answer, now: float, *, size: int | None = None
    ) -> None:
        """``peer`` answered request ``txid`` (``size``: the answer's bytes as received;
        None: as encoded here)."""
        pending = self.tx.get(txid)
        if pending is None or pending.peer != peer:
            return  # unknown, late past its deadline, or from someone else
        self.budget.earned(peer, len(encode_rpc(answer)) if size is None else size)
        charge = self._charged.pop(txid, None)
        if charge is not None:
            self.budget.refund(charge)  # it answered over a hop proven to be it: a true address
        if isinstance(answer, DhtError):
            self.on_failure(txid, now)
            return
        self.tx.close(txid)
        wanted = pending.tag
        self.table.claim_mode(peer, answer.mode)
        self.table.record_success(peer, now)
        if wanted.lookup is not None:
            self.lookups.settled(wanted.lookup, peer, txid)
            entry = self.lookups.get(wanted.lookup)
            if entry is not None:
                lookup = entry[0]
                contacts: tuple[WireContact, ...] = ()
                record: bytes | None = None
                if isinstance(answer, Nodes):
                    contacts = answer.contacts
                elif isinstance(answer, Value):
                    contacts, record = answer.contacts, answer.record
                lookup.on_reply(peer, [_contact(c) for c in contacts], now, record)
                self._after_lookup(wanted.lookup, now)
            return
        self.rtt.sample(peer, now - pending.sent_at)
        if wanted.ping_round is not None:
            self._ping_answered(wanted.ping_round, peer, now, alive=True)
        if wanted.store is not None and isinstance(answer, Stored):
            self._store_answered(wanted.store, stored=True)
        if txid in self._seeds_waiting:
            self._seed_settled(txid, now)

    def on_failure(self, txid: bytes, now: float, *, refused: bool = False) -> None:
        """Our request failed. ``refused``: its hop authenticated another NodeId than the
        one it was pinned to (the address does not belong to that peer)."""
        pending = self.tx.close(txid)
        if pending is None:
            return
        charged = self._charged.pop(txid, None) is not None
        if charged and not refused and pending.address is not None:
            self.budget.failed(pending.address, now)  # nobody there: never again on a say-so
        wanted = pending.tag
        if wanted.lookup is not None:
            if not self.lookups.settled(wanted.lookup, pending.peer, txid):
                return  # an abandoned attempt failed; a newer one is out
            entry = self.lookups.get(wanted.lookup)
            if entry is not None:
                if refused:
                    entry[0].on_refused(pending.peer, now)
                else:
                    entry[0].on_failure(pending.peer, now)
                self._after_lookup(wanted.lookup, now)
            return
        self._manual.pop(pending.peer, None)
        if not wanted.verify:
            self.table.record_failure(pending.peer, now)
        if wanted.ping_round is not None:
            self._ping_answered(wanted.ping_round, pending.peer, now, alive=False)
        if wanted.store is not None:
            self._store_answered(wanted.store, stored=False)
        if txid in self._seeds_waiting:
            self._seed_settled(txid, now)

    def on_timer(self, now: float) -> None:
        for txid in self.tx.expired(now):
            self.on_failure(txid, now)
        for lookup_id, lookup, _ in self.lookups:
            if self.lookups.get(lookup_id) is None:
                continue  # ended meanwhile
            deadline = lookup.next_deadline()
            if deadline is not None and deadline <= now:
                lookup.on_timer(now)
                self._after_lookup(lookup_id, now)
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
        """Starts a lookup; its result comes as a :class:`LookupFinished` event.
        :class:`~meshkey.dht.lookups.LookupLimitError` (nothing started) past
        :data:`~meshkey.dht.lookups.MAX_LOOKUPS` lookups for callers (``purpose`` USER)."""
        self.lookups.admit(purpose)
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
            admit=self._admit,
            rank=_sequence,
        )
        lookup_id = self.lookups.add(lookup, purpose)
        self._after_lookup(lookup_id, now)
        return lookup_id

    def _admit(
        self, peer: NodeId, address: Endpoint, namers: frozenset[NodeId], now: float
    ) -> Charge | Admission | None:
        """Whether a lookup may ask ``peer`` at ``address``, which only ``namers`` named: free
        over a hop that is up or where this node's own graph has seen it; never at an
        address found dead; else charged to a namer whose credit covers the dial (later,
        when none's does)."""
        entry = self.table.get(peer)
        if (entry is not None and address in entry.addresses) or self._connected(peer):
            return None
        if self.budget.dead(address, now):
            return Admission.NEVER
        charge = self.budget.charge(namers)
        return Admission.LATER if charge is None else charge

    def _verify_record(self, data: bytes, owner: NodeId, now: float) -> object:
        """A record a lookup read: None (ignored) unless it verifies and is no older than the
        newest this node has seen of ``owner`` (a superseded record, replayed, is refused)."""
        wall_now = now + self.wall_offset
        record = record_or_none(data, owner, wall_now)
        if record is None or not self.records.saw(record, wall_now):
            return None
        return record

    def _after_lookup(self, lookup_id: int, now: float) -> None:
        entry = self.lookups.get(lookup_id)
        assert entry is not None
        lookup, purpose = entry
        for command in lookup.commands():
            request: Request
            if isinstance(command, SendFindNode):
                request = FindNode(self.tx.new_txid(), self.mode, command.target.raw)
            else:
                request = FindValue(self.tx.new_txid(), self.mode, command.key.raw)
            wanted = _RequestFor(lookup=lookup_id)
            patience = None if command.charge is None else DIAL_PATIENCE
            self._send(
                command.peer,
                command.address,
                request,
                now,
                wanted,
                deadline=False,
                dial_timeout=patience,
            )
            if command.charge is not None:
                self._charged[request.txid] = command.charge
            self.lookups.sent(lookup_id, command.peer, request.txid)
        for event in lookup.events():
            if isinstance(event, PeerUnresponsive):
                txid_gone = self.lookups.given_up(lookup_id, event.peer)
                if txid_gone is not None:
                    gone = self.tx.close(txid_gone)
                    if self._charged.pop(txid_gone, None) and gone and gone.address:
                        self.budget.failed(gone.address, now)  # silent to the end: dead
                self.table.record_failure(event.peer, lookup.started)
            elif isinstance(event, PeerAnswered):
                continue
            elif isinstance(event, LookupDone):
                self._events.append(LookupFinished(lookup_id, purpose, event))
                self._lookup_done(lookup_id, purpose, event)
        if lookup.finished:
            for txid in self.lookups.finish(lookup_id):
                self.tx.close(txid)
                self._charged.pop(txid, None)  # abandoned: its charge is spent

    # -- bucket-full ping rounds -------------------------------------------------------

    def _start_ping_round(self, verdict: BucketFull, now: float) -> None:
        ping_round = PingRound(verdict, set(verdict.to_ping))
        for node_id in verdict.to_ping:
            entry = self.table.get(node_id)
            if entry is None:
                ping_round.waiting.discard(node_id)
                continue
            ping = Ping(self.tx.new_txid(), self.mode)
            self._send(node_id, entry.address, ping, now, _RequestFor(ping_round=ping_round))
        if not ping_round.waiting:
            self._settle_round(ping_round, now)

    def _ping_answered(
        self, ping_round: PingRound, peer: NodeId, now: float, *, alive: bool
    ) -> None:
        if ping_round.answered(peer, alive=alive):
            self._settle_round(ping_round, now)

    def _settle_round(self, ping_round: PingRound, now: float) -> None:
        added = self.table.settle(ping_round.verdict, ping_round.alive, now)
        self._events.append(ping_round.settled(added))

    # -- join and refresh --------------------------------------------------------------

    def join(self, seeds: Iterable[tuple[NodeId, Endpoint]], now: float) -> None:
        """Joins (or re-joins): ping the seeds, look up our own id, refresh the far buckets."""
        self.phase = Phase.SEEDING
        self._seeds_waiting.clear()
        self._seed_ids.clear()
        for node_id, address in seeds:
            if node_id == self.own:
                continue
            ping = Ping(self.tx.new_txid(), self.mode)
            self._seeds_waiting.add(self._send(node_id, address, ping, now, _RequestFor()))
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
        self._join_lookups.add(self.lookups.next_id)
        self.start_lookup(target, now, purpose=Purpose.JOIN)

    def _lookup_done(self, lookup_id: int, purpose: Purpose, done: LookupDone) -> None:
        entry = self.lookups.get(lookup_id)
        assert entry is not None
        now = done.stats.duration + entry[0].started
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

    def _drain_publisher(self, now: float) -> None:
        for command in self.publisher.commands():
            if isinstance(command, PublishRecord):
                lookup_id = self.start_lookup(self.own, now, purpose=Purpose.PUBLISH)
                if self.lookups.get(lookup_id) is not None:  # (with nobody to ask: over)
                    self._publishing[lookup_id] = command.record.sequence
            else:
                self._commands.append(command)

    def _publish_to(self, lookup_id: int, done: LookupDone, now: float) -> None:
        sequence = self._publishing.pop(lookup_id, None)
        current = self.publisher.current
        if sequence is None or current is None:
            return
        if current.sequence != sequence:
            return  # a newer record is on its way
        store_round = StoreRound(sequence)
        for contact in done.closest[: self.k]:
            store = Store(self.tx.new_txid(), self.mode, current.raw)
            wanted = _RequestFor(store=store_round)
            self._send(contact.node_id, contact.addresses[0], store, now, wanted)
            store_round.asking()
        if not store_round.waiting:
            self._events.append(store_round.published())

    def _store_answered(self, store_round: StoreRound, *, stored: bool) -> None:
        if store_round.answered(stored=stored):
            self._events.append(store_round.published())

    # -- internals ---------------------------------------------------------------------

    def nonce(self) -> bytes:
        return self.rng.randbytes(NONCE_SIZE)

    def _send(
        self,
        peer: NodeId,
        address: Endpoint,
        request: Request,
        now: float,
        wanted: _RequestFor,
        *,
        deadline: bool = True,
        fresh: bool = False,
        dial_timeout: float | None = None,
    ) -> bytes:
        """Sends ``request``, due (``deadline``) within a few of the peer's RTT timeouts;
        without, whoever sent it (a lookup) owns its timeout."""
        timeout = self.rtt.timeout(peer) * PING_TIMEOUT_FACTOR if deadline else None
        command = self.tx.open(
            peer,
            address,
            request,
            wanted,
            now,
            timeout=timeout,
            fresh=fresh,
            dial_timeout=dial_timeout,
        )
        self._commands.append(command)
        return request.txid


def _sequence(record: PeerRecord) -> int:
    """A record found by a lookup ranks by its sequence number: the newest wins."""
    return record.sequence


def _contact(wire: WireContact) -> Contact:
    return Contact(NodeId(wire.node_id), wire.addresses, wire.mode)


__all__ = [
    "DhtEngine",
    "DialBackJob",
    "EngineCommand",
    "EngineEvent",
    "Joined",
    "LookupFinished",
    "LookupLimitError",
    "MAX_LOOKUPS",
    "Phase",
    "PingRoundSettled",
    "Published",
    "Purpose",
    "SendRequest",
]
