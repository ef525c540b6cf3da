"""The node graph attacked on the wire (issue 19, item 5): real nodes, real DhtService
instances, real QUIC hops on loopback, and a UDP socket that counts what reaches a victim
address where no meshkey runs. Each test mounts the attack and checks the bound."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from meshkey import Node
from meshkey.dht.budget import AMPLIFICATION, DIAL_COST, HELPER_PADDING
from meshkey.dht.diversity import PER_ANSWER, PER_BUCKET, PER_TABLE, Diversity
from meshkey.dht.hops import reply_slot
from meshkey.dht.records import sign_record
from meshkey.dht.service import DhtService
from meshkey.dht.store import DDL, SqliteGraphStore
from meshkey.identity.keys import Identity
from meshkey.identity.node_id import NodeId
from meshkey.routing.address import ServiceAddress, TransportAddress
from meshkey.routing.message import Message
from meshkey.wire.dht import (
    Answer,
    DhtError,
    DhtErrorCode,
    DialBack,
    DialBackResult,
    FindNode,
    FindValue,
    Mode,
    Nodes,
    Ping,
    Pong,
    Store,
    Stored,
    Value,
    WireContact,
    decode_rpc,
    encode_rpc,
)
from meshkey.wire.net import Endpoint

pytestmark = pytest.mark.integration


def endpoint(node: Node) -> Endpoint:
    address = node.udp.address
    assert address is not None
    return address.host, address.port


def hop_to(node: Node) -> TransportAddress:
    return TransportAddress.from_socket("udp", *endpoint(node), node.node_id)


async def start_graph(node: Node, **options: object) -> DhtService:
    """A graph service (a server) in place of the node's own."""
    await node.graph.close()
    options.setdefault("mode", Mode.SERVER)
    service = DhtService(
        node.router,
        node.identity,
        node.udp,
        rng=random.Random(len(str(node.node_id))),
        **options,  # type: ignore[arg-type]
    )
    node.events.subscribe(service.on_transport_event)
    return await service.start()


class Sink:
    """A UDP socket where no meshkey runs: it only counts what arrives (the victim)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.datagrams = 0
        self.bytes = 0
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._read)

    @property
    def address(self) -> Endpoint:
        host, port = self.sock.getsockname()
        return host, port

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            self.datagrams += 1
            self.bytes += len(data)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


@contextlib.asynccontextmanager
async def sink(host: str = "127.0.0.1") -> AsyncIterator[Sink]:
    victim = Sink(host)
    try:
        yield victim
    finally:
        victim.close()


@contextlib.asynccontextmanager
async def three_nodes() -> AsyncIterator[tuple[tuple[Node, DhtService], ...]]:
    """C (whose graph is attacked), B (a server in C's graph: C dialled it) and S (a
    stranger who may open hops to both, as anyone may)."""
    async with contextlib.AsyncExitStack() as stack:
        members = []
        for _ in range(3):
            node = await stack.enter_async_context(Node(tcp=None))
            service = await start_graph(node)
            stack.push_async_callback(service.close)
            members.append((node, service))
        (_, c_graph), (b, _), _ = members
        await c_graph.join([(b.node_id, endpoint(b))], timeout=10)
        assert c_graph.engine.table.get(b.node_id) is not None
        yield tuple(members)


async def route_through(sender: Node, via: Node, to: Node, payload: bytes, txid: bytes) -> None:
    """``sender`` routes a DHT request to ``to`` through ``via``, with its own reply slot."""
    onward = (hop_to(via), hop_to(to), ServiceAddress("dht"))
    await sender.router.route(Message(onward, (ServiceAddress(reply_slot(txid)),), payload))


async def test_a_ping_routed_through_a_server_cannot_make_others_demote_it() -> None:
    """A stranger routes a PING claiming ``Mode.CLIENT`` through server B to C: C must not
    take it as B's claim (B would stop being handed out)."""
    async with three_nodes() as ((c, c_graph), (b, _), (s, _)):
        assert c_graph.engine.table.get(b.node_id).mode == Mode.SERVER  # type: ignore[union-attr]
        # The route works: forwarding through B to C carries messages (an echo comes back).
        assert await s.send(f"{hop_to(b)}{hop_to(c)}/service/echo", b"canary") == b"canary"
        for number in range(5):
            txid = bytes([number]) * 8
            await route_through(s, b, c, encode_rpc(Ping(txid, Mode.CLIENT)), txid)
        await asyncio.sleep(0.5)  # let C's DHT worker read them (nothing to wait on: dropped)
        entry = c_graph.engine.table.get(b.node_id)
        assert entry is not None and entry.claimed != Mode.CLIENT and entry.mode == Mode.SERVER
        assert b.node_id in {e.node_id for e in c_graph.engine.table.closest(b.node_id)}


