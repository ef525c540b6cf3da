"""Secure channels between two node processes.

1. Handshakes per second: this process (an embedded node) opens channels to a daemon's
   ``api`` listener, one at a time and 16 at a time, with Noise XX and with Noise IK (the
   daemon's static key known beforehand, as a dial by NodeId knows it from the signed peer
   record; here it is learnt from a first XX channel). Reference in the same run: full TLS 1.3
   handshakes per second against an asyncio TLS server in another process (a new TCP+TLS
   connection each; the closest well-known "authenticated session setup").
2. Time to open one channel, and to the first reply over it (request -> first reply over a
   fresh channel), XX and IK alternating, directly and through a relay on a second daemon.
3. Round trip of a message through a channel, directly to the daemon and through a relay on
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


async def _learn_key(node: Node, route: str) -> bytes:
    """The listener's node's static key, from a first (XX) channel; it also warms the hop."""
    channel = node.channels.get(await node.create_secure_channel(route))
    assert channel is not None
    key = channel.session.peer_static
    assert key is not None
    return key


async def _handshakes(route: str, count: int, parallel: int, *, ik: bool = False) -> float:
    async with Node(tcp=None) as node:
        key = await _learn_key(node, route)
        resolved = await node.resolve_secure(route)
        semaphore = asyncio.Semaphore(parallel)

        async def one() -> None:
            async with semaphore:
                channel = await node.channels.create(resolved, responder_key=key if ik else None)
                assert channel.handshake == ("IK" if ik else "XX")
                await node.channels.delete(channel.address)

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        return count / (time.perf_counter() - started)


async def _set_up_times(routes: dict[str, str], count: int) -> dict[str, Any]:
    """Milliseconds to open a channel, and to the first reply over it, XX and IK alternating."""
    results: dict[str, Any] = {}
    async with Node(tcp=None) as node:
        for name, route in routes.items():
            key = await _learn_key(node, route)
            resolved = await node.resolve_secure(route)
            opened: dict[str, list[float]] = {"XX": [], "IK": []}
            replied: dict[str, list[float]] = {"XX": [], "IK": []}
            for _ in range(count):
                for pattern, responder_key in (("XX", None), ("IK", key)):
                    started = time.perf_counter()
                    channel = await node.channels.create(resolved, responder_key=responder_key)
                    opened[pattern].append((time.perf_counter() - started) * 1000)
                    await node.send(f"/service/{channel.address}/service/echo", b"x" * 64)
                    replied[pattern].append((time.perf_counter() - started) * 1000)
                    assert channel.handshake == pattern
                    await node.channels.delete(channel.address)
            results[name] = {
                pattern: {
                    "open": summary(opened[pattern]),
                    "first_reply": summary(replied[pattern]),
                }
                for pattern in ("XX", "IK")
            }
    return results


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
        sequential_ik = uvloop.run(_handshakes(f"{blue}/service/api", count, 1, ik=True))
        parallel_ik = uvloop.run(_handshakes(f"{blue}/service/api", count, 16, ik=True))
        set_up = uvloop.run(
            _set_up_times(
                {
                    "direct": f"{blue}/service/api",
                    "via relay": f"{green}/service/forward_to_blue/service/api",
                },
                count // 5,
            )
        )
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
        "channel_handshakes_per_s_sequential_ik": round(sequential_ik, 1),
        "channel_handshakes_per_s_16_parallel_ik": round(parallel_ik, 1),
        "set_up": set_up,
        "reference_tls13_handshakes_per_s_sequential": round(tls, 1),
        "ratio_channel_vs_tls_sequential": round(sequential / tls, 2),
        "rtt": rtts,
    }
    save("channels", result)
    print(f"secure channel handshakes, two processes, {count} each")
    print(f"  meshkey channel, one at a time      {sequential:8.1f} /s")
    print(f"  meshkey channel, 16 in flight       {parallel:8.1f} /s")
    print(f"  meshkey channel IK, one at a time   {sequential_ik:8.1f} /s")
    print(f"  meshkey channel IK, 16 in flight    {parallel_ik:8.1f} /s")
    print(f"  reference TLS 1.3 (new TCP+TLS)     {tls:8.1f} /s")
    print(f"  ratio channel/TLS (sequential)      {sequential / tls:8.2f}")
    print(f"set-up of one fresh channel, {count // 5} each, XX and IK alternating")
    for name, patterns in set_up.items():
        for pattern, figures in patterns.items():
            opened, replied = figures["open"], figures["first_reply"]
            print(
                f"  {name:<10} {pattern}  open p50 {opened['p50_ms']:.2f} ms  "
                f"p99 {opened['p99_ms']:.2f} ms   first reply p50 {replied['p50_ms']:.2f} ms  "
                f"p99 {replied['p99_ms']:.2f} ms"
            )
    print(f"round trip, {rtt_count} messages of 64 bytes")
    for name, figures in rtts.items():
        print(f"  {name:<20} p50 {figures['p50_ms']:.3f} ms  p99 {figures['p99_ms']:.3f} ms")
