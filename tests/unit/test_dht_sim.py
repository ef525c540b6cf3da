"""The engine in the deterministic simulator: success, churn, poisoning, loss, records."""

from __future__ import annotations

from meshkey.dht.diversity import PER_ANSWER, PER_BUCKET, PER_TABLE
from meshkey.dht.lookup import LookupKind
from tests.natsim.dht import DhtNetwork, forged_entries, run_lookups, sybil_clustering


def test_a_network_built_by_joining_finds_every_node() -> None:
    net = DhtNetwork(seed=3)
    net.build(120, seeds=2, batch=20)
    assert all(n.engine.phase.value == "ready" for n in net.nodes)
    report = run_lookups(net, 60, stop_at_target=True)
    assert report.success == 1.0
    assert forged_entries(net) == 0


def test_500_nodes_all_found_and_30_percent_killed_still_99() -> None:
    net = DhtNetwork(seed=4)
    net.build_converged(500)
    assert run_lookups(net, 100).success == 1.0
    net.kill(0.3)
    report = run_lookups(net, 150)
    assert report.success >= 0.99
    # Dead contacts cost a soft timeout (measured RTT), never a fixed 5 s each.
    assert report.sim_seconds < 5.0
    assert forged_entries(net) == 0


def test_ten_percent_poisoners_insert_nothing_and_lookups_succeed() -> None:
    net = DhtNetwork(seed=5)
    net.build_converged(400, poisoners=0.1)
    assert sum(n.poisoner for n in net.nodes) >= 20
    honest = [n for n in net.nodes if not n.poisoner]
    report = run_lookups(net, 120, sources=honest, targets=honest)
    assert report.success >= 0.99
    assert net.auth_failures > 0  # the forged contacts were tried, and failed their hops
    assert forged_entries(net) == 0


def test_records_published_in_a_poisoned_network_are_found_and_forgeries_ignored() -> None:
    net = DhtNetwork(seed=6)
    net.build_converged(300, poisoners=0.1)
    owner, reader = net.nodes[10], net.nodes[200]
    owner.poisoner = reader.poisoner = False
    net.publish(owner)
    assert net.published[owner.node_id] == owner.engine.publisher.sequence
    holders = [n for n in net.nodes if n.engine.records.get(owner.node_id, net.now + 1.7e9)]
    assert len(holders) >= 10
    owner.alive = False  # the record, not its owner, must answer now
    result = net.lookup(reader, owner.node_id, kind=LookupKind.FIND_VALUE)
    assert result.found and result.record is not None
    assert result.record.node_id == owner.node_id
    assert result.record.direct == (owner.address,)


def test_lossy_links_still_find_the_target() -> None:
    # 5 % datagram loss, which QUIC hops turn into retransmission delay.
    net = DhtNetwork(seed=7, loss=0.05)
    net.build_converged(300)
    assert run_lookups(net, 80).success >= 0.99


def test_the_simulation_is_deterministic() -> None:
    def run() -> tuple[float, float]:
        net = DhtNetwork(seed=8)
        net.build_converged(150)
        net.kill(0.3)
        report = run_lookups(net, 30)
        return report.messages, report.sim_seconds

    assert run() == run()


def test_clients_are_never_handed_out() -> None:
    net = DhtNetwork(seed=9)
    net.build(60, seeds=2, clients=0.3, batch=20)
    clients = {n.node_id for n in net.nodes if not n.reachable}
    assert clients
    for node in net.nodes:
        for entry in node.engine.table.closest(node.node_id, 200):
            assert entry.node_id not in clients
    report = run_lookups(net, 30, stop_at_target=True)
    assert report.success == 1.0


def test_identities_on_one_host_take_no_more_than_their_networks_share() -> None:
    """40 identities on one IP join a network of 200 through the protocol (their lookups
    dial into the graphs they visit, claiming to be servers): no graph holds more than 2 of
    them in a bucket or 10 in all, no answer more than 2, and lookups still succeed."""
    net = DhtNetwork(seed=10)
    net.build_converged(200)
    sybils = net.add_sybils(40, "11.200.0.66")
    clustering = sybil_clustering(net, sybils)
    assert clustering["max_in_a_table"] > 0  # they did get in: the limits are what holds
    assert clustering["max_in_a_bucket"] <= PER_BUCKET
    assert clustering["max_in_a_table"] <= PER_TABLE
    assert clustering["max_in_an_answer"] <= PER_ANSWER
    honest = [n for n in net.nodes if n not in sybils]
    assert run_lookups(net, 60, sources=honest, targets=honest).success == 1.0
