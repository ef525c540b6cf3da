"""The routing table with a fake clock: buckets, full-bucket rounds, modes, refresh."""

from __future__ import annotations

import random

import pytest

from meshkey.dht.diversity import PER_BUCKET, PER_TABLE, Diversity
from meshkey.dht.table import (
    PING_BATCH,
    RECENT,
    REFRESH_INTERVAL,
    REFRESH_JITTER,
    REPLACEMENTS,
    STALE_AFTER,
    Added,
    BucketFull,
    Cached,
    K,
    Learned,
    Refused,
    RoutingTable,
    Updated,
    bucket_index,
    key_of,
)
from meshkey.identity.node_id import NodeId
from meshkey.wire.dht import Mode

OWN = NodeId(bytes(32))


def in_bucket(index: int, serial: int) -> NodeId:
    """A NodeId in bucket ``index`` of OWN (all-zero), distinct per ``serial``."""
    value = (1 << index) | (serial % (1 << index) if index else 0)
    return NodeId(value.to_bytes(32, "big"))


def address(serial: int) -> tuple[str, int]:
    return ("127.0.0.1", 1000 + serial)


def fill(table: RoutingTable, index: int, count: int, now: float) -> list[NodeId]:
    ids = [in_bucket(index, i) for i in range(count)]
    for i, node_id in enumerate(ids):
        assert isinstance(
            table.observe_authenticated(node_id, address(i), "outbound", now + i), Added
        )
    return ids


def test_bucket_index_is_the_highest_set_bit_of_the_xor() -> None:
    assert bucket_index(0, 1) == 0
    assert bucket_index(0, 2**255) == 255
    assert bucket_index(0b1010, 0b1000) == 1
    assert bucket_index(5, 5) == -1
    table = RoutingTable(OWN)
    for index in (0, 1, 7, 200, 255):
        assert table.bucket_of(in_bucket(index, 3)) == index
        assert table.bucket_of(table.random_id_in_bucket(index)) == index


def test_own_id_is_refused_and_entries_are_updated() -> None:
    table = RoutingTable(OWN)
    assert isinstance(table.observe_authenticated(OWN, address(0), "inbound", 0.0), Refused)
    peer = in_bucket(100, 1)
    assert isinstance(table.observe_authenticated(peer, address(1), "inbound", 1.0), Added)
    verdict = table.observe_authenticated(peer, address(2), "inbound", 2.0)
    assert isinstance(verdict, Updated)
    entry = table.get(peer)
    assert entry is not None
    assert entry.addresses == [address(2), address(1)]  # most recent first
    assert entry.last_seen == 2.0 and entry.learned == Learned.INBOUND
    for serial in range(3, 12):
        table.observe_authenticated(peer, address(serial), "inbound", float(serial))
    assert len(entry.addresses) == 5


def test_servers_are_reached_outbound_and_clients_never_handed_out() -> None:
    table = RoutingTable(OWN)
    inbound, outbound, liar = in_bucket(50, 1), in_bucket(50, 2), in_bucket(50, 3)
    table.observe_authenticated(inbound, address(1), "inbound", 0.0)
    table.observe_authenticated(outbound, address(2), "outbound", 0.0)
    table.observe_authenticated(liar, address(3), "outbound", 0.0)
    table.claim_mode(inbound, Mode.SERVER)  # a claim alone does not make a server
    table.claim_mode(liar, Mode.CLIENT)  # a node that says it is a client is believed
    assert [e.node_id for e in table.closest(in_bucket(50, 0))] == [outbound]
    everyone = table.closest(in_bucket(50, 0), servers_only=False)
    assert {e.node_id for e in everyone} == {inbound, outbound, liar}
    assert table.get(inbound).mode == Mode.CLIENT  # type: ignore[union-attr]
    table.observe_authenticated(inbound, address(1), "outbound", 1.0)
    assert table.get(inbound).mode == Mode.SERVER  # type: ignore[union-attr]


