"""The node graph at 1,000 and 10,000 nodes, side by side with the reference Kademlia.

meshkey: :mod:`tests.natsim.dht` runs the daemon's own sans-IO engine on a simulated network
(per-node access latency 5-50 ms, so round trips of 20-200 ms) with a fake clock.

Reference: ``kademlia`` 2.2.3 (bmuller's; asyncio, k = 20, alpha = 3, a fixed 5 s RPC
timeout, no authentication) on *the same kind of network*: its real ``Server`` and
``KademliaProtocol`` objects, unchanged, over an in-process datagram transport with the
same latency model, on an event loop whose clock is virtual (the selector advances the
clock instead of sleeping), so its 5 s timeouts cost simulated time, not wall time, and
10,000 nodes fit in one process.

Networks are built two ways: ``join`` (every node joins through 2 seeds with the
protocol: meshkey pings the seeds, looks up its own id and refreshes its far buckets;
kademlia runs ``Server.bootstrap``) and ``converged`` (each node's table is filled, through
each implementation's own insertion path, with up to k random nodes from every bucket's
range: what a long-running network converges to; the only way to reach 10,000 nodes in
minutes). Then: lookups of random live nodes from random live nodes, before and after 30 %
of the nodes are killed without warning, and with 10 % of the nodes poisoning their
answers with forged contacts; and (at 1,000 nodes) 150 identities on one IP joining: the
most places they take in a bucket, a table and an answer of any node (the diversity
limits: 2, 10 and 2).

Success is the reference's own measure: a lookup of a random key returns, first, the live
node truly closest to it (kademlia's FIND_NODE never hands out the node whose id is the key,
so it cannot look an existing node up by its id; meshkey's peer search can, and its success
there is "the node answered"). Rounds: meshkey's is the depth of the chain of
answers (see :mod:`meshkey.dht.lookup`), kademlia's the number of crawl iterations. Messages:
FIND_NODE requests sent. meshkey's peer search (``stop_at_target``, what ``peer find``
does) stops as soon as the target answered; its ``k-closest`` lookup runs Kademlia's full
termination, like the reference's crawl.

Last, ``peer find`` wall time on real nodes: 30 embedded nodes in this process, real QUIC
hops on loopback, joined through 2 seeds; finds of random nodes (p50/p95), of NodeIds that
do not exist, and of the living after a third of the nodes stopped.

    python -m bench dht [--quick]
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import logging
import random
import selectors
import time
from collections.abc import Callable
from typing import Any

from tests.integration.networks import loopback_network
from tests.natsim.dht import DhtNetwork, forged_entries, run_lookups, sybil_clustering

from bench.common import save

try:  # the reference; `pip install kademlia==2.2.3` (the test extra)
    from kademlia.crawling import NodeSpiderCrawl  # type: ignore[import-untyped,import-not-found,unused-ignore]
    from kademlia.network import Server  # type: ignore[import-untyped,import-not-found,unused-ignore]
    from kademlia.node import Node as KademliaNode  # type: ignore[import-untyped,import-not-found,unused-ignore]
    from kademlia.protocol import KademliaProtocol  # type: ignore[import-untyped,import-not-found,unused-ignore]
except ImportError:  # pragma: no cover
    Server = None

LATENCY = (0.005, 0.05)


# -- the reference on a virtual clock -----------------------------------------------------


class _VirtualSelector(selectors.SelectSelector):
    """Never waits: a select with a timeout moves the virtual clock forward instead."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = 0.0

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is not None and timeout > 0:
            self.clock += timeout
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._virtual = _VirtualSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.clock


class _Transport(asyncio.DatagramTransport):
    def __init__(self, net: KademliaNet, address: tuple[str, int]) -> None:
        super().__init__()
        self.net = net
        self.address = address

    def sendto(self, data: Any, addr: Any = None) -> None:
        self.net.deliver(self.address, bytes(data), addr)

    def close(self) -> None:
        pass


class _Poisoner(KademliaProtocol if Server is not None else object):  # type: ignore[misc]
    """Answers FIND_NODE with made-up ids at real addresses and real ids at wrong ones."""

    net: KademliaNet

    def rpc_find_node(self, sender: Any, nodeid: bytes, key: bytes) -> list[Any]:
        rng = self.net.rng
        goal = int.from_bytes(key, "big")
        forged = []
        for _ in range(10):
            victim = rng.choice(self.net.addresses)
            made_up = (goal ^ rng.getrandbits(30)).to_bytes(20, "big")
            forged.append((made_up, victim[0], victim[1]))
        for node in self.router.find_neighbors(KademliaNode(key), 10):
            wrong = rng.choice(self.net.addresses)
            forged.append((node.id, wrong[0], wrong[1]))
        return forged


