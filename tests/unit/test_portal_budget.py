"""What portal sessions may hold: the node's budget (sessions and growth, per peer and in
total, given back), and sessions that start small and grow only while their reader reads."""

from __future__ import annotations

import hashlib
import random

import pytest

from meshkey.portal.budget import INITIAL_CREDIT, BudgetExceeded, BudgetLimits, PortalBudget
from meshkey.portal.session import Closed, Outcome
from meshkey.wire.portal import MAX_WINDOW

from .test_portal_sim import READ_SIZE, Pair, SimApp

MiB = 1024 * 1024


def digest(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the budget ------------------------------------------------------------------------


def test_a_peer_holds_at_most_its_sessions_and_the_node_at_most_its_total() -> None:
    budget = PortalBudget(BudgetLimits(sessions=7, kept_for_local=2, sessions_per_peer=2))
    first = budget.open("peer a", remote=True)
    budget.open("peer a", remote=True)
    with pytest.raises(BudgetExceeded, match="this peer holds 2 portal sessions"):
        budget.open("peer a", remote=True)
    budget.open("peer b", remote=True)  # another peer has its own share
    budget.open("peer b", remote=True)
    budget.open("peer c", remote=True)
    # Peers, however many identities they make, leave the node's own inlets two places.
    with pytest.raises(BudgetExceeded, match="holds 5 portal sessions for its peers"):
        budget.open("peer d", remote=True)
    for _ in range(2):  # a local inlet's clients are bounded by the node's count only
        budget.open("inlet", remote=False)
    with pytest.raises(BudgetExceeded, match="this node holds 7 portal sessions"):
        budget.open("inlet", remote=False)
    first.release()
    first.release()  # idempotent: one place back, not two
    assert budget.sessions == 6 and budget.held_by("peer a") == (1, 0)
    budget.open("peer a", remote=True)
    with pytest.raises(BudgetExceeded):
        budget.open("peer a", remote=True)
    assert budget.refused == 4


def test_growth_is_bounded_per_peer_and_in_total_and_given_back() -> None:
    budget = PortalBudget(BudgetLimits(growth=100, growth_per_peer=60))
    a1, a2 = budget.open("a", remote=True), budget.open("a", remote=True)
    b = budget.open("b", remote=True)
    assert a1.grow(50) == 50
    assert a2.grow(50) == 10  # peer a's share is 60
    assert b.grow(100) == 40  # the node's is 100
    assert b.grow(1) == 0
    a1.release()
    assert budget.grown == 50 and budget.held_by("a") == (1, 10)
    assert b.grow(100) == 20  # peer b's share is what is left of its 60
    for credit in (a2, b):
        credit.release()
    assert budget.describe() == {"sessions": 0, "grown_bytes": 0, "owners": 0, "refused": 0}
    assert a1.grow(5) == 0  # a released credit grows no more


def test_the_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        BudgetLimits(sessions=0)
    with pytest.raises(ValueError):
        BudgetLimits(growth=-1)
    with pytest.raises(ValueError):
        BudgetLimits(sessions=100, kept_for_local=100)  # nothing left for peers


# -- sessions grow from it, and only while their reader reads -------------------------


def test_a_session_starts_small_and_grows_to_its_limits_while_the_reader_keeps_up() -> None:
    budget = PortalBudget()
    pair = Pair(budget=budget)
    payload = random.Random(1).randbytes(8 * MiB)
    client = SimApp(outgoing=payload)
    session = pair.open(client)
    opener = pair.a.session(session)
    assert opener is not None
    assert opener.receive_window == opener.send_capacity == INITIAL_CREDIT
    largest = {"window": 0, "capacity": 0}

    def finished() -> bool:
        for core in (pair.a.session(session), pair.b.session(session)):
            if core is not None:
                largest["window"] = max(largest["window"], core.receive_window)
                largest["capacity"] = max(largest["capacity"], core.send_capacity)
        return client.outcome is not None and pair.apps["b"][session].outcome is not None

    pair.run(finished, limit=600)
    assert client.outcome == Closed(Outcome.CLOSED, "closed")
    assert digest(pair.apps["b"][session].received) == digest(payload)
    assert largest == {"window": MAX_WINDOW, "capacity": MAX_WINDOW}
    assert pair.max_buffered <= MAX_WINDOW + READ_SIZE
    assert budget.sessions == 0 and budget.grown == 0  # all given back when it ended


def test_a_reader_that_never_reads_keeps_the_session_at_its_first_credit() -> None:
    budget = PortalBudget()
    stalled = SimApp(consume_rate=0.0, eof_after=False)  # a client that never reads
    pair = Pair(budget=budget, acceptor_app=lambda: stalled)
    client = SimApp(outgoing=random.Random(2).randbytes(4 * MiB), eof_after=False)
    session = pair.open(client)
    pair.settle(30.0)  # long past every timeout: the closed window is probed, not failed
    opener, acceptor = pair.a.session(session), pair.b.session(session)
    assert opener is not None and acceptor is not None and not acceptor.terminal
    assert acceptor.receive_window == INITIAL_CREDIT
    assert len(stalled.received) <= INITIAL_CREDIT  # all a peer made it hold
    assert opener.send_capacity == INITIAL_CREDIT and client.paused
    assert opener.buffered_to_send <= INITIAL_CREDIT + READ_SIZE  # + one socket read
    assert budget.grown == 0 and budget.sessions == 2


def test_a_budget_with_nothing_left_still_carries_a_session_at_its_first_credit() -> None:
    budget = PortalBudget(BudgetLimits(growth=0))
    pair = Pair(budget=budget)
    payload = random.Random(3).randbytes(2 * MiB)
    client = SimApp(outgoing=payload)
    session = pair.open(client)
    pair.run(lambda: client.outcome is not None, limit=600)
    assert digest(client.received) == digest(payload)  # echoed whole, more slowly
    assert pair.max_buffered <= INITIAL_CREDIT + READ_SIZE
    core = pair.a.session(session)
    assert core is not None and core.receive_window == INITIAL_CREDIT