def test_closest_is_sorted_by_xor_across_buckets() -> None:
    rng = random.Random(3)
    own = NodeId(rng.randbytes(32))
    table = RoutingTable(own, rng=rng)
    peers = [NodeId(rng.randbytes(32)) for _ in range(300)]
    for serial, peer in enumerate(peers):
        table.observe_authenticated(peer, address(serial), "outbound", 0.0)
    for _ in range(20):
        target = NodeId(rng.randbytes(32))
        held = table.closest(target, 500, servers_only=False)
        expected = sorted(held, key=lambda e: e.key ^ key_of(target))
        assert held == expected
        assert table.closest(target) == expected[:K]
        # Nothing closer was left out.
        everyone = sorted(table.entries(), key=lambda e: e.key ^ key_of(target))
        assert table.closest(target, 7) == everyone[:7]


def test_bucket_full_pings_the_oldest_evicts_the_dead_keeps_the_living() -> None:
    table = RoutingTable(OWN)
    now = 0.0
    ids = fill(table, 200, K, now)
    later = now + RECENT + K
    newcomers = [in_bucket(200, 1000 + i) for i in range(4)]
    verdict = table.observe_authenticated(newcomers[0], address(50), "outbound", later)
    assert isinstance(verdict, BucketFull)
    assert verdict.to_ping == tuple(ids[:PING_BATCH])  # the least recently seen
    # While the round is out, more newcomers only wait in the cache.
    cached = table.observe_authenticated(newcomers[1], address(51), "outbound", later)
    assert isinstance(cached, Cached)
    # ids[0] answered; ids[1] and ids[2] did not.
    added = table.settle(verdict, [ids[0]], later + 1)
    assert {e.node_id for e in added} == {newcomers[0], newcomers[1]}
    members = {e.node_id for e in table.bucket_entries(200)}
    assert ids[0] in members and ids[1] not in members and ids[2] not in members
    assert len(members) == K
    living = table.get(ids[0])
    assert living is not None and living.last_seen == later + 1
    # The living one moved to the back: the next round asks others first.
    verdict = table.observe_authenticated(newcomers[2], address(52), "outbound", later + RECENT + 2)
    assert isinstance(verdict, BucketFull) and ids[0] not in verdict.to_ping


def test_a_full_bucket_of_recently_seen_entries_pings_nobody() -> None:
    table = RoutingTable(OWN)
    fill(table, 10, K, 0.0)
    verdict = table.observe_authenticated(in_bucket(10, 500), address(9), "outbound", 1.0)
    assert isinstance(verdict, Cached)


def test_everyone_alive_keeps_the_bucket_and_the_newcomer_waits() -> None:
    table = RoutingTable(OWN)
    ids = fill(table, 30, K, 0.0)
    verdict = table.observe_authenticated(in_bucket(30, 500), address(9), "outbound", RECENT * 2)
    assert isinstance(verdict, BucketFull)
    assert table.settle(verdict, verdict.to_ping, RECENT * 2 + 1) == []
    assert {e.node_id for e in table.bucket_entries(30)} == set(ids)
    assert [e.node_id for e in table.replacements(30)] == [in_bucket(30, 500)]


def test_the_replacement_cache_is_bounded() -> None:
    table = RoutingTable(OWN)
    fill(table, 40, K, 0.0)
    for serial in range(100):
        table.observe_authenticated(in_bucket(40, 1000 + serial), address(serial), "inbound", 1.0)
    assert len(table.replacements(40)) == REPLACEMENTS
    assert len(table.bucket_entries(40)) == K


def test_force_evicts_the_oldest_at_once() -> None:
    table = RoutingTable(OWN)
    ids = fill(table, 60, K, 0.0)
    forced = in_bucket(60, 999)
    verdict = table.force(forced, address(99), "outbound", 100.0)
    assert isinstance(verdict, Added) and verdict.entry.learned == Learned.MANUAL
    members = {e.node_id for e in table.bucket_entries(60)}
    assert forced in members and ids[0] not in members and len(members) == K


