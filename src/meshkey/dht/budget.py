"""What this node may send on another node's say-so: dials to addresses it never observed.

Theory of operation
-------------------
DESIGN.md decision 20 (no amplifier): what a node sends on a peer's say-so stays within a
small multiple (:data:`AMPLIFICATION`, 3) of what that peer sent, and goes only to addresses
that were observed, not merely claimed. In the node graph the say-so is a contact in a
FIND_NODE or FIND_VALUE answer (a NodeId and an address the answerer *claims*), or the
target of a helper dial-back (an address the asker claims to have seen).

**What a dial costs.** A new QUIC hop to an address where nothing answers sends the client's
first flight, :data:`FIRST_FLIGHT` Initials of :data:`DATAGRAM` bytes (padded, RFC 9000
14.1; two because the ClientHello carries a hybrid X25519MLKEM768 key share), then QUIC
retransmits it until the transport's handshake timeout: 9 datagrams, 11 KB over 10 s when
measured here. A dial on someone's say-so is given :data:`DIAL_PATIENCE` to authenticate and
is then closed (one more datagram, the CONNECTION_CLOSE), before QUIC's first retransmission
(about 0.67 s after the first flight with qh3's initial RTT): it costs :data:`DIAL_COST`,
three datagrams, at most. A server whose answer has not come back within that is more than
half a second away; it is still reached by the nodes that have it in their graph or a hop to
it (their own observation, which needs no say-so). A dial that authenticates as the NodeId
named proves the address true: what it sent went to the node named, which wanted it.

**Credit** (:class:`DialBudget`). Each peer's say-so is paid for with what that peer sent:
:data:`AMPLIFICATION` times the bytes of its requests and answers, plus :data:`HOP_BYTES`
for each of its hops that authenticated: the least a peer sends to authenticate one, as the
server (a client sends more: two Initials for its ClientHello alone). That is its Initial,
padded to 1,200 bytes at least (RFC 9000 14.1), and its Handshake flight with its
certificate (614 bytes measured here): 1,894 bytes on loopback, of which 1,800 are
counted. A dial on its word
may start only when its credit covers :data:`DIAL_COST`, which is then charged; it is given
back when the dial authenticates and kept when the dial fails. An address named by several
peers may be paid for by them together (what one cannot cover alone), so an address
several answerers agree on is dialled sooner; a forger gains nothing by it, each of its
identities pays from what it sent. So the bytes sent to addresses that never proved
themselves stay within 3x of what the peers who named them sent, whatever they name and
however often they are asked. Credit is capped at :data:`MAX_CREDIT` (a peer that answered
well for hours cannot bank a flood), and at most :data:`CAPACITY` peers are remembered (the
least recently active go; a peer forgotten starts again from nothing, which only makes it
poorer).

**Dead addresses.** An address where a dial on someone's say-so failed is not dialled again
on anyone's say-so for :data:`DEAD_FOR` seconds, whatever NodeId is named with it (a forged
answer repeated to every lookup costs one dial, not one per lookup), unless this node sees
it alive (a hop from it authenticates). At most :data:`CAPACITY` are remembered.

**Helper dial-backs** are paid for up front instead: the ask carries :data:`HELPER_PADDING`
zero bytes, a third of :data:`DIAL_COST`, and the helper's dial has :data:`DIAL_PATIENCE`.

Sans-IO: every input takes ``now`` where time matters; nothing here reads a clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from meshkey.identity.node_id import NodeId
from meshkey.wire.net import Endpoint

AMPLIFICATION = 3
DATAGRAM = 1280  # a QUIC Initial as qh3 sends it here (padded past RFC 9000's 1,200)
FIRST_FLIGHT = 2  # the ClientHello with X25519MLKEM768 does not fit in one
DIAL_COST = (FIRST_FLIGHT + 1) * DATAGRAM  # the first flight and the close
DIAL_PATIENCE = 0.6  # below QUIC's first retransmission (~0.67 s after the first flight)
HOP_BYTES = 1800  # the least a peer sends to authenticate a hop (see Credit)
HELPER_PADDING = DIAL_COST // AMPLIFICATION
MAX_CREDIT = 8 * DIAL_COST
DEAD_FOR = 600.0
CAPACITY = 4096

#: Who paid for one dial, and how much each: (peer, bytes) pairs.
Charge = tuple[tuple[NodeId, float], ...]


class DialBudget:
    """Per-peer credit for dials on that peer's word, and the addresses found dead."""

    def __init__(self, *, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._credit: OrderedDict[NodeId, float] = OrderedDict()
        self._dead: OrderedDict[Endpoint, float] = OrderedDict()  # address -> dead until

    # -- credit -----------------------------------------------------------------------

    def credit(self, peer: NodeId) -> float:
        """What ``peer`` may still have dialled on its word, in bytes."""
        return self._credit.get(peer, 0.0)

    def earned(self, peer: NodeId, size: int) -> None:
        """``peer`` sent this node ``size`` bytes (an answer, or a hop's handshake)."""
        self._set(peer, min(MAX_CREDIT, self.credit(peer) + AMPLIFICATION * size))

    def charge(self, namers: Iterable[NodeId]) -> Charge | None:
        """Charges one dial to the peers who named the address: to the one with the most
        credit if that covers it, else shared among them (several peers vouching for the
        same address pay together); None when even together they cannot (no dial now)."""
        ranked = sorted(namers, key=lambda n: (self.credit(n), n.raw), reverse=True)
        if not ranked or sum(self.credit(n) for n in ranked) < DIAL_COST:
            return None
        shares: list[tuple[NodeId, float]] = []
        owed = float(DIAL_COST)
        for namer in ranked:
            share = min(owed, self.credit(namer))
            self._set(namer, self.credit(namer) - share)
            shares.append((namer, share))
            owed -= share
            if owed <= 0:
                break
        return tuple(shares)

    def refund(self, charge: Charge) -> None:
        """A dial charged as ``charge`` authenticated: the address was true."""
        for payer, share in charge:
            self._set(payer, min(MAX_CREDIT, self.credit(payer) + share))

    def _set(self, peer: NodeId, credit: float) -> None:
        self._credit.pop(peer, None)
        self._credit[peer] = credit  # the most recently active last
        while len(self._credit) > self.capacity:
            self._credit.popitem(last=False)

    # -- dead addresses ---------------------------------------------------------------

    def failed(self, address: Endpoint, now: float) -> None:
        """A dial on someone's say-so to ``address`` failed (nothing authenticated there)."""
        self._dead.pop(address, None)
        self._dead[address] = now + DEAD_FOR
        while len(self._dead) > self.capacity:
            self._dead.popitem(last=False)

    def alive(self, address: Endpoint) -> None:
        """A hop from ``address`` authenticated: it is no longer taken as dead."""
        self._dead.pop(address, None)

    def dead(self, address: Endpoint, now: float) -> bool:
        until = self._dead.get(address)
        if until is None:
            return False
        if until <= now:
            del self._dead[address]
            return False
        return True


__all__ = [
    "AMPLIFICATION",
    "DATAGRAM",
    "DEAD_FOR",
    "DIAL_COST",
    "DIAL_PATIENCE",
    "FIRST_FLIGHT",
    "HELPER_PADDING",
    "HOP_BYTES",
    "MAX_CREDIT",
    "Charge",
    "DialBudget",
]
