"""Which relays a node's signed record names (node/record.py): the active ones; one that
registers again (its node went silent, most likely dead) only while none is active."""

from __future__ import annotations

from meshkey.identity.keys import Identity
from meshkey.nat.classify import Classification
from meshkey.node.record import record_content, relay_routes
from meshkey.relay.client import Relay, RelayStatus
from meshkey.routing.address import Route, TransportAddress, parse_route
from meshkey.wire.dht import Mode
from meshkey.wire.net import NatClass

SEED = Identity.generate().node_id
SERVER = Identity.generate().node_id


def relay(name: str, at: str, status: RelayStatus, registered: bool = True) -> Relay:
    address = f"/service/forward_to_{name}" if registered else None
    return Relay(name, at, status, address)


def resolve(route: str) -> Route:
    return parse_route(route)


DEAD = relay("old", f"/ip4/203.0.113.20/udp/7000/id/{SEED}", RelayStatus.RETRYING)
LIVE = relay("new", f"/ip4/203.0.113.30/udp/7000/id/{SERVER}", RelayStatus.ACTIVE)


def test_a_relay_registering_again_is_left_out_while_another_is_active() -> None:
    routes = relay_routes([DEAD, LIVE], resolve)
    assert routes == (f"/ip4/203.0.113.30/udp/7000/id/{SERVER}/service/forward_to_new",)


def test_a_relay_registering_again_is_named_while_none_is_active() -> None:
    routes = relay_routes([DEAD], resolve)
    assert routes == (f"/ip4/203.0.113.20/udp/7000/id/{SEED}/service/forward_to_old",)


def test_a_relay_never_registered_is_never_named() -> None:
    at = f"/ip4/203.0.113.30/udp/7000/id/{SERVER}"
    first = relay("first", at, RelayStatus.REGISTERING, registered=False)
    assert relay_routes([first], resolve) == ()


def test_with_no_udp_mapping_the_address_a_tcp_hop_was_seen_at_is_the_reflexive_one() -> None:
    udp = TransportAddress.from_socket("udp", "10.3.0.2", 4000)
    blocked = Classification(NatClass.UDP_BLOCKED, 1.0, "no UDP answer", 0.0)
    seen = ("203.0.113.3", 51234)
    content = record_content(udp, Mode.CLIENT, blocked, (), observed=seen)
    assert content.reflexive == (seen,) and content.nat_class is NatClass.UDP_BLOCKED
    mapped = Classification(
        NatClass.ENDPOINT_INDEPENDENT, 1.0, "one mapping", 0.0, mappings=(("203.0.113.3", 4000),)
    )
    content = record_content(udp, Mode.CLIENT, mapped, (), observed=seen)
    assert content.reflexive == (("203.0.113.3", 4000),)  # UDP's own mapping comes first