async def test_a_dial_back_routed_through_a_server_dials_nobody() -> None:
    """A DIAL_BACK naming a victim's address, routed through B (a server in C's graph, so a
    helper dial would be a favour C does for it): C must not dial the victim."""
    async with three_nodes() as ((c, _), (b, _), (s, _)), sink() as victim:
        for number in range(3):
            txid = bytes([0x40 + number]) * 8
            target = WireContact(Identity.generate().node_id.raw, Mode.CLIENT, (victim.address,))
            ask = DialBack(txid, Mode.SERVER, bytes(16), target, padding=HELPER_PADDING)
            await route_through(s, b, c, encode_rpc(ask), txid)
        assert await s.send(f"{hop_to(b)}{hop_to(c)}/service/echo", b"canary") == b"canary"
        await asyncio.sleep(1.5)  # longer than a helper's dial would take to start
        assert victim.datagrams == 0


async def test_a_helper_dial_back_costs_at_most_three_times_the_ask() -> None:
    """A server of C's graph (here: B, turned attacker) asks C to dial a victim directly:
    refused without the padding; with it, C's dial to the victim is closed after its first
    flight, within 3x the bytes of the ask."""
    async with three_nodes() as ((c, _), (_, b_graph), _), sink() as victim:
        target = WireContact(Identity.generate().node_id.raw, Mode.CLIENT, (victim.address,))
        bare = DialBack(b"bare0001", Mode.SERVER, bytes(16), target)
        answer = await b_graph.request(c.node_id, endpoint(c), bare, timeout=10)
        assert isinstance(answer, DhtError) and answer.code == DhtErrorCode.MALFORMED
        assert victim.datagrams == 0
        padded = DialBack(b"padd0001", Mode.SERVER, bytes(16), target, padding=HELPER_PADDING)
        answer = await b_graph.request(c.node_id, endpoint(c), padded, timeout=10)
        assert isinstance(answer, DialBackResult) and not answer.ok
        await asyncio.sleep(1.0)  # the close comes right after the answer; let it land
        assert 0 < victim.bytes <= DIAL_COST
        assert victim.bytes <= AMPLIFICATION * len(encode_rpc(padded))
        # The asker's bucket is nearly spent: asking again and again is refused, not dialled.
        refused = 0
        for number in range(4):
            again = DialBack(bytes([number]) * 8, Mode.SERVER, bytes(16), target, padding=2000)
            answer = await b_graph.request(c.node_id, endpoint(c), again, timeout=10)
            refused += isinstance(answer, DhtError) and answer.code == DhtErrorCode.RATE_LIMITED
        assert refused >= 2


