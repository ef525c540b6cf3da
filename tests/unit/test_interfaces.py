"""The host's networks, as a punch needs them to tell a neighbour's local address from
someone else's LAN."""

from __future__ import annotations

import ipaddress

from meshkey.nat.allowance import networks_of, plausible
from meshkey.transport.interfaces import interface_addresses, interface_networks


def test_every_host_address_is_inside_one_of_the_host_networks() -> None:
    networks = [ipaddress.ip_network(text) for text in interface_networks()]
    assert ipaddress.ip_network("127.0.0.0/8") in networks
    for address in interface_addresses():
        assert any(ipaddress.ip_address(address) in network for network in networks)
    # As a punch uses them: a peer's local candidate on the loopback network is a neighbour.
    nets = networks_of([], interface_networks())
    found = plausible((("127.0.0.9", 1), ("10.255.1.1", 1)), (), (), observed=(), networks=nets)
    assert ("127.0.0.9", 1) in found.local
