"""The lab shaped like users' networks (NATLAB.md, 2026-12-04), checked without meshkey: a
home router behind a carrier-grade NAT (100.64.0.0/10 between them), two hosts behind one
router, a router's WAN address renumbered, and the punched path blocked one way. A UDP
echo on a public host answers with the address it saw each datagram come from."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from .lab import Host, Lab, Namespace, NatKind

pytestmark = pytest.mark.natlab

ECHO_PORT = 5600

# Answers every datagram with the source ip:port it saw.
ECHO = textwrap.dedent(
    """
    import socket, sys
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", int(sys.argv[1])))
    print("ready", flush=True)
    while True:
        data, source = sock.recvfrom(2048)
        sock.sendto(f"{source[0]}:{source[1]}".encode(), source)
    """
)
# Sends one datagram from a fixed port to each target and prints each answer (or "-").
ASK = textwrap.dedent(
    """
    import socket, sys
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", int(sys.argv[1])))
    sock.settimeout(1.0)
    for target in sys.argv[2:]:
        host, port = target.split(":")
        answer = "-"
        for _ in range(3):
            sock.sendto(b"?", (host, int(port)))
            try:
                answer = sock.recv(2048).decode()
                break
            except TimeoutError:
                continue
        print(answer, flush=True)
    """
)


@contextmanager
def echo(namespace: Namespace, port: int = ECHO_PORT) -> Iterator[None]:
    server = namespace.popen(
        sys.executable, "-c", ECHO, str(port), stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout.readline() == "ready\n"
        yield
    finally:
        server.kill()
        server.wait()


def seen_from(host: Host, *targets: str, sport: int = 6100) -> list[str]:
    """What each ``ip:port`` target's echo saw ``host``'s datagrams (from ``sport``) come
    from, "-" where no answer came."""
    out = host.run(sys.executable, "-c", ASK, str(sport), *targets, timeout=30).stdout
    return out.split()


@pytest.fixture(scope="module")
def shapes(lab: Lab) -> dict[str, Host]:
    hosts = {
        "one": lab.add_public_host("one", "203.0.113.30"),
        "two": lab.add_public_host("two", "198.51.100.30"),
    }
    eim_cgn = lab.add_carrier_nat("cgn-eim", NatKind.EIM)
    edm_cgn = lab.add_carrier_nat("cgn-edm", NatKind.EDM)
    home = lab.add_router("home-eim", NatKind.EIM, behind=eim_cgn)
    hosts["double-eim"] = lab.add_host("double-eim", home)
    home2 = lab.add_router("home-under-edm", NatKind.EIM, behind=edm_cgn)
    hosts["double-edm"] = lab.add_host("double-edm", home2)
    shared = lab.add_router("shared", NatKind.EIM)
    hosts["first"] = lab.add_host("first", shared)
    hosts["second"] = lab.add_host("second", shared)
    hosts["moving"] = lab.add_side("moving", NatKind.EIM)
    return hosts


def test_a_home_router_behind_a_carrier_nat(shapes: dict[str, Host]) -> None:
    one, two = shapes["one"], shapes["two"]
    targets = [f"{one.address}:{ECHO_PORT}", f"{two.address}:{ECHO_PORT}"]
    with echo(one), echo(two):
        for name in ("double-eim", "double-edm"):
            host = shapes[name]
            home = host.router
            assert home is not None and home.upstream is not None
            assert home.wan_address.startswith("100.64.")  # shared address space
            assert host.public_address == home.upstream.wan_address
            seen = seen_from(host, *targets)
            assert {s.split(":")[0] for s in seen} == {host.public_address}, seen
            ports = {s.split(":")[1] for s in seen}
            if home.upstream.kind is NatKind.EIM:  # both keep the port: one mapping
                assert ports == {"6100"}, seen
            else:  # the carrier NAT maps each destination to its own random port
                assert len(ports) == 2 and "6100" not in ports, seen


def test_two_hosts_behind_one_router_talk_on_the_lan(shapes: dict[str, Host]) -> None:
    first, second = shapes["first"], shapes["second"]
    router = first.router
    assert router is not None and second.router is router
    assert (first.address, second.address) == (f"{router.lan_prefix}.2", f"{router.lan_prefix}.3")
    with echo(second):
        assert seen_from(first, f"{second.address}:{ECHO_PORT}") == [f"{first.address}:6100"]


def test_renumbering_a_routers_wan_address(shapes: dict[str, Host]) -> None:
    one, moving = shapes["one"], shapes["moving"]
    router = moving.router
    assert router is not None
    before = router.wan_address
    with echo(one):
        assert seen_from(moving, f"{one.address}:{ECHO_PORT}") == [f"{before}:6100"]
        assert router.mappings(moving)
        old = router.renumber("203.0.113.60")
        try:
            assert old == before and moving.public_address == "203.0.113.60"
            assert router.mappings(moving) == []  # conntrack flushed
            seen = seen_from(moving, f"{one.address}:{ECHO_PORT}")
            assert seen == ["203.0.113.60:6100"]
        finally:
            router.renumber(before)
        assert seen_from(moving, f"{one.address}:{ECHO_PORT}") == [f"{before}:6100"]


def test_blocking_udp_to_one_peer_one_way(shapes: dict[str, Host]) -> None:
    one, two, moving = shapes["one"], shapes["two"], shapes["moving"]
    router = moving.router
    assert router is not None
    targets = [f"{one.address}:{ECHO_PORT}", f"{two.address}:{ECHO_PORT}"]
    with echo(one), echo(two):
        assert "-" not in seen_from(moving, *targets)
        with router.blocking_udp(one.address, "out"):
            assert seen_from(moving, *targets, sport=6101) == ["-", f"{router.wan_address}:6101"]
        with router.blocking_udp(one.address, "in"):
            # Out goes through (and opens a mapping), the answer dies at the router.
            assert seen_from(moving, *targets, sport=6102) == ["-", f"{router.wan_address}:6102"]
            assert [e.original.dst for e in router.mappings(moving, 6102)].count(one.address)
        assert "-" not in seen_from(moving, *targets, sport=6103)
        with one.blocking_udp(router.wan_address):  # on a public host: its own wan0
            assert seen_from(moving, *targets, sport=6104) == ["-", f"{router.wan_address}:6104"]
