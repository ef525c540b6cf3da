"""Message round trip between two node processes over TCP on loopback.

meshkey: this process embeds a node and sends to a daemon's echo service, one message at a
time (a new route parse, routing, hop framing and encryption both ways, each time), over the
daemon's UDP (QUIC) address and over its TCP (TLS) address. Reference, in the same run: a
plain asyncio TLS 1.3 echo server in another process, one frame at a time. The ratios say
what routing and the hop protocol cost over the bare encrypted transport, and UDP vs TCP.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import uvloop

from bench.common import daemons, round_trips, save, served_in_process, summary
from meshkey.identity import Identity
from meshkey.node.core import Node
from meshkey.transport.tls import SERVER_NAME, client_context, server_context


async def _meshkey_rtt(route: str, count: int) -> list[float]:
    async with Node(tcp=None) as node:
        return await round_trips(node, route, count)


def _tls_echo_server(port_queue: Any, stop: Any) -> None:
    """A plain TLS 1.3 echo server (runs until its process is ended)."""

    async def serve() -> None:
        context = server_context(Identity.generate())

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    header = await reader.readexactly(4)
                    body = await reader.readexactly(int.from_bytes(header, "big"))
                    writer.write(header + body)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()  # the client is done (handshake benchmarks close at once)

        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=context)
        port_queue.put(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    uvloop.run(serve())


async def _tls_rtt(port: int, count: int) -> list[float]:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_context(), server_hostname=SERVER_NAME
    )
    frame = (64).to_bytes(4, "big") + b"x" * 64
    samples = []
    for _ in range(count + 1):
        started = time.perf_counter()
        writer.write(frame)
        await reader.readexactly(len(frame))
        samples.append((time.perf_counter() - started) * 1000)
    writer.close()
    return samples[1:]


def main(*, quick: bool = False) -> None:
    count = 500 if quick else 5000
    with daemons("echo-node") as home:
        measured = {
            protocol: uvloop.run(
                _meshkey_rtt(f"{home.resolve_node('echo-node', protocol)}/service/echo", count)
            )
            for protocol in ("udp", "tcp")
        }
    with served_in_process(_tls_echo_server) as port:
        reference = uvloop.run(_tls_rtt(port, count))
    udp, tcp, theirs = summary(measured["udp"]), summary(measured["tcp"]), summary(reference)
    result: dict[str, Any] = {
        "meshkey_udp_message": udp,
        "meshkey_tcp_message": tcp,
        "reference_plain_tls_echo": theirs,
        "ratio_tcp_vs_plain_tls_p50": round(tcp["p50_ms"] / theirs["p50_ms"], 2),
        "ratio_udp_vs_tcp_p50": round(udp["p50_ms"] / tcp["p50_ms"], 2),
    }
    save("rtt", result)
    print(f"round trip, {count} messages of 64 bytes, two processes, loopback")
    for name in ("meshkey_udp_message", "meshkey_tcp_message", "reference_plain_tls_echo"):
        figures = result[name]
        print(f"  {name:<28} p50 {figures['p50_ms']:.3f} ms  p99 {figures['p99_ms']:.3f} ms")
    print(f"  ratio meshkey TCP/plain TLS (p50): {result['ratio_tcp_vs_plain_tls_p50']}")
    print(f"  ratio meshkey UDP/TCP (p50): {result['ratio_udp_vs_tcp_p50']}")
