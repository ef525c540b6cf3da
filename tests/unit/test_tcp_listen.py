"""Where a TCP listener asked for any port listens: its node's UDP port number when free
(the one HOST:PORT a seed is known by then reaches it over TCP too), else any port."""

from __future__ import annotations

import socket

from meshkey.identity import Identity
from meshkey.routing.router import Router
from meshkey.transport.tcp import TcpTransport


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def transport() -> TcpTransport:
    identity = Identity.generate()
    return TcpTransport(identity, Router(identity.node_id))


async def test_any_port_means_the_hinted_port_when_it_is_free() -> None:
    tcp = transport()
    hinted = free_port()
    tcp.port_hint = lambda: hinted
    try:
        address = await tcp.listen("127.0.0.1", 0)
        assert address.port == hinted
    finally:
        await tcp.close()


async def test_a_taken_hinted_port_falls_back_to_any_port() -> None:
    tcp = transport()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        hinted = taken.getsockname()[1]
        tcp.port_hint = lambda: hinted
        try:
            address = await tcp.listen("127.0.0.1", 0)
            assert address.port not in (0, hinted)
        finally:
            await tcp.close()


async def test_a_port_asked_for_is_not_replaced_by_the_hint() -> None:
    tcp = transport()
    asked, hinted = free_port(), free_port()
    tcp.port_hint = lambda: hinted
    try:
        assert (await tcp.listen("127.0.0.1", asked)).port == asked
    finally:
        await tcp.close()
