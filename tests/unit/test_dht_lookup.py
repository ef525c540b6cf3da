"""The lookup state machine with a fake clock: alpha in flight, slow and dead peers, the end."""

from __future__ import annotations

import random

from meshkey.dht.budget import Charge
from meshkey.dht.lookup import (
    ALPHA,
    HARD_FACTOR,
    HARD_MINIMUM,
    MAX_DIALS_PER_ANSWER,
    PATIENCE_MINIMUM,
    Admission,
    Contact,
    Lookup,
    LookupDone,
    LookupKind,
    PeerUnresponsive,
    SendFindNode,
    SendFindValue,
)
from meshkey.dht.rtt import DEFAULT_TIMEOUT, MAX_TIMEOUT, MIN_TIMEOUT, RttEstimator
from meshkey.dht.table import key_of
from meshkey.identity.node_id import NodeId
from meshkey.wire.dht import Mode

rng = random.Random(5)
OWN = NodeId(rng.randbytes(32))
TARGET = NodeId(rng.randbytes(32))


def contact(node_id: NodeId, port: int = 1) -> Contact:
    return Contact(node_id, (("127.0.0.1", port),))


def peers(count: int) -> list[NodeId]:
    return [NodeId(rng.randbytes(32)) for _ in range(count)]


def by_distance(ids: list[NodeId], target: NodeId = TARGET) -> list[NodeId]:
    return sorted(ids, key=lambda n: key_of(n) ^ key_of(target))


def done_of(lookup: Lookup) -> LookupDone:
    finished = [e for e in lookup.events() if isinstance(e, LookupDone)]
    assert len(finished) == 1
    return finished[0]


def test_rtt_estimator_timeouts() -> None:
    rtt = RttEstimator()
    peer, other = peers(2)
    assert rtt.timeout(peer) == DEFAULT_TIMEOUT
    rtt.sample(peer, 0.1)
    assert rtt.timeout(peer) == 0.1 + 4 * 0.05  # srtt + 4 * rttvar after one sample
    assert rtt.timeout(other) == rtt.timeout(peer)  # strangers get what this node measured
    for _ in range(50):
        rtt.sample(peer, 0.001)
    assert rtt.timeout(peer) == MIN_TIMEOUT
    rtt.sample(other, 100.0)
    assert rtt.timeout(other) == MAX_TIMEOUT
    small = RttEstimator(capacity=2)
    for node_id in peers(5):
        small.sample(node_id, 0.1)
    assert len(small._peers) == 2


def test_alpha_requests_in_flight_and_the_next_goes_out_at_once() -> None:
    start = peers(10)
    lookup = Lookup(OWN, TARGET, [contact(p) for p in start], 0.0, rtt=RttEstimator())
    first = lookup.commands()
    assert len(first) == ALPHA
    assert [c.peer for c in first] == by_distance(start)[:ALPHA]  # closest first
    assert all(isinstance(c, SendFindNode) and c.target == TARGET for c in first)
    lookup.on_reply(first[0].peer, [], 0.01)
    following = lookup.commands()
    assert len(following) == 1  # one answer frees one slot, no waiting for the round
    assert following[0].peer == by_distance(start)[ALPHA]


def test_find_node_ends_when_the_k_closest_answered() -> None:
    world = peers(60)
    lookup = Lookup(OWN, TARGET, [contact(p) for p in world[:5]], 0.0, rtt=RttEstimator(), k=8)
    now = 0.0
    asked: list[NodeId] = []
    while lookup.done is None:
        commands = lookup.commands()
        assert commands, "a running lookup with nothing in flight"
        for command in commands:
            asked.append(command.peer)
            now += 0.01
            # Every node knows the 8 closest to the target of the whole world.
            lookup.on_reply(command.peer, [contact(p) for p in by_distance(world)[:8]], now)
    result = done_of(lookup)
    assert [c.node_id for c in result.closest] == by_distance(world)[:8]
    assert result.stats.messages == len(asked) == result.stats.nodes_asked
    assert result.stats.rounds == 2
    assert not result.found  # the target itself is not in this world
    assert lookup.finished


