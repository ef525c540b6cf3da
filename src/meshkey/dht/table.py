"""The routing table: Kademlia k-buckets over 256-bit NodeIds, authenticated entries only.

Theory of operation
-------------------
Distance is ``a XOR b`` read as an integer. Bucket ``i`` holds the peers whose distance from
this node has its highest set bit at ``i`` (bucket 255: the half of the id space farthest
away; bucket 0: the one id next to ours), so 256 buckets cover every other NodeId, and each
holds at most :data:`K` entries, most recently seen last.

**Only an authenticated observation inserts.** :meth:`RoutingTable.observe_authenticated`
is the one way in; the glue calls it on the transport's ``HopAuthenticated`` event, with the
address the hop was observed at. Contacts named in answers never come here: the lookup may
query them, and if one answers over a hop pinned to its NodeId, *that* hop's authentication
is the observation. Nothing that a peer says can insert a third party.

**Bucket full.** A new peer for a full bucket goes to the bucket's replacement cache
(:data:`REPLACEMENTS` newest, bounded so a flood of new ids costs nothing) and the table
returns a :class:`BucketFull` verdict naming up to :data:`PING_BATCH` of the bucket's least
recently seen entries (those not seen in the last :data:`RECENT` seconds: an entry that just
answered is alive, and pinging it again would only cost traffic) — when the newcomer was
reached by this node itself (an outbound hop) and the bucket had no round in the last
:data:`RECENT` seconds; otherwise it only waits in the cache, so strangers who send requests
cannot make a node ping its graph (which would make those nodes ping theirs). The glue pings
them and reports who answered with :meth:`RoutingTable.settle`: those that did not answer
are evicted and their places filled from the replacement cache (newest first); those that
answered stay, refreshed. Kademlia keeps long-lived nodes because a node that has been up
for an hour is likely to stay up (Polykey issue 359 lost exactly that). While a bucket's
ping round is out, further newcomers only join the cache. :meth:`RoutingTable.force` (a
manual ``peer add --force``) evicts the oldest at once.

**Diversity.** Identities are free, addresses are not: each entry counts against the
network its address belongs to (:mod:`meshkey.dht.diversity`: a /24 or /48), which may hold
at most :data:`~meshkey.dht.diversity.PER_BUCKET` places of a bucket and
:data:`~meshkey.dht.diversity.PER_TABLE` of the table. A newcomer past either is refused
(:class:`Refused`); one waiting in a replacement cache is promoted only if it fits then;
an entry restored at start must fit too. A manual ``peer add --force`` is the user's choice
and is not counted against. The network is that of the address the entry came in with.

**Modes.** An entry is a *server* (reachable at its address, answers DHT queries, handed out
in FIND_NODE answers) only when this node reached it itself (an outbound hop authenticated
at that address: ``reachable_at``) and the peer does not claim to be a client. A peer seen
only inbound is a *client*: reachable through the connection it opened (or its relay), and
never handed to others by :meth:`RoutingTable.closest`.

**Failures.** A peer that did not answer a request gets a failure mark
(:meth:`record_failure`); an answer, or a new authenticated hop, clears it. A peer with
:data:`STALE_AFTER` consecutive failures is no longer handed out, and is replaced at once
when the bucket's cache has a candidate (or dropped after :data:`DROP_AFTER`), so a network
where a third of the nodes died cleans itself as lookups run.

**Refresh.** Each bucket remembers when it was last touched (an entry added or seen, a
lookup in its range). A bucket at or beyond the closest non-empty one that has not been
touched for :data:`REFRESH_INTERVAL` (jittered by ±:data:`REFRESH_JITTER`, from the
injected rng, so nodes that joined together do not refresh together) is due:
:meth:`due_refreshes` names them, :meth:`next_deadline` says when the next one is.
Buckets closer than our closest neighbour are empty for good reason and are not refreshed.
"""

from __future__ import annotations

import enum
import itertools
import random
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from meshkey.dht.diversity import DEFAULT, Diversity
from meshkey.identity.node_id import NodeId
from meshkey.wire.dht import (
    MAX_ADDRESSES,
    Mode,
)
from meshkey.wire.net import Endpoint

