"""The node graph's glue (DhtService) on an in-memory UDP transport (and, where a test asks,
a TCP one beside it): real routers, real cores, real wire formats, no sockets. Hops
authenticate when dialled (pinned to the NodeId at the address, else refused), can be
undialable (a node behind a NAT) or silent, and a node's UDP can be blocked (what it sends
and what is sent to it over UDP is lost)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from meshkey.dht.engine import MAX_LOOKUPS
from meshkey.dht.hops import reply_slot
from meshkey.dht.maintenance import Phase
from meshkey.dht.records import PeerRecord, RecordContent
from meshkey.dht.service import DHT_SERVICE, DhtService
from meshkey.dht.store import MemoryGraphStore
from meshkey.identity.keys import Identity
from meshkey.identity.node_id import NodeId
from meshkey.routing.address import ServiceAddress, TransportAddress
from meshkey.routing.errors import RemoteError, RoutingError
from meshkey.routing.message import LocalInfo, Message
from meshkey.routing.router import Router
from meshkey.transport.events import HopAuthenticated
from meshkey.wire.dht import DhtError, DhtErrorCode, Mode, Ping, Pong, decode_rpc, encode_rpc
from meshkey.wire.hop import CloseCode
from meshkey.wire.message import ErrorCode
from meshkey.wire.net import Endpoint

_names = itertools.count()
FALLBACK_DELAY = 0.05  # the TCP fallback's delay here (real seconds: short)


@dataclass
class FakeHopState:
    peer: NodeId | None
    is_open: bool = True
    suspected: bool = False


class FakeLink:
    """One end of an authenticated hop: a worker that carries messages to the other end."""

    def __init__(self, udp: FakeUdp, peer: NodeId, direction: str, remote: Endpoint) -> None:
        self.udp = udp
        self.name = f"_{udp.protocol}.fake{next(_names)}"
        self.closed = False
        self.direction = direction
        self.remote = remote
        self.created = asyncio.get_running_loop().time()
        self.core = FakeHopState(peer)
        self.other: FakeLink | None = None
        self.target: TransportAddress | None = None
        udp.router.register(self.name, self._send_from_router, inline=True)
        udp.links.add(self)

    async def _send_from_router(self, message: Message) -> None:
        assert self.other is not None
        await self.other.arrive(message.step())

    async def arrive(self, message: Message) -> None:
        """What the far end sent: through the wire format, from the peer the hop proved."""
        received = Message.from_wire(message.to_wire(), LocalInfo(hop_peer=self.core.peer))
        await self.udp.router.route(received.with_return(ServiceAddress(self.name)))

    def describe(self) -> dict[str, Any]:
        return {"peer": str(self.core.peer), "direction": self.direction}

    async def close(self, code: CloseCode, reason: str) -> None:
        self.closed = True


class FakeUdp:
    """A node's UDP transport on the in-memory network ``net`` (endpoint -> transport)."""

    protocol = "udp"

    def __init__(
        self,
        net: dict[Endpoint, FakeUdp],
        node_id: NodeId,
        router: Router,
        endpoint: Endpoint,
        *,
        dialable: bool = True,
        silent: bool = False,
        blocked: bool = False,
    ) -> None:
        self.net = net
        self.node_id = node_id
        self.router = router
        self.endpoint = endpoint
        self.dialable = dialable  # False: behind a NAT, a hop to it never authenticates
        self.silent = silent  # True: whatever is sent to it is lost
        self.blocked = blocked  # True: whatever it sends, or is sent to it, is lost
        self.links: set[FakeLink] = set()
        self.address: TransportAddress | None = TransportAddress.from_socket(
            self.protocol, *endpoint
        )
        self.on_event: Callable[[object], None] = lambda event: None
        self.dials = 0
        self.sends = 0  # messages handed to it (delivered or not)
        self._outbound: dict[tuple[Endpoint, NodeId], FakeLink] = {}
        net[endpoint] = self
        router.add_transport(self)

    def connections(self) -> list[dict[str, Any]]:
        return [link.describe() for link in self.links if not link.closed]

    async def send(self, address: TransportAddress, message: Message) -> None:
        self.sends += 1
        target = self.net.get(address.endpoint)
        if self.blocked or (target is not None and (target.silent or target.blocked)):
            return
        if target is None or not target.dialable:
            raise RoutingError(ErrorCode.UNREACHABLE, f"nobody answers at {address}")
        if address.node_id is not None and address.node_id != target.node_id:
            raise RoutingError(ErrorCode.AUTH_FAILED, f"{address} holds another NodeId")
        link = self._outbound.get((target.endpoint, target.node_id))
        if link is None:
            link = self._dial(target)
        assert link.other is not None
        await link.other.arrive(message)

    def _dial(self, target: FakeUdp) -> FakeLink:
        self.dials += 1
        mine = FakeLink(self, target.node_id, "outbound", target.endpoint)
        mine.target = TransportAddress.from_socket(self.protocol, *target.endpoint, target.node_id)
        theirs = FakeLink(target, self.node_id, "inbound", self.endpoint)
        mine.other, theirs.other = theirs, mine
        self._outbound[(target.endpoint, target.node_id)] = mine
        self.on_event(HopAuthenticated(target.node_id, self.protocol, target.endpoint, "outbound"))
        target.on_event(HopAuthenticated(self.node_id, self.protocol, self.endpoint, "inbound"))
        return mine


