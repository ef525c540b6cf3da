"""Secure channels between two node processes.

1. Handshakes per second: this process (an embedded node) opens channels to a daemon's
   ``api`` listener, one at a time and 16 at a time. Reference in the same run: full TLS 1.3
   handshakes per second against an asyncio TLS server in another process (a new TCP+TLS
   connection each; the closest well-known "authenticated session setup").
2. Round trip of a message through a channel, directly to the daemon and through a relay on
   a second daemon, against a plain (unencrypted, hop-authenticated) message on the same path.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import uvloop

from bench.common import daemons, round_trips, save, served_in_process, summary
from bench.rtt import _tls_echo_server
from meshkey.node.core import Node
from meshkey.transport.tls import SERVER_NAME, client_context


async def _handshakes(route: str, count: int, parallel: int) -> float:
    async with Node(tcp=None) as node:
        await node.create_secure_channel(route)  # warm the hop
        semaphore = asyncio.Semaphore(parallel)

        async def one() -> None:
            async with semaphore:
                address = await node.create_secure_channel(route)
                await node.channels.delete(address)

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        return count / (time.perf_counter() - started)


async def _tls_handshakes(port: int, count: int) -> float:
    context = client_context()
    started = time.perf_counter()
    for _ in range(count):
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname=SERVER_NAME
        )
        writer.close()
    return count / (time.perf_counter() - started)


async def _rtts(
    routes: dict[str, str], channel_routes: dict[str, str], count: int
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with Node(tcp=None) as node:
        targets = dict(routes)
        for name, route in channel_routes.items():
            targets[name] = f"{await node.create_secure_channel(route)}/service/echo"
        for name, target in targets.items():
            results[name] = summary(await round_trips(node, target, count))
    return results


def main(*, quick: bool = False) -> None:
    count = 100 if quick else 500
    rtt_count = 300 if quick else 2000
    with daemons("blue", "green") as home:
        blue = str(home.resolve_node("blue"))
        green = str(home.resolve_node("green"))
        from meshkey.node.control_client import ControlClient

        ControlClient(home.node("blue").socket_path).call(
            "relay.create", {"name": "blue", "at": "/node/green"}, timeout=15
        )
        sequential = uvloop.run(_handshakes(f"{blue}/service/api", count, 1))
        parallel = uvloop.run(_handshakes(f"{blue}/service/api", count, 16))
        rtts = uvloop.run(
            _rtts(
                {
                    "plain direct": f"{blue}/service/echo",
                    "plain via relay": f"{green}/service/forward_to_blue/service/echo",
                },
                {
                    "channel direct": f"{blue}/service/api",
                    "channel via relay": f"{green}/service/forward_to_blue/service/api",
                },
                rtt_count,
            )
        )
    with served_in_process(_tls_echo_server) as port:
        tls = uvloop.run(_tls_handshakes(port, count))
    result = {
        "channel_handshakes_per_s_sequential": round(sequential, 1),
        "channel_handshakes_per_s_16_parallel": round(parallel, 1),
        "reference_tls13_handshakes_per_s_sequential": round(tls, 1),
        "ratio_channel_vs_tls_sequential": round(sequential / tls, 2),
        "rtt": rtts,
    }
    save("channels", result)
    print(f"secure channel handshakes, two processes, {count} each")
    print(f"  meshkey channel, one at a time      {sequential:8.1f} /s")
    print(f"  meshkey channel, 16 in flight       {parallel:8.1f} /s")
    print(f"  reference TLS 1.3 (new TCP+TLS)     {tls:8.1f} /s")
    print(f"  ratio channel/TLS (sequential)      {sequential / tls:8.2f}")
    print(f"round trip, {rtt_count} messages of 64 bytes")
    for name, figures in rtts.items():
        print(f"  {name:<20} p50 {figures['p50_ms']:.3f} ms  p99 {figures['p99_ms']:.3f} ms")
