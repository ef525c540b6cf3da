"""``/peer/NODEID``: which way to a peer now (DESIGN.md decision 17), sans-IO.

Theory of operation
-------------------
A route's ``/peer/NODEID`` hop is resolved each time a message takes it, so a channel or a
portal that names the peer moves with the paths underneath. :class:`PeerResolver` decides
from what the glue gathers (:class:`Known`: the path manager's current direct hop, the open
hops to the peer, where the node graph dialled it) and what it keeps itself (the peer's
signed record from the last lookup, and which ways failed lately). The ladder:

1. the peer's **direct path** (a validated direct or punched hop the path manager chose);
2. an **open hop** to the peer (the peer dialled in, or a hop this node holds);
3. its record's **own addresses on this node's LAN**, when both sit behind the same public IP
   (the glue works that out: same NAT, so the LAN is the way, not the relay, and not a
   hairpin through the router; where UDP is blocked, the public IP a TCP hop was seen at);
4. where the graph **dialled** the peer as a server — unless its own signed record says it is
   a client: a punched address is a path of the peer, never evidence that it can be dialled;
5. the record's **direct addresses** (a server's), then its **relay routes** (a client's);
6. a **lookup** when nothing above is known, or every way the record named failed lately
   (the peer may have moved its relay or its address); after a lookup that found nothing:
   no path. A record in use older than ``refresh_after`` is looked up again in the
   background (:meth:`PeerResolver.wants_refresh`), so a peer that moved is followed within
   seconds without a message waiting for it.

A way that failed (a dial refused or timed out, a relay that did not answer) is skipped for
``failure_hold`` seconds, so the next message takes the next rung at once instead of waiting
on the dead one again; that is what makes a fallback take one failure, not many.

Bounds: records and failures for at most ``capacity`` peers (least recently used first out).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from meshkey.identity.node_id import NodeId
from meshkey.wire.net import Endpoint

REFRESH_AFTER = 5.0
FAILURE_HOLD = 10.0
MIN_LOOKUP_SPACING = 1.0  # every way failed: look again, but not for every message
CAPACITY = 1024


@dataclass(frozen=True, slots=True)
class Known:
    """What the node knows of a peer at this moment (the glue gathers it)."""

    direct_link: str | None = None
    open_links: tuple[str, ...] = ()
    dialled_at: Endpoint | None = None


@dataclass(frozen=True, slots=True)
class RecordView:
    """What resolution needs of a peer's signed record."""

    direct: tuple[Endpoint, ...] = ()
    relays: tuple[str, ...] = ()
    lan: tuple[Endpoint, ...] = ()  # its own addresses on this node's LAN (same NAT)
    channel_key: bytes = b""  # its X25519 channel key: a dial to it can be Noise IK

    @property
    def client(self) -> bool:
        return not self.direct


@dataclass(frozen=True, slots=True)
class UseLink:
    link: str
    why: str


@dataclass(frozen=True, slots=True)
class Dial:
    endpoint: Endpoint
    why: str


@dataclass(frozen=True, slots=True)
class UseRelay:
    route: str
    why: str


@dataclass(frozen=True, slots=True)
class LookUp:
    """Look the peer up (node graph, then its record), report it with :meth:`on_record`,
    and ask again."""


@dataclass(frozen=True, slots=True)
class NoPath:
    reason: str


Resolution = UseLink | Dial | UseRelay | LookUp | NoPath


@dataclass
class _Peer:
    record: RecordView | None = None
    looked_up_at: float | None = None
    refreshing: bool = False
    failed: dict[str, float] = field(default_factory=dict)  # way -> failed until


def _dial_key(endpoint: Endpoint) -> str:
    return f"dial {endpoint[0]}:{endpoint[1]}"


def _relay_key(route: str) -> str:
    return f"relay {route}"


class PeerResolver:
    def __init__(
        self,
        *,
        refresh_after: float = REFRESH_AFTER,
        failure_hold: float = FAILURE_HOLD,
        capacity: int = CAPACITY,
    ) -> None:
        self.refresh_after = refresh_after
        self.failure_hold = failure_hold
        self.capacity = capacity
        self._peers: OrderedDict[NodeId, _Peer] = OrderedDict()

    # -- inputs ---------------------------------------------------------------------------

    def on_record(self, peer: NodeId, record: RecordView | None, now: float) -> None:
        """A lookup ended: the peer's record (None: none found)."""
        state = self._state(peer)
        state.looked_up_at = now
        state.refreshing = False
        if record is not None:
            state.record = record

    def on_dial_failed(self, peer: NodeId, endpoint: Endpoint, now: float) -> None:
        self._state(peer).failed[_dial_key(endpoint)] = now + self.failure_hold

    def on_relay_failed(self, peer: NodeId, route: str, now: float) -> None:
        self._state(peer).failed[_relay_key(route)] = now + self.failure_hold

    def wants_refresh(self, peer: NodeId, now: float) -> bool:
        """Whether to look the peer up again in the background now (its record is in use and
        older than ``refresh_after``); True marks the refresh as started."""
        state = self._peers.get(peer)
        if state is None or state.record is None or state.refreshing:
            return False
        if state.looked_up_at is not None and now - state.looked_up_at < self.refresh_after:
            return False
        state.refreshing = True
        return True

    def forget(self, peer: NodeId) -> None:
        self._peers.pop(peer, None)

    # -- the decision -----------------------------------------------------------------------

    def record(self, peer: NodeId) -> RecordView | None:
        state = self._peers.get(peer)
        return state.record if state else None

    def resolve(
        self, peer: NodeId, known: Known, now: float, *, relay_only: bool = False
    ) -> Resolution:
        """The way to ``peer`` now. ``relay_only`` (``--no-direct``): a client's relay even
        when a hop to it is open; only a peer with no relay (a server) is dialled."""
        state = self._peers.get(peer)
        record = state.record if state else None
        if relay_only and record is not None and record.relays:
            known = Known()  # neither its direct path nor an open hop carries the traffic
        if known.direct_link is not None:
            return UseLink(known.direct_link, "direct path")
        if known.open_links:
            return UseLink(known.open_links[0], "open hop")
        if state is not None:
            self._peers.move_to_end(peer)
            state.failed = {way: until for way, until in state.failed.items() if until > now}
        failed = state.failed if state else {}
        for endpoint in record.lan if record is not None and not relay_only else ():
            if _dial_key(endpoint) not in failed:
                return Dial(endpoint, "its address on this LAN")
        if (
            known.dialled_at is not None
            and (record is None or not record.client)
            and _dial_key(known.dialled_at) not in failed
        ):
            return Dial(known.dialled_at, "the node graph reached it there")
        if record is not None:
            for endpoint in record.direct:
                if _dial_key(endpoint) not in failed:
                    return Dial(endpoint, "its record's address")
            for route in record.relays:
                if _relay_key(route) not in failed:
                    return UseRelay(route, "its record's relay")
        looked = state.looked_up_at if state else None
        if looked is None or now - looked >= MIN_LOOKUP_SPACING:
            return LookUp()
        if record is None:
            return NoPath("no node graph entry or peer record names a way to it")
        return NoPath(
            "every way its record names failed lately: " + ", ".join(sorted(failed))
            if failed
            else "its record names no address and no relay"
        )

    # -- internals ----------------------------------------------------------------------------

    def _state(self, peer: NodeId) -> _Peer:
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _Peer()
            while len(self._peers) > self.capacity:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(peer)
        return state
