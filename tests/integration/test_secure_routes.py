"""``/secure/`` routes resolved by embedded nodes: channels opened, reused, nested, shared by
concurrent senders, replaced when they stop being open; the node's portal API over them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshkey import Node
from meshkey.channel.manager import ChannelState
from meshkey.node.state import Home
from meshkey.node.store import NodeStore
from meshkey.portal import InsecureRouteError
from meshkey.portal.portals import PortalConflict, PortalError, PortalNotFound, PortalRefused
from meshkey.routing.address import RouteError, ServiceAddress, format_route
from meshkey.routing.errors import RemoteError

pytestmark = pytest.mark.integration


@dataclass
class Session:
    green: Node
    blue: Node
    yellow: Node

    @property
    def to_blue(self) -> str:
        return f"{self.green.addresses[0]}/service/forward_to_blue"


@contextlib.asynccontextmanager
async def readme_session() -> AsyncIterator[Session]:
    """The README's session: blue behind a relay on green, yellow outside."""
    async with (
        Node(name="green") as green,
        Node(tcp=None, name="blue") as blue,
        Node(tcp=None, name="yellow") as yellow,
    ):
        await blue.create_relay("blue", str(green.addresses[0]))
        yield Session(green, blue, yellow)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


def initiators(node: Node) -> list[str]:
    return [c.address for c in node.channels.channels() if c.initiator]


async def test_send_opens_one_channel_and_reuses_it() -> None:
    async with readme_session() as s:
        route = f"{s.to_blue}/secure/api/service/uppercase"
        assert await s.yellow.send(route, b"hello") == b"HELLO"
        assert await s.yellow.send(route, b"again") == b"AGAIN"
        (address,) = initiators(s.yellow)
        channel = s.yellow.channels.get(address)
        assert channel is not None and channel.peer == s.blue.node_id
        assert format_route(channel.listener_route) == f"{s.to_blue}/service/api"
        # Resolved, the route is the channel's address and the rest of the route.
        resolved = await s.yellow.resolve_secure(route)
        assert resolved == (ServiceAddress(address), ServiceAddress("uppercase"))


async def test_concurrent_senders_share_one_handshake() -> None:
    async with readme_session() as s:
        route = f"{s.to_blue}/secure/api/service/echo"
        replies = await asyncio.gather(*(s.yellow.send(route, b"%d" % i) for i in range(20)))
        assert replies == [b"%d" % i for i in range(20)]
        assert len(initiators(s.yellow)) == 1


async def test_nested_secure_hops_run_a_channel_inside_a_channel() -> None:
    async with readme_session() as s:
        green = s.green.addresses[0]
        route = f"{green}/secure/api/service/forward_to_blue/secure/api/service/uppercase"
        assert await s.yellow.send(route, b"nested") == b"NESTED"
        channels = {c.peer: c for c in s.yellow.channels.channels() if c.initiator}
        outer, inner = channels[s.green.node_id], channels[s.blue.node_id]
        # The inner channel's route starts with the outer channel: it runs inside it.
        assert inner.listener_route[0] == ServiceAddress(outer.address)


async def test_a_channel_that_is_not_open_is_replaced_and_deleted() -> None:
    async with readme_session() as s:
        route = f"{s.to_blue}/secure/api/service/echo"
        await s.yellow.send(route, b"first")
        (first,) = initiators(s.yellow)
        # Blue drops its end (as a restarted node would have): yellow's is closed by the peer.
        (responder,) = [c.address for c in s.blue.channels.channels() if not c.initiator]
        await s.blue.channels.delete(responder)
        old = s.yellow.channels.get(first)
        assert old is not None
        for _ in range(100):
            if old.state is ChannelState.CLOSED:
                break
            await asyncio.sleep(0.01)
        assert old.state is ChannelState.CLOSED
        assert await s.yellow.send(route, b"second") == b"second"
        (second,) = initiators(s.yellow)  # the old one was deleted, not kept in the list
        assert second != first


async def test_authorized_applies_to_the_last_channel() -> None:
    async with readme_session() as s:
        route = f"{s.to_blue}/secure/api/service/echo"
        with pytest.raises(RemoteError):
            await s.yellow.resolve_secure(route, authorized=[s.green.node_id])
        resolved = await s.yellow.resolve_secure(route, authorized=[str(s.blue.node_id)])
        assert isinstance(resolved[0], ServiceAddress)


async def test_bad_secure_routes_are_refused_clearly() -> None:
    async with readme_session() as s:
        with pytest.raises(RouteError, match="add what the channel carries"):
            await s.yellow.send(f"{s.to_blue}/secure/api", b"x")
        with pytest.raises(RemoteError, match="no service 'nope'"):
            await s.yellow.send(f"{s.to_blue}/secure/nope/service/echo", b"x", timeout=5)
        with pytest.raises(RouteError, match="only where traffic starts"):
            s.yellow.resolve(f"{s.to_blue}/secure/api/service/echo")


