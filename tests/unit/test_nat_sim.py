"""The simulator's NAT boxes behave as NATLAB.md measured the kernel's: MASQUERADE keeps the
port and one mapping for every destination, --random-fully does not, filtering is address-
and-port-dependent, an unreplied inbound entry makes the next outbound flow clash onto another
port, low-TTL packets die on the WAN, mappings time out, UDP-blocked drops UDP."""

from __future__ import annotations

from tests.natsim.net import Host, NatBox, NatKind, Packet, SimNet, SimSocket

OBSERVER_1 = ("203.0.113.10", 3478)
OBSERVER_2 = ("203.0.113.11", 3478)


def setup(kind: NatKind, **options: float) -> tuple[SimNet, SimSocket, list[SimSocket], NatBox]:
    net = SimNet(seed=1, wan_hops=int(options.pop("wan_hops", 8)))
    nat = NatBox(net, "203.0.113.1", kind, **options)
    inside = Host(net, "10.1.0.2", nat=nat).open_socket(5000)
    outside = [Host(net, ip).open_socket(3478) for ip in ("203.0.113.10", "203.0.113.11")]
    return net, inside, outside, nat


def record(sock: SimSocket) -> list[Packet]:
    got: list[Packet] = []
    sock.receiver = got.append
    return got


def test_masquerade_keeps_the_port_for_every_destination() -> None:
    net, inside, outside, _ = setup(NatKind.EIM)
    seen = [record(o) for o in outside]
    inside.sendto(b"x", OBSERVER_1)
    inside.sendto(b"x", OBSERVER_2)
    net.run_for(1.0)
    assert [s[0].src for s in seen] == [("203.0.113.1", 5000)] * 2


def test_random_fully_gives_every_destination_another_port() -> None:
    net, inside, outside, _ = setup(NatKind.EDM)
    seen = [record(o) for o in outside]
    inside.sendto(b"x", OBSERVER_1)
    inside.sendto(b"x", OBSERVER_1)  # the same flow keeps its port
    inside.sendto(b"x", OBSERVER_2)
    net.run_for(1.0)
    first, again, other = seen[0][0].src, seen[0][1].src, seen[1][0].src
    assert first == again and first[0] == other[0] == "203.0.113.1"
    assert first[1] != other[1] and 5000 not in (first[1], other[1])


def test_filtering_is_address_and_port_dependent() -> None:
    net, inside, outside, _ = setup(NatKind.EIM)
    got = record(inside)
    outside[1].sendto(b"unsolicited", ("203.0.113.1", 5000))
    net.run_for(0.1)
    assert got == []
    inside.sendto(b"hello", OBSERVER_1)  # (not to observer 2: that flow would clash)
    net.run_for(0.1)
    outside[0].sendto(b"reply", ("203.0.113.1", 5000))
    outside[1].sendto(b"from elsewhere", ("203.0.113.1", 5000))
    other_port = outside[0].host.open_socket(3479)
    other_port.sendto(b"from another port", ("203.0.113.1", 5000))
    net.run_for(0.1)
    assert [p.data for p in got] == [b"reply"]
    assert got[0].src == OBSERVER_1 and got[0].dst == ("10.1.0.2", 5000)


def test_an_unreplied_inbound_entry_moves_the_outbound_flow_to_another_port() -> None:
    # NATLAB.md: a punch packet that arrives before the host's own first packet leaves.
    net, inside, outside, nat = setup(NatKind.EIM)
    seen = [record(o) for o in outside]
    outside[0].sendto(b"too early", ("203.0.113.1", 5000))
    net.run_for(0.1)
    assert [f.internal for f in nat.flows()] == [None]  # recorded, unreplied
    inside.sendto(b"punch", OBSERVER_1)
    inside.sendto(b"punch", OBSERVER_2)
    net.run_for(0.1)
    assert seen[0][0].src[1] != 5000  # clashed: another port towards that remote only
    assert seen[1][0].src == ("203.0.113.1", 5000)
    assert nat.clashes == 1
    got = record(inside)
    outside[0].sendto(b"to the old port", ("203.0.113.1", 5000))  # refreshes the stale entry
    net.run_for(0.1)
    assert got == []
    assert net.dropped["filtered by the NAT (stale inbound entry)"] == 1


def test_a_low_ttl_packet_opens_our_mapping_and_dies_before_the_far_side() -> None:
    net, inside, _, nat = setup(NatKind.EIM)
    far = NatBox(net, "203.0.113.2", NatKind.EIM)
    Host(net, "10.2.0.2", nat=far).open_socket(5000)
    inside.sendto(b"opener", ("203.0.113.2", 5000), ttl=5)
    net.run_for(0.1)
    assert [f.remote for f in nat.flows()] == [("203.0.113.2", 5000)]
    assert far.flows() == []
    assert net.dropped["ttl expired on the WAN"] == 1
    # In a lab without hops (NATLAB.md's first HyperDHT runs) it reaches the far NAT.
    net2, inside2, _, _ = setup(NatKind.EIM, wan_hops=0)
    far2 = NatBox(net2, "203.0.113.2", NatKind.EIM)
    inside2.sendto(b"opener", ("203.0.113.2", 5000), ttl=5)
    net2.run_for(0.1)
    assert [f.internal for f in far2.flows()] == [None]


def test_mappings_expire_unless_traffic_refreshes_them() -> None:
    net, inside, outside, nat = setup(NatKind.EIM, timeout=30.0)
    got = record(inside)
    inside.sendto(b"x", OBSERVER_1)
    net.run_for(25.0)
    inside.sendto(b"keepalive", OBSERVER_1)
    net.run_for(25.0)
    outside[0].sendto(b"still mapped", ("203.0.113.1", 5000))
    net.run_for(31.0)
    outside[0].sendto(b"expired", ("203.0.113.1", 5000))
    net.run_for(0.1)
    assert [p.data for p in got] == [b"still mapped"]
    nat.flush()
    assert nat.flows() == []


def test_udp_blocked_drops_udp_and_passes_tcp() -> None:
    net, inside, outside, _ = setup(NatKind.UDP_BLOCKED)
    seen = record(outside[0])
    inside.sendto(b"udp", OBSERVER_1)
    tcp = inside.host.open_socket(40000, proto="tcp")
    listener = outside[0].host.open_socket(6000, proto="tcp")
    got_tcp = record(listener)
    tcp.sendto(b"syn", ("203.0.113.10", 6000))
    net.run_for(0.1)
    assert seen == []
    assert [p.data for p in got_tcp] == [b"syn"]


def test_the_wan_delay_is_per_port_and_loss_is_seeded() -> None:
    net, inside, outside, _ = setup(NatKind.EIM)
    seen = record(outside[0])
    inside.sendto(b"x", OBSERVER_1)
    net.run_until(lambda: bool(seen), limit=1.0)
    assert abs(net.now - 0.0201) < 1e-9  # LAN 0.1 ms, 10 ms per WAN port

    def lost(seed: int) -> int:
        lossy = SimNet(seed=seed)
        a = Host(lossy, "203.0.113.50", loss=0.2).open_socket(1)
        b = Host(lossy, "203.0.113.51").open_socket(1)
        got = record(b)
        for _ in range(1000):
            a.sendto(b"x", b.address)
        lossy.run_for(1.0)
        return 1000 - len(got)

    assert lost(3) == lost(3)
    assert 150 < lost(3) < 250
