"""The node graph in the simulator: the daemon's sans-IO engine on a fake network.

Every simulated node is a :class:`meshkey.dht.engine.DhtEngine`, the very object the daemon
runs; only the network and the clock are fake. The clock is the package's one
:class:`~tests.natsim.net.SimNet` (its event queue, its seeded rng), and each node follows
its engine's deadline with the daemon's own :class:`~meshkey.timing.DeadlineTimer` on that
clock, so a run with the same seed is the same run, and a DHT network can share one
simulation with path and portal scenarios (pass ``net``). The glue here is
:class:`~meshkey.dht.service.DhtService`'s mapping: requests out, answers and failures in,
``HopAuthenticated`` as ``on_authenticated``; what it does *not* drive is listed at the end.

- **Links.** Each node has an access latency drawn once from ``latency``; the one-way delay
  between two nodes is the sum of theirs (so some pairs are near, some far). ``loss`` loses
  a datagram with that probability; hops are QUIC, so a lost request or answer is sent
  again after a probe timeout (3 one-way delays here), each try lost again with the same
  probability: loss makes exchanges slower, as on the real transport, not silent.
- **Hops and authentication.** A request goes to an address and is pinned to a NodeId, as
  the daemon's ``/ip4/H/udp/P/id/NODEID`` hops are. "Authenticated" means what it means on a
  real hop: the node at that address really holds that NodeId. Then both sides see the hop
  authenticate (``on_authenticated``: inbound for the receiver with the sender's address,
  outbound for the sender). A node at the address with another NodeId fails the handshake:
  the sender hears ``on_failure`` after one round trip, and neither side inserts anything.
  A dead node (``kill``) or an empty address answers nothing, without warning; a dial on
  someone's say-so there is given up after its patience (``dial_timeout``), as the glue
  closes it, and the engine hears the failure then.
- **Poisoners** answer FIND_NODE and FIND_VALUE with forged contacts: made-up NodeIds next to
  the target at real nodes' addresses, and the real NodeIds closest to the target at wrong
  addresses (other nodes' or nobody's), and FIND_VALUE with forged and stale records.
- **Clients** (``reachable=False``) sit behind a NAT: a new hop *to* them never
  authenticates; they only talk over hops they open.

:func:`forged_entries` counts the table entries, over all live nodes, whose NodeId does not
live at the address recorded: the target is 0.

Not simulated (the daemon decides these in its asyncio glue or in cores this module does not
drive): the upkeep core (:class:`~meshkey.dht.maintenance.Maintenance`: join retries,
reachability checks, publishing on change; nodes here join with ``engine.join`` and have a
fixed mode), the way a dial-back is carried out (:meth:`meshkey.dht.hops.DhtHops.dial_back`:
here it succeeds exactly when the asker is alive and reachable), and a punched hop counted
as inbound (``DhtService.on_transport_event``).
"""

from __future__ import annotations

import bisect
import functools
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshkey.dht.engine import (
    DhtEngine,
    DialBackJob,
    LookupFinished,
    Phase,
    Published,
    Purpose,
    SendRequest,
)
from meshkey.dht.lookup import LookupDone, LookupKind
from meshkey.dht.records import RecordContent, sign_record
from meshkey.identity.keys import Identity
from meshkey.identity.node_id import NodeId
from meshkey.timing import DeadlineTimer
from meshkey.wire.dht import (
    Answer,
    DialBackResult,
    FindNode,
    FindValue,
    Mode,
    Nodes,
    Value,
    WireContact,
)
from meshkey.wire.net import Endpoint
from tests.natsim.net import SimNet

START = 1000.0
WALL_OFFSET = 1.7e9  # simulated wall clock = monotonic + this (records carry unix expiries)


def identity_from_seed(rng: random.Random) -> Identity:
    return Identity(Ed25519PrivateKey.from_private_bytes(rng.randbytes(32)))


@dataclass(eq=False)
class DhtNode:
    index: int
    identity: Identity
    address: Endpoint
    engine: DhtEngine
    latency: float
    alive: bool = True
    poisoner: bool = False
    reachable: bool = True
    timer: DeadlineTimer | None = None  # follows the engine's deadline (set by the network)
    results: dict[int, LookupDone] = field(default_factory=dict)

    @property
    def node_id(self) -> NodeId:
        return self.identity.node_id


