"""The /peer/NODEID resolver (paths/resolver.py), with a fake clock."""

from __future__ import annotations

from meshkey.identity.node_id import NodeId
from meshkey.paths.resolver import (
    Dial,
    Known,
    LookUp,
    NoPath,
    PeerResolver,
    RecordView,
    UseLink,
    UseRelay,
)

PEER = NodeId(b"\x07" * 32)
RELAY = "/ip4/203.0.113.10/udp/7000/id/mkseed/service/forward_to_blue"
OTHER_RELAY = "/ip4/198.51.100.10/udp/7000/id/mkother/service/forward_to_blue"
NAT_ADDRESS = ("203.0.113.2", 40000)
CLIENT = RecordView(direct=(), relays=(RELAY,))
SERVER = RecordView(direct=(("203.0.113.100", 7000),))


def test_the_ladder_direct_path_then_open_hop_then_lookup() -> None:
    r = PeerResolver()
    assert r.resolve(PEER, Known(direct_link="h1", open_links=("h2",)), 0.0) == UseLink(
        "h1", "direct path"
    )
    assert r.resolve(PEER, Known(open_links=("h2",)), 0.0) == UseLink("h2", "open hop")
    assert r.resolve(PEER, Known(), 0.0) == LookUp()
    r.on_record(PEER, None, 0.1)
    assert isinstance(r.resolve(PEER, Known(), 0.2), NoPath)
    assert r.resolve(PEER, Known(), 1.2) == LookUp()  # not for every message, but again


def test_a_client_is_reached_through_its_relay_never_at_a_punched_address() -> None:
    """Issue 18: once a punched hop made the graph say "reached at 203.0.113.2:40000", the
    peer's own record (a client: no direct address) still wins when that path is gone."""
    r = PeerResolver()
    r.on_record(PEER, CLIENT, 0.0)
    verdict = r.resolve(PEER, Known(dialled_at=NAT_ADDRESS), 1.0)
    assert verdict == UseRelay(RELAY, "its record's relay")


def test_a_server_is_dialled_and_a_failed_dial_moves_to_the_next_way_at_once() -> None:
    r = PeerResolver()
    r.on_record(PEER, RecordView(direct=SERVER.direct, relays=(RELAY,)), 0.0)
    assert r.resolve(PEER, Known(), 0.0) == Dial(SERVER.direct[0], "its record's address")
    r.on_dial_failed(PEER, SERVER.direct[0], 0.5)
    assert r.resolve(PEER, Known(), 0.6) == UseRelay(RELAY, "its record's relay")
    assert r.resolve(PEER, Known(), 0.5 + r.failure_hold + 0.1) == Dial(
        SERVER.direct[0], "its record's address"
    )


def test_when_every_way_failed_the_record_is_looked_up_again_and_a_moved_relay_followed() -> None:
    r = PeerResolver()
    r.on_record(PEER, CLIENT, 0.0)
    r.on_relay_failed(PEER, RELAY, 3.0)
    assert r.resolve(PEER, Known(), 3.1) == LookUp()
    r.on_record(PEER, RecordView(relays=(OTHER_RELAY,)), 3.3)
    assert r.resolve(PEER, Known(), 3.4) == UseRelay(OTHER_RELAY, "its record's relay")


def test_a_record_in_use_is_refreshed_in_the_background_once_at_a_time() -> None:
    r = PeerResolver(refresh_after=5.0)
    assert not r.wants_refresh(PEER, 0.0)  # nothing known: resolution looks up itself
    r.on_record(PEER, CLIENT, 0.0)
    assert not r.wants_refresh(PEER, 4.0)
    assert r.wants_refresh(PEER, 5.0)
    assert not r.wants_refresh(PEER, 6.0)  # one at a time
    r.on_record(PEER, CLIENT, 6.5)
    assert not r.wants_refresh(PEER, 7.0)
    assert r.wants_refresh(PEER, 11.6)


def test_state_is_bounded() -> None:
    r = PeerResolver(capacity=3)
    for i in range(10):
        r.on_record(NodeId(bytes([i]) * 32), CLIENT, float(i))
    assert len(r._peers) == 3
    assert r.record(NodeId(bytes([9]) * 32)) == CLIENT
    assert r.record(NodeId(bytes([0]) * 32)) is None


def test_no_direct_keeps_a_client_on_its_relay_even_with_a_hop_open() -> None:
    r = PeerResolver()
    r.on_record(PEER, CLIENT, 0.0)
    known = Known(direct_link="punched", open_links=("dht-hop",), dialled_at=NAT_ADDRESS)
    assert r.resolve(PEER, known, 1.0, relay_only=True) == UseRelay(RELAY, "its record's relay")
    r.on_record(PEER, SERVER, 2.0)  # a server has no relay: it is dialled all the same
    assert r.resolve(PEER, Known(), 3.0, relay_only=True) == Dial(
        SERVER.direct[0], "its record's address"
    )


def test_a_peer_behind_the_same_nat_is_dialled_on_the_lan_before_its_relay() -> None:
    r = PeerResolver()
    lan = ("10.1.0.3", 41000)
    r.on_record(PEER, RecordView(relays=(RELAY,), lan=(lan,)), 0.0)
    assert r.resolve(PEER, Known(), 0.1) == Dial(lan, "its address on this LAN")
    r.on_dial_failed(PEER, lan, 0.5)  # another home with the same private range
    assert r.resolve(PEER, Known(), 0.6) == UseRelay(RELAY, "its record's relay")
    assert r.resolve(PEER, Known(), 0.7, relay_only=True) == UseRelay(RELAY, "its record's relay")
