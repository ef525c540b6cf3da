"""The Python embedding API over real sockets: nodes in this process."""

from __future__ import annotations

import asyncio

import pytest

from meshkey import Node, RemoteError
from meshkey.routing.message import Message
from meshkey.transport.events import HopAuthenticated, HopClosed
from meshkey.wire.frames import MAX_PAYLOAD
from meshkey.wire.message import ErrorCode

pytestmark = pytest.mark.integration

TRANSPORTS = pytest.mark.parametrize("protocol", ["udp", "tcp"])


def address(node: Node, protocol: str) -> str:
    """The node's listening address for ``protocol`` (tests run over both transports)."""
    return str(next(a for a in node.addresses if a.protocol == protocol))


@TRANSPORTS
async def test_send_and_services(protocol: str) -> None:
    async with Node() as server, Node(tcp=None) as client:
        server.register_service("reverse", lambda payload: payload[::-1])

        async def slow_double(payload: bytes) -> bytes:
            await asyncio.sleep(0.01)
            return payload * 2

        server.register_service("double", slow_double)
        base = address(server, protocol)
        assert await client.send(f"{base}/service/reverse", b"abc") == b"cba"
        assert await client.send(f"{base}/service/double", b"ab") == b"abab"
        assert await client.send(f"{base}/service/uppercase", "héllo".encode()) == "HÉLLO".encode()


@TRANSPORTS
async def test_a_worker_can_reply_and_forward(protocol: str) -> None:
    async with Node() as server, Node(tcp=None) as client:
        seen: list[Message] = []

        async def inspect(message: Message) -> None:
            seen.append(message)
            await server.router.reply(message, str(message.local.hop_peer).encode())

        server.register_worker("inspect", inspect)
        reply = await client.send(f"{address(server, protocol)}/service/inspect", b"who am i")
        assert reply == str(client.node_id).encode()  # the hop peer is authenticated
        assert seen[0].local.channel_peer is None


@TRANSPORTS
async def test_authenticated_events_on_both_sides(protocol: str) -> None:
    async with Node() as server, Node(tcp=None) as client:
        on_server = asyncio.ensure_future(
            server.events.wait_for(lambda e: isinstance(e, HopAuthenticated), 5)
        )
        on_client = asyncio.ensure_future(
            client.events.wait_for(lambda e: isinstance(e, HopAuthenticated), 5)
        )
        await client.send(f"{address(server, protocol)}/service/echo", b"x")
        inbound, outbound = await on_server, await on_client
        assert inbound.transport == outbound.transport == protocol
        assert (inbound.node_id, inbound.direction) == (client.node_id, "inbound")
        assert (outbound.node_id, outbound.direction) == (server.node_id, "outbound")


@TRANSPORTS
async def test_connections_are_reused_then_closed_when_idle(protocol: str) -> None:
    async with Node() as server, Node(tcp=None, idle_timeout=0.3) as client:
        pool = client.udp if protocol == "udp" else client.tcp
        route = f"{address(server, protocol)}/service/echo"
        replies = await asyncio.gather(*(client.send(route, b"%d" % i) for i in range(50)))
        assert replies == [b"%d" % i for i in range(50)]
        assert len(pool.connections()) == 1
        closed = await client.events.wait_for(lambda e: isinstance(e, HopClosed), 5)
        assert closed.reason in ("idle", "peer closed the connection")
        assert pool.connections() == []
        assert await client.send(route, b"again") == b"again"  # reconnects
        assert len(pool.connections()) == 1


@TRANSPORTS
async def test_large_payloads_and_limits(protocol: str) -> None:
    async with Node() as server, Node(tcp=None) as client:
        route = f"{address(server, protocol)}/service/echo"
        big = bytes(range(256)) * (MAX_PAYLOAD // 256)
        assert await client.send(route, big) == big
        with pytest.raises(RemoteError) as info:
            await client.send(route, big + b"!")
        assert info.value.code == ErrorCode.TOO_LARGE


@TRANSPORTS
async def test_errors_from_the_api(protocol: str) -> None:
    async with Node() as server, Node(tcp=None) as client:
        with pytest.raises(RemoteError) as info:
            await client.send("/node/blue/service/echo", b"x")
        assert info.value.code == ErrorCode.UNSUPPORTED
        with pytest.raises(RemoteError) as info:
            await client.send(f"{address(server, protocol)}/service/nope", b"x")
        assert info.value.code == ErrorCode.NO_SUCH_SERVICE
        gone = address(server, protocol)
    # The server is gone: the next message says so instead of hanging.
    with pytest.raises(RemoteError) as info:
        async with Node(tcp=None) as client:
            await client.send(f"{gone}/service/echo", b"x", timeout=15)
    assert info.value.code == ErrorCode.UNREACHABLE
    assert "connection refused" in info.value.text  # at once, over UDP too
