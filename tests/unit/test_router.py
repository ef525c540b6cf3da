from __future__ import annotations

import asyncio
from typing import Any

from meshkey.channel.policy import Policies, Policy
from meshkey.identity import Identity
from meshkey.identity.node_id import NodeId
from meshkey.routing.address import (
    NodeNameAddress,
    Route,
    SecureAddress,
    ServiceAddress,
    TransportAddress,
    parse_route,
)
from meshkey.routing.message import LocalInfo, Message
from meshkey.routing.router import (
    DIAL_BURST_PER_SENDER,
    FORWARD_RESOURCE,
    Deliver,
    Fail,
    Forward,
    Router,
    RoutingError,
    next_hop,
)
from meshkey.wire.message import ErrorCode, MessageKind


def test_next_hop_decisions() -> None:
    route = parse_route("/ip4/10.0.0.1/tcp/1/service/echo")
    decision = next_hop(Message(route, (), b""))
    assert isinstance(decision, Forward)
    assert decision.message.onward == route[1:]
    assert next_hop(Message((ServiceAddress("x"),), (), b"")) == Deliver("x")
    assert isinstance(next_hop(Message((), (), b"")), Fail)
    assert isinstance(next_hop(Message((NodeNameAddress("b"),), (), b"")), Fail)
    unresolved = next_hop(Message((SecureAddress("api"),), (), b""))
    assert isinstance(unresolved, Fail) and unresolved.code is ErrorCode.UNSUPPORTED


class FakeTransport:
    protocol = "tcp"

    def __init__(self) -> None:
        self.sent: list[tuple[TransportAddress, Message]] = []

    async def send(self, address: TransportAddress, message: Message) -> None:
        if address.port == 1:
            raise RoutingError(ErrorCode.UNREACHABLE, "refused")
        self.sent.append((address, message))


async def test_router_delivers_forwards_and_answers_failures() -> None:
    router = Router(Identity.generate().node_id)
    transport = FakeTransport()
    router.add_transport(transport)
    inbox: list[Message] = []

    async def collect(message: Message) -> None:
        inbox.append(message)

    router.register("inbox", collect, inline=True)

    async def echo(message: Message) -> None:
        await router.reply(message, message.payload)

    router.register("echo", echo)
    me = (ServiceAddress("inbox"),)
    await router.route(Message((ServiceAddress("echo"),), me, b"ping"))
    await router.route(Message((ServiceAddress("nope"),), me, b"x"))
    await router.route(Message(parse_route("/ip4/10.0.0.1/tcp/1/service/x"), me, b"x"))
    await router.route(Message(parse_route("/ip4/10.0.0.1/tcp/2/service/x"), me, b"fwd"))
    await router.route(Message(parse_route("/ip4/10.0.0.1/udp/2"), me, b"x"))
    for _ in range(10):
        await asyncio.sleep(0)
    assert [m.payload for m in inbox if not m.is_error] == [b"ping"]
    errors = [m.error()[0] for m in inbox if m.is_error]
    assert errors == [ErrorCode.NO_SUCH_SERVICE, ErrorCode.UNREACHABLE, ErrorCode.UNSUPPORTED]
    assert [m.payload for _, m in transport.sent] == [b"fwd"]
    await router.close()


async def test_errors_are_never_answered_with_errors() -> None:
    router = Router(Identity.generate().node_id)
    got: list[Message] = []

    async def collect(message: Message) -> None:
        got.append(message)

    router.register("inbox", collect, inline=True)
    # An error whose destination does not exist must vanish, not bounce back to inbox.
    await router.route(
        Message((ServiceAddress("gone"),), (ServiceAddress("inbox"),), b"\x01x", MessageKind.ERROR)
    )
    assert got == []
    await router.close()


