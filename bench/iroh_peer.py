"""iroh's core, one QUIC stream between two processes: the reference row of ``bench portal``.

Runs under the interpreter of a venv of its own that holds iroh's PyPI bindings (``iroh``,
uniffi-generated over iroh's Rust core; :func:`bench.portal.iroh_python` makes it), never
under meshkey's: it imports nothing of meshkey or of the bench package.

    IROH_VENV/bin/python bench/iroh_peer.py client TOTAL RTTS   # prints one JSON line

The client spawns the server (``server``: this script again, which prints its EndpointAddr
and answers), dials it on loopback (relays disabled), sends TOTAL bytes on one stream in
1 MiB writes, finishes it and waits for the byte count; then 64-byte round trips on another
stream. CPU seconds are both processes' user+system time over the bulk transfer.

The bindings' generated writer (``_UniffiRustBufferBuilder.write``) copies a ``bytes``
argument into Rust's buffer one byte at a time in a Python loop (2 s per MiB here): that is
the bindings' defect, not iroh's, and this script replaces it with one ``memmove`` in its
own processes, so what is measured is iroh's core, not the generated glue.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import iroh  # type: ignore[import-not-found]  # only in the iroh venv
from iroh import iroh_ffi

ALPN = b"meshkey-bench/iroh"
CHUNK = 1024 * 1024


def _patch_writer() -> None:
    """One memmove instead of the generated per-byte loop (see the module docstring)."""
    builder = iroh_ffi._UniffiRustBufferBuilder

    def write(self: object, value: bytes) -> None:
        size = len(value)
        with self._reserve(size):  # type: ignore[attr-defined]
            rbuf = self.rbuf  # type: ignore[attr-defined]
            base = ctypes.cast(rbuf.data, ctypes.c_void_p).value
            assert base is not None
            ctypes.memmove(base + rbuf.len, bytes(value), size)

    builder.write = write


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _endpoint() -> iroh.Endpoint:
    options = iroh.EndpointOptions(
        preset=iroh.preset_minimal(),
        bind_addr="127.0.0.1:0",
        relay_mode=iroh.RelayMode.disabled(),
        alpns=[ALPN],
    )
    return await iroh.Endpoint.bind(options)


async def serve() -> None:
    endpoint = await _endpoint()
    address = endpoint.addr()
    print(
        json.dumps({"id": str(address.id()), "addresses": address.direct_addresses()}),
        flush=True,
    )
    while (incoming := await endpoint.accept_next()) is not None:
        connection = await (await incoming.accept()).connect()
        asyncio.get_running_loop().create_task(_serve_connection(connection))


async def _serve_connection(connection: iroh.Connection) -> None:
    while True:
        try:
            stream = await connection.accept_bi()
        except Exception:
            return
        asyncio.get_running_loop().create_task(_serve_stream(stream))


async def _serve_stream(stream: iroh.BiStream) -> None:
    recv, send = stream.recv(), stream.send()
    kind = await recv.read_exact(1)
    if kind == b"s":  # sink: count to the end, answer the count
        count = 0
        while data := await recv.read(CHUNK):
            count += len(data)
        await send.write_all(str(count).encode())
        await send.finish()
    else:  # echo
        while data := await recv.read(CHUNK):
            await send.write_all(data)
        await send.finish()


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


async def client(server: subprocess.Popen[str], total: int, rtts: int) -> dict[str, object]:
    assert server.stdout is not None
    named = json.loads(server.stdout.readline())
    endpoint = await _endpoint()
    target = iroh.EndpointAddr(iroh.EndpointId.from_string(named["id"]), None, named["addresses"])
    connection = await endpoint.connect(target, ALPN)
    await _transfer(connection, 8 * CHUNK)  # warm-up
    pids = [os.getpid(), server.pid]
    cpu_before = sum(_cpu_seconds(pid) for pid in pids)
    rate = await _transfer(connection, total)
    cpu = sum(_cpu_seconds(pid) for pid in pids) - cpu_before
    samples = await _round_trips(connection, rtts)
    await endpoint.close()
    return {
        "MB_per_s": round(rate, 1),
        "node_cpu_s_per_GB": round(cpu / (total / 1e9), 2),
        "rtt_64B": {
            "p50_ms": round(_percentile(samples, 0.5), 3),
            "p99_ms": round(_percentile(samples, 0.99), 3),
        },
        "iroh": "1.2.0",
    }


async def _transfer(connection: iroh.Connection, total: int) -> float:
    stream = await connection.open_bi()
    send, recv = stream.send(), stream.recv()
    payload = bytes(CHUNK)
    started = time.perf_counter()
    await send.write_all(b"s")
    for _ in range(total // CHUNK):
        await send.write_all(payload)
    await send.finish()
    reply = await recv.read_to_end(64)
    elapsed = time.perf_counter() - started
    assert int(reply) == total, (reply, total)
    return total / elapsed / 1e6


async def _round_trips(connection: iroh.Connection, count: int) -> list[float]:
    stream = await connection.open_bi()
    send, recv = stream.send(), stream.recv()
    await send.write_all(b"e")
    message = b"x" * 64
    samples = []
    for i in range(count + 20):
        started = time.perf_counter()
        await send.write_all(message)
        await recv.read_exact(64)
        if i >= 20:
            samples.append((time.perf_counter() - started) * 1000)
    await send.finish()
    return samples


def main() -> None:
    _patch_writer()
    if sys.argv[1] == "server":
        asyncio.run(serve())
        return
    total, rtts = int(sys.argv[2]), int(sys.argv[3])
    server = subprocess.Popen(
        [sys.executable, __file__, "server"], stdout=subprocess.PIPE, text=True
    )
    try:
        print(json.dumps(asyncio.run(client(server, total, rtts))))
    finally:
        server.terminate()
        server.wait(5)


if __name__ == "__main__":
    main()
