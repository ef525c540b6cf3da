"""The vocabulary every layer shares about the network below meshkey's own formats.

``Endpoint`` is a socket address, ``(host, port)``: what a UDP datagram comes from, what a
NAT maps, what a peer record lists. (A *route address*, ``/ip4/A/udp/P/id/N``, is
:mod:`meshkey.routing.address`'s ``Address``; the two are never mixed.)

``NatClass`` is how a node's NAT maps its one UDP socket (DESIGN.md decision 10). Its value is
the text users see (``node show``, ``-o json``) and the punch signal carries; the peer record's
binary form has its own one-byte codes (:mod:`meshkey.wire.dht`).
"""

from __future__ import annotations

import enum

Endpoint = tuple[str, int]


class NatClass(enum.StrEnum):
    """How a node's NAT maps its one UDP socket (DESIGN.md decision 10)."""

    PUBLIC = "public"  # no NAT: the reflexive address is a local address
    ENDPOINT_INDEPENDENT = "endpoint-independent"  # one public port for every destination
    ENDPOINT_DEPENDENT = "endpoint-dependent"  # a new public port per destination
    UDP_BLOCKED = "udp-blocked"  # no UDP answer, while TCP works
    UNKNOWN = "unknown"  # too few observers answered to tell