async def test_a_crashing_worker_answers_internal_error_and_keeps_serving() -> None:
    router = Router(Identity.generate().node_id)
    got: list[Message] = []

    async def collect(message: Message) -> None:
        got.append(message)

    async def flaky(message: Message) -> None:
        if message.payload == b"boom":
            raise RuntimeError("bug")
        await router.reply(message, b"ok")

    router.register("inbox", collect, inline=True)
    router.register("flaky", flaky)
    for payload in (b"boom", b"fine"):
        await router.route(Message((ServiceAddress("flaky"),), (ServiceAddress("inbox"),), payload))
    for _ in range(10):
        await asyncio.sleep(0)
    assert got[0].error()[0] == ErrorCode.INTERNAL
    assert got[1].payload == b"ok"
    await router.close()


async def test_an_error_is_never_answered_so_replies_cannot_bounce() -> None:
    """A reply to a request whose sender is gone comes back as an error to the service; the
    service must not answer it (it used to, and the two bounced forever)."""
    router = Router(Identity.generate().node_id)
    routed: list[Message] = []

    async def echo(message: Message) -> None:
        await router.reply(message, message.payload)

    router.register("echo", echo)
    original_route = router.route

    async def counting_route(message: Message) -> None:
        routed.append(message)
        await original_route(message)

    router.route = counting_route  # type: ignore[method-assign]
    # The requester's reply slot no longer exists: the reply fails, the error goes to echo.
    await router.route(Message((ServiceAddress("echo"),), (ServiceAddress("gone"),), b"hi"))
    for _ in range(50):
        await asyncio.sleep(0)
    kinds = [(m.kind, m.onward[:1]) for m in routed]
    assert kinds == [
        (MessageKind.DATA, (ServiceAddress("echo"),)),  # the request
        (MessageKind.DATA, (ServiceAddress("gone"),)),  # echo's reply
        (MessageKind.ERROR, (ServiceAddress("echo"),)),  # "no service 'gone'", to echo
    ]
    await router.close()


async def test_workers_that_feed_each_other_still_let_the_loop_run() -> None:
    """A mailbox worker whose handler feeds its own mailbox (here through an inline worker,
    which runs in its task) never finds the mailbox empty, so taking the next message never
    suspends: unless the worker yields after each message, nothing else runs while the ball
    is in play. The ball stops after ``bounces_limit`` bounces, so a regression fails the
    assertion below instead of hanging the suite."""
    bounces_limit = 10_000
    router = Router(Identity.generate().node_id)
    bounces = 0
    stopped = asyncio.Event()

    async def ping(message: Message) -> None:
        nonlocal bounces
        bounces += 1
        if bounces == bounces_limit:
            stopped.set()
        else:
            await router.route(Message((ServiceAddress("pong"),), (), message.payload))

    async def pong(message: Message) -> None:
        await router.route(Message((ServiceAddress("ping"),), (), message.payload))

    router.register("ping", ping)
    router.register("pong", pong, inline=True)
    await router.route(Message((ServiceAddress("ping"),), (), b"ball"))
    seen_by_another_task: list[int] = []

    async def another_task() -> None:
        seen_by_another_task.append(bounces)

    other = asyncio.create_task(another_task())
    await asyncio.wait_for(stopped.wait(), 10)
    await asyncio.wait_for(other, 10)
    assert bounces == bounces_limit
    [seen] = seen_by_another_task
    assert seen < bounces_limit, "no other task ran while the two workers bounced the ball"
    await router.close()


# -- forwarding for others: over open hops; new connections only for some -----------------


class HopTransport:
    """A transport with hops: ``open`` endpoints reach without a new connection; ``send``
    is a new connection (a dial)."""

    protocol = "udp"

    def __init__(self, open_endpoints: set[tuple[str, int]] | None = None) -> None:
        self.open = open_endpoints or set()
        self.over_open: list[TransportAddress] = []
        self.dialled: list[TransportAddress] = []

    async def send(self, address: TransportAddress, message: Message) -> None:
        self.dialled.append(address)

    async def send_if_open(self, address: TransportAddress, message: Message) -> bool:
        if address.endpoint in self.open:
            self.over_open.append(address)
            return True
        return False


STRANGER = Identity.generate().node_id
FRIEND = Identity.generate().node_id
ELSEWHERE = ("192.0.2.9", 4433)


def _from(sender: NodeId, remote: tuple[str, int] = ELSEWHERE, **local: Any) -> LocalInfo:
    return LocalInfo(hop_peer=sender, hop_remote=remote, **local)