class FakeTcp(FakeUdp):
    """A node's TCP transport on the in-memory network of TCP listeners, at the same
    endpoint as its UDP one (a node's TCP listener takes its UDP port number)."""

    protocol = "tcp"


class Network:
    def __init__(self, stack: contextlib.AsyncExitStack) -> None:
        self.stack = stack
        self.net: dict[Endpoint, FakeUdp] = {}
        self.tcp_net: dict[Endpoint, FakeUdp] = {}
        self.udp: dict[NodeId, FakeUdp] = {}
        self.tcp: dict[NodeId, FakeTcp] = {}
        self._hosts = itertools.count(1)

    async def node(
        self,
        *,
        identity: Identity | None = None,
        endpoint: Endpoint | None = None,
        mode: Mode | None = Mode.SERVER,
        dialable: bool = True,
        silent: bool = False,
        store: MemoryGraphStore | None = None,
        behind_nat: Callable[[], bool | None] | None = None,
        tcp: bool = False,
        udp_blocked: bool = False,
    ) -> DhtService:
        """A node (``tcp``: with a TCP transport too; ``udp_blocked``: its UDP is lost)."""
        identity = identity or Identity.generate()
        endpoint = endpoint or (f"192.0.2.{next(self._hosts)}", 4000)
        router = Router(identity.node_id)
        udp = FakeUdp(
            self.net,
            identity.node_id,
            router,
            endpoint,
            dialable=dialable,
            silent=silent,
            blocked=udp_blocked,
        )
        self.udp[identity.node_id] = udp
        over_tcp = None
        if tcp:
            over_tcp = FakeTcp(self.tcp_net, identity.node_id, router, endpoint, dialable=dialable)
            self.tcp[identity.node_id] = over_tcp
        service = DhtService(
            router,
            identity,
            udp,
            tcp=over_tcp,
            mode=mode,
            rng=random.Random(len(self.net)),
            store=store,
            behind_nat=behind_nat,
        )
        service.hops.fallback_delay = FALLBACK_DELAY
        udp.on_event = service.on_transport_event
        if over_tcp is not None:
            over_tcp.on_event = service.on_transport_event
        self.stack.push_async_callback(router.close)
        self.stack.push_async_callback(service.close)
        return await service.start()


@contextlib.asynccontextmanager
async def network() -> AsyncIterator[Network]:
    async with contextlib.AsyncExitStack() as stack:
        yield Network(stack)


