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


async def test_send_and_services() -> None:
    async with Node() as server, Node(tcp=None) as client:
        server.register_service("reverse", lambda payload: payload[::-1])

        async def slow_double(payload: bytes) -> bytes:
            await asyncio.sleep(0.01)
            return payload * 2

        server.register_service("double", slow_double)
        base = str(server.addresses[0])
        assert await client.send(f"{base}/service/reverse", b"abc") == b"cba"
        assert await client.send(f"{base}/service/double", b"ab") == b"abab"
        assert await client.send(f"{base}/service/uppercase", "héllo".encode()) == "HÉLLO".encode()


async def test_a_worker_can_reply_and_forward() -> None:
    async with Node() as server, Node(tcp=None) as client:
        seen: list[Message] = []

        async def inspect(message: Message) -> None:
            seen.append(message)
            await server.router.reply(message, str(message.local.hop_peer).encode())

        server.register_worker("inspect", inspect)
        reply = await client.send(f"{server.addresses[0]}/service/inspect", b"who am i")
        assert reply == str(client.node_id).encode()  # the hop peer is authenticated
        assert seen[0].local.channel_peer is None


async def test_authenticated_events_on_both_sides() -> None:
    async with Node() as server, Node(tcp=None) as client:
        on_server = asyncio.ensure_future(
            server.events.wait_for(lambda e: isinstance(e, HopAuthenticated), 5)
        )
        on_client = asyncio.ensure_future(
            client.events.wait_for(lambda e: isinstance(e, HopAuthenticated), 5)
        )
        await client.send(f"{server.addresses[0]}/service/echo", b"x")
        inbound, outbound = await on_server, await on_client
        assert (inbound.node_id, inbound.direction) == (client.node_id, "inbound")
        assert (outbound.node_id, outbound.direction) == (server.node_id, "outbound")


async def test_connections_are_reused_then_closed_when_idle() -> None:
    async with Node() as server, Node(tcp=None, idle_timeout=0.3) as client:
        route = f"{server.addresses[0]}/service/echo"
        replies = await asyncio.gather(*(client.send(route, b"%d" % i) for i in range(50)))
        assert replies == [b"%d" % i for i in range(50)]
        assert len(client.tcp.connections()) == 1
        closed = await client.events.wait_for(lambda e: isinstance(e, HopClosed), 5)
        assert closed.reason == "idle"
        assert client.tcp.connections() == []
        assert await client.send(route, b"again") == b"again"  # reconnects
        assert len(client.tcp.connections()) == 1


async def test_large_payloads_and_limits() -> None:
    async with Node() as server, Node(tcp=None) as client:
        route = f"{server.addresses[0]}/service/echo"
        big = bytes(range(256)) * (MAX_PAYLOAD // 256)
        assert await client.send(route, big) == big
        with pytest.raises(RemoteError) as info:
            await client.send(route, big + b"!")
        assert info.value.code == ErrorCode.TOO_LARGE


async def test_errors_from_the_api() -> None:
    async with Node() as server, Node(tcp=None) as client:
        with pytest.raises(RemoteError) as info:
            await client.send("/node/blue/service/echo", b"x")
        assert info.value.code == ErrorCode.UNSUPPORTED
        with pytest.raises(RemoteError) as info:
            await client.send(f"{server.addresses[0]}/service/nope", b"x")
        assert info.value.code == ErrorCode.NO_SUCH_SERVICE
        address = server.addresses[0]
    # The server is gone: the next message says so instead of hanging.
    with pytest.raises(RemoteError) as info:
        async with Node(tcp=None) as client:
            await client.send(f"{address}/service/echo", b"x")
    assert info.value.code == ErrorCode.UNREACHABLE
