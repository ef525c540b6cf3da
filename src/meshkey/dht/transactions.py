"""This node's requests in flight: transaction ids, who each went to, and their deadlines.

Every request the engine sends gets a fresh random transaction id (from the engine's
injected rng, never one in flight), so an answer names its request and an answer to
something never asked, or asked of someone else, is dropped. A request either has a deadline
of its own (``PING_TIMEOUT_FACTOR`` x the peer's RTT timeout: pings, stores, verification)
or none, when its lookup owns the timeout (the lookup's soft and hard timeouts, see
:mod:`meshkey.dht.lookup`). Each carries a ``tag`` of the caller's type: what the answer
is for (a lookup, a ping round, a publish round...). Sans-IO: the engine asks
:meth:`Transactions.expired` from its own ``on_timer`` and folds :meth:`next_deadline` into
its own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Generic, TypeVar

from meshkey.identity.node_id import NodeId
from meshkey.wire.dht import TXID_SIZE, Request
from meshkey.wire.net import Endpoint

Tag = TypeVar("Tag")


@dataclass(frozen=True, slots=True)
class SendRequest:
    """Send ``request`` to ``peer`` at ``address`` over a hop pinned to ``peer``; report the
    answer with ``on_answer(txid, ...)`` or the failure with ``on_failure(txid, ...)``."""

    txid: bytes
    peer: NodeId
    address: Endpoint
    request: Request
    fresh: bool = False  # dial a new hop to ``address``; do not reuse a hop to ``peer``
    #: A dial on someone's say-so: a new hop to ``address`` that has not authenticated
    #: within this many seconds is closed (see :mod:`meshkey.dht.budget`).
    dial_timeout: float | None = None


@dataclass(slots=True)
class Pending(Generic[Tag]):
    peer: NodeId
    sent_at: float
    deadline: float | None  # None: whoever sent it (a lookup) owns the timeout
    tag: Tag
    address: Endpoint | None = None  # where it was sent (if no hop to the peer was up)


class Transactions(Generic[Tag]):
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._pending: dict[bytes, Pending[Tag]] = {}
        self._timed: set[bytes] = set()  # pending txids with a deadline of their own

    def __len__(self) -> int:
        return len(self._pending)

    def new_txid(self) -> bytes:
        """A transaction id no request in flight has."""
        while True:
            txid = self.rng.randbytes(TXID_SIZE)
            if txid not in self._pending:
                return txid

    def open(
        self,
        peer: NodeId,
        address: Endpoint,
        request: Request,
        tag: Tag,
        now: float,
        *,
        timeout: float | None,
        fresh: bool = False,
        dial_timeout: float | None = None,
    ) -> SendRequest:
        """Records ``request`` (its txid from :meth:`new_txid`) as in flight to ``peer``, due
        within ``timeout`` (None: no deadline of its own); returns the command to send it."""
        deadline = None if timeout is None else now + timeout
        self._pending[request.txid] = Pending(peer, now, deadline, tag, address)
        if deadline is not None:
            self._timed.add(request.txid)
        return SendRequest(request.txid, peer, address, request, fresh, dial_timeout)

    def get(self, txid: bytes) -> Pending[Tag] | None:
        return self._pending.get(txid)

    def close(self, txid: bytes) -> Pending[Tag] | None:
        """Settles ``txid`` (answered, failed or abandoned): what it was, if it was open."""
        self._timed.discard(txid)
        return self._pending.pop(txid, None)

    def expired(self, now: float) -> list[bytes]:
        """The txids whose own deadline has passed (still open: close them)."""
        return [
            txid
            for txid in self._timed
            if (deadline := self._pending[txid].deadline) is not None and deadline <= now
        ]

    def next_deadline(self) -> float | None:
        deadlines = [self._pending[txid].deadline for txid in self._timed]
        present = [d for d in deadlines if d is not None]
        return min(present) if present else None


__all__ = ["Pending", "SendRequest", "Transactions"]