async def test_the_node_api_for_portals_over_a_secure_route() -> None:
    async with readme_session() as s, echo_server() as port:
        outlet = await s.blue.create_tcp_outlet(str(port), allow=[s.yellow.node_id])
        assert outlet.describe()["address"] == "/service/outlet"
        route = f"{s.to_blue}/secure/api/service/outlet"
        inlet = await s.yellow.create_tcp_inlet(route=route, alias="db")
        reader, writer = await asyncio.open_connection(inlet.host, inlet.port)
        writer.write(b"through the relay")
        assert await reader.readexactly(17) == b"through the relay"
        writer.close()
        reader, writer = await s.yellow.open_portal_stream(route)
        writer.write(b"stream")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 10) == b"stream"
        assert len(initiators(s.yellow)) == 1  # the inlet, the stream and sends share it
        description = inlet.describe()
        assert description["bytes_to_outlet"] == 17 and description["sessions_total"] == 1
        assert description["route"] == f"/service/{initiators(s.yellow)[0]}/service/outlet"
        assert [e.alias for e in s.yellow.tcp_inlets()] == ["db"]
        assert s.blue.tcp_outlet("/service/outlet") is outlet
        # Refusals are typed.
        with pytest.raises(InsecureRouteError, match="/secure/api"):
            await s.yellow.create_tcp_inlet(route=f"{s.to_blue}/service/outlet")
        with pytest.raises(PortalConflict):
            await s.yellow.create_tcp_inlet(route=route, alias="db")
        with pytest.raises(PortalConflict):
            await s.blue.create_tcp_outlet(str(port))
        with pytest.raises(PortalError, match="outlet target"):
            await s.blue.create_tcp_outlet("127.0.0.1:0", name="zero")
        with pytest.raises(PortalRefused):
            await s.yellow.open_portal_stream(
                f"{s.blue.addresses[0]}/service/outlet", authorized=[s.green.node_id]
            )
        await s.yellow.delete_tcp_inlet("db")
        with pytest.raises(PortalNotFound):
            s.yellow.tcp_inlet("db")
        with contextlib.suppress(ConnectionError):
            _, writer = await asyncio.open_connection(inlet.host, inlet.port)
            pytest.fail("the deleted inlet still listens")


async def test_portals_come_back_from_the_store_after_a_restart(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.ensure()
    directory = home.node("yellow")
    directory.create({"identity": "yellow"})
    store = NodeStore(directory)
    async with echo_server() as port:
        async with Node(tcp=None, name="yellow", store=store) as yellow:
            identity = yellow.identity
            await yellow.create_tcp_outlet(f"127.0.0.1:{port}", name="local", alias="mine")
            inlet = await yellow.create_tcp_inlet(
                "127.0.0.1:0",
                route="/service/local",
                authorized=[yellow.node_id],
            )
            listen = (inlet.host, inlet.port)
        records = store.tcp_inlets(), store.tcp_outlets()
        assert [r["alias"] for r in records[0]] == [f"inlet-{listen[1]}"]
        assert records[1][0]["name"] == "local" and records[1][0]["alias"] == "mine"
        async with Node(identity=identity, tcp=None, name="yellow", store=store) as again:
            (restored,) = again.tcp_inlets()
            assert (restored.host, restored.port) == listen
            assert restored.authorized == frozenset([again.node_id])
            assert again.tcp_outlet("mine").outlet.name == "local"
            reader, writer = await asyncio.open_connection(*listen)
            writer.write(b"after a restart")
            assert await reader.readexactly(15) == b"after a restart"
            writer.close()
            await again.delete_tcp_outlet("mine")
        assert store.tcp_outlets() == []


async def test_an_inlet_reuses_an_existing_channel_and_outlives_its_deletion() -> None:
    async with readme_session() as s, echo_server() as port:
        await s.blue.create_tcp_outlet(str(port))
        mine = await s.yellow.create_secure_channel(f"{s.to_blue}/service/api")
        inlet = await s.yellow.create_tcp_inlet(route=f"{s.to_blue}/secure/api/service/outlet")
        assert inlet.describe()["route"] == f"{mine}/service/outlet"  # the same channel
        await s.yellow.channels.delete(mine)
        reader, writer = await asyncio.open_connection(inlet.host, inlet.port)
        writer.write(b"a new channel")
        assert await asyncio.wait_for(reader.readexactly(13), 10) == b"a new channel"
        writer.close()
        assert inlet.describe()["route"] != f"{mine}/service/outlet"
