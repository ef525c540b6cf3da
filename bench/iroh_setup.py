"""iroh's connection set-up on loopback, the reference row of ``bench setup``.

Runs under the interpreter of iroh's own venv (``bench.portal.iroh_python``), never under
meshkey's. The client spawns ``bench/iroh_peer.py server`` (an echo endpoint, relays off),
then, per try, binds a fresh endpoint (a new identity, nothing cached, outside the figure)
and times ``connect()`` to the server's EndpointAddr, one bidirectional stream, 64 bytes out
and their echo back: request -> first reply over a fresh connection to a known id.

    IROH_VENV/bin/python bench/iroh_setup.py TRIES   # prints one JSON line
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import iroh  # type: ignore[import-not-found]  # only in the iroh venv

sys.path.insert(0, str(Path(__file__).parent))
from iroh_peer import _patch_writer  # type: ignore[import-not-found]

ALPN = b"meshkey-bench/iroh"
PEER = Path(__file__).with_name("iroh_peer.py")


async def _endpoint() -> iroh.Endpoint:
    options = iroh.EndpointOptions(
        preset=iroh.preset_minimal(),
        bind_addr="127.0.0.1:0",
        relay_mode=iroh.RelayMode.disabled(),
        alpns=[ALPN],
    )
    return await iroh.Endpoint.bind(options)


async def tries(named: dict[str, object], count: int) -> list[float]:
    target = iroh.EndpointAddr(
        iroh.EndpointId.from_string(str(named["id"])), None, named["addresses"]
    )
    samples = []
    for _ in range(count):
        endpoint = await _endpoint()
        started = time.perf_counter()
        connection = await endpoint.connect(target, ALPN)
        stream = await connection.open_bi()
        send, recv = stream.send(), stream.recv()
        await send.write_all(b"e" + b"x" * 64)
        await recv.read_exact(64)
        samples.append((time.perf_counter() - started) * 1000)
        await send.finish()
        await endpoint.close()
    return samples


def main() -> None:
    _patch_writer()  # the bindings' per-byte writer (see iroh_peer.py)
    count = int(sys.argv[1])
    server = subprocess.Popen(
        [sys.executable, str(PEER), "server"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        named = json.loads(server.stdout.readline())
        print(json.dumps({"first_reply_ms": asyncio.run(tries(named, count)), "iroh": "1.2.0"}))
    finally:
        server.terminate()
        server.wait(5)


if __name__ == "__main__":
    main()
