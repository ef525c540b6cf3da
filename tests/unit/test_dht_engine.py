"""The engine with a fake clock: join and refresh, full-bucket rounds, answers, publishing."""

from __future__ import annotations

import random

import pytest

from meshkey.dht.budget import AMPLIFICATION, DIAL_COST, HOP_BYTES
from meshkey.dht.diversity import PER_ANSWER, PER_TABLE
from meshkey.dht.engine import (
    MAX_LOOKUPS,
    MAX_REFRESHES,
    DhtEngine,
    DialBackJob,
    Joined,
    LookupFinished,
    LookupLimitError,
    Phase,
    PingRoundSettled,
    Published,
    Purpose,
    SendRequest,
)
from meshkey.dht.lookup import LookupKind
from meshkey.dht.persistence import GraphPersistence
from meshkey.dht.records import PersistSequence, RecordContent, sign_record
from meshkey.dht.store import MemoryGraphStore
from meshkey.dht.table import RECENT, REFRESH_INTERVAL, BucketFull, K, Learned
from meshkey.identity.keys import Identity
from meshkey.identity.node_id import NodeId
from meshkey.wire.dht import (
    DhtError,
    DhtErrorCode,
    DialBack,
    FindNode,
    FindValue,
    Mode,
    Nodes,
    Ping,
    Pong,
    Store,
    Stored,
    Value,
    WireContact,
    encode_rpc,
)


def engine(mode: Mode = Mode.SERVER, seed: int = 1) -> DhtEngine:
    return DhtEngine(Identity.generate(), 0.0, rng=random.Random(seed), mode=mode)


def phase(core: DhtEngine) -> Phase:
    return core.phase  # a call: mypy would narrow the attribute across the steps


def sends(core: DhtEngine) -> list[SendRequest]:
    return [c for c in core.commands() if isinstance(c, SendRequest)]


def answer_all(core: DhtEngine, commands: list[SendRequest], now: float, contacts=()) -> None:
    for command in commands:
        core.on_authenticated(command.peer, command.address, "outbound", now)
        request = command.request
        if isinstance(request, Ping):
            core.on_answer(command.txid, command.peer, Pong(request.txid, Mode.SERVER, None), now)
        elif isinstance(request, FindNode):
            core.on_answer(
                command.txid, command.peer, Nodes(request.txid, Mode.SERVER, contacts), now
            )
        elif isinstance(request, FindValue):
            answer = Value(request.txid, Mode.SERVER, None, contacts)
            core.on_answer(command.txid, command.peer, answer, now)
        elif isinstance(request, Store):
            core.on_answer(command.txid, command.peer, Stored(request.txid, Mode.SERVER), now)


def test_join_pings_seeds_looks_up_itself_refreshes_far_buckets_then_refreshes_hourly() -> None:
    core = engine()
    own = int.from_bytes(core.own.raw, "big")
    seed = NodeId((own ^ ((1 << 250) | 12345)).to_bytes(32, "big"))  # our closest neighbour
    core.join([(seed, ("127.0.0.1", 9))], 0.0)
    assert phase(core) == Phase.SEEDING
    first = sends(core)
    assert len(first) == 1 and isinstance(first[0].request, Ping) and first[0].peer == seed
    assert seed not in core.table  # nothing enters before its hop authenticates
    answer_all(core, first, 0.01)
    assert core.table.get(seed).learned == Learned.SEED  # type: ignore[union-attr]
    assert phase(core) == Phase.JOINING
    own_lookup = sends(core)
    assert [c.request.target for c in own_lookup] == [core.own.raw]  # type: ignore[union-attr]
    answer_all(core, own_lookup, 0.02)
    assert phase(core) == Phase.REFRESHING
    floor = core.table.bucket_of(seed)
    refreshes = sends(core)
    finds = [c.request for c in refreshes if isinstance(c.request, FindNode)]
    assert len(finds) == len(refreshes)
    targets = {core.table.bucket_of(NodeId(f.target)) for f in finds}
    assert floor == 250 and targets == set(range(251, 256))
    answer_all(core, refreshes, 0.03)
    assert any(isinstance(e, Joined) for e in core.events())
    assert phase(core) == Phase.READY
    deadline = core.next_deadline()
    assert deadline is not None and REFRESH_INTERVAL * 0.85 < deadline < REFRESH_INTERVAL * 1.15
    core.on_timer(deadline)
    due = sends(core)
    assert len(due) >= 1 and all(isinstance(c.request, FindNode) for c in due)
    assert len({c.request.target for c in due}) <= MAX_REFRESHES  # type: ignore[union-attr]