async def test_a_stranger_is_forwarded_over_open_hops_and_never_makes_a_node_dial() -> None:
    """The finding: a stranger's message made a node open TCP (a TLS ClientHello) or QUIC
    (11 Initials) to any address it named."""
    router = Router(Identity.generate().node_id)
    transport = HopTransport({("10.0.0.2", 5000)})
    router.add_transport(transport)
    errors: list[Message] = []

    async def collect(message: Message) -> None:
        errors.append(message)

    router.register("inbox", collect, inline=True)
    me = (ServiceAddress("inbox"),)
    for to in ("/ip4/10.0.0.2/udp/5000", "/ip4/203.0.113.9/udp/443"):
        message = Message(parse_route(f"{to}/service/x"), me, b"m").with_local(_from(STRANGER))
        await router.route(message)
    assert [a.endpoint for a in transport.over_open] == [("10.0.0.2", 5000)]
    assert transport.dialled == []
    ((code, text),) = [m.error() for m in errors]
    assert code is ErrorCode.REFUSED and "opens no new connection" in text
    assert "forward" in text  # and says how to allow it
    # This node's own messages still dial anywhere.
    await router.route(Message(parse_route("/ip4/203.0.113.9/udp/443/service/x"), me, b"m"))
    assert len(transport.dialled) == 1
    await router.close()


async def test_who_may_make_a_node_dial_and_how_often() -> None:
    router = Router(Identity.generate().node_id)
    transport = HopTransport()
    router.add_transport(transport)
    got: list[Message] = []

    async def collect(message: Message) -> None:
        got.append(message)

    router.register("inbox", collect, inline=True)
    me = (ServiceAddress("inbox"),)

    async def send(local: LocalInfo, to: str = "/ip4/203.0.113.9/udp/443") -> None:
        await router.route(Message(parse_route(f"{to}/service/x"), me, b"m").with_local(local))

    policies = Policies()
    router.admission = policies.admit
    await send(_from(FRIEND))
    assert transport.dialled == []  # no policy names it yet
    policies.set(Policy(FORWARD_RESOURCE, frozenset({FRIEND})))
    await send(_from(FRIEND))
    assert len(transport.dialled) == 1
    await send(_from(STRANGER))  # the policy names FRIEND only: refused, as before
    assert len(transport.dialled) == 1
    policies.delete(FORWARD_RESOURCE)
    # A program on this host (its hop comes from loopback) may; not through a channel.
    await send(_from(STRANGER, ("127.0.0.1", 50000)))
    assert len(transport.dialled) == 2
    await send(_from(STRANGER, ("127.0.0.1", 50000), channel_peer=STRANGER))
    assert len(transport.dialled) == 2
    # Destinations the node knows.
    router.known_destination = lambda address: address.host == "198.51.100.5"
    await send(_from(STRANGER), "/ip4/198.51.100.5/udp/1")
    assert len(transport.dialled) == 3
    # However allowed, a sender's new connections are rate-limited.
    got.clear()
    local_program = Identity.generate().node_id
    for _ in range(20):
        await send(_from(local_program, ("127.0.0.1", 50001)))
    assert len(transport.dialled) == 3 + DIAL_BURST_PER_SENDER
    busy = [m.error() for m in got if m.is_error]
    assert busy and all(code is ErrorCode.BUSY for code, _ in busy)
    await router.close()


async def test_a_peer_path_the_resolver_chose_may_be_dialled_for_a_stranger() -> None:
    router = Router(Identity.generate().node_id)
    transport = HopTransport()
    router.add_transport(transport)
    target = Identity.generate().node_id

    async def resolve(node_id: NodeId) -> Route | None:
        return parse_route("/ip4/198.51.100.8/udp/7") if node_id == target else None

    router.peer_resolver = resolve
    message = Message(parse_route(f"/peer/{target}/service/x"), (), b"m")
    await router.route(message.with_local(_from(STRANGER)))
    assert [a.endpoint for a in transport.dialled] == [("198.51.100.8", 7)]
    await router.close()
