"""Address diversity in the node graph: how many places one network may take.

NodeIds are free (a key pair each), addresses are not. Without a limit, one host with 150
identities took 55 places in a node's graph, all 20 of one bucket, and 18 of the 20 contacts
of a FIND_NODE answer (issue 19): whoever holds a bucket decides what the lookups through it
see. So the graph counts addresses by *group*, the network one operator most likely holds
(an IPv4 address's /24, an IPv6 address's /48, the usual allocation to one site), and
limits each group to

- :data:`PER_BUCKET` entries of one bucket (k = 20: the other 18 places stay for others),
- :data:`PER_TABLE` entries of the whole table (of the ~200 a node holds in a network of a
  few thousand, at most 5 % from one network),
- :data:`PER_ANSWER` contacts of one FIND_NODE or FIND_VALUE answer.

These are go-ethereum's discovery table's numbers (2 per /24 in a bucket, 10 per /24 in the
table), which have held on a network of tens of thousands of nodes for years; libp2p's
Kademlia groups by prefix the same way (its peer diversity filter). Addresses that are not
global (loopback, private, link-local, shared CGNAT space) are exempt by default, as in
go-ethereum: on a LAN the nodes are the operator's own and one /24 rightly holds them all,
and a test network on loopback is one IP. :class:`Diversity` takes another rule (tests
enforce the limits on loopback).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from meshkey.wire.net import Endpoint

PER_BUCKET = 2
PER_TABLE = 10
PER_ANSWER = 2
IPV4_PREFIX = 24
IPV6_PREFIX = 48

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def not_global(ip: IpAddress) -> bool:
    """The default exemption: an address that is not routed on the Internet."""
    return not ip.is_global


@dataclass(frozen=True, slots=True)
class Diversity:
    per_bucket: int = PER_BUCKET
    per_table: int = PER_TABLE
    per_answer: int = PER_ANSWER
    exempt: Callable[[IpAddress], bool] = not_global

    def group(self, address: Endpoint) -> str | None:
        """The network ``address`` belongs to (its /24 or /48), or None when it is exempt."""
        host = address[0]
        try:
            ip: IpAddress = ipaddress.ip_address(host)
        except ValueError:
            return host  # not an IP address: its own group
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if self.exempt(ip):
            return None
        prefix = IPV4_PREFIX if isinstance(ip, ipaddress.IPv4Address) else IPV6_PREFIX
        return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


DEFAULT = Diversity()

__all__ = [
    "DEFAULT",
    "IPV4_PREFIX",
    "IPV6_PREFIX",
    "PER_ANSWER",
    "PER_BUCKET",
    "PER_TABLE",
    "Diversity",
    "not_global",
]
