"""The host's own IPv4 addresses, for sockets bound to the wildcard address.

A node that joins a network through a seed on another machine listens on every interface
(``0.0.0.0``, DESIGN.md decision 14). Its socket's address then says nothing about where it
can be reached, yet three things need concrete addresses: the NAT classification (a
reflexive address equal to one of the host's own means "no NAT"), the local candidates a
punch offers a peer on the same LAN, and the addresses a node shows its user. This module
turns ``0.0.0.0:P`` into ``A:P`` for every address ``A`` the host has.

Linux only (``SIOCGIFADDR`` per interface from ``socket.if_nameindex``), which is what
meshkey runs on; anywhere it fails, the list is just loopback.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

from meshkey.wire.net import Endpoint

WILDCARDS = frozenset({"0.0.0.0", "::"})
_SIOCGIFADDR = 0x8915
_SIOCGIFNETMASK = 0x891B


def is_wildcard(host: str) -> bool:
    return host in WILDCARDS


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def interface_addresses() -> list[str]:
    """The host's IPv4 addresses, loopback first, each once."""
    found: list[str] = []
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        names = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for name in names:
            request = struct.pack("256s", name.encode()[:15])
            try:
                reply = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)
            except OSError:
                continue  # down, or no IPv4 address
            found.append(socket.inet_ntoa(reply[20:24]))
    ordered = sorted(set(found), key=lambda a: (not is_loopback(a), found.index(a)))
    return ordered or ["127.0.0.1"]


def interface_networks() -> list[str]:
    """The host's IPv4 networks (``A.B.C.D/N``, each once): a punch probes a peer's local
    candidate only inside one (:attr:`meshkey.nat.signalling.LocalCandidates.networks`)."""
    found: list[str] = []
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        names = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for name in names:
            request = struct.pack("256s", name.encode()[:15])
            try:
                address = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)[20:24]
                mask = fcntl.ioctl(probe.fileno(), _SIOCGIFNETMASK, request)[20:24]
            except OSError:
                continue
            network = ipaddress.IPv4Network(
                (socket.inet_ntoa(address), socket.inet_ntoa(mask)), strict=False
            )
            found.append(str(network))
    return list(dict.fromkeys(found)) or ["127.0.0.0/8"]


def concrete_endpoints(endpoint: Endpoint) -> list[Endpoint]:
    """``endpoint`` itself, or for a wildcard host one endpoint per host address (loopback
    first)."""
    host, port = endpoint
    if not is_wildcard(host):
        return [endpoint]
    return [(address, port) for address in interface_addresses()]


def reachable_endpoints(endpoint: Endpoint) -> list[Endpoint]:
    """The endpoints other machines may use: :func:`concrete_endpoints` without loopback
    (unless the socket is bound to loopback only)."""
    concrete = concrete_endpoints(endpoint)
    outside = [e for e in concrete if not is_loopback(e[0])]
    return outside or concrete