async def test_a_superseded_record_replayed_by_the_only_answerer_is_refused_after_a_restart(
    tmp_path: Path,
) -> None:
    """F kept the owner's record of sequence 1; the reader has since seen sequence 2, then
    restarted. When F alone answers the reader's lookup with sequence 1 (validly signed, not
    expired), the reader refuses it; a reader that never saw sequence 2 takes it."""
    owner = Identity.generate()
    wall = time.time()
    old = sign_record(owner, 1, wall + 3600, direct=(("192.0.2.1", 4000),))
    new = sign_record(owner, 2, wall + 3600, direct=(("192.0.2.2", 4000),))
    database = sqlite3.connect(tmp_path / "state.db")
    database.executescript(DDL)
    async with Node(tcp=None) as reader, Node(tcp=None) as forger, Node(tcp=None) as naive:
        forger_graph = await start_graph(forger)
        first = await start_graph(reader, store=SqliteGraphStore(database))
        try:
            stored = await first.request(
                forger.node_id, endpoint(forger), Store(b"store001", Mode.SERVER, old.raw)
            )
            assert isinstance(stored, Stored)  # the forger holds sequence 1
            stored = await forger_graph.request(
                reader.node_id, endpoint(reader), Store(b"store002", Mode.SERVER, new.raw)
            )
            assert isinstance(stored, Stored)  # the reader saw sequence 2
        finally:
            await first.close()
        again = await start_graph(reader, store=SqliteGraphStore(database))
        naive_graph = await start_graph(naive)
        try:
            for graph in (again, naive_graph):
                graph.remove(forger.node_id)
                await graph.add(forger.node_id, endpoint(forger))
                assert graph.size == 1  # the forger is the only one to ask
            control = await naive_graph.find(owner.node_id, timeout=10)
            assert control.record is not None and control.record.sequence == 1
            result = await again.find(owner.node_id, timeout=10)
            assert result.record is None and not result.found
            assert result.stats.bad_records == 1
        finally:
            await again.close()
            await naive_graph.close()
            await forger_graph.close()
    database.close()


async def until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(1000):  # a generous bound on waiting, not a measure of speed
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def test_identities_from_one_host_take_two_places_of_a_bucket_and_of_an_answer() -> None:
    """150 identities from one IP (127.0.99.1) and 6 nodes on networks of their own dial a
    node and claim to be servers (it checks each claim with a dial of its own). With the
    limits enforced on loopback (exempt by default), the one host holds at most 2 places
    of any bucket, 10 of the graph and 2 of an answer; every other node keeps its place."""
    strict = Diversity(exempt=lambda ip: False)
    async with contextlib.AsyncExitStack() as stack:
        victim = await stack.enter_async_context(Node(tcp=None, udp="127.0.1.1:0"))
        victim_graph = await start_graph(victim, diversity=strict)
        stack.push_async_callback(victim_graph.close)
        members: list[tuple[Node, DhtService]] = []
        for index in range(156):
            host = "127.0.99.1" if index < 150 else f"127.0.{index - 148}.1"
            node = await stack.enter_async_context(Node(tcp=None, udp=f"{host}:0"))
            graph = await start_graph(node)
            stack.push_async_callback(graph.close)
            members.append((node, graph))
        sybils, honest = members[:150], members[150:]
        for number, (_, graph) in enumerate(members):
            answer = await graph.request(
                victim.node_id, endpoint(victim), Ping(number.to_bytes(8, "big"), Mode.SERVER)
            )
            assert answer is not None
        table = victim_graph.engine.table
        await until(
            lambda: all(
                (entry := table.get(node.node_id)) is not None and entry.mode == Mode.SERVER
                for node, _ in honest
            ),
            "every honest node checked and taken as a server",
        )
        sybil_ids = {node.node_id for node, _ in sybils}
        held = [e for e in table.entries() if e.node_id in sybil_ids]
        assert 0 < len(held) <= PER_TABLE
        per_bucket = Counter(table.bucket_of(e.node_id) for e in held)
        assert max(per_bucket.values()) <= PER_BUCKET
        _, asker = honest[0]
        for target in [node.node_id for node, _ in sybils[:5]] + [Identity.generate().node_id]:
            answer = await asker.request(
                victim.node_id,
                endpoint(victim),
                FindNode(b"find" + target.raw[:4], Mode.SERVER, target.raw),
            )
            assert isinstance(answer, Nodes)
            handed = {NodeId(c.node_id) for c in answer.contacts}
            assert len(handed & sybil_ids) <= PER_ANSWER
            assert {node.node_id for node, _ in honest[1:]} <= handed


