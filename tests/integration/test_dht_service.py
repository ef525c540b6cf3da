"""The node graph's glue on real embedded nodes over loopback QUIC hops."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
from collections.abc import AsyncIterator

import pytest

from meshkey import Node
from meshkey.dht.peers import PeerGraph
from meshkey.dht.records import RecordContent, sign_record
from meshkey.dht.service import DhtService
from meshkey.dht.store import DDL, SqliteGraphStore
from meshkey.identity.keys import Identity
from meshkey.identity.node_id import NodeId
from meshkey.routing.errors import RemoteError
from meshkey.transport.events import HopAuthenticated
from meshkey.wire.dht import DhtError, DhtErrorCode, Mode, Ping, Pong, Store, Stored
from meshkey.wire.message import ErrorCode

pytestmark = pytest.mark.integration


def text_address(node: Node) -> str:
    host, port = endpoint(node)
    return f"{host}:{port}"


def wall_now(service: DhtService) -> float:
    return asyncio.get_running_loop().time() + service.wall_offset


def endpoint(node: Node) -> tuple[str, int]:
    address = node.udp.address
    assert address is not None
    return address.host, address.port


async def start_graph(node: Node, *, mode: Mode | None = Mode.SERVER, **options) -> DhtService:
    """A graph service with these options in place of the node's own (closed first)."""
    await node.graph.close()
    service = DhtService(
        node.router, node.identity, node.udp, mode=mode, rng=random.Random(7), **options
    )
    node.events.subscribe(service.on_transport_event)
    return await service.start()


@contextlib.asynccontextmanager
async def network(count: int) -> AsyncIterator[list[tuple[Node, DhtService]]]:
    """``count`` embedded nodes, the first a seed, the others joined through it."""
    async with contextlib.AsyncExitStack() as stack:
        members = []
        for _ in range(count):
            node = await stack.enter_async_context(Node(tcp=None))
            service = await start_graph(node)
            stack.push_async_callback(service.close)
            members.append((node, service))
        seed_node, _ = members[0]
        for _node, service in members[1:]:
            await service.join([(seed_node.node_id, endpoint(seed_node))], timeout=10)
        yield members


async def test_a_node_that_joins_through_a_seed_is_in_the_seeds_graph_at_once() -> None:
    """Polykey issue 344, word for word: connect to the seed, and the seed's graph lists the
    node with its observed address, with no lookup made by the seed."""
    async with Node(tcp=None) as seed, Node(tcp=None) as member:
        seed_graph = await start_graph(seed)
        member_graph = await start_graph(member)
        try:
            lookups_before = seed_graph.engine.lookups.next_id
            await member_graph.join([(seed.node_id, endpoint(seed))], timeout=10)
            listed = {p["node_id"]: p for p in PeerGraph(seed_graph).list()}
            assert str(member.node_id) in listed
            host, port = endpoint(member)
            assert listed[str(member.node_id)]["addresses"][0] == f"{host}:{port}"
            assert listed[str(member.node_id)]["learned"] == "inbound"
            assert seed_graph.engine.lookups.next_id == lookups_before  # the seed looked nothing up
            mine = {p["node_id"]: p for p in PeerGraph(member_graph).list()}
            assert mine[str(seed.node_id)]["mode"] == "server"
            assert member_graph.reached_at(seed.node_id) == endpoint(seed)  # it dialled it
            assert seed_graph.size == member_graph.size == 1
        finally:
            await member_graph.close()
            await seed_graph.close()


async def test_find_node_between_real_nodes_and_unknown_ids() -> None:
    async with network(5) as members:
        (_, first), (last_node, _) = members[1], members[-1]
        result = await PeerGraph(first).find(last_node.node_id, timeout=10)
        assert result.found
        assert endpoint(last_node) in result.addresses
        assert result.stats.messages >= 1
        missing = await first.find(Identity.generate().node_id, timeout=10)
        assert not missing.found and missing.record is None
        # Every entry of every graph is a real node at its real address.
        real = {node.node_id: endpoint(node) for node, _ in members}
        for _, service in members:
            for entry in service.engine.table.entries():
                assert entry.node_id in real
                assert set(entry.addresses) == {real[entry.node_id]}


async def test_a_made_up_node_id_at_a_real_address_is_refused() -> None:
    async with network(3) as members:
        (_, asker), (victim, _) = members[1], members[2]
        made_up = Identity.generate().node_id
        with pytest.raises(RemoteError) as caught:
            await asker.request(made_up, endpoint(victim), Ping(b"12345678", Mode.SERVER))
        assert caught.value.code == ErrorCode.AUTH_FAILED
        # As a lookup candidate (what a poisoned FIND_NODE answer would name) it costs one
        # failed hop and enters no graph.
        asker.engine.add_hint(made_up, endpoint(victim))
        done = await asker.lookup(made_up, timeout=10)
        assert not done.found and done.stats.failed >= 1
        assert made_up not in {c.node_id for c in done.closest}
        for _, service in members:
            assert not service.knows(made_up)