def test_a_slow_peer_does_not_stall_the_lookup_and_its_late_answer_counts() -> None:
    rtt = RttEstimator()
    start = peers(6)
    ordered = by_distance(start)
    for p in start:
        rtt.sample(p, 0.02)
    lookup = Lookup(OWN, TARGET, [contact(p) for p in start], 0.0, rtt=rtt, k=6)
    first = lookup.commands()
    slow = first[0].peer
    soft = rtt.timeout(slow)
    assert lookup.next_deadline() == soft
    for command in first[1:]:
        lookup.on_reply(command.peer, [], 0.02)
    assert len(lookup.commands()) == 2
    lookup.on_timer(soft)  # the slow one's soft timeout: the lookup asks the next at once
    moved_on = lookup.commands()
    assert [c.peer for c in moved_on] == [ordered[5]]
    # A late answer is still used: its contacts become candidates (here the closest of all).
    newcomer = NodeId(bytes(a ^ 1 if i == 31 else a for i, a in enumerate(TARGET.raw)))
    lookup.on_reply(slow, [contact(newcomer, 9)], soft * 2)
    assert lookup.commands() == []  # alpha (3) are in flight: ordered[3], [4] and [5]
    lookup.on_reply(ordered[5], [], soft * 2)
    assert [c.peer for c in lookup.commands()] == [newcomer]
    assert lookup._late == 1


def test_dead_peers_cost_a_soft_timeout_and_are_reported_at_the_hard_one() -> None:
    rtt = RttEstimator()
    living, dead = peers(3), peers(3)
    for p in living + dead:
        rtt.sample(p, 0.01)
    lookup = Lookup(OWN, TARGET, [contact(p) for p in living + dead], 0.0, rtt=rtt, k=6)
    now = 0.0
    unresponsive: set[NodeId] = set()
    while not lookup.finished:
        for command in lookup.commands():
            if command.peer in living:
                lookup.on_reply(command.peer, [], now + 0.01)
        deadline = lookup.next_deadline()
        if deadline is None:
            break
        now = max(now + 0.01, deadline)
        lookup.on_timer(now)
        unresponsive |= {e.peer for e in lookup.events() if isinstance(e, PeerUnresponsive)}
    assert lookup.done is not None
    assert {c.node_id for c in lookup.done.closest} == set(living)
    # It ended after a few soft timeouts, long before anything like a fixed 5 s per peer.
    # (At most one patience, 4 soft timeouts, if a dead one was the closest candidate.)
    patience = max(HARD_FACTOR * rtt.timeout(dead[0]), PATIENCE_MINIMUM)
    assert lookup.done.stats.duration <= patience + 0.1
    assert unresponsive == set(dead)
    assert now <= max(rtt.timeout(dead[0]) * HARD_FACTOR, HARD_MINIMUM) + 0.1


def test_stop_at_target_ends_as_soon_as_the_target_answers() -> None:
    start = peers(8)
    lookup = Lookup(
        OWN, TARGET, [contact(p) for p in start], 0.0, rtt=RttEstimator(), stop_at_target=True
    )
    first = lookup.commands()
    lookup.on_reply(first[0].peer, [contact(TARGET, 7)], 0.01)
    ask_target = [c for c in lookup.commands() if c.peer == TARGET]
    assert ask_target and ask_target[0].address == ("127.0.0.1", 7)
    lookup.on_reply(TARGET, [], 0.02)
    result = done_of(lookup)
    assert result.found and result.closest[0].node_id == TARGET
    assert result.stats.messages == len(first) + 1