def test_failures_make_an_entry_stale_and_a_replacement_takes_its_place() -> None:
    table = RoutingTable(OWN)
    ids = fill(table, 70, K, 0.0)
    waiting = in_bucket(70, 700)
    table.observe_authenticated(waiting, address(70), "outbound", 1.0)
    for _ in range(STALE_AFTER):
        table.record_failure(ids[5], 2.0)
    assert ids[5] not in table and waiting in table
    # Without a replacement a failing entry is only left out of answers.
    lone = RoutingTable(OWN)
    peer = fill(lone, 71, 1, 0.0)[0]
    lone.record_failure(peer, 1.0)
    lone.record_failure(peer, 1.0)
    assert peer in lone and lone.closest(peer) == []
    lone.record_success(peer, 2.0)
    assert [e.node_id for e in lone.closest(peer)] == [peer]


def test_refresh_deadlines_are_jittered_and_reset_by_traffic() -> None:
    rng = random.Random(1)
    table = RoutingTable(OWN, rng=rng)
    assert table.next_deadline() is None
    table.observe_authenticated(in_bucket(100, 1), address(1), "outbound", 0.0)
    table.observe_authenticated(in_bucket(200, 1), address(2), "outbound", 10.0)
    table.touch_bucket(50, 0.0)  # below the closest neighbour: never refreshed
    deadline = table.next_deadline()
    assert deadline is not None
    low, high = REFRESH_INTERVAL * (1 - REFRESH_JITTER), REFRESH_INTERVAL * (1 + REFRESH_JITTER)
    assert low <= deadline <= high + 10
    assert table.due_refreshes(low - 1) == []
    due = table.due_refreshes(high + 11)
    assert due == [100, 200]
    table.touch_bucket(100, high + 11)
    assert table.due_refreshes(high + 11) == [200]
    # Traffic in bucket 200 resets its timer too.
    table.observe_authenticated(in_bucket(200, 1), address(2), "inbound", high + 12)
    assert table.due_refreshes(high + 12) == []
    # Jitter comes from the injected rng: two tables with different seeds differ.
    other = RoutingTable(OWN, rng=random.Random(2))
    other.observe_authenticated(in_bucket(100, 1), address(1), "outbound", 0.0)
    fresh = RoutingTable(OWN, rng=random.Random(1))
    fresh.observe_authenticated(in_bucket(100, 1), address(1), "outbound", 0.0)
    assert other.next_deadline() != fresh.next_deadline()


@pytest.mark.parametrize("direction", ["inbound", "outbound"])
def test_remove_and_restore(direction: str) -> None:
    table = RoutingTable(OWN)
    peer = in_bucket(9, 1)
    verdict = table.observe_authenticated(peer, address(1), direction, 0.0)
    assert isinstance(verdict, Added)
    entry = verdict.entry
    assert table.remove(peer) and peer not in table and not table.remove(peer)
    assert table.restore(entry) and table.get(peer) is entry


def test_strangers_seen_inbound_never_start_a_ping_round_and_rounds_are_a_minute_apart() -> None:
    table = RoutingTable(OWN)
    fill(table, 80, K, 0.0)
    later = RECENT * 3
    inbound = table.observe_authenticated(in_bucket(80, 900), address(90), "inbound", later)
    assert isinstance(inbound, Cached)  # a request from a stranger pings nobody
    first = table.observe_authenticated(in_bucket(80, 901), address(91), "outbound", later)
    assert isinstance(first, BucketFull)
    table.settle(first, first.to_ping, later + 1)
    again = table.observe_authenticated(in_bucket(80, 902), address(92), "outbound", later + 2)
    assert isinstance(again, Cached)  # one round a minute per bucket
    after = table.observe_authenticated(
        in_bucket(80, 903), address(93), "outbound", later + RECENT + 1
    )
    assert isinstance(after, BucketFull)