K = 20
BUCKETS = 256
REPLACEMENTS = 8
PING_BATCH = 3
#: An entry seen this recently is taken to be alive: a full bucket does not ping it.
RECENT = 60.0
REFRESH_INTERVAL = 3600.0
REFRESH_JITTER = 0.1
STALE_AFTER = 2
DROP_AFTER = 5
#: How long a bucket's ping round may stay unsettled before a newcomer may start another
#: (the glue settles it well before: its pings time out sooner).
PING_ROUND_TIMEOUT = 30.0


class Learned(enum.Enum):
    SEED = "seed"
    INBOUND = "inbound"
    OUTBOUND = "outbound"
    MANUAL = "manual"
    LOOKUP = "lookup"


def key_of(node_id: NodeId) -> int:
    return int.from_bytes(node_id.raw, "big")


def bucket_index(own: int, other: int) -> int:
    """The bucket of ``other`` in ``own``'s table: the highest set bit of the XOR (-1: same)."""
    return (own ^ other).bit_length() - 1


@dataclass(slots=True, eq=False)
class Entry:
    node_id: NodeId
    key: int
    addresses: list[Endpoint]  # most recently observed first, at most MAX_ADDRESSES
    learned: Learned
    first_seen: float
    last_seen: float
    reachable_at: Endpoint | None = None  # where this node reached it (an outbound hop)
    claimed: Mode | None = None  # what the peer says it is, in its RPCs
    failures: int = 0
    group: str | None = None  # the network it counts against (None: exempt), see Diversity

    @property
    def mode(self) -> Mode:
        if self.reachable_at is not None and self.claimed != Mode.CLIENT:
            return Mode.SERVER
        return Mode.CLIENT

    @property
    def address(self) -> Endpoint:
        """Where to reach it: the address an outbound hop proved, else the latest seen."""
        return self.reachable_at or self.addresses[0]


@dataclass(slots=True)
class _Bucket:
    entries: dict[NodeId, Entry] = field(default_factory=dict)  # least recently seen first
    replacements: OrderedDict[NodeId, Entry] = field(default_factory=OrderedDict)
    touched: float = 0.0
    refresh_at: float = 0.0
    pinging: tuple[NodeId, ...] = ()
    ping_started: float = 0.0
    last_round: float = float("-inf")


# -- verdicts ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Added:
    entry: Entry


@dataclass(frozen=True, slots=True)
class Updated:
    entry: Entry


@dataclass(frozen=True, slots=True)
class BucketFull:
    """The bucket is full: ping ``to_ping`` and report the answers with ``settle``."""

    bucket: int
    candidate: NodeId
    to_ping: tuple[NodeId, ...]


@dataclass(frozen=True, slots=True)
class Cached:
    """The bucket is full and a ping round is already out; the peer waits in the cache."""

    bucket: int
    candidate: NodeId


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str


Verdict = Added | Updated | BucketFull | Cached | Refused