class DhtNetwork:
    """DHT nodes on the simulator's clock. ``net``: the simulation to join (its clock and
    rng), else a new one seeded with ``seed`` and starting at :data:`START`."""

    def __init__(
        self,
        seed: int = 1,
        *,
        latency: tuple[float, float] = (0.005, 0.05),
        loss: float = 0.0,
        k: int = 20,
        alpha: int = 3,
        net: SimNet | None = None,
    ) -> None:
        self.net = net or SimNet(seed, start=START)
        self.rng = self.net.rng
        self.latency = latency
        self.loss = loss
        self.k = k
        self.alpha = alpha
        self.nodes: list[DhtNode] = []
        self.by_address: dict[Endpoint, DhtNode] = {}
        self.by_id: dict[NodeId, DhtNode] = {}
        self.delivered = 0
        self.dropped = 0
        self.auth_failures = 0
        self.published: dict[NodeId, int] = {}

    @property
    def now(self) -> float:
        return self.net.now

    # -- building -----------------------------------------------------------------------

    def add_node(
        self, *, poisoner: bool = False, reachable: bool = True, host: str | None = None
    ) -> DhtNode:
        """A node at an address of its own (a /24 of its own), or on ``host`` (a port each)."""
        index = len(self.nodes)
        identity = identity_from_seed(self.rng)
        # Global addresses, each node in a /24 of its own, so the graph's diversity limits
        # apply as on the Internet (loopback and private addresses are exempt from them).
        address = (f"{11 + (index >> 16)}.{(index >> 8) & 255}.{index & 255}.1", 4000)
        if host is not None:
            address = (host, 10000 + index)
        engine = DhtEngine(
            identity,
            self.now,
            rng=random.Random(self.rng.getrandbits(64)),
            k=self.k,
            alpha=self.alpha,
            mode=Mode.SERVER if reachable else Mode.CLIENT,
            wall_offset=WALL_OFFSET,
        )
        node = DhtNode(index, identity, address, engine, self.rng.uniform(*self.latency))
        node.timer = self.net.timer(functools.partial(self._fire, node))
        node.poisoner = poisoner
        node.reachable = reachable
        self.nodes.append(node)
        self.by_address[address] = node
        self.by_id[node.node_id] = node
        return node

    def build(
        self,
        count: int,
        *,
        seeds: int = 2,
        poisoners: float = 0.0,
        clients: float = 0.0,
        batch: int = 25,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        """Adds ``count`` nodes that join through the protocol: each pings ``seeds`` seed
        nodes, looks up its own id and refreshes its far buckets; ``batch`` join at once."""
        first = len(self.nodes)
        for _ in range(count):
            roll = self.rng.random()
            self.add_node(
                poisoner=len(self.nodes) >= seeds and roll < poisoners,
                reachable=len(self.nodes) < seeds or self.rng.random() >= clients,
            )
        seed_nodes = self.nodes[:seeds]
        contacts = [(s.node_id, s.address) for s in seed_nodes]
        joining = self.nodes[first:]
        for start in range(0, len(joining), batch):
            group = joining[start : start + batch]
            for node in group:
                node.engine.join([c for c in contacts if c[0] != node.node_id], self.now)
                self._service(node)
            self.run_until(lambda: all(n.engine.phase == Phase.READY for n in group), 600)  # noqa: B023
            if on_progress:
                on_progress(first + start + len(group))

    def build_converged(
        self, count: int, *, poisoners: float = 0.0, clients: float = 0.0, first_bucket: int = 200
    ) -> None:
        """Adds ``count`` nodes whose tables look like a network that has run for a while:
        for every bucket, up to k random nodes of its range, observed over outbound hops
        (the same ``on_authenticated`` the protocol uses; no request is sent). Far faster
        than :meth:`build` at 10,000 nodes, and what a long-lived network converges to."""
        for _ in range(count):
            roll = self.rng.random()
            self.add_node(poisoner=roll < poisoners, reachable=self.rng.random() >= clients)
        servers = sorted(
            (int.from_bytes(n.node_id.raw, "big"), n.index) for n in self.nodes if n.reachable
        )
        keys = [key for key, _ in servers]
        for node in self.nodes:
            own = int.from_bytes(node.node_id.raw, "big")
            for bucket in range(255, first_bucket - 1, -1):
                low = ((own >> (bucket + 1)) << (bucket + 1)) | (
                    (((own >> bucket) & 1) ^ 1) << bucket
                )
                start = bisect.bisect_left(keys, low)
                end = bisect.bisect_left(keys, low + (1 << bucket))
                if end - start > self.k:
                    chosen = self.rng.sample(range(start, end), self.k)
                else:
                    chosen = list(range(start, end))
                for position in chosen:
                    other = self.nodes[servers[position][1]]
                    node.engine.on_authenticated(other.node_id, other.address, "outbound", self.now)
            node.engine.phase = Phase.READY
            node.engine.commands()
            node.engine.events()
            self._service(node)

    def add_sybils(self, count: int, host: str, *, seeds: int = 2) -> list[DhtNode]:
        """``count`` identities on one host join through the protocol (and so dial into
        whatever their lookups visit, claiming to be servers)."""
        living = [n for n in self.nodes if n.alive and n.reachable]
        contacts = [(s.node_id, s.address) for s in living[:seeds]]
        sybils = [self.add_node(host=host) for _ in range(count)]
        for node in sybils:
            node.engine.join(contacts, self.now)
            self._service(node)
        self.run_until(lambda: all(n.engine.phase == Phase.READY for n in sybils), 600)
        return sybils

    def kill(self, fraction: float, *, keep: Iterable[DhtNode] = ()) -> list[DhtNode]:
        """Kills ``fraction`` of the live nodes at once, without warning."""
        kept = set(keep)
        living = [n for n in self.nodes if n.alive and n not in kept]
        victims = self.rng.sample(living, int(len(self.nodes) * fraction))
        for node in victims:
            node.alive = False
        return victims

    def living(self) -> list[DhtNode]:
        return [n for n in self.nodes if n.alive]

    # -- running ------------------------------------------------------------------------

    def at(self, when: float, function: Callable[..., None], *args: object) -> None:
        self.net.call_at(when, function, *args)

    def run_until(self, predicate: Callable[[], bool], limit: float) -> bool:
        """Runs the simulation until ``predicate()``, for at most ``limit`` more seconds."""
        return self.net.run_until(predicate, self.net.now + limit)

    def run_for(self, seconds: float) -> None:
        self.net.run_for(seconds)

    def lookup(
        self,
        source: DhtNode,
        target: NodeId,
        *,
        kind: LookupKind = LookupKind.FIND_NODE,
        stop_at_target: bool = False,
        limit: float = 120.0,
    ) -> LookupDone:
        """Runs one lookup from ``source`` to the end and returns its result."""
        lookup_id = source.engine.start_lookup(
            target, self.now, kind=kind, stop_at_target=stop_at_target
        )
        self._service(source)
        self.run_until(lambda: lookup_id in source.results, limit)
        return source.results.pop(lookup_id)

    def publish(self, node: DhtNode, limit: float = 120.0) -> None:
        node.engine.publish(RecordContent(direct=(node.address,)), self.now)
        self._service(node)
        sequence = node.engine.publisher.sequence
        self.run_until(lambda: self.published.get(node.node_id) == sequence, limit)

    # -- the network --------------------------------------------------------------------

    def _service(self, node: DhtNode) -> None:
        """Drains a node's commands and events and re-arms its timer (pattern 1)."""
        engine = node.engine
        for command in engine.commands():
            if isinstance(command, SendRequest):
                self._send(node, command)
        for event in engine.events():
            if isinstance(event, LookupFinished) and event.purpose == Purpose.USER:
                node.results[event.lookup_id] = event.result
            elif isinstance(event, Published):
                self.published[node.node_id] = event.sequence
        assert node.timer is not None
        node.timer.follow(engine.next_deadline())

    def _fire(self, node: DhtNode, now: float) -> None:
        if not node.alive:
            return  # a dead node's timer is silent, as its process is
        node.engine.on_timer(now)
        self._service(node)

    def _delay(self, a: DhtNode, b: DhtNode) -> float:
        return a.latency + b.latency

    def _transit(self, delay: float) -> float:
        """One reliable (QUIC) transmission: each loss costs a probe timeout more."""
        total = delay
        while self.loss and self.rng.random() < self.loss:
            self.dropped += 1
            total += 3 * delay
        return total

    def _send(self, source: DhtNode, command: SendRequest) -> None:
        if not source.alive:
            return
        target = self.by_address.get(command.address)
        if target is None or not target.alive:
            self.dropped += 1
            self._give_up(source, command)
            return  # silence: nobody there (any more)
        delay = self._delay(source, target)
        if target.node_id != command.peer or not target.reachable:
            if target.node_id != command.peer:
                self.auth_failures += 1
                self.at(self.now + 2 * delay, self._failed, source, command.txid)
            else:
                self._give_up(source, command)
            return  # a NAT drops an unsolicited dial: silence
        self.at(self.now + self._transit(delay), self._arrive, source, target, command)

    def _give_up(self, source: DhtNode, command: SendRequest) -> None:
        """A dial on someone's say-so that nothing answers is closed after its patience, as
        the daemon's glue does (``dial_timeout``): the engine hears the failure then."""
        if command.dial_timeout is not None:
            when = self.now + command.dial_timeout
            self.at(when, self._failed, source, command.txid, False)

    def _failed(self, source: DhtNode, txid: bytes, refused: bool = True) -> None:
        if source.alive:
            source.engine.on_failure(txid, self.now, refused=refused)
            self._service(source)

    def _arrive(self, source: DhtNode, target: DhtNode, command: SendRequest) -> None:
        if not target.alive:
            return
        engine = target.engine
        engine.on_authenticated(source.node_id, source.address, "inbound", self.now)
        answer = engine.on_request(source.node_id, source.address, command.request, self.now)
        self._service(target)
        if isinstance(answer, DialBackJob):
            self._dial_back(target, answer)
            return
        if target.poisoner:
            answer = self._forge(target, command, answer)
        self.delivered += 1
        back = self.now + self._transit(self._delay(source, target))
        self.at(back, self._answered, source, target, command, answer)

    def _answered(
        self, source: DhtNode, target: DhtNode, command: SendRequest, answer: Answer
    ) -> None:
        if not source.alive:
            return
        engine = source.engine
        engine.on_authenticated(target.node_id, command.address, "outbound", self.now)
        engine.on_answer(command.txid, target.node_id, answer, self.now)
        self._service(source)

    def _dial_back(self, dialer: DhtNode, job: DialBackJob) -> None:
        requester = self.by_id.get(job.peer)
        ok = requester is not None and requester.alive and requester.reachable
        if requester is None:
            return
        result = DialBackResult(job.request.txid, dialer.engine.mode, ok, job.helper is not None)
        delay = self._delay(dialer, requester)
        fake = SendRequest(job.request.txid, dialer.node_id, dialer.address, job.request)
        self.at(self.now + 2 * delay, self._answered, requester, dialer, fake, result)

    # -- poison -------------------------------------------------------------------------

    def _forge(self, poisoner: DhtNode, command: SendRequest, answer: Answer) -> Answer:
        request = command.request
        if not isinstance(request, FindNode | FindValue):
            return answer
        target = request.target if isinstance(request, FindNode) else request.key
        goal = int.from_bytes(target, "big")
        forged: list[WireContact] = []
        for _ in range(self.k // 2):  # made-up NodeIds right next to the target, real addresses
            made_up = (goal ^ self.rng.getrandbits(40)).to_bytes(32, "big")
            victim = self.rng.choice(self.nodes)
            forged.append(WireContact(made_up, Mode.SERVER, (victim.address,)))
        real = poisoner.engine.table.closest(NodeId(target), self.k // 2)
        for entry in real:  # real NodeIds at wrong addresses: someone else's, or nobody's
            wrong = (
                self.rng.choice(self.nodes).address
                if self.rng.random() < 0.5
                else (
                    "198.18.0.1",  # nobody
                    self.rng.randrange(1024, 65535),
                )
            )
            forged.append(WireContact(entry.node_id.raw, Mode.SERVER, (wrong,)))
        contacts = tuple(forged[: self.k])
        if isinstance(request, FindNode):
            return Nodes(request.txid, Mode.SERVER, contacts)
        owner = NodeId(request.key)
        stale = sign_record(poisoner.identity, 1, self.now + WALL_OFFSET + 3600, direct=())
        if self.rng.random() < 0.5:
            return Value(request.txid, Mode.SERVER, stale.raw, contacts)  # signed by the wrong key
        owner_node = self.by_id.get(owner)
        if owner_node is not None:
            expired = sign_record(owner_node.identity, 10**15, self.now + WALL_OFFSET - 10)
            return Value(request.txid, Mode.SERVER, expired.raw, contacts)
        return Value(request.txid, Mode.SERVER, None, contacts)


def sybil_clustering(net: DhtNetwork, sybils: list[DhtNode], asks: int = 200) -> dict[str, int]:
    """Over every other live node: the most places the ``sybils`` (one host) took in one
    bucket and in one table, and in one FIND_NODE answer of ``asks`` random ones."""
    ids = {s.node_id for s in sybils}
    others = [n for n in net.nodes if n.alive and n.node_id not in ids]
    per_bucket = per_table = 0
    for node in others:
        table = node.engine.table
        held = [e for e in table.entries() if e.node_id in ids]
        per_table = max(per_table, len(held))
        buckets: dict[int, int] = {}
        for entry in held:
            index = table.bucket_of(entry.node_id)
            buckets[index] = buckets.get(index, 0) + 1
        per_bucket = max([per_bucket, *buckets.values()])
    per_answer = 0
    for _ in range(asks):
        node, asker = net.rng.sample(others, 2)
        target = FindNode(b"sybil000", Mode.SERVER, net.rng.randbytes(32))
        answer = node.engine.responder.answer(
            asker.node_id, asker.address, target, node.engine.mode, net.now
        )
        if isinstance(answer, Nodes):
            per_answer = max(per_answer, sum(NodeId(c.node_id) in ids for c in answer.contacts))
    return {
        "sybils": len(sybils),
        "max_in_a_bucket": per_bucket,
        "max_in_a_table": per_table,
        "max_in_an_answer": per_answer,
    }


def forged_entries(net: DhtNetwork) -> int:
    """Table entries (over all live nodes) whose NodeId does not live at the recorded address."""
    count = 0
    for node in net.nodes:
        if not node.alive:
            continue
        for entry in node.engine.table.entries():
            real = net.by_id.get(entry.node_id)
            if real is None or any(a != real.address for a in entry.addresses):
                count += 1
    return count


@dataclass
class LookupReport:
    lookups: int
    success: float
    rounds: float
    messages: float
    sim_seconds: float
    wall_ms: float
    failed: float
    results: list[LookupDone] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, float]:
        return {
            "lookups": self.lookups,
            "success": round(self.success, 4),
            "rounds_per_lookup": round(self.rounds, 2),
            "messages_per_lookup": round(self.messages, 2),
            "sim_seconds_per_lookup": round(self.sim_seconds, 4),
            "wall_ms_per_lookup": round(self.wall_ms, 3),
            "failed_requests_per_lookup": round(self.failed, 2),
        }


def true_closest(net: DhtNetwork, target: NodeId, pool: list[DhtNode]) -> NodeId:
    goal = int.from_bytes(target.raw, "big")
    return min(pool, key=lambda n: int.from_bytes(n.node_id.raw, "big") ^ goal).node_id


def run_lookups(
    net: DhtNetwork,
    count: int,
    *,
    stop_at_target: bool = False,
    random_keys: bool = False,
    sources: list[DhtNode] | None = None,
    targets: list[DhtNode] | None = None,
) -> LookupReport:
    """``count`` lookups from random live nodes. For random live nodes' ids, success = the
    target itself answered; with ``random_keys`` (ids nobody has), success = the first
    result is the live node truly closest to the key (the reference's measure)."""
    pool = sources or [n for n in net.living() if n.reachable]
    wanted = targets or [n for n in net.living() if n.reachable]
    results = []
    found = 0
    started = time.perf_counter()
    for _ in range(count):
        source = net.rng.choice(pool)
        if random_keys:
            key = NodeId(net.rng.randbytes(32))
            result = net.lookup(source, key, stop_at_target=stop_at_target)
            closest = true_closest(net, key, [n for n in wanted if n is not source])
            found += bool(result.closest) and result.closest[0].node_id == closest
        else:
            target = net.rng.choice([n for n in wanted if n is not source] or wanted)
            result = net.lookup(source, target.node_id, stop_at_target=stop_at_target)
            found += result.found
        results.append(result)
    wall = time.perf_counter() - started
    return LookupReport(
        count,
        found / count,
        sum(r.stats.rounds for r in results) / count,
        sum(r.stats.messages for r in results) / count,
        sum(r.stats.duration for r in results) / count,
        wall * 1000 / count,
        sum(r.stats.failed for r in results) / count,
        results,
    )
