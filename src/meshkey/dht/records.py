"""Signed peer records: making, checking, holding and publishing them.

A peer record says where a node can be reached (direct and reflexive addresses, NAT class,
relay routes). Its owner signs it with its Ed25519 key (the NodeId *is* the public key, so
the key under which a record is stored also checks it) and stores it at the k servers
closest to its NodeId. Every holder and every reader verifies it (:func:`verify_record`):
signature, size, expiry in the future but not too far (:data:`MAX_LIFETIME`, so a record
cannot outlive its owner's interest by more than a day). A forged or stale record is
refused by holders and ignored by readers, so nobody can poison where a node is (Polykey
issues 226 and 150).

:class:`RecordStore` (sans-IO) holds other nodes' records. Rules, in order: the record must
verify; the highest sequence wins (an equal or lower one is STALE); at most ``capacity``
records are held — expired ones go first, then, when a newcomer is closer to this node than
the farthest record held, the farthest goes (Kademlia's holders are the closest nodes; a
node far from a key has the least reason to hold it).

**The newest seen.** A record that was superseded is still validly signed until it expires,
so whoever kept a copy can replay it, and a reader to whom only that node answers would
take it. The store therefore remembers, for each NodeId, the record of the highest sequence
it has seen (:meth:`RecordStore.saw`: every record it holds, every record a lookup of this
node read and accepted, every record restored at start), and refuses anything lower — a
STORE (STALE) as much as a record read (the lookup's verifier ignores it). That record is
kept :data:`MAX_LIFETIME` past its own expiry (no record signed before it can live longer:
lifetimes are capped), even after it expired, for at most ``floors`` NodeIds (the least
recently raised go first; a held record is a floor of its own whatever happens to them).
It is the proof of the floor, so the floors are persisted as records, checked again at
start (:func:`verify_signed`: a floor outlives its record's expiry), and survive restarts.
A record read that is newer than the one held replaces it: a holder keeps the newest.

:class:`Publisher` (sans-IO) keeps this node's own record fresh: it hands out a new record
(sequence + 1, never below the wall clock in milliseconds, so a node that lost its state
still moves forward) whenever the content changes and again at
:data:`REPUBLISH_FRACTION` of the record's lifetime (jittered), well before it expires.
The caller persists :attr:`Publisher.sequence` (a :class:`PersistSequence` command comes
before every :class:`PublishRecord`) and gives it back after a restart.

:class:`RateLimiter` keeps a :class:`meshkey.ratelimit.TokenBucket` per peer (sans-IO, clock
injected), bounded in the number of peers it remembers.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from meshkey.dht.table import key_of
from meshkey.identity.keys import Identity, verify_signature
from meshkey.identity.node_id import NodeId
from meshkey.ratelimit import TokenBucket
from meshkey.wire.dht import (
    MAX_PEER_RECORD,
    DhtErrorCode,
    WirePeerRecord,
    decode_peer_record,
    encode_peer_record,
    signed_bytes,
)
from meshkey.wire.errors import WireError
from meshkey.wire.net import Endpoint, NatClass

RECORD_LIFETIME = 3600.0
MAX_LIFETIME = 24 * 3600.0
REPUBLISH_FRACTION = 0.5
REPUBLISH_JITTER = 0.1
STORE_CAPACITY = 2048
FLOOR_CAPACITY = 4096


class RecordError(Exception):
    """A peer record that must not be held or used; ``code`` is what goes on the wire."""

    def __init__(self, code: DhtErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PeerRecord:
    node_id: NodeId
    sequence: int
    expiry: float
    nat_class: NatClass = NatClass.UNKNOWN
    direct: tuple[Endpoint, ...] = ()
    reflexive: tuple[Endpoint, ...] = ()
    relays: tuple[str, ...] = ()
    raw: bytes = field(default=b"", compare=False, repr=False)
    channel_key: bytes = b""  # X25519: what a Noise IK dial to the node needs
    local: tuple[Endpoint, ...] = ()  # its own addresses (its LAN's, behind a NAT)

    def describe(self) -> dict[str, object]:
        return {
            "node_id": str(self.node_id),
            "sequence": self.sequence,
            "expiry": self.expiry,
            "nat_class": self.nat_class.name.lower(),
            "direct": [f"{h}:{p}" for h, p in self.direct],
            "reflexive": [f"{h}:{p}" for h, p in self.reflexive],
            "relays": list(self.relays),
            "channel_key": self.channel_key.hex() or None,
            "local": [f"{h}:{p}" for h, p in self.local],
        }


def sign_record(
    identity: Identity,
    sequence: int,
    expiry: float,
    *,
    nat_class: NatClass = NatClass.UNKNOWN,
    direct: Iterable[Endpoint] = (),
    reflexive: Iterable[Endpoint] = (),
    relays: Iterable[str] = (),
    channel_key: bytes = b"",
    local: Iterable[Endpoint] = (),
) -> PeerRecord:
    fields = WirePeerRecord(
        identity.node_id.raw,
        sequence,
        int(expiry),
        nat_class,
        tuple(direct),
        tuple(reflexive),
        tuple(relays),
        b"",
        channel_key,
        tuple(local),
    )
    signature = identity.sign(signed_bytes(fields))
    signed = WirePeerRecord(
        fields.node_id,
        fields.sequence,
        fields.expiry,
        fields.nat_class,
        fields.direct,
        fields.reflexive,
        fields.relays,
        signature,
        fields.channel_key,
        fields.local,
    )
    return _typed(signed, encode_peer_record(signed))


def _typed(fields: WirePeerRecord, raw: bytes) -> PeerRecord:
    return PeerRecord(
        NodeId(fields.node_id),
        fields.sequence,
        float(fields.expiry),
        fields.nat_class,
        fields.direct,
        fields.reflexive,
        fields.relays,
        raw,
        fields.channel_key,
        fields.local,
    )


def verify_signed(data: bytes, owner: NodeId | None = None) -> PeerRecord:
    """The record in ``data`` if it is well formed and signed by its NodeId (and owned by
    ``owner`` when given), whatever its expiry; RecordError otherwise."""
    if len(data) > MAX_PEER_RECORD:
        raise RecordError(DhtErrorCode.BAD_RECORD, f"record of {len(data)} bytes")
    try:
        fields = decode_peer_record(data)
    except WireError as exc:
        raise RecordError(DhtErrorCode.BAD_RECORD, f"malformed record: {exc}") from exc
    node_id = NodeId(fields.node_id)
    if owner is not None and node_id != owner:
        raise RecordError(DhtErrorCode.BAD_RECORD, "the record belongs to another node")
    if not verify_signature(node_id, signed_bytes(fields), fields.signature):
        raise RecordError(DhtErrorCode.BAD_RECORD, "the record's signature does not verify")
    return _typed(fields, data)


def verify_record(data: bytes, now: float, owner: NodeId | None = None) -> PeerRecord:
    """The record in ``data`` if it is well formed, signed by its NodeId, unexpired and not
    too long-lived (and owned by ``owner`` when given); RecordError otherwise."""
    record = verify_signed(data, owner)
    if record.expiry <= now:
        raise RecordError(DhtErrorCode.BAD_RECORD, "the record has expired")
    if record.expiry > now + MAX_LIFETIME:
        raise RecordError(DhtErrorCode.BAD_RECORD, "the record claims to live too long")
    return record


def record_or_none(data: bytes, owner: NodeId, now: float) -> PeerRecord | None:
    """A reader's check (the lookup's verifier): the record, or None if it must be ignored."""
    try:
        return verify_record(data, now, owner)
    except RecordError:
        return None


# -- holding others' records ----------------------------------------------------------


class RecordStore:
    def __init__(
        self, own: NodeId, *, capacity: int = STORE_CAPACITY, floors: int = FLOOR_CAPACITY
    ) -> None:
        self.own_key = key_of(own)
        self.capacity = capacity
        self.floors = floors
        self._records: dict[NodeId, PeerRecord] = {}
        #: per NodeId, the record of the highest sequence seen (perhaps expired), the least
        #: recently raised first
        self._newest: OrderedDict[NodeId, PeerRecord] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: NodeId, now: float) -> PeerRecord | None:
        record = self._records.get(key)
        if record is not None and record.expiry <= now:
            del self._records[key]
            return None
        return record

    def records(self) -> list[PeerRecord]:
        return list(self._records.values())

    def newest(self) -> list[PeerRecord]:
        """The newest record seen of every NodeId remembered (held ones included): what is
        persisted, so the floors survive a restart."""
        newest = dict(self._newest)
        for node_id, record in self._records.items():
            known = newest.get(node_id)
            if known is None or known.sequence < record.sequence:
                newest[node_id] = record
        return list(newest.values())

    def floor(self, key: NodeId, now: float) -> int | None:
        """The highest sequence seen for ``key`` that still counts: nothing lower is taken."""
        held = self._records.get(key)
        seen = self._newest.get(key)
        if seen is not None and seen.expiry + MAX_LIFETIME <= now:
            del self._newest[key]
            seen = None
        sequences = [r.sequence for r in (held, seen) if r is not None]
        return max(sequences) if sequences else None

    def saw(self, record: PeerRecord, now: float) -> bool:
        """A verified record of ``record.node_id`` was seen (read by a lookup, or restored):
        False when it is older than the newest seen (refuse it); otherwise it is the newest
        now, and replaces a held record of a lower sequence."""
        floor = self.floor(record.node_id, now)
        if floor is not None and record.sequence < floor:
            return False
        self._raise(record)
        held = self._records.get(record.node_id)
        if held is not None and held.sequence < record.sequence and record.expiry > now:
            self._records[record.node_id] = record
        return True

    def put(self, data: bytes, now: float) -> PeerRecord:
        """Holds the record in ``data``; RecordError (BAD_RECORD, STALE_RECORD, UNAVAILABLE
        when full of closer records) when it is refused."""
        record = verify_record(data, now)
        held = self._records.get(record.node_id)
        if held is not None and held.expiry > now and held.sequence >= record.sequence:
            raise RecordError(
                DhtErrorCode.STALE_RECORD,
                f"sequence {record.sequence} is not above the {held.sequence} held",
            )
        floor = self.floor(record.node_id, now)
        if floor is not None and record.sequence < floor:
            raise RecordError(
                DhtErrorCode.STALE_RECORD,
                f"sequence {record.sequence} is below the {floor} seen (superseded)",
            )
        if held is None and len(self._records) >= self.capacity:
            self.expire(now)
        if held is None and len(self._records) >= self.capacity:
            farthest = max(self._records.values(), key=lambda r: key_of(r.node_id) ^ self.own_key)
            mine = key_of(record.node_id) ^ self.own_key
            if mine >= key_of(farthest.node_id) ^ self.own_key:
                raise RecordError(DhtErrorCode.UNAVAILABLE, "full of records closer to this node")
            del self._records[farthest.node_id]
        self._records[record.node_id] = record
        self._raise(record)
        return record

    def restore(self, record: PeerRecord, now: float) -> None:
        """Puts back a record loaded from persistent state (its signature checked again): it
        is a floor while it counts, and held while it is valid and there is room."""
        if not self.saw(record, now):
            return
        room = len(self._records) < self.capacity
        if record.expiry > now and record.node_id not in self._records and room:
            self._records[record.node_id] = record

    def expire(self, now: float) -> list[NodeId]:
        gone = [n for n, r in self._records.items() if r.expiry <= now]
        for node_id in gone:
            del self._records[node_id]
        for node_id in [n for n, r in self._newest.items() if r.expiry + MAX_LIFETIME <= now]:
            del self._newest[node_id]
        return gone

    def next_deadline(self) -> float | None:
        return min((r.expiry for r in self._records.values()), default=None)

    def _raise(self, record: PeerRecord) -> None:
        known = self._newest.pop(record.node_id, None)
        if known is not None and known.sequence > record.sequence:
            record = known
        self._newest[record.node_id] = record  # the most recently raised last
        while len(self._newest) > self.floors:
            self._newest.popitem(last=False)


# -- rate limits ----------------------------------------------------------------------


class RateLimiter:
    """A token bucket per peer; remembers at most ``capacity`` peers (least recent go)."""

    def __init__(self, rate: float, burst: float, *, capacity: int = 4096) -> None:
        self.rate = rate
        self.burst = burst
        self.capacity = capacity
        self._buckets: OrderedDict[NodeId, TokenBucket] = OrderedDict()

    def allow(self, peer: NodeId, now: float) -> bool:
        bucket = self._buckets.pop(peer, None)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst)
        self._buckets[peer] = bucket
        while len(self._buckets) > self.capacity:
            self._buckets.popitem(last=False)
        return bucket.allow(now)


# -- publishing this node's own record ------------------------------------------------


@dataclass(frozen=True, slots=True)
class PersistSequence:
    sequence: int


@dataclass(frozen=True, slots=True)
class PublishRecord:
    record: PeerRecord


PublisherCommand = PersistSequence | PublishRecord


@dataclass(frozen=True, slots=True)
class RecordContent:
    nat_class: NatClass = NatClass.UNKNOWN
    direct: tuple[Endpoint, ...] = ()
    reflexive: tuple[Endpoint, ...] = ()
    relays: tuple[str, ...] = ()
    channel_key: bytes = b""
    local: tuple[Endpoint, ...] = ()


class Publisher:
    """This node's record: re-signed on change and before expiry. ``now`` is wall-clock
    (unix) time here, because expiry is read by other nodes."""

    def __init__(
        self,
        identity: Identity,
        *,
        sequence: int = 0,
        lifetime: float = RECORD_LIFETIME,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < lifetime <= MAX_LIFETIME:
            raise ValueError(f"a record lives between 0 and {MAX_LIFETIME:g} s")
        self.identity = identity
        self.sequence = sequence
        self.lifetime = lifetime
        self.rng = rng or random.Random()
        self.content: RecordContent | None = None
        self.current: PeerRecord | None = None
        self._republish_at: float | None = None
        self._commands: list[PublisherCommand] = []

    def commands(self) -> list[PublisherCommand]:
        out, self._commands = self._commands, []
        return out

    def next_deadline(self) -> float | None:
        return self._republish_at

    def set_content(self, content: RecordContent, now: float) -> None:
        """What the record should say; a change is published at once."""
        if content == self.content and self.current is not None:
            return
        self.content = content
        self._publish(now)

    def on_timer(self, now: float) -> None:
        if self._republish_at is not None and now >= self._republish_at:
            self._publish(now)

    def _publish(self, now: float) -> None:
        assert self.content is not None
        self.sequence = max(self.sequence + 1, int(now * 1000))
        content = self.content
        self.current = sign_record(
            self.identity,
            self.sequence,
            now + self.lifetime,
            nat_class=content.nat_class,
            direct=content.direct,
            reflexive=content.reflexive,
            relays=content.relays,
            channel_key=content.channel_key,
            local=content.local,
        )
        spread = self.rng.uniform(1 - REPUBLISH_JITTER, 1 + REPUBLISH_JITTER)
        self._republish_at = now + self.lifetime * REPUBLISH_FRACTION * spread
        self._commands.append(PersistSequence(self.sequence))
        self._commands.append(PublishRecord(self.current))