def test_a_full_bucket_pings_the_oldest_and_settles_with_the_answers() -> None:
    core = engine()
    own = int.from_bytes(core.own.raw, "big")
    ids = [NodeId((own ^ ((1 << 200) | i)).to_bytes(32, "big")) for i in range(K + 1)]
    for serial, node_id in enumerate(ids[:K]):
        core.on_authenticated(node_id, ("127.0.0.1", 1000 + serial), "outbound", float(serial))
    core.commands()
    now = RECENT + 100
    verdict = core.on_authenticated(ids[K], ("127.0.0.1", 3000), "outbound", now)
    assert isinstance(verdict, BucketFull)
    pings = sends(core)
    assert [c.peer for c in pings] == list(ids[:3])
    alive, refused, silent = pings
    core.on_answer(alive.txid, alive.peer, Pong(alive.request.txid, Mode.SERVER, None), now + 0.1)
    core.on_failure(refused.txid, now + 0.1)
    assert not [e for e in core.events() if isinstance(e, PingRoundSettled)]
    deadline = core.next_deadline()
    assert deadline is not None
    core.on_timer(deadline)  # the silent one times out
    settled = [e for e in core.events() if isinstance(e, PingRoundSettled)]
    assert len(settled) == 1
    assert settled[0].alive == (alive.peer,)
    assert set(settled[0].evicted) == {refused.peer, silent.peer}
    assert settled[0].added == (ids[K],)
    assert alive.peer in core.table and ids[K] in core.table
    assert refused.peer not in core.table and silent.peer not in core.table


def test_answers_hand_out_servers_only_and_never_the_asker() -> None:
    core = engine()
    asker = Identity.generate().node_id
    servers = [Identity.generate().node_id for _ in range(5)]
    client = Identity.generate().node_id
    for serial, node_id in enumerate(servers):
        core.on_authenticated(node_id, ("127.0.0.1", 2000 + serial), "outbound", 0.0)
    core.on_authenticated(client, ("127.0.0.1", 2999), "inbound", 0.0)
    core.on_authenticated(asker, ("127.0.0.1", 3000), "outbound", 0.0)
    answer = core.on_request(
        asker, ("127.0.0.1", 3000), FindNode(b"t" * 8, Mode.SERVER, bytes(32)), 1.0
    )
    assert isinstance(answer, Nodes)
    handed = {NodeId(c.node_id) for c in answer.contacts}
    assert handed == set(servers)
    pong = core.on_request(client, ("127.0.0.1", 2999), Ping(b"p" * 8, Mode.CLIENT), 1.0)
    assert isinstance(pong, Pong) and pong.observed == ("127.0.0.1", 2999)


def test_an_answer_hands_out_at_most_two_nodes_of_one_network() -> None:
    """150 identities on one host (their hops authenticated, so they are real servers) and
    30 on hosts of their own: the one network holds 10 places of the graph and 2 of an
    answer, whatever the target."""
    core = engine()
    sybils = [Identity.generate().node_id for _ in range(150)]
    others = [Identity.generate().node_id for _ in range(30)]
    for serial, node_id in enumerate(sybils):
        core.on_authenticated(node_id, ("11.0.66.6", 2000 + serial), "outbound", 0.0)
    for serial, node_id in enumerate(others):
        core.on_authenticated(node_id, (f"11.{serial}.1.1", 4000), "outbound", 0.0)
    in_graph = [e for e in core.table.entries() if e.node_id in set(sybils)]
    assert len(in_graph) == PER_TABLE
    asker = others[0]
    for target in [s.raw for s in sybils[:10]] + [bytes(32)]:
        answer = core.on_request(
            asker, ("11.0.1.1", 4000), FindNode(b"t" * 8, Mode.SERVER, target), 1.0
        )
        assert isinstance(answer, Nodes) and len(answer.contacts) == K
        assert sum(NodeId(c.node_id) in set(sybils) for c in answer.contacts) <= PER_ANSWER


