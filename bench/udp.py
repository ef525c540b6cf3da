"""Bulk transfer over one QUIC hop between two processes, side by side with a plain qh3 stream.

meshkey: this process embeds a node and sends 1 MiB messages to a counting worker on a node
in another process, then one echo on the same (ordered) link to know they all arrived. Once
with the batching socket layer (GSO/GRO), once without. Reference in the same run: one plain
qh3 stream between two processes with qh3's own asyncio client and server (no meshkey
routing, framing or hop protocol), the same number of bytes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import uvloop

from bench.common import save, served_in_process
from meshkey.identity import Identity
from meshkey.identity.certificate import certificate_pem
from meshkey.node.core import Node
from meshkey.routing.message import Message

CHUNK = 1024 * 1024


def _meshkey_sink(batching: bool, ports: Any, stop: Any) -> None:
    async def main() -> None:
        async with Node(tcp=None, udp_batching=batching) as node:
            received = [0]

            async def sink(message: Message) -> None:
                received[0] += len(message.payload)

            node.register_worker("sink", sink, inline=True)
            ports.put(str(node.addresses[0]))
            await asyncio.get_running_loop().run_in_executor(None, stop.get)

    uvloop.run(main())


async def _meshkey_send(address: str, total: int, batching: bool) -> tuple[float, dict[str, int]]:
    async with Node(tcp=None, udp=None, udp_batching=batching) as node:
        sink = node.resolve(f"{address}/service/sink")
        payload = bytes(CHUNK)
        await node.send(f"{address}/service/echo", b"warm-up")
        started = time.perf_counter()
        for _ in range(total // CHUNK):
            await node.router.route(Message(sink, (), payload))
        await node.send(f"{address}/service/echo", b"sync", timeout=300)
        elapsed = time.perf_counter() - started
        return total / elapsed / 1e6, dict(node.udp.endpoint.stats)


def _qh3_server(ports: Any, stop: Any) -> None:
    """A plain qh3 server counting one stream (runs until its process is ended)."""

    from qh3.asyncio.server import serve
    from qh3.quic.configuration import QuicConfiguration

    async def main() -> None:
        identity = Identity.generate()
        configuration = QuicConfiguration(is_client=False, alpn_protocols=["bench"])
        configuration.load_cert_chain(certificate_pem(identity) + identity.to_pem())

        def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            async def drain() -> None:
                count = 0
                while chunk := await reader.read(1 << 20):
                    count += len(chunk)
                writer.write(str(count).encode())
                writer.write_eof()

            asyncio.get_running_loop().create_task(drain())

        server = await serve("127.0.0.1", 0, configuration=configuration, stream_handler=handler)
        transport = server._transport
        assert transport is not None
        ports.put(transport.get_extra_info("sockname")[1])
        await asyncio.Future()

    uvloop.run(main())


async def _qh3_send(port: int, total: int) -> float:
    import ssl

    from qh3.asyncio.client import connect
    from qh3.quic.configuration import QuicConfiguration
    from qh3.tls import SignatureAlgorithm

    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=["bench"], verify_mode=ssl.CERT_NONE
    )
    configuration.signature_algorithms = [SignatureAlgorithm.ED25519]
    async with connect("127.0.0.1", port, configuration=configuration) as client:
        reader, writer = await client.create_stream()
        payload = bytes(CHUNK)
        started = time.perf_counter()
        for _ in range(total // CHUNK):
            writer.write(payload)
            await asyncio.sleep(0)  # qh3's stream writer has no drain(): let it transmit
        writer.write_eof()
        received = int(await reader.read())
        elapsed = time.perf_counter() - started
        assert received == total, (received, total)
        return total / elapsed / 1e6


def main(*, quick: bool = False) -> None:
    total = (64 if quick else 256) * CHUNK
    results: dict[str, Any] = {"bytes": total}
    for batching in (True, False):
        with served_in_process(_meshkey_sink, batching) as address:
            rate, stats = uvloop.run(_meshkey_send(address, total, batching))
        name = "meshkey_quic_batched" if batching else "meshkey_quic_unbatched"
        results[name] = {"MB_per_s": round(rate, 1), "sender_socket": stats}
    with served_in_process(_qh3_server) as port:
        reference = uvloop.run(_qh3_send(port, total))
    results["reference_plain_qh3_stream"] = {"MB_per_s": round(reference, 1)}
    ours = results["meshkey_quic_batched"]["MB_per_s"]
    results["ratio_batched_vs_unbatched"] = round(
        ours / results["meshkey_quic_unbatched"]["MB_per_s"], 2
    )
    results["ratio_batched_vs_plain_qh3"] = round(
        ours / results["reference_plain_qh3_stream"]["MB_per_s"], 2
    )
    save("udp", results)
    print(f"bulk transfer over one QUIC hop, two processes, {total // CHUNK} MiB")
    for name in ("meshkey_quic_batched", "meshkey_quic_unbatched", "reference_plain_qh3_stream"):
        print(f"  {name:<30} {results[name]['MB_per_s']:8.1f} MB/s")
    batched = results["meshkey_quic_batched"]["sender_socket"]
    print(
        f"  batched sender: {batched['datagrams_out']} datagrams in "
        f"{batched['syscalls_out']} sendmsg calls"
    )
    print(
        f"  ratio batched/unbatched {results['ratio_batched_vs_unbatched']}, "
        f"batched/plain qh3 {results['ratio_batched_vs_plain_qh3']}"
    )