class KademliaNet:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.loop = VirtualLoop()
        self.servers: list[Any] = []
        self.by_address: dict[tuple[str, int], Any] = {}
        self.latency: dict[tuple[str, int], float] = {}
        self.alive: dict[tuple[str, int], bool] = {}
        self.addresses: list[tuple[str, int]] = []
        self.poisoners: set[tuple[str, int]] = set()

    def add(self, *, poisoner: bool = False) -> Any:
        index = len(self.servers)
        address = (f"127.{1 + (index >> 16) % 250}.{(index >> 8) & 255}.{index & 255}", 4000)
        server = Server(ksize=20, alpha=3, node_id=self.rng.randbytes(20))
        protocol = (_Poisoner if poisoner else KademliaProtocol)(server.node, server.storage, 20)
        protocol.net = self
        protocol.connection_made(_Transport(self, address))
        server.protocol = protocol
        server.node.ip, server.node.port = address
        self.servers.append(server)
        self.by_address[address] = server
        self.latency[address] = self.rng.uniform(*LATENCY)
        self.alive[address] = True
        self.addresses.append(address)
        if poisoner:
            self.poisoners.add(address)
        return server

    def deliver(self, source: tuple[str, int], data: bytes, destination: tuple[str, int]) -> None:
        if not self.alive.get(source) or not self.alive.get(destination):
            return  # a dead node sends nothing and answers nothing
        delay = self.latency[source] + self.latency[destination]
        protocol = self.by_address[destination].protocol
        self.loop.call_later(delay, protocol.datagram_received, data, source)

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def build_join(self, count: int, *, poisoners: float = 0.0) -> None:
        for _ in range(count):
            self.add(poisoner=len(self.servers) >= 2 and self.rng.random() < poisoners)
        seeds = self.addresses[:2]

        async def join_all() -> None:
            await self.servers[1].bootstrap([seeds[0]])
            for start in range(2, count, 25):
                group = self.servers[start : start + 25]
                await asyncio.gather(*(s.bootstrap(seeds) for s in group))

        self.run(join_all())

    def build_converged(self, count: int, *, poisoners: float = 0.0) -> None:
        for _ in range(count):
            self.add(poisoner=self.rng.random() < poisoners)
        ordered = sorted((s.node.long_id, i) for i, s in enumerate(self.servers))
        keys = [key for key, _ in ordered]

        async def fill() -> None:
            for server in self.servers:
                own = server.node.long_id
                router = server.protocol.router
                for bucket in range(159, 103, -1):
                    prefix = (own >> (bucket + 1)) << (bucket + 1)
                    low = prefix | ((((own >> bucket) & 1) ^ 1) << bucket)
                    start = bisect.bisect_left(keys, low)
                    end = bisect.bisect_left(keys, low + (1 << bucket))
                    chosen = (
                        self.rng.sample(range(start, end), 20)
                        if end - start > 20
                        else range(start, end)
                    )
                    for position in chosen:
                        other = self.servers[ordered[position][1]].node
                        router.add_contact(KademliaNode(other.id, other.ip, other.port))
            await asyncio.sleep(10)  # let the pings of full buckets settle

        self.run(fill())

    def kill(self, fraction: float) -> None:
        living = [a for a in self.addresses if self.alive[a]]
        for address in self.rng.sample(living, int(len(self.addresses) * fraction)):
            self.alive[address] = False

    def lookups(self, count: int, *, honest_only: bool = False) -> dict[str, float]:
        eligible = [
            s
            for s in self.servers
            if self.alive[(s.node.ip, s.node.port)]
            and (not honest_only or (s.node.ip, s.node.port) not in self.poisoners)
        ]
        found = rounds = messages = duration = 0.0
        started = time.perf_counter()
        for _ in range(count):
            source = self.rng.choice(eligible)
            key = self.rng.randbytes(20)
            goal = int.from_bytes(key, "big")
            living = [s for s in self.servers if self.alive[(s.node.ip, s.node.port)]]
            # Poisoners are real nodes too: the truly closest may be one of them.
            closest = min(
                (s for s in living if s is not source), key=lambda s: s.node.long_id ^ goal
            )
            result, crawl_rounds, sent, took = self.run(self._lookup(source, key))
            found += bool(result) and result[0].id == closest.node.id
            rounds += crawl_rounds
            messages += sent
            duration += took
        wall = time.perf_counter() - started
        return {
            "lookups": count,
            "success": round(found / count, 4),
            "rounds_per_lookup": round(rounds / count, 2),
            "messages_per_lookup": round(messages / count, 2),
            "sim_seconds_per_lookup": round(duration / count, 4),
            "wall_ms_per_lookup": round(wall * 1000 / count, 3),
        }

    async def _lookup(self, source: Any, target_id: bytes) -> tuple[Any, int, int, float]:
        protocol = source.protocol
        node = KademliaNode(target_id)
        nearest = protocol.router.find_neighbors(node)
        spider = NodeSpiderCrawl(protocol, node, nearest, 20, 3)
        counts = {"rounds": 0, "messages": 0}
        find, call = spider._find, protocol.call_find_node

        async def counted_find(method: Any) -> Any:
            counts["rounds"] += 1
            return await find(method)

        async def counted_call(peer: Any, target: Any) -> Any:
            counts["messages"] += 1
            return await call(peer, target)

        spider._find = counted_find
        protocol.call_find_node = counted_call
        started = self.loop.time()
        try:
            result = await spider.find()
        finally:
            protocol.call_find_node = call
        return result, counts["rounds"], counts["messages"], self.loop.time() - started

    def forged_entries(self) -> int:
        """Routing-table entries whose id does not live at their address."""
        real = {(s.node.ip, s.node.port): s.node.id for s in self.servers}
        count = 0
        for server in self.servers:
            if not self.alive[(server.node.ip, server.node.port)]:
                continue
            for bucket in server.protocol.router.buckets:
                for node in bucket.get_nodes():
                    if real.get((node.ip, node.port)) != node.id:
                        count += 1
        return count


