"""TCP portals between embedded nodes over real sockets: inlets, outlets, streams.

Each test runs real nodes (``meshkey.Node``) in this process, a real asyncio TCP server next
to the outlet, and real TCP clients at the inlet; bytes are checked with sha256.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from meshkey import Node
from meshkey.portal import Inlet, InsecureRouteError, Outlet, SessionLimits, open_portal_stream
from meshkey.routing.address import Route, parse_route

from .udp_forwarder import LossyForwarder

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
    writer.close()


async def digest_then_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads to EOF, then answers with the sha256 of what it read (a half-close test)."""
    hasher, count = hashlib.sha256(), 0
    while data := await reader.read(256 * 1024):
        hasher.update(data)
        count += len(data)
    writer.write(f"{count} {hasher.hexdigest()}".encode())
    await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def tcp_server(handler: Handler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


def single_hop(node: Node, protocol: str, service: str = "outlet") -> Route:
    address = next(a for a in node.addresses if a.protocol == protocol)
    return parse_route(f"{address}/service/{service}")


async def pump_through(host: str, port: int, payload: bytes) -> bytes:
    """Sends ``payload`` to host:port while reading what comes back, until EOF."""
    reader, writer = await asyncio.open_connection(host, port)

    async def send() -> None:
        view = memoryview(payload)
        for start in range(0, len(payload), 256 * 1024):
            writer.write(view[start : start + 256 * 1024])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.ensure_future(send())
    received = bytearray()
    while data := await reader.read(1 << 20):
        received += data
    await sender
    writer.close()
    return bytes(received)


def sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Portal:
    inlet_node: Node
    outlet_node: Node
    inlet: Inlet
    outlet: Outlet
    host: str
    port: int


@contextlib.asynccontextmanager
async def portal(
    protocol: str = "udp",
    handler: Handler = echo,
    *,
    secure: bool = False,
    limits: SessionLimits | None = None,
    allow_self: bool = False,
) -> AsyncIterator[Portal]:
    async with (
        tcp_server(handler) as server_port,
        Node(name="outlet") as outlet_node,
        Node(tcp=None, name="inlet") as inlet_node,
    ):
        allow = frozenset([inlet_node.node_id]) if allow_self else None
        outlet = Outlet(
            outlet_node.router,
            "127.0.0.1",
            server_port,
            allow=allow,
            limits=limits or SessionLimits(),
        )
        route = single_hop(outlet_node, protocol)
        if secure:
            channel = await inlet_node.create_secure_channel(
                single_hop(outlet_node, protocol, "api")
            )
            route = parse_route(f"{channel}/service/outlet")
        inlet = Inlet(inlet_node.router, route, limits=limits or SessionLimits())
        host, port = await inlet.listen()
        try:
            yield Portal(inlet_node, outlet_node, inlet, outlet, host, port)
        finally:
            await inlet.close()
            await outlet.close()


@pytest.mark.parametrize(
    ("protocol", "secure", "size"),
    [("udp", False, 64 * MiB), ("tcp", False, 16 * MiB), ("udp", True, 16 * MiB)],
    ids=["udp-hop-64MiB", "tcp-hop-16MiB", "udp-secure-channel-16MiB"],
)
async def test_bytes_go_through_an_inlet_and_an_outlet_intact(
    protocol: str, secure: bool, size: int
) -> None:
    payload = random.Random(size).randbytes(size)
    async with portal(protocol, secure=secure) as p:
        echoed = await asyncio.wait_for(pump_through(p.host, p.port, payload), 120)
        assert len(echoed) == size and sha(echoed) == sha(payload)
        inlet, outlet = p.inlet.describe(), p.outlet.describe()
        assert inlet["bytes_to_outlet"] == inlet["bytes_from_outlet"] == size
        assert outlet["bytes_to_server"] == outlet["bytes_from_server"] == size
        assert inlet["sessions_total"] == 1 and inlet["last_error"] is None