def test_a_client_answers_pings_only_and_requests_are_rate_limited() -> None:
    client = engine(Mode.CLIENT)
    peer = Identity.generate().node_id
    refused = client.on_request(
        peer, ("127.0.0.1", 1), FindNode(b"t" * 8, Mode.SERVER, bytes(32)), 0.0
    )
    assert isinstance(refused, DhtError) and refused.code == DhtErrorCode.NOT_SERVER
    server = engine()
    answers = [
        server.on_request(peer, ("127.0.0.1", 1), Ping(b"p" * 8, Mode.SERVER), 0.0)
        for _ in range(300)
    ]
    limited = [a for a in answers if isinstance(a, DhtError)]
    assert limited and all(a.code == DhtErrorCode.RATE_LIMITED for a in limited)
    assert isinstance(
        server.on_request(peer, ("127.0.0.1", 1), Ping(b"p" * 8, Mode.SERVER), 10.0), Pong
    )


def test_forged_contacts_in_answers_never_enter_the_table() -> None:
    core = engine()
    honest = Identity.generate().node_id
    core.on_authenticated(honest, ("127.0.0.1", 1), "outbound", 0.0)
    core.start_lookup(Identity.generate().node_id, 0.0)
    (ask,) = sends(core)
    made_up = [
        WireContact(Identity.generate().node_id.raw, Mode.SERVER, (("127.0.0.1", 2 + i),))
        for i in range(5)
    ]
    core.on_answer(ask.txid, honest, Nodes(ask.request.txid, Mode.SERVER, tuple(made_up)), 0.1)
    assert len(core.table) == 1
    # A candidate: asked over a hop pinned to the made-up id, one at a time on the answer's
    # credit (the others wait for it)...
    (forged_ask,) = sends(core)
    assert forged_ask.peer in {NodeId(c.node_id) for c in made_up}
    assert forged_ask.dial_timeout is not None
    core.on_failure(forged_ask.txid, 0.2)  # ...which fails to authenticate
    assert len(core.table) == 1
    assert sends(core) == []  # the answer's credit is spent: the rest are never dialled
    done = [e for e in core.events() if isinstance(e, LookupFinished)]
    assert done and [c.node_id for c in done[0].result.closest] == [honest]
    assert core.budget.dead(forged_ask.address, 0.3)


def test_an_inbound_peer_claiming_server_is_checked_over_a_fresh_hop() -> None:
    core = engine()
    peer = Identity.generate().node_id
    core.on_authenticated(peer, ("127.0.0.1", 7), "inbound", 0.0)
    core.on_request(peer, ("127.0.0.1", 7), Ping(b"p" * 8, Mode.SERVER), 0.0)
    (check,) = sends(core)
    assert check.fresh and check.peer == peer and check.address == ("127.0.0.1", 7)
    core.on_request(peer, ("127.0.0.1", 7), Ping(b"q" * 8, Mode.SERVER), 1.0)
    assert sends(core) == []  # checked once per interval, not per request
    core.on_authenticated(peer, ("127.0.0.1", 7), "outbound", 1.1)
    assert core.table.get(peer).mode == Mode.SERVER  # type: ignore[union-attr]


