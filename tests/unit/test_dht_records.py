"""Peer records: signing, verification, the holder's store, rate limits, the publisher."""

from __future__ import annotations

import random

import pytest

from meshkey.dht.records import (
    MAX_LIFETIME,
    REPUBLISH_FRACTION,
    REPUBLISH_JITTER,
    PersistSequence,
    Publisher,
    PublishRecord,
    RateLimiter,
    RecordContent,
    RecordError,
    RecordStore,
    record_or_none,
    sign_record,
    verify_record,
    verify_signed,
)
from meshkey.identity.keys import Identity
from meshkey.identity.node_id import NodeId
from meshkey.wire.dht import DhtErrorCode
from meshkey.wire.net import NatClass

NOW = 1_700_000_000.0
OWNER = Identity.generate()


def record(sequence: int = 1, expiry: float = NOW + 600, owner: Identity = OWNER) -> bytes:
    return sign_record(
        owner,
        sequence,
        expiry,
        nat_class=NatClass.ENDPOINT_INDEPENDENT,
        direct=(("127.0.0.1", 4000),),
        reflexive=(("203.0.113.9", 4000),),
        relays=("/ip4/127.0.0.1/udp/5000/service/forward_to_x",),
    ).raw


def test_a_signed_record_verifies_and_says_what_was_signed() -> None:
    checked = verify_record(record(), NOW)
    assert checked.node_id == OWNER.node_id and checked.sequence == 1
    assert checked.nat_class == NatClass.ENDPOINT_INDEPENDENT
    assert checked.relays == ("/ip4/127.0.0.1/udp/5000/service/forward_to_x",)
    assert record_or_none(record(), OWNER.node_id, NOW) == checked


@pytest.mark.parametrize("position", [1, 40, 60, -70, -1])
def test_any_flipped_byte_breaks_the_record(position: int) -> None:
    data = bytearray(record())
    data[position] ^= 0x01
    with pytest.raises(RecordError) as caught:
        verify_record(bytes(data), NOW)
    assert caught.value.code == DhtErrorCode.BAD_RECORD


def test_expired_too_long_lived_and_foreign_records_are_refused() -> None:
    with pytest.raises(RecordError, match="expired"):
        verify_record(record(expiry=NOW - 1), NOW)
    with pytest.raises(RecordError, match="too long"):
        verify_record(record(expiry=NOW + MAX_LIFETIME + 10), NOW)
    with pytest.raises(RecordError, match="another node"):
        verify_record(record(), NOW, Identity.generate().node_id)
    assert record_or_none(record(expiry=NOW - 1), OWNER.node_id, NOW) is None
    with pytest.raises(RecordError, match="malformed"):
        verify_record(b"\x01garbage", NOW)
    # A record whose NodeId field was swapped for another's: the signature does not match.
    impostor = Identity.generate()
    data = bytearray(record())
    data[1:33] = impostor.node_id.raw
    with pytest.raises(RecordError, match="signature"):
        verify_record(bytes(data), NOW)


def test_the_store_keeps_the_highest_sequence() -> None:
    store = RecordStore(Identity.generate().node_id)
    store.put(record(5), NOW)
    with pytest.raises(RecordError) as caught:
        store.put(record(5), NOW)
    assert caught.value.code == DhtErrorCode.STALE_RECORD
    with pytest.raises(RecordError):
        store.put(record(4), NOW)
    store.put(record(6), NOW)
    held = store.get(OWNER.node_id, NOW)
    assert held is not None and held.sequence == 6
    assert store.get(OWNER.node_id, NOW + 10_000) is None  # expired on read
    assert len(store) == 0


def test_the_store_is_capped_and_keeps_what_is_closest() -> None:
    own = NodeId(bytes(32))
    store = RecordStore(own, capacity=3)
    owners = sorted((Identity.generate() for _ in range(5)), key=lambda i: i.node_id.raw)
    for owner in owners[1:4]:
        store.put(record(owner=owner), NOW)
    with pytest.raises(RecordError) as caught:  # farther than everything held
        store.put(record(owner=owners[4]), NOW)
    assert caught.value.code == DhtErrorCode.UNAVAILABLE
    store.put(record(owner=owners[0]), NOW)  # the closest: the farthest held goes
    assert {r.node_id for r in store.records()} == {o.node_id for o in owners[:3]}
    # Expired records go first.
    assert store.next_deadline() == NOW + 600
    assert store.expire(NOW + 601) and len(store) == 0


def test_a_superseded_record_is_refused_after_the_newer_one_expired() -> None:
    """Sequence 6 lived a minute, sequence 5 an hour: once 6 expired, 5 is still validly
    signed, and whoever kept a copy could replay it. The floor (6) outlives 6's expiry."""
    store = RecordStore(Identity.generate().node_id)
    store.put(record(5, NOW + 3600), NOW)
    store.put(record(6, NOW + 60), NOW)
    later = NOW + 120  # 6 expired, 5 did not
    assert store.get(OWNER.node_id, later) is None
    with pytest.raises(RecordError) as caught:
        store.put(record(5, NOW + 3600), later)
    assert caught.value.code == DhtErrorCode.STALE_RECORD
    five = verify_record(record(5, NOW + 3600), later)
    assert not store.saw(five, later)  # a reader ignores it too
    assert store.floor(OWNER.node_id, later) == 6
    # Gone only when nothing it could have superseded can still be valid.
    assert store.floor(OWNER.node_id, NOW + 60 + MAX_LIFETIME) is None
    assert store.saw(five, NOW + 60 + MAX_LIFETIME)