# -- real nodes on loopback -------------------------------------------------------------------


async def _loopback(count: int, finds: int) -> dict[str, Any]:
    from bench.common import summary
    from meshkey.identity.keys import Identity

    rng = random.Random(count)
    started = time.perf_counter()
    nodes, graphs = await loopback_network(count)
    out: dict[str, Any] = {"nodes": count, "join_seconds": round(time.perf_counter() - started, 2)}

    async def find_all(alive: list[int], label: str) -> None:
        times, found, messages = [], 0, 0
        for _ in range(finds):
            source, target = rng.sample(alive, 2)
            began = time.perf_counter()
            result = await graphs[source].find(nodes[target].node_id, timeout=30)
            times.append((time.perf_counter() - began) * 1000)
            found += result.found
            messages += result.stats.messages
        out[label] = {
            "success": round(found / finds, 4),
            "messages_per_find": round(messages / finds, 2),
            **summary(times),
            "p95_ms": round(sorted(times)[int(0.95 * (len(times) - 1))], 3),
        }

    everyone = list(range(count))
    await find_all(everyone, "peer_find")
    times = []
    for _ in range(max(5, finds // 10)):
        began = time.perf_counter()
        missing = await graphs[rng.choice(everyone)].find(Identity.generate().node_id)
        assert not missing.found
        times.append((time.perf_counter() - began) * 1000)
    out["peer_find_not_found"] = summary(times)
    victims = rng.sample(everyone[2:], count // 3)
    for index in victims:
        await graphs[index].close()
        await nodes[index].stop()
    await find_all([i for i in everyone if i not in victims], "peer_find_third_killed")
    for index in everyone:
        if index not in victims:
            await graphs[index].close()
            await nodes[index].stop()
    return out


# -- the runs -------------------------------------------------------------------------------


def _timed(what: str, function: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = function()
    print(f"  {what}: {time.perf_counter() - started:.1f} s", flush=True)
    return result


def _meshkey(n: int, build: str, lookups: int, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    net = DhtNetwork(seed=seed, latency=LATENCY)
    if build == "join":
        _timed(f"meshkey build {n} ({build})", lambda: net.build(n))
    else:
        _timed(f"meshkey build {n} ({build})", lambda: net.build_converged(n))

    def measure(label: str, **options: Any) -> None:
        report = _timed(f"meshkey {label}", lambda: run_lookups(net, lookups, **options))
        out[label] = report.as_dict()

    measure("peer_search", stop_at_target=True)
    measure("k_closest", random_keys=True)
    net.kill(0.3)
    measure("peer_search_30pct_killed", stop_at_target=True)
    measure("k_closest_30pct_killed", random_keys=True)
    out["forged_entries"] = forged_entries(net)
    poisoned = DhtNetwork(seed=seed + 1, latency=LATENCY)
    if build == "join":
        poisoned.build(n, poisoners=0.1)
    else:
        poisoned.build_converged(n, poisoners=0.1)
    honest = [node for node in poisoned.nodes if not node.poisoner]
    report = run_lookups(poisoned, lookups, random_keys=True, sources=honest)
    out["k_closest_10pct_poisoners"] = report.as_dict()
    searched = run_lookups(poisoned, lookups, stop_at_target=True, sources=honest, targets=honest)
    out["peer_search_10pct_poisoners"] = searched.as_dict()
    out["forged_entries_with_poisoners"] = forged_entries(poisoned)
    out["forged_contacts_tried_and_refused"] = poisoned.auth_failures
    if n <= 1000:  # (a join of 150 more through the protocol: minutes at 10,000 nodes)
        sybils = _timed("meshkey sybils", lambda: net.add_sybils(150, "11.250.0.66"))
        out["sybils_150_on_one_ip"] = sybil_clustering(net, sybils)
        honest = [node for node in net.living() if node not in sybils]
        report = run_lookups(net, lookups, stop_at_target=True, sources=honest, targets=honest)
        out["peer_search_with_sybils"] = report.as_dict()
    return out


def _reference(n: int, build: str, lookups: int, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    net = KademliaNet(seed)
    if build == "join":
        _timed(f"kademlia build {n} ({build})", lambda: net.build_join(n))
    else:
        _timed(f"kademlia build {n} ({build})", lambda: net.build_converged(n))
    out["crawl"] = _timed("kademlia crawl", lambda: net.lookups(lookups))
    net.kill(0.3)
    out["crawl_30pct_killed"] = _timed("kademlia crawl killed", lambda: net.lookups(lookups))
    poisoned = KademliaNet(seed + 1)
    if build == "join":
        poisoned.build_join(n, poisoners=0.1)
    else:
        poisoned.build_converged(n, poisoners=0.1)
    out["crawl_10pct_poisoners"] = poisoned.lookups(lookups, honest_only=True)
    out["forged_entries_with_poisoners"] = poisoned.forged_entries()
    net.loop.close()
    poisoned.loop.close()
    return out


def _ratio(ours: dict[str, float], theirs: dict[str, float], key: str) -> float | None:
    return round(ours[key] / theirs[key], 3) if theirs.get(key) else None


def main(*, quick: bool = False) -> None:
    runs = (
        [(1000, "converged", 100)]
        if quick
        else [
            (1000, "join", 300),
            (1000, "converged", 300),
            (10000, "converged", 200),
        ]
    )
    result: dict[str, Any] = {}
    for name in ("kademlia", "rpcudp", "asyncio"):  # every dead contact is a warning there
        logging.getLogger(name).setLevel(logging.CRITICAL)
    gc.disable()  # millions of long-lived table entries: the collector would dominate
    try:
        for n, build, lookups in runs:
            name = f"{n}_{build}"
            print(f"dht {name}", flush=True)
            ours = _meshkey(n, build, lookups, seed=n)
            theirs = _reference(n, build, lookups, seed=n) if Server is not None else {}
            ratios: dict[str, Any] = {}
            if theirs:
                for mine, reference in (
                    ("peer_search", "crawl"),
                    ("k_closest", "crawl"),
                    ("peer_search_30pct_killed", "crawl_30pct_killed"),
                    ("k_closest_30pct_killed", "crawl_30pct_killed"),
                    ("k_closest_10pct_poisoners", "crawl_10pct_poisoners"),
                ):
                    ratios[f"{mine}_vs_{reference}"] = {
                        key: _ratio(ours[mine], theirs[reference], key)
                        for key in (
                            "messages_per_lookup",
                            "rounds_per_lookup",
                            "sim_seconds_per_lookup",
                        )
                    }
            result[name] = {"meshkey": ours, "kademlia_2_2_3": theirs, "ratios": ratios}
            gc.collect()
    finally:
        gc.enable()
    print("dht loopback (embedded nodes, real QUIC hops)", flush=True)
    result["loopback"] = asyncio.run(_loopback(15 if quick else 30, 30 if quick else 200))
    print(f"  {result['loopback']}")
    for name, data in result.items():
        if name == "loopback":
            continue
        print(f"\n== {name}")
        for label, figures in data["meshkey"].items():
            print(f"  meshkey  {label:34} {figures}")
        for label, figures in data["kademlia_2_2_3"].items():
            print(f"  kademlia {label:34} {figures}")
        for label, figures in data["ratios"].items():
            print(f"  ratio    {label:52} {figures}")
    save("dht", result)