def seed_of(service: DhtService) -> tuple[NodeId, Endpoint]:
    return service.node_id, endpoint_of(service)


def endpoint_of(service: DhtService) -> Endpoint:
    address = service.udp.address
    assert address is not None
    return address.endpoint


async def until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(2000):  # a generous bound on waiting, not a measure of speed
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never: {what}")


async def test_a_request_travels_over_a_hop_pinned_to_the_node_id_which_fills_both_graphs() -> None:
    async with network() as net:
        a, b = await net.node(), await net.node()
        answer = await a.request(b.node_id, endpoint_of(b), Ping(b"ping0001", Mode.SERVER))
        assert isinstance(answer, Pong) and answer.observed == endpoint_of(a)
        assert a.knows(b.node_id) and b.knows(a.node_id)  # both saw the hop authenticate
        assert a.reached_at(b.node_id) == endpoint_of(b)
        assert a.live_link(b.node_id) is not None
        again = await a.request(b.node_id, None, Ping(b"ping0002", Mode.SERVER))
        assert isinstance(again, Pong)  # no address needed: over the live hop
        assert net.udp[a.node_id].dials == 1


async def test_another_node_id_at_the_address_is_refused_and_enters_no_graph() -> None:
    async with network() as net:
        a, b = await net.node(), await net.node()
        made_up = Identity.generate().node_id
        with pytest.raises(RemoteError) as caught:
            await a.request(made_up, endpoint_of(b), Ping(b"ping0001", Mode.SERVER))
        assert caught.value.code == ErrorCode.AUTH_FAILED
        a.engine.add_hint(made_up, endpoint_of(b))  # as a lookup candidate: one failed hop
        done = await a.lookup(made_up, timeout=10)
        assert not done.found and done.stats.failed == 1
        assert not a.knows(made_up) and not b.knows(made_up) and a.size == 0


async def test_rpcs_that_did_not_come_over_a_hop_are_answered_unsupported() -> None:
    async with network() as net:
        a = await net.node()
        replies: list[Message] = []

        async def receive(reply: Message) -> None:
            replies.append(reply)

        # As over a worker that is no hop of any transport (a secure channel's, say): that
        # worker first, then the sender's reply slot.
        a.router.register("_tcp.fake", receive, inline=True)
        for payload in (encode_rpc(Ping(b"ping0001", Mode.SERVER)), b"\x01garbage"):
            message = Message(
                (ServiceAddress(DHT_SERVICE),),
                (ServiceAddress("_tcp.fake"), ServiceAddress(reply_slot(b"ping0001"))),
                payload,
                local=LocalInfo(hop_peer=Identity.generate().node_id),
            )
            await a.router.route(message)
        await until(lambda: len(replies) == 2, "two answers")
        codes = [decode_rpc(r.payload) for r in replies]
        assert [c.code for c in codes if isinstance(c, DhtError)] == [
            DhtErrorCode.UNSUPPORTED,
            DhtErrorCode.MALFORMED,
        ]


async def test_a_join_asks_for_a_dial_back_and_a_third_node_proves_the_newcomer_reachable() -> None:
    async with network() as net:
        seed = await net.node()
        helper = await net.node()
        await helper.join([seed_of(seed)], timeout=10)
        store = MemoryGraphStore()
        newcomer = await net.node(mode=None, store=store)
        peers = await newcomer.join([seed_of(seed)], timeout=10)
        assert peers == 2 and newcomer.mode is Mode.SERVER
        assert store.mode == Mode.SERVER  # kept for the next start
        # It asked a server, which had the other dial the newcomer on a hop of its own.
        assert net.udp[helper.node_id].dials + net.udp[seed.node_id].dials >= 1


