"""What a node's signed peer record says (DESIGN.md decision 9), from what the node knows.

A record names where the node can be dialled (only when it is a server: its public address,
then its own addresses), what its NAT maps its socket to and its NAT class (for punches), and
the routes of its active relays (how a client is reached). The node graph publishes it
whenever it would say something new.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from meshkey.dht.records import RecordContent
from meshkey.nat.classify import Classification
from meshkey.node.state import NodeStateError
from meshkey.relay.client import Relay, RelayStatus
from meshkey.routing.address import Route, RouteError, TransportAddress, format_route, parse_route
from meshkey.transport.interfaces import reachable_endpoints
from meshkey.wire.dht import MAX_ADDRESSES, Mode
from meshkey.wire.net import Endpoint, NatClass


def behind_nat(found: Classification | None) -> bool | None:
    """What the NAT classification says of being behind a NAT: None while it does not know."""
    if found is None or found.nat_class is NatClass.UNKNOWN:
        return None
    return found.nat_class is not NatClass.PUBLIC


#: Own addresses a record lists (a LAN peer needs one; the record is size-limited).
MAX_LOCAL = 3


def record_content(
    udp: TransportAddress | None,
    mode: Mode,
    found: Classification | None,
    relays: tuple[str, ...],
    channel_key: bytes = b"",
    observed: Endpoint | None = None,
) -> RecordContent:
    """The record of a node whose UDP socket is ``udp``, in graph ``mode``, classified
    ``found``, with active relay routes ``relays`` and secure channels keyed ``channel_key``
    (so a peer can dial it in one round trip, Noise IK). ``observed``: where a peer saw
    this node's requests come from (a TCP hop's source where UDP is blocked), named as its
    reflexive address while the classification found none: a peer behind the same public
    IP then finds it on their LAN."""
    direct: tuple[Endpoint, ...] = ()
    if udp is not None and mode is Mode.SERVER:
        public = found.public_address if found is not None else None
        listed = [public] if public is not None else []
        listed += reachable_endpoints(udp.endpoint)
        direct = tuple(dict.fromkeys(listed))[:MAX_ADDRESSES]
    nat_class = NatClass.UNKNOWN
    reflexive: tuple[Endpoint, ...] = ()
    if found is not None:
        nat_class = found.nat_class
        reflexive = tuple(found.mappings[:2])
    if not reflexive and observed is not None:
        reflexive = (observed,)
    local = tuple(reachable_endpoints(udp.endpoint))[:MAX_LOCAL] if udp is not None else ()
    return RecordContent(nat_class, direct, reflexive, relays, channel_key, local)


def relay_routes(relays: Iterable[Relay], resolve: Callable[[str], Route]) -> tuple[str, ...]:
    """Active relays as routes another node can use: the relay node's pinned address, then
    the relay's ``/service/forward_to_NAME``. A relay registering again (its node went
    silent: most likely dead) is named only while no relay is active: a record that names
    a dead relay beside the live one sends finders to the dead one first (issue 18: the
    failover's record named both until the dead one was deleted, seconds later)."""
    registered = [(relay, relay.address) for relay in relays if relay.address]
    active = [(r, a) for r, a in registered if r.status is RelayStatus.ACTIVE]
    routes = []
    for relay, address in active or registered:
        try:
            at = resolve(relay.at)
            routes.append(format_route((*at, *parse_route(address))))
        except (RouteError, NodeStateError):
            continue
    return tuple(routes)