class CountingRelay(asyncio.DatagramProtocol):
    """A UDP relay in front of one node: counts what that node sends through it."""

    def __init__(self, target: Endpoint) -> None:
        self.target = target
        self.client: Endpoint | None = None
        self.sent_by_target = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        assert self.transport is not None
        source = (str(addr[0]), int(addr[1]))
        if source == self.target:
            self.sent_by_target += len(data)
            if self.client is not None:
                self.transport.sendto(data, self.client)
        else:
            self.client = source
            self.transport.sendto(data, self.target)


def forged_contacts(sinks: list[Sink]) -> tuple[WireContact, ...]:
    """20 made-up NodeIds with 5 addresses each, all where no meshkey runs (issue 19)."""
    return tuple(
        WireContact(
            Identity.generate().node_id.raw,
            Mode.SERVER,
            tuple(sink.address for sink in sinks[5 * i : 5 * i + 5]),
        )
        for i in range(20)
    )


def forge_answers(node: Node, sinks: list[Sink]) -> list[int]:
    """Turns ``node``'s DHT service into a forger's: it answers PINGs as a server would, and
    every FIND_NODE or FIND_VALUE with 20 made-up contacts. Returns the answers' sizes."""
    sizes: list[int] = []

    async def forge(message: Message) -> None:
        rpc = decode_rpc(message.payload)
        answer: Answer
        if isinstance(rpc, Ping):
            answer = Pong(rpc.txid, Mode.SERVER, None)
        elif isinstance(rpc, FindNode):
            answer = Nodes(rpc.txid, Mode.SERVER, forged_contacts(sinks))
        elif isinstance(rpc, FindValue):
            answer = Value(rpc.txid, Mode.SERVER, None, forged_contacts(sinks))
        else:
            return
        payload = encode_rpc(answer)
        sizes.append(len(payload))
        await node.router.reply(message, payload)

    node.router.register("dht", forge, admit=False)
    return sizes


async def test_forged_find_node_answers_make_a_node_dial_at_most_three_times_what_came() -> None:
    """A server of the victim's graph answers every FIND_NODE with 20 made-up NodeIds x 5
    addresses of a host running no meshkey (1,100 QUIC Initials, 1.34 MB, 852x before).
    Now: only the first address of a contact, each dial closed after its first flight, an
    address found dead never dialled again, and in all at most 3x the bytes the forger sent
    (counted on the wire, by a relay in front of it). A real node is still found."""
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        sinks = [Sink() for _ in range(100)]
        for one in sinks:
            stack.callback(one.close)
        victim = await stack.enter_async_context(Node(tcp=None))
        victim_graph = await start_graph(victim)
        stack.push_async_callback(victim_graph.close)
        honest = await stack.enter_async_context(Node(tcp=None))
        honest_graph = await start_graph(honest)
        stack.push_async_callback(honest_graph.close)
        forger = await stack.enter_async_context(Node(tcp=None))
        await forger.graph.close()
        answers = forge_answers(forger, sinks)
        transport, relay = await loop.create_datagram_endpoint(
            lambda: CountingRelay(endpoint(forger)), local_addr=("127.0.0.1", 0)
        )
        stack.callback(transport.close)
        relay_address = transport.get_extra_info("sockname")[:2]
        await victim_graph.add(forger.node_id, relay_address)
        await victim_graph.add(honest.node_id, endpoint(honest))
        assert victim_graph.engine.table.get(forger.node_id).mode == Mode.SERVER  # type: ignore[union-attr]
        for _ in range(5):
            await victim_graph.lookup(Identity.generate().node_id, timeout=15)
        found = await victim_graph.find(honest.node_id, timeout=15)
        assert found.found  # the legitimate lookup is still served
        await asyncio.sleep(1.5)  # the last dials' closes
        reached = sum(sink.bytes for sink in sinks)
        assert len(answers) >= 5 and relay.sent_by_target > 0
        assert reached <= AMPLIFICATION * relay.sent_by_target
        # Per dial: the first flight and the close, never QUIC's retransmissions.
        assert all(sink.bytes <= DIAL_COST for sink in sinks)
        assert sum(sink.bytes > 0 for sink in sinks) <= 20  # one address per contact at most