async def test_a_newcomer_nobody_can_dial_finds_out_it_is_a_client() -> None:
    async with network() as net:
        seed = await net.node()
        helper = await net.node()
        await helper.join([seed_of(seed)], timeout=10)
        store = MemoryGraphStore()
        newcomer = await net.node(mode=None, dialable=False, store=store)
        await newcomer.join([seed_of(seed)], timeout=10)
        assert newcomer.mode is Mode.CLIENT and store.mode == Mode.CLIENT
        assert seed.knows(newcomer.node_id)  # listed (it came over its own hop)...
        assert newcomer.node_id not in {e.node_id for e in seed.engine.table.closest(seed.node_id)}


async def test_the_upkeep_joins_once_the_seed_is_up_then_publishes_its_record() -> None:
    async with network() as net:
        seed_identity = Identity.generate()
        seed_at = ("192.0.2.200", 4000)
        member = await net.node()
        content = RecordContent(direct=(endpoint_of(member),))
        member.maintain([(seed_identity.node_id, seed_at)], record=lambda: content)
        member.maintain([], record=RecordContent)  # once only
        await until(lambda: member.maintenance.phase is Phase.BACKING_OFF, "a retry")
        assert member._upkeep_timer.at == member.maintenance.next_deadline()
        seed = await net.node(identity=seed_identity, endpoint=seed_at)  # up at last

        def held() -> PeerRecord | None:
            wall_now = asyncio.get_running_loop().time() + seed.wall_offset
            return seed.engine.records.get(member.node_id, wall_now)

        await until(lambda: held() is not None, "the member's record at the seed")
        record = held()
        assert record is not None and record.direct == content.direct
        assert member.knows(seed.node_id)
        await until(lambda: member.maintenance.phase is Phase.WAITING, "the upkeep waiting")
        assert member._timer.at == member.engine.next_deadline()
        assert member._upkeep_timer.at == member.maintenance.next_deadline()


async def test_the_first_node_of_a_network_is_a_server_at_once() -> None:
    async with network() as net:
        first = await net.node(mode=None)
        first.maintain([], record=RecordContent)
        assert first.mode is Mode.SERVER and first.maintenance.phase is Phase.FIRST_NODE


async def test_a_lookup_past_the_limit_is_refused_busy() -> None:
    async with network() as net:
        a, silent = await net.node(), await net.node(silent=True)
        a.on_transport_event(
            HopAuthenticated(silent.node_id, "udp", endpoint_of(silent), "outbound")
        )
        for _ in range(MAX_LOOKUPS):  # each waits for the silent one
            a.engine.start_lookup(Identity.generate().node_id, asyncio.get_running_loop().time())
        with pytest.raises(RemoteError) as caught:
            await a.lookup(Identity.generate().node_id, timeout=10)
        assert caught.value.code == ErrorCode.BUSY


async def test_closing_ends_what_waits_and_disarms_the_timers() -> None:
    async with network() as net:
        silent = await net.node(silent=True)
        a = await net.node()
        joining = asyncio.ensure_future(a.join([seed_of(silent)], timeout=10))
        await until(lambda: a._timer.at is not None, "the engine's timer armed")
        assert a._upkeep_timer.at is not None  # the attempt's own timeout
        await a.close()
        with pytest.raises(asyncio.CancelledError):
            await joining
        assert a._timer.at is None and a._upkeep_timer.at is None


async def test_a_hop_dialled_over_a_punched_address_never_makes_the_peer_a_server() -> None:
    """Issue 18: a hole punch opens a NAT mapping for one peer; a hop dialled through it
    proves the peer is there *for this node*, not that others can dial it there."""
    async with network() as net:
        a, b = await net.node(), await net.node()
        a.on_transport_event(HopAuthenticated(b.node_id, "udp", endpoint_of(b), "outbound", True))
        assert a.knows(b.node_id) and a.reached_at(b.node_id) is None
        a.on_transport_event(HopAuthenticated(b.node_id, "udp", endpoint_of(b), "outbound"))
        assert a.reached_at(b.node_id) == endpoint_of(b)  # a plain dial does prove it
