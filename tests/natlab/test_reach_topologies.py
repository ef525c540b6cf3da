"""Reach by NodeId in the shapes users' networks have besides one router per node (issue 18),
with one public node (the seed at 203.0.113.10:7000, also the only relay and observer) and
every node created with ``meshkey node create NAME --seed NODEID@203.0.113.10:7000`` only:

- **two hosts behind one router**: A sends to ``/peer/B`` and opens a channel; its traffic
  must end on a direct path to B's LAN address (10.K.0.3), not through the relay and not
  hairpinned through the router's public address; for each kind of router (the router's
  NAT does not matter on its LAN: even one that drops UDP forwards nothing between two hosts
  on its own bridge);
- **double NAT**: B behind a home router (EIM) behind a carrier-grade NAT (100.64.0.0/10
  between them), A behind an ordinary EIM router; the carrier NAT is EIM or EDM.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from .lab import Host, Lab, MeshkeyNode, NatKind

pytestmark = [pytest.mark.natlab, pytest.mark.timeout(300)]

RECORD_WAIT = 20.0
PATH_WAIT = 10.0


def reach(a: MeshkeyNode, b: MeshkeyNode) -> str:
    """A sends ``hi`` to ``/peer/B`` (until B's record is found) and opens a channel to it,
    sending through it; returns the channel's address."""
    to = f"/peer/{b.node_id}/service/uppercase"
    result, seconds, sends = a.send_until_answered("hi", to, RECORD_WAIT)
    assert result.stdout == "HI\n", (
        f"no answer in {seconds:.1f} s ({sends} sends): {result.stderr.strip()}"
    )
    channel = a.open_channel(f"/peer/{b.node_id}/service/api")
    reply = a.send("through", f"{channel}/service/uppercase")
    assert reply.stdout == "THROUGH\n", reply.stderr
    return channel


def direct_remote(paths: list[dict[str, Any]]) -> str | None:
    """The IP address of the direct path all ``paths`` are on (None: not all direct)."""
    remotes = set()
    for path in paths:
        found = re.match(r"direct \[?([0-9.]+)\]?:\d+", str(path.get("now")))
        if not path.get("direct") or found is None:
            return None
        remotes.add(found.group(1))
    return remotes.pop() if len(remotes) == 1 else None


# -- two hosts behind one router -------------------------------------------------------------


@pytest.fixture(scope="module")
def lans(lab: Lab) -> dict[NatKind, tuple[Host, Host]]:
    shared = {}
    for kind in (NatKind.EIM, NatKind.EDM, NatKind.UDP_BLOCKED):
        router = lab.add_router(f"lan-{kind}", kind)
        shared[kind] = (
            lab.add_host(f"lan-{kind}-1", router),
            lab.add_host(f"lan-{kind}-2", router),
        )
    return shared


@pytest.mark.parametrize(
    "kind",
    [NatKind.EIM, NatKind.EDM, NatKind.UDP_BLOCKED],
    ids=str,
)
def test_two_hosts_behind_one_router_go_direct_on_the_lan(
    seed: MeshkeyNode, lans: dict[NatKind, tuple[Host, Host]], kind: NatKind
) -> None:
    first, second = lans[kind]
    b = second.join("lan-b", seed)
    a = first.join("lan-a", seed)
    reach(a, b)
    paths, _ = a.wait_paths(b.node_id, lambda p: direct_remote(p) is not None, PATH_WAIT)
    assert direct_remote(paths) == second.address, [p.get("now") for p in paths]


# -- double NAT ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def double(lab: Lab) -> dict[str, Host]:
    hosts = {"peer": lab.add_side("dn-peer", NatKind.EIM)}
    for kind in (NatKind.EIM, NatKind.EDM):
        carrier = lab.add_carrier_nat(f"cgn-{kind}", kind)
        home = lab.add_router(f"home-{kind}", NatKind.EIM, behind=carrier)
        hosts[str(kind)] = lab.add_host(f"dn-{kind}", home)
    return hosts


def test_eim_behind_an_eim_carrier_nat_goes_direct(
    seed: MeshkeyNode, double: dict[str, Host]
) -> None:
    """Two endpoint-independent NATs in a row are one endpoint-independent NAT: the home
    router keeps the port, the carrier NAT gives one public port for every destination, and
    each filters by the flows opened from inside, which a punch opens; so the pair punches as
    EIM with EIM does, and its direct path is at the carrier NAT's public address."""
    host = double["eim"]
    b = host.join("dn-b", seed)
    a = double["peer"].join("dn-a", seed)
    reach(a, b)
    paths, _ = a.wait_paths(b.node_id, lambda p: direct_remote(p) is not None, PATH_WAIT)
    assert direct_remote(paths) == host.public_address, [p.get("now") for p in paths]


@pytest.fixture(scope="module")
def behind_edm_carrier(seed: MeshkeyNode, double: dict[str, Host]) -> dict[str, Any]:
    b = double["edm"].join("dn-b2", seed)
    a = double["peer"].join("dn-a2", seed)
    reached: dict[str, Any] = {"a": a, "b": b, "error": None}
    try:
        reach(a, b)
    except AssertionError as exc:
        reached["error"] = str(exc)
    started = time.monotonic()
    reached["paths"], _ = a.wait_paths(b.node_id, lambda p: direct_remote(p) is not None, PATH_WAIT)
    reached["waited"] = time.monotonic() - started
    return reached


def test_eim_behind_an_edm_carrier_nat_is_reached(behind_edm_carrier: dict[str, Any]) -> None:
    """What happens: B (EIM home router behind an EDM carrier NAT) is reached through its
    automatic relay on the seed, by message and channel."""
    assert behind_edm_carrier["error"] is None, behind_edm_carrier["error"]


def test_eim_behind_an_edm_carrier_nat_goes_direct_by_birthday(
    behind_edm_carrier: dict[str, Any], double: dict[str, Host]
) -> None:
    """What should happen: an EIM home router behind an EDM carrier NAT is, seen from
    outside, an endpoint-dependent NAT (the carrier NAT gives every destination its own
    random public port; the home router's kept port is invisible), with address-and-port
    filtering at both. So B's side is EDM and A's is EIM, which NATLAB.md's matrix marks
    direct by the birthday strategy: B opens many sockets toward A's one public ip:port
    (each gets its own carrier port), A probes random ports of B's carrier address, and a
    pair that meets opens both NATs' filters. Nothing about the second NAT layer defeats it
    (the home router maps every birthday socket to its own port, then the carrier NAT to a
    random one, as a single EDM NAT would); the class must be learned (an observer at a
    second IP, or the punch's own evidence) since the address observed says nothing of the
    layers."""
    paths = behind_edm_carrier["paths"]
    punches = [
        line
        for node in (behind_edm_carrier["a"], behind_edm_carrier["b"])
        for line in node.log().splitlines()
        if "punch." in line or "nat.classified" in line
    ]
    shown = [(p.get("now"), p.get("upgrade")) for p in paths]
    assert direct_remote(paths) == double["edm"].public_address, (shown, punches)


# -- a router that drops UDP -----------------------------------------------------------------


def test_a_udp_blocked_node_joins_over_tcp_and_is_reached_through_its_relay(
    lab: Lab, seed: MeshkeyNode, double: dict[str, Host]
) -> None:
    """B behind a router that drops UDP, created with ``--seed`` only (the seed's one
    ``HOST:PORT``): it joins over TCP at that port, keeps its automatic relay on the seed
    over TCP, publishes a record naming it, and A (behind an EIM router) reaches it by
    ``/peer/B``. Prints how long each took (shown with -s). (A is on the double NAT tests'
    EIM host: the lab numbers routers' WAN addresses 203.0.113.K, so a tenth router would
    take the seed's address.)"""
    started = time.monotonic()
    b = lab.add_side("ub-b", NatKind.UDP_BLOCKED).join("ub-b", seed)
    created = time.monotonic() - started
    joined = relayed = None
    while time.monotonic() - started < RECORD_WAIT and relayed is None:
        shown = b.show()
        if joined is None and shown["graph"]["state"] == "joined":
            joined = time.monotonic() - started
        active = [r for r in b.relays() if r.get("status") == "active"]
        if active:
            relayed = time.monotonic() - started
            assert "/tcp/" in active[0]["at"], active
        time.sleep(0.1)
    assert joined is not None and relayed is not None, (b.show()["graph"], b.relays())
    assert b.transports(seed.node_id) == {"tcp"}  # UDP gets nowhere: only TCP hops
    while (nat := b.show()["nat"]["class"]) != "udp-blocked":  # node show says why
        assert time.monotonic() - started < RECORD_WAIT, nat
        time.sleep(0.2)
    a = double["peer"].join("ub-a", seed)
    # Its record names the relay over TCP (once published, a moment after the relay is up).
    while True:
        record = a.find(b.node_id).get("record") or {}
        if any("/tcp/" in route for route in record.get("relays", [])):
            break
        assert time.monotonic() - started < 2 * RECORD_WAIT, (record, a.show()["graph"])
        time.sleep(0.2)
    to = f"/peer/{b.node_id}/service/uppercase"
    result, seconds, sends = a.send_until_answered("hi", to, RECORD_WAIT)
    assert result.stdout == "HI\n", f"{sends} sends in {seconds:.1f} s: {result.stderr.strip()}"
    again = time.monotonic()
    assert a.send("again", to).stdout == "AGAIN\n"
    print(
        f"UDP-blocked node: `node create` returned after {created:.2f} s, joined after "
        f"{joined:.2f} s, relay active after {relayed:.2f} s; /peer/ from an EIM node answered "
        f"after {seconds:.2f} s ({sends} sends), then {time.monotonic() - again:.2f} s"
    )