async def test_records_are_stored_found_and_forgeries_refused() -> None:
    async with network(4) as members:
        (publisher_node, publisher), (_, reader) = members[1], members[3]
        published = await publisher.publish(
            RecordContent(direct=(endpoint(publisher_node),), relays=("/node/x",))
        )
        assert published.stored_at >= 1
        holders = [
            s
            for _, s in members
            if s is not publisher
            and s.engine.records.get(
                publisher_node.node_id, s.engine.wall_offset + asyncio.get_running_loop().time()
            )
        ]
        assert holders
        found = await reader.find(publisher_node.node_id, timeout=10)
        assert found.record is not None and found.record.relays == ("/node/x",)
        assert found.record.sequence == publisher.engine.publisher.sequence
        # A record signed by someone else, sent as the publisher's: refused by a holder.
        holder_node = next(n for n, s in members if s is holders[0])
        impostor = Identity.generate()
        forged = sign_record(impostor, 10**15, publisher.wall_offset + 10**6)
        answer = await reader.request(
            holder_node.node_id, endpoint(holder_node), Store(b"abcdefgh", Mode.SERVER, forged.raw)
        )
        assert isinstance(answer, DhtError) and answer.code == DhtErrorCode.BAD_RECORD
        # An older sequence of the real record: STALE.
        old = sign_record(
            publisher_node.identity,
            1,
            asyncio.get_running_loop().time() + publisher.wall_offset + 60,
        )
        answer = await reader.request(
            holder_node.node_id, endpoint(holder_node), Store(b"abcdefgi", Mode.SERVER, old.raw)
        )
        assert isinstance(answer, DhtError) and answer.code == DhtErrorCode.STALE_RECORD


async def test_a_client_is_listed_but_never_handed_out() -> None:
    async with network(3) as members, Node(tcp=None) as client_node:
        client = await start_graph(client_node, mode=Mode.CLIENT)
        try:
            seed_node, seed = members[0]
            await client.join([(seed_node.node_id, endpoint(seed_node))], timeout=10)
            entry = seed.engine.table.get(client_node.node_id)
            assert entry is not None and entry.mode == Mode.CLIENT
            assert seed.reached_at(client_node.node_id) is None  # it only dialled the seed
            assert client_node.node_id not in {
                e.node_id for e in seed.engine.table.closest(client_node.node_id, 20)
            }
            # A client answers pings, but no DHT queries.
            answer = await members[1][1].request(
                client_node.node_id, endpoint(client_node), Ping(b"pingping", Mode.SERVER)
            )
            assert isinstance(answer, Pong)
        finally:
            await client.close()


async def test_dial_back_finds_a_loopback_node_reachable() -> None:
    async with network(3) as members, Node(tcp=None) as newcomer:
        service = await start_graph(newcomer, mode=None)
        try:
            seed_node, _ = members[0]
            await service.join([(seed_node.node_id, endpoint(seed_node))], timeout=10)
            assert service.mode == Mode.SERVER  # a helper dialled it back on loopback
        finally:
            await service.close()


async def test_graph_survives_a_restart_in_sqlite(tmp_path) -> None:
    database = sqlite3.connect(tmp_path / "state.db")
    database.executescript(DDL)
    identity = Identity.generate()
    async with network(3) as members:
        async with Node(tcp=None, identity=identity) as node:
            service = await start_graph(node, store=SqliteGraphStore(database))
            seed_node, _ = members[0]
            await service.join([(seed_node.node_id, endpoint(seed_node))], timeout=10)
            await service.publish()
            before = {e.node_id for e in service.engine.table.entries()}
            sequence = service.engine.publisher.sequence
            await service.close()  # flushes
        assert before
        async with Node(tcp=None, identity=identity) as again:
            restored = await start_graph(again, store=SqliteGraphStore(database))
            try:
                assert {e.node_id for e in restored.engine.table.entries()} == before
                assert restored.engine.publisher.sequence == sequence
                await restored.join([], timeout=10)  # re-join from the restored graph alone
                result = await restored.find(members[2][0].node_id, timeout=10)
                assert result.found
            finally:
                await restored.close()
    database.close()


async def test_manual_add_authenticates_and_force_evicts(tmp_path) -> None:
    async with Node(tcp=None) as a, Node(tcp=None) as b:
        graph_a = await start_graph(a)
        graph_b = await start_graph(b)
        try:
            peers = PeerGraph(graph_a)
            added = await peers.add(b.node_id, text_address(b))
            assert added["added"]
            entry = graph_a.engine.table.get(b.node_id)
            assert entry is not None and entry.learned.value == "manual"
            ping = await peers.ping(b.node_id)
            assert ping["success"] and ping["path"]["peer"] == str(b.node_id)
            assert any(c["peer"] == str(b.node_id) for c in peers.connections())
            with pytest.raises(RemoteError):
                await peers.add(Identity.generate().node_id, text_address(b))
            assert peers.remove(b.node_id)
            assert not graph_a.knows(b.node_id)
        finally:
            await graph_b.close()
            await graph_a.close()


async def test_only_authenticated_events_insert() -> None:
    async with Node(tcp=None) as node:
        service = await start_graph(node)
        try:
            fake = NodeId(bytes(32))
            service.on_transport_event(object())
            assert not service.knows(fake)
            service.on_transport_event(HopAuthenticated(fake, "tcp", ("127.0.0.1", 9), "inbound"))
            assert not service.knows(fake)  # TCP addresses are no DHT contacts
            service.on_transport_event(HopAuthenticated(fake, "udp", ("127.0.0.1", 9), "inbound"))
            assert service.knows(fake) and service.size == 1
        finally:
            await service.close()


async def test_a_stored_record_answers_find_value_and_is_kept() -> None:
    async with network(3) as members:
        _, holder = members[0]
        owner = Identity.generate()
        loop_now = asyncio.get_running_loop().time()
        record = sign_record(
            owner, 5, loop_now + holder.wall_offset + 600, direct=(("127.0.0.1", 5),)
        )
        answer = await members[1][1].request(
            members[0][0].node_id,
            endpoint(members[0][0]),
            Store(b"storestr", Mode.SERVER, record.raw),
        )
        assert isinstance(answer, Stored)
        found = await members[2][1].find(owner.node_id, timeout=10)
        assert found.record is not None and found.record.direct == (("127.0.0.1", 5),)