def test_forged_contacts_fail_and_a_second_address_is_tried() -> None:
    honest = peers(1)[0]
    lookup = Lookup(OWN, TARGET, [contact(honest)], 0.0, rtt=RttEstimator(), k=4)
    lookup.commands()
    made_up = NodeId(bytes(31) + b"\x01")
    real_elsewhere = peers(1)[0]
    lookup.on_reply(
        honest, [contact(made_up, 2), contact(real_elsewhere, 3), contact(real_elsewhere, 4)], 0.01
    )
    asked = {c.peer: c.address for c in lookup.commands()}
    assert asked[real_elsewhere] == ("127.0.0.1", 3)
    lookup.on_failure(made_up, 0.02)  # its hop did not authenticate: no retry, it is FAILED
    lookup.on_failure(real_elsewhere, 0.02)  # wrong address: the other one is tried
    retry = lookup.commands()
    assert [(c.peer, c.address) for c in retry] == [(real_elsewhere, ("127.0.0.1", 4))]
    lookup.on_reply(real_elsewhere, [], 0.03)
    result = done_of(lookup)
    assert {c.node_id for c in result.closest} == {honest, real_elsewhere}
    assert result.stats.failed == 1


def test_clients_and_our_own_id_are_never_candidates() -> None:
    start = peers(1)
    lookup = Lookup(OWN, TARGET, [contact(start[0])], 0.0, rtt=RttEstimator())
    lookup.commands()
    client = Contact(peers(1)[0], (("127.0.0.1", 5),), Mode.CLIENT)
    lookup.on_reply(start[0], [client, contact(OWN), Contact(peers(1)[0], ())], 0.01)
    assert lookup.commands() == []
    assert done_of(lookup).stats.messages == 1


def test_find_value_ignores_bad_records_and_ends_at_a_good_one() -> None:
    start = peers(4)

    def verify(data: bytes, owner: NodeId, now: float) -> object:
        return data.decode() if data.startswith(b"good") else None

    lookup = Lookup(
        OWN,
        TARGET,
        [contact(p) for p in start],
        0.0,
        rtt=RttEstimator(),
        kind=LookupKind.FIND_VALUE,
        verify=verify,
    )
    first = lookup.commands()
    assert all(isinstance(c, SendFindValue) and c.key == TARGET for c in first)
    lookup.on_reply(first[0].peer, [], 0.01, record=b"forged")
    assert lookup.done is None
    lookup.on_reply(first[1].peer, [], 0.02, record=b"good record")
    result = done_of(lookup)
    assert result.found and result.record == "good record"
    assert result.stats.bad_records == 1


def sequence_lookup(start: list[NodeId]) -> Lookup:
    """A FIND_VALUE whose records are ``b"seq N"`` and rank by N."""

    def verify(data: bytes, owner: NodeId, now: float) -> object:
        return int(data.split()[1]) if data.startswith(b"seq ") else None

    return Lookup(
        OWN,
        TARGET,
        [contact(p) for p in start],
        0.0,
        rtt=RttEstimator(),
        kind=LookupKind.FIND_VALUE,
        verify=verify,
        rank=int,
    )


def test_find_value_with_a_rank_keeps_the_newest_record_of_the_answers_in_flight() -> None:
    lookup = sequence_lookup(peers(5))
    first = lookup.commands()
    assert len(first) == ALPHA
    lookup.on_reply(first[0].peer, [], 0.01, record=b"seq 7")  # a holder the last STORE missed
    assert lookup.done is None and lookup.commands() == []  # no new request once found
    lookup.on_reply(first[1].peer, [], 0.02, record=b"seq 9")
    assert lookup.done is None
    lookup.on_reply(first[2].peer, [], 0.03, record=b"seq 8")
    result = done_of(lookup)
    assert result.found and result.record == 9
    assert result.stats.messages == ALPHA


def test_find_value_waits_for_those_in_flight_only_until_their_soft_timeout() -> None:
    lookup = sequence_lookup(peers(5))
    first = lookup.commands()
    lookup.on_reply(first[0].peer, [], 0.01, record=b"seq 3")
    lookup.on_failure(first[1].peer, 0.02)  # its hop failed: nothing to wait for
    assert lookup.done is None and lookup.commands() == []
    deadline = lookup.next_deadline()
    assert deadline == DEFAULT_TIMEOUT  # the third one's soft timeout (never measured)
    lookup.on_timer(deadline)  # silent: SLOW now, and a SLOW one is not waited for
    result = done_of(lookup)
    assert result.found and result.record == 3 and result.stats.duration == DEFAULT_TIMEOUT
    lookup.on_reply(first[2].peer, [], deadline + 0.1, record=b"seq 4")  # too late: ignored
    assert lookup.done is result