# -- diversity: how many places one network may take ---------------------------------


def public(network: int, host: int) -> tuple[str, int]:
    """An address in the global /24 number ``network`` (198.51.100.0/24 is documentation
    space, not global, so these are built from 11.0.0.0/8, which is)."""
    return (f"11.0.{network}.{host}", 4000)


def test_one_network_takes_at_most_two_places_of_a_bucket_and_ten_of_the_table() -> None:
    table = RoutingTable(OWN)
    verdicts = [
        table.observe_authenticated(in_bucket(200, i), public(7, i % 3), "outbound", 1.0)
        for i in range(20)
    ]
    assert sum(isinstance(v, Added) for v in verdicts) == PER_BUCKET
    refused = [v for v in verdicts if isinstance(v, Refused)]
    assert len(refused) == 20 - PER_BUCKET and "11.0.7.0/24" in refused[0].reason
    # The same network across many buckets: ten places in the whole table.
    for index in range(100, 140):
        for serial in range(3):
            table.observe_authenticated(in_bucket(index, serial), public(7, 9), "outbound", 1.0)
    assert sum(e.group == "11.0.7.0/24" for e in table.entries()) == PER_TABLE
    # Others are not crowded out: each of 18 other networks takes its place in bucket 200.
    for network in range(18):
        node_id = in_bucket(200, 100 + network)
        verdict = table.observe_authenticated(node_id, public(50 + network, 1), "outbound", 1.0)
        assert isinstance(verdict, Added)
    assert len(table.bucket_entries(200)) == K


def test_places_come_back_when_entries_go_and_replacements_must_fit_too() -> None:
    table = RoutingTable(OWN)
    first, second = in_bucket(10, 1), in_bucket(10, 2)
    for node_id in (first, second):
        assert isinstance(table.observe_authenticated(node_id, public(1, 1), "outbound", 0), Added)
    third = in_bucket(10, 3)
    assert isinstance(table.observe_authenticated(third, public(1, 2), "outbound", 0), Refused)
    table.remove(first)
    assert isinstance(table.observe_authenticated(third, public(1, 2), "outbound", 0), Added)
    # A full bucket's replacement from a network that has its share stays in the cache.
    full = RoutingTable(OWN, k=3)
    for serial, network in enumerate((1, 2, 1)):
        full.observe_authenticated(in_bucket(9, serial), public(network, serial), "outbound", 0)
    full.observe_authenticated(in_bucket(9, 8), public(3, 8), "outbound", 0)  # cached
    full.observe_authenticated(in_bucket(9, 7), public(1, 7), "outbound", 0)  # cached, newest
    full.record_failure(in_bucket(9, 1), 0)
    full.record_failure(in_bucket(9, 1), 0)  # stale: replaced from the cache
    members = {e.node_id for e in full.bucket_entries(9)}
    assert in_bucket(9, 8) in members and in_bucket(9, 7) not in members


def test_non_global_addresses_are_exempt_unless_told_otherwise_and_a_forced_add_wins() -> None:
    table = RoutingTable(OWN)
    assert len(fill(table, 50, K, 0.0)) == K  # 20 nodes on 127.0.0.1: a test network
    strict = RoutingTable(OWN, diversity=Diversity(exempt=lambda ip: False))
    verdicts = [
        strict.observe_authenticated(in_bucket(50, i), address(i), "outbound", 0.0)
        for i in range(5)
    ]
    assert [type(v) for v in verdicts] == [Added, Added, Refused, Refused, Refused]
    forced = strict.force(in_bucket(50, 9), address(9), "outbound", 0.0)
    assert isinstance(forced, Added) and forced.entry.learned == Learned.MANUAL
    assert Diversity().group(("::ffff:11.0.3.4", 1)) == "11.0.3.0/24"
    assert Diversity().group(("2001:4860:1:2::9", 1)) == "2001:4860:1::/48"
    assert Diversity().group(("192.168.1.9", 1)) is None