def test_publishing_stores_the_record_at_the_closest_servers() -> None:
    core = engine()
    holders = [Identity.generate().node_id for _ in range(4)]
    for serial, node_id in enumerate(holders):
        core.on_authenticated(node_id, ("127.0.0.1", 4000 + serial), "outbound", 0.0)
    core.publish(RecordContent(direct=(("127.0.0.1", 1),)), 1.0)
    commands = core.commands()
    assert isinstance(commands[0], PersistSequence)
    pending = [c for c in commands if isinstance(c, SendRequest)]
    while pending and all(isinstance(c.request, FindNode) for c in pending):
        answer_all(core, pending, 1.1)  # the lookup of our own id, alpha at a time
        pending = sends(core)
    stores = pending
    assert {c.peer for c in stores} == set(holders)
    assert all(isinstance(c.request, Store) for c in stores)
    answer_all(core, stores, 1.2)
    published = [e for e in core.events() if isinstance(e, Published)]
    assert published and published[0].stored_at == 4 and published[0].asked == 4
    # Our own record answers FIND_VALUE for our own id.
    own_value = core.on_request(
        holders[0], ("127.0.0.1", 4000), FindValue(b"v" * 8, Mode.SERVER, core.own.raw), 2.0
    )
    assert isinstance(own_value, Value) and own_value.record == core.publisher.current.raw  # type: ignore[union-attr]


def test_dial_backs_are_rare_and_helper_dials_only_for_known_nodes() -> None:
    core = engine()
    helper = Identity.generate().node_id
    core.on_authenticated(helper, ("127.0.0.1", 50), "outbound", 0.0)
    asker = Identity.generate().node_id
    core.on_authenticated(asker, ("127.0.0.1", 60), "inbound", 0.0)
    jobs = [
        core.on_request(asker, ("127.0.0.1", 60), DialBack(b"d" * 8, Mode.SERVER, b"n" * 16), 1.0)
        for _ in range(5)
    ]
    done = [j for j in jobs if isinstance(j, DialBackJob)]
    assert len(done) == 3 and all(isinstance(j, DhtError) for j in jobs[3:])
    assert done[0].helper is not None and done[0].helper.node_id == helper
    assert done[0].address == ("127.0.0.1", 60)
    stranger = Identity.generate().node_id
    victim = WireContact(bytes(32), Mode.CLIENT, (("127.0.0.1", 9),))
    favour = core.on_request(
        stranger, ("127.0.0.1", 70), DialBack(b"e" * 8, Mode.SERVER, b"n" * 16, victim), 1.0
    )
    assert isinstance(favour, DhtError) and favour.code == DhtErrorCode.UNAVAILABLE


def test_a_join_whose_seeds_do_not_answer_ends_at_once_with_an_empty_graph() -> None:
    core = engine(Mode.CLIENT)
    seed = Identity.generate().node_id
    core.join([(seed, ("192.0.2.1", 4000))], 0.0)
    [ping] = sends(core)
    core.on_failure(ping.txid, 0.1)  # the seed is down: its hop failed
    joined = [e for e in core.events() if isinstance(e, Joined)]
    assert [j.neighbours for j in joined] == [0]  # the glue retries the join later
    assert phase(core) is Phase.READY and len(core.table) == 0


def test_lookups_for_callers_past_max_lookups_are_refused_and_the_engines_own_go_on() -> None:
    core = engine()
    silent = Identity.generate().node_id  # the one server known: it never answers
    core.on_authenticated(silent, ("127.0.0.1", 1), "outbound", 0.0)
    for _ in range(MAX_LOOKUPS):
        core.start_lookup(Identity.generate().node_id, 0.0)
    asked = sends(core)
    assert len(asked) == MAX_LOOKUPS
    with pytest.raises(LookupLimitError):
        core.start_lookup(Identity.generate().node_id, 0.0)
    assert sends(core) == [] and core.lookups.running(Purpose.USER) == MAX_LOOKUPS
    core.start_lookup(Identity.generate().node_id, 0.0, purpose=Purpose.REFRESH)
    assert len(sends(core)) == 1  # the engine's own upkeep is not held up by callers
    core.on_failure(asked[0].txid, 0.1)  # one lookup ends: its only candidate failed
    assert [e for e in core.events() if isinstance(e, LookupFinished)]
    core.start_lookup(Identity.generate().node_id, 0.1)  # room for one more
    assert len(sends(core)) == 1
    with pytest.raises(LookupLimitError):
        core.start_lookup(Identity.generate().node_id, 0.1)


