"""Reflexive addresses through real kernel NATs: ``meshkey node whoami NAME --via ROUTE``
from behind each router kind, checked against what the router's conntrack table says."""

from __future__ import annotations

import pytest

from meshkey.cli.errors import ExitCode

from .lab import Host, MeshkeyNode, NatKind

pytestmark = pytest.mark.natlab

PROBE_PORT = 4000


@pytest.fixture(scope="module")
def observers(hosts: dict[str, Host]) -> tuple[MeshkeyNode, MeshkeyNode]:
    """Two public nodes with different IP addresses (203.0.113.10 and 198.51.100.10)."""
    return hosts["relay"].create_node("relay"), hosts["observer"].create_node("observer")


@pytest.fixture(scope="module")
def probes(hosts: dict[str, Host]) -> dict[NatKind, MeshkeyNode]:
    """A node on the host of each kind, its one UDP socket on port 4000."""
    return {kind: hosts[str(kind)].create_node("probe", udp_port=PROBE_PORT) for kind in NatKind}


def whoami(node: MeshkeyNode, observer: MeshkeyNode) -> tuple[str, int]:
    answer = node.host.meshkey_json("node", "whoami", node.name, "--via", observer.route())
    assert answer["local"] == node.route("udp")
    _, ip4, address, udp, port = answer["observed"].split("/")
    assert (ip4, udp) == ("ip4", "udp"), answer
    return address, int(port)


@pytest.mark.parametrize("kind", [NatKind.PUBLIC, NatKind.EIM, NatKind.EDM], ids=str)
def test_the_reflexive_address_is_the_routers_public_address(
    kind: NatKind, probes: dict[NatKind, MeshkeyNode], observers: tuple[MeshkeyNode, MeshkeyNode]
) -> None:
    probe = probes[kind]
    relay, _ = observers
    address, port = whoami(probe, relay)
    assert address == probe.host.public_address
    if kind is NatKind.PUBLIC:
        assert probe.host.router is None and (address, port) == (probe.host.address, PROBE_PORT)
        return
    assert address != probe.host.address  # the private address never shows on the WAN
    router = probe.host.router
    assert router is not None
    # The kernel's own record of the mapping agrees with what the observer saw.
    [mapping] = [
        e
        for e in router.mappings(probe.host, PROBE_PORT)
        if e.original.dst == relay.host.address and e.original.dport == relay.udp_port
    ]
    assert mapping.public == (address, port)
    if kind is NatKind.EIM:
        assert port == PROBE_PORT  # MASQUERADE keeps the source port


def test_two_observers_see_one_mapping_behind_eim_and_two_behind_edm(
    probes: dict[NatKind, MeshkeyNode], observers: tuple[MeshkeyNode, MeshkeyNode]
) -> None:
    first, second = observers
    assert first.host.address != second.host.address
    eim = [whoami(probes[NatKind.EIM], observer) for observer in observers]
    assert eim[0] == eim[1]  # endpoint-independent: one public ip:port for every destination
    edm = [whoami(probes[NatKind.EDM], observer) for observer in observers]
    assert edm[0][0] == edm[1][0] == probes[NatKind.EDM].host.public_address
    assert edm[0][1] != edm[1][1]  # endpoint-dependent: a new port for each destination
    public = [whoami(probes[NatKind.PUBLIC], observer) for observer in observers]
    assert public[0] == public[1] == (probes[NatKind.PUBLIC].host.address, PROBE_PORT)


def test_whoami_behind_a_udp_blocking_router_fails_cleanly_and_tcp_still_works(
    probes: dict[NatKind, MeshkeyNode], observers: tuple[MeshkeyNode, MeshkeyNode]
) -> None:
    probe = probes[NatKind.UDP_BLOCKED]
    relay, _ = observers
    result = probe.meshkey(
        "node", "whoami", probe.name, "--via", relay.route(), "--timeout", "1s", check=False
    )
    assert result.returncode == ExitCode.TIMEOUT, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "no reflexive-address answer" in lines[0] and relay.host.address in lines[0]
    router = probe.host.router
    assert router is not None and router.mappings(probe.host) == []  # UDP never got through
    # TCP is NATed as usual: the short-lived CLI node and the daemon both reach the relay.
    tcp = f"{relay.route('tcp')}/service/uppercase"
    assert probe.meshkey("message", "send", "tcp works", "--to", tcp).stdout == "TCP WORKS\n"
    assert probe.meshkey("message", "send", "x", "--from", probe.name, "--to", tcp).stdout == "X\n"
    assert probe.transports() == {"tcp"}
    tcp_flows = router.conntrack("-p", "tcp")
    assert any(
        e.original.src == probe.host.address and e.reply.dst == router.wan_address
        for e in tcp_flows
    ), tcp_flows