def test_a_record_read_raises_the_floor_and_replaces_an_older_one_held() -> None:
    store = RecordStore(Identity.generate().node_id)
    store.put(record(5), NOW)
    assert store.saw(verify_record(record(7), NOW), NOW)
    held = store.get(OWNER.node_id, NOW)
    assert held is not None and held.sequence == 7  # a holder keeps the newest
    with pytest.raises(RecordError):
        store.put(record(6), NOW)
    assert not store.saw(verify_record(record(6), NOW), NOW)
    assert store.saw(verify_record(record(7), NOW), NOW)  # the same one again: fine


def test_floors_are_bounded_and_held_records_keep_their_own() -> None:
    store = RecordStore(Identity.generate().node_id, floors=4)
    owners = [Identity.generate() for _ in range(10)]
    for owner in owners:
        store.saw(verify_record(record(3, owner=owner), NOW), NOW)
    assert len(store.newest()) == 4  # the least recently raised went
    assert store.floor(owners[0].node_id, NOW) is None
    assert store.floor(owners[-1].node_id, NOW) == 3
    held = Identity.generate()
    store.put(record(9, owner=held), NOW)
    for owner in owners:
        store.saw(verify_record(record(4, owner=owner), NOW), NOW)
    assert store.floor(held.node_id, NOW) == 9
    assert held.node_id in {r.node_id for r in store.newest()}  # persisted with the rest


def test_restored_records_are_floors_and_held_only_while_valid() -> None:
    store = RecordStore(Identity.generate().node_id)
    store.restore(verify_signed(record(8, NOW + 60)), NOW + 120)  # expired while down
    assert store.get(OWNER.node_id, NOW + 120) is None
    assert store.floor(OWNER.node_id, NOW + 120) == 8
    other = Identity.generate()
    store.restore(verify_signed(record(2, owner=other)), NOW)
    held = store.get(other.node_id, NOW)
    assert held is not None and held.sequence == 2
    signed = record(2)
    with pytest.raises(RecordError):
        verify_signed(signed[:-1] + bytes([signed[-1] ^ 1]))


def test_per_peer_rate_limits_with_an_injected_clock() -> None:
    limiter = RateLimiter(rate=1.0, burst=2.0, capacity=2)
    a, b, c = (Identity.generate().node_id for _ in range(3))
    assert limiter.allow(a, 0.0) and limiter.allow(a, 0.0) and not limiter.allow(a, 0.0)
    assert limiter.allow(b, 0.0)  # per peer
    assert limiter.allow(a, 1.0) and not limiter.allow(a, 1.0)  # one token a second
    limiter.allow(c, 0.0)
    assert len(limiter._buckets) == 2  # bounded: the least recent peer is forgotten


def test_the_publisher_republishes_before_expiry_with_a_rising_sequence() -> None:
    rng = random.Random(4)
    publisher = Publisher(OWNER, sequence=7, lifetime=1000.0, rng=rng)
    assert publisher.next_deadline() is None
    publisher.set_content(RecordContent(direct=(("127.0.0.1", 1),)), 10.0)
    first = publisher.commands()
    assert isinstance(first[0], PersistSequence) and isinstance(first[1], PublishRecord)
    assert first[0].sequence == first[1].record.sequence == max(8, 10_000)
    deadline = publisher.next_deadline()
    assert deadline is not None
    low = 10.0 + 1000 * REPUBLISH_FRACTION * (1 - REPUBLISH_JITTER)
    high = 10.0 + 1000 * REPUBLISH_FRACTION * (1 + REPUBLISH_JITTER)
    assert low <= deadline <= high < first[1].record.expiry
    publisher.on_timer(deadline - 1)
    assert publisher.commands() == []
    publisher.on_timer(deadline)
    again = publisher.commands()
    assert isinstance(again[1], PublishRecord)
    assert again[1].record.sequence > first[1].record.sequence
    assert again[1].record.expiry > first[1].record.expiry
    # The same content is not re-signed; a change is, at once.
    publisher.set_content(RecordContent(direct=(("127.0.0.1", 1),)), deadline + 1)
    assert publisher.commands() == []
    publisher.set_content(RecordContent(direct=(("127.0.0.1", 2),)), deadline + 2)
    assert [type(c) for c in publisher.commands()] == [PersistSequence, PublishRecord]


def test_a_restarted_publisher_never_reuses_a_sequence() -> None:
    first = Publisher(OWNER, sequence=0, lifetime=100.0)
    first.set_content(RecordContent(), 5.0)
    used = first.sequence
    # Restarted with the persisted sequence, even with a clock that went backwards.
    second = Publisher(OWNER, sequence=used, lifetime=100.0)
    second.set_content(RecordContent(), 1.0)
    assert second.sequence > used
    with pytest.raises(ValueError):
        Publisher(OWNER, lifetime=MAX_LIFETIME * 2)
