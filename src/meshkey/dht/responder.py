"""Answers to other nodes' DHT requests: what this node says, and whether it says anything.

Theory of operation
-------------------
:meth:`Responder.answer` takes a request that arrived over an authenticated hop (the peer is
who the hop proved, the address where the hop came from) and returns the answer to send, or
a :class:`DialBackJob` for the glue (dialling takes seconds). In this order:

1. **Rate.** Every request counts against the requester's token bucket
   (:data:`REQUEST_RATE`): RATE_LIMITED past it.
2. **The table of what is answered when** (:data:`ANSWERED`, STYLE pattern 4): everyone
   answers PING (liveness is what a full bucket asks about); only a server answers
   FIND_NODE, FIND_VALUE and STORE, and dials back (a client's graph is of nodes nobody may
   reach through it, and a dial-back from it proves nothing). A request kind in a mode the
   table does not list is answered NOT_SERVER; a kind that is no request at all,
   UNSUPPORTED.
3. **The answer.** FIND_NODE hands out servers only, never the requester itself, and at most
   :data:`~meshkey.dht.diversity.PER_ANSWER` of one network (the table's diversity rule:
   the next closest from other networks take the other places). FIND_VALUE
   gives the record held (this node's own included), else the closest servers. A STORE also
   counts against a slower bucket (:data:`STORE_RATE`) and is verified by the
   :class:`~meshkey.dht.records.RecordStore`. A DIAL_BACK counts against a slower one still
   (:data:`DIAL_BACK_RATE`), and against one bucket for all askers together
   (:data:`DIAL_BACK_TOTAL_RATE`: Sybils cannot multiply it). One for the asker itself is
   answered by dialling the address its hop came from (observed, never an address it names)
   and names a helper (a random server of the graph, not the asker) for the glue to ask
   first. One naming a third node as the target is a favour done only for servers of this
   node's graph (nodes it dialled itself), and only when the ask carries
   :data:`~meshkey.dht.budget.HELPER_PADDING` bytes of padding: the helper dials an address
   it never observed, so the asker pays for that dial (at most
   :data:`~meshkey.dht.budget.DIAL_COST`, 3x the padding) in what it sends.

Requests reach this only when the hop's peer sent them itself (the glue checks the return
route, :func:`~meshkey.dht.hops.sent_by_hop_peer`): a request routed *through* a node is
not that node's, so nobody can claim a mode or ask a dial-back in another node's name.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from meshkey.dht.budget import HELPER_PADDING
from meshkey.dht.lookup import Contact
from meshkey.dht.records import PeerRecord, RateLimiter, RecordError, RecordStore
from meshkey.dht.table import RoutingTable
from meshkey.identity.node_id import NodeId
from meshkey.ratelimit import TokenBucket
from meshkey.wire.dht import (
    Answer,
    DhtError,
    DhtErrorCode,
    DialBack,
    FindNode,
    FindValue,
    Mode,
    Nodes,
    Ping,
    Pong,
    Request,
    RpcKind,
    Store,
    Stored,
    Value,
    WireContact,
    kind_of,
)
from meshkey.wire.net import Endpoint

REQUEST_RATE = 50.0  # requests a second per peer, with a burst of REQUEST_BURST
REQUEST_BURST = 200.0
STORE_RATE = 0.5
STORE_BURST = 10.0
#: A dial-back makes this node open a QUIC connection (and, as a helper, to an address the
#: asker names): rare and slow, or a node could be used to spray handshakes at a victim.
DIAL_BACK_RATE = 0.1
DIAL_BACK_BURST = 3.0
#: All askers together: a node checks its reachability a few times an hour, so a server of
#: a thousand nodes sees about one ask a second; more is someone making it dial.
DIAL_BACK_TOTAL_RATE = 2.0
DIAL_BACK_TOTAL_BURST = 20.0

_SERVER_ONLY = frozenset({Mode.SERVER})

#: Which request kinds this node answers in which of its modes; a pair not in it is refused.
ANSWERED: dict[RpcKind, frozenset[Mode]] = {
    RpcKind.PING: frozenset(Mode),
    RpcKind.FIND_NODE: _SERVER_ONLY,
    RpcKind.FIND_VALUE: _SERVER_ONLY,
    RpcKind.STORE: _SERVER_ONLY,
    RpcKind.DIAL_BACK: _SERVER_ONLY,
}


def answered(kind: RpcKind, mode: Mode) -> bool:
    """Whether a node in ``mode`` answers a request of ``kind`` (:data:`ANSWERED`)."""
    return mode in ANSWERED.get(kind, frozenset())


@dataclass(frozen=True, slots=True)
class DialBackJob:
    """Answer ``request`` from ``peer`` (seen at ``address``) by dialling: open a new hop to
    ``address`` pinned to ``peer`` and ping it with the nonce, or have ``helper`` do it."""

    peer: NodeId
    address: Endpoint
    request: DialBack
    helper: Contact | None


class Responder:
    """The answering half of one node; it reads the engine's table, records and record."""

    def __init__(
        self,
        table: RoutingTable,
        records: RecordStore,
        own_record: Callable[[float], PeerRecord | None],
        rng: random.Random,
        *,
        k: int,
        wall_offset: float,
    ) -> None:
        """``own_record(wall_now)``: this node's own record while it is valid."""
        self.table = table
        self.records = records
        self.own_record = own_record
        self.rng = rng
        self.k = k
        self.wall_offset = wall_offset
        self.requests = RateLimiter(REQUEST_RATE, REQUEST_BURST)
        self.stores = RateLimiter(STORE_RATE, STORE_BURST)
        self.dial_backs = RateLimiter(DIAL_BACK_RATE, DIAL_BACK_BURST)
        self.all_dial_backs = TokenBucket(DIAL_BACK_TOTAL_RATE, DIAL_BACK_TOTAL_BURST)

    def answer(
        self, peer: NodeId, address: Endpoint, request: Request, mode: Mode, now: float
    ) -> Answer | DialBackJob:
        """The answer of a node in ``mode`` to ``request`` from ``peer`` (authenticated,
        seen at ``address``), or a dial-back job for the glue."""
        txid = request.txid
        if not self.requests.allow(peer, now):
            return DhtError(txid, mode, DhtErrorCode.RATE_LIMITED, "too many requests")
        kind = kind_of(request)
        if kind not in ANSWERED:
            return DhtError(txid, mode, DhtErrorCode.UNSUPPORTED, f"{kind.name} is no request")
        if not answered(kind, mode):
            return DhtError(txid, mode, DhtErrorCode.NOT_SERVER, "this node is a client")
        if isinstance(request, Ping):
            return Pong(txid, mode, address)
        if isinstance(request, FindNode):
            return Nodes(txid, mode, self._contacts_for(NodeId(request.target), peer))
        if isinstance(request, FindValue):
            key = NodeId(request.key)
            record = self._record_for(key, now)
            if record is not None:
                return Value(txid, mode, record, ())
            return Value(txid, mode, None, self._contacts_for(key, peer))
        if isinstance(request, Store):
            if not self.stores.allow(peer, now):
                return DhtError(txid, mode, DhtErrorCode.RATE_LIMITED, "too many stores")
            try:
                self.records.put(request.record, now + self.wall_offset)
            except RecordError as exc:
                return DhtError(txid, mode, exc.code, exc.reason)
            return Stored(txid, mode)
        assert isinstance(request, DialBack)
        return self._dial_back(peer, address, request, mode, now)

    def _dial_back(
        self, peer: NodeId, address: Endpoint, request: DialBack, mode: Mode, now: float
    ) -> Answer | DialBackJob:
        txid = request.txid
        if request.target is not None:
            # Dialling for someone else is a favour to the servers of our graph only, and the
            # asker pays for the dial (to an address we never saw) with its padding.
            entry = self.table.get(peer)
            if entry is None or entry.mode != Mode.SERVER:
                return DhtError(txid, mode, DhtErrorCode.UNAVAILABLE, "unknown asker")
            if request.padding < HELPER_PADDING:
                return DhtError(
                    txid, mode, DhtErrorCode.MALFORMED, f"pad the ask to {HELPER_PADDING} bytes"
                )
        if not self.dial_backs.allow(peer, now):
            return DhtError(txid, mode, DhtErrorCode.RATE_LIMITED, "too many dial-backs")
        if not self.all_dial_backs.allow(now):
            return DhtError(txid, mode, DhtErrorCode.RATE_LIMITED, "too many dial-backs")
        helper = None
        if request.target is None:
            choices = [
                e
                for e in self.table.closest(self.table.random_id_in_bucket(255), self.k)
                if e.node_id != peer
            ]
            if choices:
                pick = self.rng.choice(choices)
                helper = Contact(pick.node_id, (pick.address,))
        return DialBackJob(peer, address, request, helper)

    def _contacts_for(self, target: NodeId, requester: NodeId) -> tuple[WireContact, ...]:
        diversity = self.table.diversity
        taken: Counter[str] = Counter()
        contacts: list[WireContact] = []
        # More than k: some of the closest may belong to a network that has its share.
        for entry in self.table.closest(target, 3 * self.k, exclude=requester):
            group = diversity.group(entry.address)
            if group is not None:
                if taken[group] >= diversity.per_answer:
                    continue
                taken[group] += 1
            contacts.append(WireContact(entry.node_id.raw, Mode.SERVER, (entry.address,)))
            if len(contacts) == self.k:
                break
        return tuple(contacts)

    def _record_for(self, key: NodeId, now: float) -> bytes | None:
        wall_now = now + self.wall_offset
        if key == self.table.own:
            own = self.own_record(wall_now)
            return own.raw if own is not None else None
        held = self.records.get(key, wall_now)
        return held.raw if held is not None else None


__all__ = [
    "ANSWERED",
    "DIAL_BACK_BURST",
    "DIAL_BACK_RATE",
    "DIAL_BACK_TOTAL_BURST",
    "DIAL_BACK_TOTAL_RATE",
    "REQUEST_BURST",
    "REQUEST_RATE",
    "STORE_BURST",
    "STORE_RATE",
    "DialBackJob",
    "Responder",
    "answered",
]
