"""Whether a node needs an automatic relay, from what it knows of itself
(:func:`meshkey.node.autorelay.reachable_from`), and whether its UDP is blocked."""

from __future__ import annotations

from meshkey.nat.classify import Classification
from meshkey.node.autorelay import reachable_from, udp_blocked
from meshkey.wire.dht import Mode
from meshkey.wire.net import NatClass


def classified(nat_class: NatClass) -> Classification:
    return Classification(nat_class, 1.0, "test", 0.0)


LOCAL = [("10.1.0.2", 4000)]


def test_a_client_whose_only_hops_are_tcp_ones_needs_a_relay_before_it_is_classified() -> None:
    assert reachable_from(Mode.CLIENT, None, LOCAL, tcp_only=True) is False
    assert reachable_from(Mode.CLIENT, classified(NatClass.UNKNOWN), LOCAL, tcp_only=True) is False
    assert reachable_from(Mode.CLIENT, None, LOCAL) is None  # nothing known yet


def test_a_server_never_needs_one_and_a_classification_outranks_the_hops() -> None:
    assert reachable_from(Mode.SERVER, None, LOCAL, tcp_only=True) is True
    public = classified(NatClass.PUBLIC)
    assert reachable_from(Mode.CLIENT, public, LOCAL, tcp_only=True) is None
    eim = classified(NatClass.ENDPOINT_INDEPENDENT)
    assert reachable_from(Mode.CLIENT, eim, LOCAL) is False


def test_udp_is_blocked_when_classified_so_or_while_unknown_with_tcp_hops_only() -> None:
    assert udp_blocked(classified(NatClass.UDP_BLOCKED), tcp_only=False)
    assert udp_blocked(None, tcp_only=True)
    assert udp_blocked(classified(NatClass.UNKNOWN), tcp_only=True)
    assert not udp_blocked(classified(NatClass.ENDPOINT_INDEPENDENT), tcp_only=True)
    assert not udp_blocked(None, tcp_only=False)
