"""Relays (Ockam's forwarders): a node behind a NAT registers an address on a reachable node."""
