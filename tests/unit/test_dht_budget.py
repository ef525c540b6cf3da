"""Dials on someone's say-so: each peer's credit (3x what it sent), charges shared by the
peers who named an address, refunds for true addresses, and the addresses found dead."""

from __future__ import annotations

from meshkey.dht.budget import (
    AMPLIFICATION,
    CAPACITY,
    DEAD_FOR,
    DIAL_COST,
    HOP_BYTES,
    MAX_CREDIT,
    DialBudget,
)
from meshkey.identity.keys import Identity
from meshkey.identity.node_id import NodeId


def peer() -> NodeId:
    return Identity.generate().node_id


def test_a_peer_may_have_dialled_three_times_what_it_sent_and_no_more() -> None:
    budget, forger = DialBudget(), peer()
    assert budget.charge([forger]) is None  # it sent nothing: nothing is dialled on its word
    budget.earned(forger, HOP_BYTES)
    budget.earned(forger, 1568)  # the forged answer of issue 19
    sent = HOP_BYTES + 1568
    dials = 0
    while budget.charge([forger]) is not None:
        dials += 1
    assert dials == AMPLIFICATION * sent // DIAL_COST == 2
    assert dials * DIAL_COST <= AMPLIFICATION * sent  # not one dial more


def test_a_true_address_gives_the_charge_back_and_a_cap_stops_banking() -> None:
    budget, honest = DialBudget(), peer()
    budget.earned(honest, 10 * DIAL_COST)
    assert budget.credit(honest) == MAX_CREDIT  # hours of good answers: no flood in the bank
    charges = [budget.charge([honest]) for _ in range(MAX_CREDIT // DIAL_COST)]
    assert all(charges) and budget.charge([honest]) is None
    for charge in charges:
        assert charge is not None
        budget.refund(charge)
    assert budget.credit(honest) == MAX_CREDIT


def test_peers_who_name_the_same_address_may_pay_for_it_together() -> None:
    budget, first, second = DialBudget(), peer(), peer()
    sent = 2 * DIAL_COST // (3 * AMPLIFICATION)  # each covers two thirds of a dial
    budget.earned(first, sent)
    budget.earned(second, sent)
    assert budget.charge([first]) is None
    charge = budget.charge([first, second])
    assert charge is not None and sum(share for _, share in charge) == DIAL_COST
    assert budget.credit(first) + budget.credit(second) == 2 * AMPLIFICATION * sent - DIAL_COST
    assert budget.charge([first, second]) is None
    budget.refund(charge)
    assert budget.credit(first) == budget.credit(second) == AMPLIFICATION * sent


def test_dead_addresses_are_remembered_for_a_while_unless_seen_alive() -> None:
    budget = DialBudget(capacity=3)
    budget.failed(("192.0.2.1", 9), 0.0)
    assert budget.dead(("192.0.2.1", 9), DEAD_FOR - 1)
    assert not budget.dead(("192.0.2.1", 9), DEAD_FOR)
    budget.failed(("192.0.2.2", 9), 0.0)
    budget.alive(("192.0.2.2", 9))  # a hop from it authenticated
    assert not budget.dead(("192.0.2.2", 9), 1.0)
    for port in range(10):
        budget.failed(("192.0.2.3", port), 0.0)
    assert sum(budget.dead(("192.0.2.3", port), 1.0) for port in range(10)) == 3  # bounded


def test_what_is_remembered_is_bounded() -> None:
    budget = DialBudget(capacity=CAPACITY)
    for _ in range(CAPACITY + 10):
        budget.earned(peer(), 100)
    assert len(budget._credit) == CAPACITY
