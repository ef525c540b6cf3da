"""What a node answers in which mode: the responder's table (STYLE pattern 4), walked over
every RPC kind and every mode, through the engine's way in."""

from __future__ import annotations

import random

import pytest

from meshkey.dht.budget import AMPLIFICATION, DIAL_COST, HELPER_PADDING
from meshkey.dht.engine import DhtEngine
from meshkey.dht.records import sign_record
from meshkey.dht.responder import (
    ANSWERED,
    DIAL_BACK_BURST,
    DIAL_BACK_TOTAL_BURST,
    DialBackJob,
    answered,
)
from meshkey.identity.keys import Identity
from meshkey.wire.dht import (
    REQUEST_KINDS,
    DhtError,
    DhtErrorCode,
    DialBack,
    DialBackResult,
    FindNode,
    FindValue,
    Mode,
    Nodes,
    Ping,
    Pong,
    Rpc,
    RpcKind,
    Store,
    Stored,
    Value,
    WireContact,
    kind_of,
)

ASKER = Identity.generate()
TXID = b"t" * 8


def sample(kind: RpcKind) -> Rpc:
    """One RPC of each kind, as a peer (a server) would send it (at time 1.0)."""
    mode = Mode.SERVER
    record = sign_record(ASKER, 1, 3600.0, direct=(("192.0.2.1", 4000),)).raw
    samples: dict[RpcKind, Rpc] = {
        RpcKind.PING: Ping(TXID, mode),
        RpcKind.PONG: Pong(TXID, mode, None),
        RpcKind.FIND_NODE: FindNode(TXID, mode, bytes(32)),
        RpcKind.NODES: Nodes(TXID, mode, ()),
        RpcKind.FIND_VALUE: FindValue(TXID, mode, bytes(32)),
        RpcKind.VALUE: Value(TXID, mode, None, ()),
        RpcKind.STORE: Store(TXID, mode, record),
        RpcKind.STORED: Stored(TXID, mode),
        RpcKind.DIAL_BACK: DialBack(TXID, mode, b"n" * 16),
        RpcKind.DIAL_BACK_RESULT: DialBackResult(TXID, mode, True, False),
        RpcKind.ERROR: DhtError(TXID, mode, DhtErrorCode.INTERNAL, "sample"),
    }
    rpc = samples[kind]
    assert kind_of(rpc) is kind
    return rpc


EXPECTED = {
    RpcKind.PING: Pong,
    RpcKind.FIND_NODE: Nodes,
    RpcKind.FIND_VALUE: Value,
    RpcKind.STORE: Stored,
    RpcKind.DIAL_BACK: DialBackJob,
}
PAIRS = [(kind, mode) for kind in RpcKind for mode in Mode]
REFUSED = [(kind, mode) for kind, mode in PAIRS if not answered(kind, mode)]
ALLOWED = [(kind, mode) for kind, mode in PAIRS if answered(kind, mode)]


def answer_of(kind: RpcKind, mode: Mode) -> object:
    engine = DhtEngine(Identity.generate(), 0.0, rng=random.Random(1), mode=mode)
    # (a third node in the graph: the helper a dial-back names)
    engine.on_authenticated(Identity.generate().node_id, ("192.0.2.2", 4000), "outbound", 0.0)
    return engine.on_request(ASKER.node_id, ("192.0.2.1", 4000), sample(kind), 1.0)  # type: ignore[arg-type]


def test_the_table_is_of_requests_and_a_client_answers_only_pings() -> None:
    assert set(ANSWERED) == REQUEST_KINDS == set(EXPECTED)
    assert [pair for pair in REFUSED if pair[0] in REQUEST_KINDS] == [
        (RpcKind.FIND_NODE, Mode.CLIENT),
        (RpcKind.FIND_VALUE, Mode.CLIENT),
        (RpcKind.STORE, Mode.CLIENT),
        (RpcKind.DIAL_BACK, Mode.CLIENT),
    ]