def test_a_lookup_ignores_a_record_older_than_the_newest_seen_even_after_a_restart() -> None:
    """Sequence 2 was read (not held) and then expired; sequence 1, signed to live longer,
    is still valid. The floor is persisted with the records and comes back at start."""
    owner = Identity.generate()
    newer = sign_record(owner, 2, 3600.0)
    older = sign_record(owner, 1, 80_000.0)
    core = engine()
    assert core._verify_record(newer.raw, owner.node_id, 0.0) == newer
    assert core._verify_record(older.raw, owner.node_id, 0.0) is None
    store = MemoryGraphStore()
    GraphPersistence(core, store, 0.0).flush()
    restarted = engine(seed=2)
    GraphPersistence(restarted, store, 0.0).restore(5000.0)  # sequence 2 expired meanwhile
    assert restarted.records.floor(owner.node_id, 5000.0) == 2
    assert restarted._verify_record(older.raw, owner.node_id, 5000.0) is None
    # Answered to a FIND_VALUE lookup by the only node asked: no record found.
    forger = Identity.generate().node_id
    restarted.on_authenticated(forger, ("192.0.2.9", 4000), "outbound", 5000.0)
    lookup_id = restarted.start_lookup(owner.node_id, 5000.0, kind=LookupKind.FIND_VALUE)
    (ask,) = sends(restarted)
    restarted.on_answer(
        ask.txid, forger, Value(ask.request.txid, Mode.SERVER, older.raw, ()), 5000.1
    )
    (finished,) = [e for e in restarted.events() if isinstance(e, LookupFinished)]
    assert finished.lookup_id == lookup_id and finished.result.record is None
    assert finished.result.stats.bad_records == 1


def test_forged_answers_make_a_node_dial_at_most_three_times_what_the_forger_sent() -> None:
    """Issue 19: 20 made-up NodeIds x 5 addresses of a host where no meshkey runs, in every
    answer of a forger this node asks (it is a server of its graph). Whatever it names, the
    dials on its word (each closed after its first flight: DIAL_COST) stay within 3x of
    what it sent, and an address found dead is not dialled again on anyone's word."""
    core = engine()
    forger = Identity.generate().node_id
    core.on_authenticated(forger, ("203.0.113.1", 4000), "outbound", 0.0)
    sent_by_forger, dials, now = HOP_BYTES, 0, 0.0
    dialled: set[tuple[str, int]] = set()
    for round_number in range(10):
        core.start_lookup(Identity.generate().node_id, now)
        pending = sends(core)
        while pending:
            for command in pending:
                if command.peer == forger:
                    addresses = [
                        ("198.51.100.7", 1000 + 100 * (round_number % 3) + 5 * i + j)
                        for i in range(20)
                        for j in range(5)
                    ]
                    contacts = tuple(
                        WireContact(
                            Identity.generate().node_id.raw,
                            Mode.SERVER,
                            tuple(addresses[5 * i : 5 * i + 5]),
                        )
                        for i in range(20)
                    )
                    answer = Nodes(command.request.txid, Mode.SERVER, contacts)
                    size = len(encode_rpc(answer))
                    sent_by_forger += size
                    core.on_answer(command.txid, forger, answer, now, size=size)
                else:  # a made-up contact: nobody answers; the glue gives the dial up
                    assert command.dial_timeout is not None
                    assert command.address not in dialled  # never twice
                    dialled.add(command.address)
                    dials += 1
                    core.on_failure(command.txid, now + command.dial_timeout)
            now += 1.0
            core.on_timer(now)
            pending = sends(core)
        core.events()
    assert dials * DIAL_COST <= AMPLIFICATION * sent_by_forger
    assert dials >= 1  # the forger's bytes did buy something: the bound is what holds