def test_find_value_with_a_rank_still_ignores_bad_records() -> None:
    lookup = sequence_lookup(peers(3))
    first = lookup.commands()
    for index, command in enumerate(first):
        lookup.on_reply(command.peer, [], 0.01 * (index + 1), record=b"forged")
    result = done_of(lookup)
    assert not result.found and result.record is None and result.stats.bad_records == 3


def test_an_empty_start_ends_at_once() -> None:
    lookup = Lookup(OWN, TARGET, [], 0.0, rtt=RttEstimator())
    result = done_of(lookup)
    assert not result.found and result.closest == () and lookup.finished


def test_candidates_are_bounded() -> None:
    start = peers(1)
    lookup = Lookup(OWN, TARGET, [contact(start[0])], 0.0, rtt=RttEstimator(), alpha=1)
    lookup.commands()
    for serial in range(40):
        asked = lookup.commands()
        peer = asked[0].peer if asked else start[0]
        lookup.on_reply(peer, [contact(p, serial) for p in peers(20)], float(serial))
    assert len(lookup._candidates) <= 8 * 20


def test_an_answerer_caught_lying_is_distrusted() -> None:
    honest, liar = peers(2)
    lookup = Lookup(
        OWN, TARGET, [contact(honest), contact(liar, 2)], 0.0, rtt=RttEstimator(), alpha=2
    )
    lookup.commands()
    near = NodeId(bytes(a ^ 1 if i == 31 else a for i, a in enumerate(TARGET.raw)))
    made_up = [
        NodeId(bytes(a ^ (i + 2) if j == 31 else a for j, a in enumerate(TARGET.raw)))
        for i in range(5)
    ]
    lookup.on_reply(liar, [contact(n, 100 + i) for i, n in enumerate(made_up)], 0.01)
    asked = lookup.commands()
    assert asked and all(c.peer in made_up for c in asked)
    lookup.on_refused(asked[0].peer, 0.02)  # another NodeId answered at that address
    # Everything only the liar named is dropped; its later answers add nothing.
    assert all(
        m not in lookup._candidates
        or m == asked[0].peer
        or lookup._candidates[m].state.name != "NEW"
        for m in made_up
    )
    assert not [e for e in lookup.events() if isinstance(e, PeerUnresponsive)]
    lookup.on_reply(honest, [contact(near, 7)], 0.03)
    assert near in {c.peer for c in lookup.commands()}
    lookup.on_reply(near, [], 0.04)
    while lookup.done is None:
        for command in lookup.commands():
            lookup.on_failure(command.peer, 0.05)
        if lookup.done is None:
            lookup.on_timer(lookup.next_deadline() or 1.0)
    assert lookup.done.stats.suspects == 1
    assert lookup.done.closest[0].node_id == near


def test_a_round_without_progress_asks_the_rest_of_the_window_at_once() -> None:
    start = peers(10)
    lookup = Lookup(OWN, TARGET, [contact(p) for p in start], 0.0, rtt=RttEstimator())
    first = lookup.commands()
    lookup.on_reply(first[0].peer, [], 0.01)
    lookup.on_reply(first[1].peer, [], 0.01)
    assert len(lookup.commands()) == 2  # still alpha in flight
    lookup.on_reply(first[2].peer, [], 0.01)  # a whole round brought nothing closer
    assert len(lookup.commands()) == 10 - 3 - 2  # every other candidate at once
    # A peer search keeps alpha: it means to stop at the target.
    search = Lookup(
        OWN, TARGET, [contact(p) for p in start], 0.0, rtt=RttEstimator(), stop_at_target=True
    )
    for command in search.commands():
        search.on_reply(command.peer, [], 0.01)
    assert len(search.commands()) == ALPHA