@pytest.mark.parametrize(("kind", "mode"), REFUSED)
def test_every_pair_not_in_the_table_is_refused(kind: RpcKind, mode: Mode) -> None:
    answer = answer_of(kind, mode)
    assert isinstance(answer, DhtError) and answer.mode is mode
    if kind in REQUEST_KINDS:
        assert answer.code == DhtErrorCode.NOT_SERVER
    else:
        assert answer.code == DhtErrorCode.UNSUPPORTED  # an answer is never a request


@pytest.mark.parametrize(("kind", "mode"), ALLOWED)
def test_every_pair_in_the_table_is_answered(kind: RpcKind, mode: Mode) -> None:
    assert isinstance(answer_of(kind, mode), EXPECTED[kind])


# -- dial-backs: who may make this node dial where, and how often -----------------------


def server_engine() -> DhtEngine:
    return DhtEngine(Identity.generate(), 0.0, rng=random.Random(2), mode=Mode.SERVER)


def helper_ask(padding: int) -> DialBack:
    target = WireContact(Identity.generate().node_id.raw, Mode.CLIENT, (("198.51.100.9", 53),))
    return DialBack(TXID, Mode.SERVER, b"n" * 16, target, padding)


def test_a_dial_back_for_the_asker_goes_to_the_address_its_hop_came_from() -> None:
    engine = server_engine()
    job = engine.on_request(ASKER.node_id, ("192.0.2.1", 4000), sample(RpcKind.DIAL_BACK), 1.0)  # type: ignore[arg-type]
    assert isinstance(job, DialBackJob) and job.address == ("192.0.2.1", 4000)
    assert job.peer == ASKER.node_id and job.request.target is None


def test_a_helper_dial_is_a_favour_for_servers_of_the_graph_that_pay_in_padding() -> None:
    engine = server_engine()
    stranger = ("192.0.2.1", 4000)
    # Unknown, and then known only inbound (a client): refused either way.
    answer = engine.on_request(ASKER.node_id, stranger, helper_ask(HELPER_PADDING), 1.0)
    assert isinstance(answer, DhtError) and answer.code == DhtErrorCode.UNAVAILABLE
    engine.on_authenticated(ASKER.node_id, stranger, "inbound", 1.0)
    answer = engine.on_request(ASKER.node_id, stranger, helper_ask(HELPER_PADDING), 1.0)
    assert isinstance(answer, DhtError) and answer.code == DhtErrorCode.UNAVAILABLE
    # A server of the graph (this node dialled it) that does not pad: refused.
    engine.on_authenticated(ASKER.node_id, stranger, "outbound", 1.0)
    answer = engine.on_request(ASKER.node_id, stranger, helper_ask(HELPER_PADDING - 1), 1.0)
    assert isinstance(answer, DhtError) and answer.code == DhtErrorCode.MALFORMED
    job = engine.on_request(ASKER.node_id, stranger, helper_ask(HELPER_PADDING), 1.0)
    assert isinstance(job, DialBackJob) and job.request.target is not None
    # The padding pays for the dial: a third of what it may cost.
    assert AMPLIFICATION * (HELPER_PADDING + 1) >= DIAL_COST


def test_dial_backs_are_limited_per_asker_and_in_total() -> None:
    engine = server_engine()
    ask = sample(RpcKind.DIAL_BACK)
    jobs = [engine.on_request(ASKER.node_id, ("192.0.2.1", 4000), ask, 1.0) for _ in range(10)]  # type: ignore[arg-type]
    assert sum(isinstance(j, DialBackJob) for j in jobs) == DIAL_BACK_BURST
    # Many askers (Sybils) at once: the total bucket holds.
    sybils = [Identity.generate().node_id for _ in range(100)]
    jobs = [engine.on_request(s, ("192.0.2.7", 4000), ask, 2.0) for s in sybils]  # type: ignore[arg-type]
    granted = sum(isinstance(j, DialBackJob) for j in jobs)
    assert granted <= DIAL_BACK_TOTAL_BURST
    refused = [j for j in jobs if isinstance(j, DhtError)]
    assert refused and all(j.code == DhtErrorCode.RATE_LIMITED for j in refused)