class RoutingTable:
    """256 k-buckets around ``own``; sans-IO, every input takes ``now``."""

    def __init__(
        self,
        own: NodeId,
        *,
        k: int = K,
        rng: random.Random | None = None,
        refresh_interval: float = REFRESH_INTERVAL,
        replacements: int = REPLACEMENTS,
        diversity: Diversity = DEFAULT,
    ) -> None:
        self.own = own
        self.own_key = key_of(own)
        self.k = k
        self.rng = rng or random.Random()
        self.refresh_interval = refresh_interval
        self.replacement_size = replacements
        self.diversity = diversity
        self._buckets: dict[int, _Bucket] = {}
        self._index: dict[NodeId, int] = {}
        self._groups: Counter[str] = Counter()  # entries of the table per network

    # -- queries --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._index

    def get(self, node_id: NodeId) -> Entry | None:
        index = self._index.get(node_id)
        return None if index is None else self._buckets[index].entries.get(node_id)

    def entries(self) -> list[Entry]:
        return [e for i in sorted(self._buckets) for e in self._buckets[i].entries.values()]

    def bucket_of(self, node_id: NodeId) -> int:
        return bucket_index(self.own_key, key_of(node_id))

    def bucket_entries(self, index: int) -> list[Entry]:
        bucket = self._buckets.get(index)
        return list(bucket.entries.values()) if bucket else []

    def replacements(self, index: int) -> list[Entry]:
        bucket = self._buckets.get(index)
        return list(bucket.replacements.values()) if bucket else []

    def closest(
        self,
        target: NodeId | int,
        count: int | None = None,
        *,
        servers_only: bool = True,
        exclude: NodeId | None = None,
    ) -> list[Entry]:
        """Up to ``count`` (k) entries closest to ``target``. Clients and peers that failed
        :data:`STALE_AFTER` times in a row are left out unless ``servers_only`` is False
        (clients are never handed to other nodes: they cannot be reached at their address).

        Buckets are visited in distance order without sorting them all: with ``b`` the
        bucket of ``target`` itself, every entry of bucket ``b`` is closer to the target than
        any entry of the buckets below ``b``, which are all closer than bucket ``b + 1``,
        then ``b + 2``... (XOR distances: the highest differing bit decides)."""
        wanted = self.k if count is None else count
        goal = target if isinstance(target, int) else key_of(target)
        top = bucket_index(self.own_key, goal)
        groups: list[list[int]] = [[top]] if top >= 0 else []
        lower = [i for i in self._buckets if i < top]
        if lower:
            groups.append(lower)
        groups.extend([i] for i in range(max(top, -1) + 1, BUCKETS) if i in self._buckets)
        found: list[Entry] = []
        for group in groups:
            pool = [
                e
                for i in group
                if i in self._buckets
                for e in self._buckets[i].entries.values()
                if e.node_id != exclude
                and (
                    not servers_only
                    or (
                        (e.reachable_at is not None and e.claimed != Mode.CLIENT)
                        and e.failures < STALE_AFTER
                    )
                )
            ]
            pool.sort(key=lambda e: e.key ^ goal)
            found.extend(pool[: wanted - len(found)])
            if len(found) >= wanted:
                break
        return found

    # -- the one way in -------------------------------------------------------------

    def observe_authenticated(
        self,
        node_id: NodeId,
        address: Endpoint,
        direction: str,
        now: float,
        *,
        learned: Learned | None = None,
        manual: bool = False,
    ) -> Verdict:
        """A hop to ``node_id`` at ``address`` authenticated (``direction`` "inbound" or
        "outbound"). Adds or refreshes the entry; a full bucket returns :class:`BucketFull`
        (ping those, then :meth:`settle`) or :class:`Cached`; a newcomer whose network holds
        its share already, :class:`Refused` (unless ``manual``: the user's own add)."""
        if node_id == self.own:
            return Refused("this node's own NodeId")
        outbound = direction == "outbound"
        how = learned or (Learned.OUTBOUND if outbound else Learned.INBOUND)
        index = bucket_index(self.own_key, key_of(node_id))
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = _Bucket()
            self._schedule_refresh(bucket, now)
        self._touch(bucket, now)
        entry = bucket.entries.get(node_id)
        if entry is not None:
            self._seen(entry, address, outbound, now)
            bucket.entries.pop(node_id)
            bucket.entries[node_id] = entry  # most recently seen last
            return Updated(entry)
        entry = Entry(node_id, key_of(node_id), [address], how, now, now)
        entry.group = self.diversity.group(address)
        if outbound:
            entry.reachable_at = address
        if len(bucket.entries) < self.k:
            if not manual and not self._fits(bucket, entry):
                return Refused(f"its network {entry.group} holds its share of the graph")
            self._insert(bucket, index, entry)
            return Added(entry)
        cached = bucket.replacements.pop(node_id, None)
        if cached is not None:
            self._seen(cached, address, outbound, now)
            entry = cached
        bucket.replacements[node_id] = entry
        while len(bucket.replacements) > self.replacement_size:
            bucket.replacements.popitem(last=False)
        if bucket.pinging and now - bucket.ping_started < PING_ROUND_TIMEOUT:
            return Cached(index, node_id)
        if not outbound or now - bucket.last_round < RECENT:
            # Only a newcomer this node reached itself is worth pinging old entries for,
            # and at most one round a minute per bucket: a peer that merely sent us a
            # request must not make us ping three others (and them, in turn, theirs).
            return Cached(index, node_id)
        oldest = tuple(
            itertools.islice(
                (n for n, e in bucket.entries.items() if now - e.last_seen >= RECENT), PING_BATCH
            )
        )
        if not oldest:
            return Cached(index, node_id)  # every entry was seen moments ago: alive
        bucket.pinging, bucket.ping_started, bucket.last_round = oldest, now, now
        return BucketFull(index, node_id, oldest)

    def settle(self, verdict: BucketFull, answered: Iterable[NodeId], now: float) -> list[Entry]:
        """Reports which of ``verdict.to_ping`` answered: the others are evicted and
        replaced from the cache (newest first). Returns the entries added."""
        bucket = self._buckets.get(verdict.bucket)
        if bucket is None:
            return []
        alive = set(answered)
        bucket.pinging = ()
        added: list[Entry] = []
        for node_id in verdict.to_ping:
            entry = bucket.entries.get(node_id)
            if entry is None:
                continue
            if node_id in alive:
                entry.last_seen = now
                entry.failures = 0
                bucket.entries.pop(node_id)
                bucket.entries[node_id] = entry
                continue
            self._remove(bucket, node_id)
            replacement = self._pop_replacement(bucket)
            if replacement is not None:
                self._insert(bucket, verdict.bucket, replacement)
                added.append(replacement)
        return added

    def force(self, node_id: NodeId, address: Endpoint, direction: str, now: float) -> Verdict:
        """A manual add of an authenticated peer: a full bucket evicts its oldest at once."""
        verdict = self.observe_authenticated(
            node_id, address, direction, now, learned=None, manual=True
        )
        if isinstance(verdict, BucketFull | Cached):
            bucket = self._buckets[verdict.bucket]
            bucket.pinging = ()
            self._remove(bucket, next(iter(bucket.entries)))
            entry = bucket.replacements.pop(node_id)
            self._insert(bucket, verdict.bucket, entry)
            verdict = Added(entry)
        if isinstance(verdict, Added | Updated):
            verdict.entry.learned = Learned.MANUAL
        return verdict

    # -- what the glue reports about entries -----------------------------------------

    def set_learned(self, node_id: NodeId, learned: Learned) -> None:
        entry = self.get(node_id)
        if entry is not None:
            entry.learned = learned

    def claim_mode(self, node_id: NodeId, mode: Mode) -> Entry | None:
        """The peer said (in an authenticated RPC) that it is a server or a client."""
        entry = self.get(node_id) or self._cached(node_id)
        if entry is not None:
            entry.claimed = mode
        return entry

    def record_success(self, node_id: NodeId, now: float) -> None:
        entry = self.get(node_id)
        if entry is not None:
            entry.failures = 0
            entry.last_seen = now

    def record_failure(self, node_id: NodeId, now: float) -> None:
        """A request to ``node_id`` went unanswered (or its hop failed)."""
        index = self._index.get(node_id)
        if index is None:
            return
        bucket = self._buckets[index]
        entry = bucket.entries[node_id]
        entry.failures += 1
        if entry.failures >= STALE_AFTER and bucket.replacements:
            self._remove(bucket, node_id)
            replacement = self._pop_replacement(bucket)
            if replacement is not None:
                self._insert(bucket, index, replacement)
        elif entry.failures >= DROP_AFTER:
            self._remove(bucket, node_id)

    def remove(self, node_id: NodeId) -> bool:
        index = self._index.get(node_id)
        if index is None:
            return False
        self._remove(self._buckets[index], node_id)
        return True

    def restore(self, entry: Entry) -> bool:
        """Puts back an entry loaded from persistent state (it was authenticated when it was
        saved); refused when its bucket is full."""
        if entry.node_id == self.own or entry.node_id in self._index:
            return False
        index = bucket_index(self.own_key, entry.key)
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = _Bucket()
            bucket.touched = entry.last_seen
            self._schedule_refresh(bucket, entry.last_seen)
        entry.group = self.diversity.group(entry.address)
        if len(bucket.entries) >= self.k or not self._fits(bucket, entry):
            return False
        self._insert(bucket, index, entry)
        return True

    # -- refresh ----------------------------------------------------------------------

    def touch_bucket(self, index: int, now: float) -> None:
        """A lookup ran in bucket ``index``'s range: its refresh timer starts again."""
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = _Bucket()
        self._touch(bucket, now)

    def closest_bucket(self) -> int | None:
        """The lowest non-empty bucket (where our closest neighbour is)."""
        filled = [i for i, b in self._buckets.items() if b.entries]
        return min(filled) if filled else None

    def due_refreshes(self, now: float) -> list[int]:
        floor = self.closest_bucket()
        if floor is None:
            return []
        return sorted(i for i, b in self._buckets.items() if i >= floor and b.refresh_at <= now)

    def next_deadline(self) -> float | None:
        floor = self.closest_bucket()
        if floor is None:
            return None
        return min(b.refresh_at for i, b in self._buckets.items() if i >= floor)

    def random_id_in_bucket(self, index: int) -> NodeId:
        """A NodeId whose distance from ours has its highest bit at ``index``."""
        distance = (1 << index) | self.rng.getrandbits(index) if index else 1
        return NodeId((self.own_key ^ distance).to_bytes(32, "big"))

    # -- internals --------------------------------------------------------------------

    def _touch(self, bucket: _Bucket, now: float) -> None:
        bucket.touched = now
        self._schedule_refresh(bucket, now)

    def _schedule_refresh(self, bucket: _Bucket, now: float) -> None:
        spread = self.rng.uniform(1 - REFRESH_JITTER, 1 + REFRESH_JITTER)
        bucket.refresh_at = now + self.refresh_interval * spread

    def _seen(self, entry: Entry, address: Endpoint, outbound: bool, now: float) -> None:
        if address in entry.addresses:
            entry.addresses.remove(address)
        entry.addresses.insert(0, address)
        del entry.addresses[MAX_ADDRESSES:]
        if outbound:
            entry.reachable_at = address
        entry.last_seen = now
        entry.failures = 0

    def _fits(self, bucket: _Bucket, entry: Entry) -> bool:
        """Whether ``entry``'s network may take one more place in ``bucket`` and the table."""
        group = entry.group
        if group is None:
            return True
        if self._groups[group] >= self.diversity.per_table:
            return False
        in_bucket = sum(1 for e in bucket.entries.values() if e.group == group)
        return in_bucket < self.diversity.per_bucket

    def _insert(self, bucket: _Bucket, index: int, entry: Entry) -> None:
        bucket.entries[entry.node_id] = entry
        self._index[entry.node_id] = index
        if entry.group is not None:
            self._groups[entry.group] += 1

    def _remove(self, bucket: _Bucket, node_id: NodeId) -> None:
        entry = bucket.entries.pop(node_id)
        del self._index[node_id]
        if entry.group is not None:
            self._groups[entry.group] -= 1
            if not self._groups[entry.group]:
                del self._groups[entry.group]
        if bucket.pinging and node_id in bucket.pinging:
            bucket.pinging = tuple(n for n in bucket.pinging if n != node_id)

    def _pop_replacement(self, bucket: _Bucket) -> Entry | None:
        """The newest replacement whose network may take a place now (the others wait)."""
        for node_id in reversed(bucket.replacements):
            entry = bucket.replacements[node_id]
            if self._fits(bucket, entry):
                del bucket.replacements[node_id]
                return entry
        return None

    def _cached(self, node_id: NodeId) -> Entry | None:
        index = bucket_index(self.own_key, key_of(node_id))
        bucket = self._buckets.get(index)
        return None if bucket is None else bucket.replacements.get(node_id)