# -- dials on someone's say-so: what ``admit`` lets go --------------------------------


class Gate:
    """An ``admit`` that lets through what ``allow`` says and records what it was asked."""

    def __init__(self) -> None:
        self.allow: dict[NodeId, Charge | Admission | None] = {}
        self.default: Charge | Admission | None = None
        self.asked: list[tuple[NodeId, tuple[str, int], frozenset[NodeId]]] = []

    def __call__(
        self, peer: NodeId, address: tuple[str, int], namers: frozenset[NodeId], now: float
    ) -> Charge | Admission | None:
        self.asked.append((peer, address, namers))
        return self.allow.get(peer, self.default)


def test_an_answer_gives_one_address_per_contact_and_the_tables_own_go_free() -> None:
    gate = Gate()
    answerer = peers(1)[0]
    lookup = Lookup(OWN, TARGET, [contact(answerer)], 0.0, rtt=RttEstimator(), admit=gate)
    (ask,) = lookup.commands()
    assert gate.asked == [] and ask.charge is None  # from our own table: no say-so
    named = peers(3)
    five = tuple(("192.0.2.1", port) for port in range(1, 6))
    lookup.on_reply(answerer, [Contact(n, five) for n in named], 0.1)
    sent = lookup.commands()
    assert {c.address for c in sent} == {five[0]}  # only the first address of each
    assert {a for _, a, _ in gate.asked} == {five[0]}
    assert all(namers == {answerer} for _, _, namers in gate.asked)


def test_one_answer_is_charged_a_few_dials_of_a_lookup_at_most() -> None:
    gate = Gate()
    answerer = peers(1)[0]
    gate.default = ((answerer, 1.0),)  # it has all the credit in the world
    lookup = Lookup(OWN, TARGET, [contact(answerer)], 0.0, rtt=RttEstimator(), admit=gate)
    lookup.commands()
    forged = peers(20)
    lookup.on_reply(answerer, [contact(n, 100 + i) for i, n in enumerate(forged)], 0.1)
    now, dialled = 0.1, 0
    while lookup.done is None:
        sent = lookup.commands()
        dialled += len(sent)
        for command in sent:
            lookup.on_failure(command.peer, now)
        now += 0.1
        lookup.on_timer(now)
    assert dialled == MAX_DIALS_PER_ANSWER
    assert lookup.done.stats.skipped == 20 - MAX_DIALS_PER_ANSWER


def test_a_dial_that_may_go_only_later_waits_and_a_dead_address_is_dropped() -> None:
    gate = Gate()
    answerer, other = peers(2)
    lookup = Lookup(
        OWN, TARGET, [contact(answerer), contact(other, 2)], 0.0, rtt=RttEstimator(), admit=gate
    )
    lookup.commands()
    close, dead = by_distance(peers(2))
    gate.allow = {close: Admission.LATER, dead: Admission.NEVER}
    lookup.on_reply(answerer, [contact(close, 10), contact(dead, 11)], 0.1)
    assert lookup.commands() == []  # nothing it may dial now; `other` is still out
    assert lookup.done is None
    gate.allow[close] = ((answerer, 1.0),)  # the credit came back (an answer, a refund)
    lookup.on_reply(other, [], 0.2)
    (ask,) = lookup.commands()
    assert ask.peer == close and ask.charge == ((answerer, 1.0),)
    lookup.on_reply(close, [], 0.3)
    result = done_of(lookup)
    assert dead not in {c.node_id for c in result.closest} and result.stats.skipped == 1


def test_a_lookup_ends_without_what_it_cannot_afford_once_nothing_is_out() -> None:
    gate = Gate()
    answerer = peers(1)[0]
    lookup = Lookup(OWN, TARGET, [contact(answerer)], 0.0, rtt=RttEstimator(), admit=gate)
    lookup.commands()
    gate.default = Admission.LATER
    lookup.on_reply(answerer, [contact(n, 10 + i) for i, n in enumerate(peers(4))], 0.1)
    result = done_of(lookup)
    assert [c.node_id for c in result.closest] == [answerer]
