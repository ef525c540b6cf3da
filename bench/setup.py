"""Connection set-up on loopback: request -> first reply over a fresh secure channel to a
known NodeId (issue 20), beside iroh's ``connect()`` -> first reply.

meshkey: a daemon (``blue``) in its own process; per try, a fresh embedded node in this
process (a new identity, no hop, nothing cached; made outside the figure) dials blue by its
NodeId and address with blue's channel key known (as a ``/peer/`` dial knows it from blue's
signed record: Noise IK), and the clock runs from the request until the echo's 64-byte reply
is back: the QUIC hop and its authentication, the channel's handshake and the round trip.
The same with the hop already up (a second channel from a node that has one), for where the
time goes. iroh 1.2.0 (PyPI bindings, its own venv, ``bench/iroh_setup.py``): per try a
fresh endpoint, ``connect()`` to the server's address, one stream, 64 bytes and their echo.

    python -m bench setup
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import uvloop

from bench.common import daemons, save, summary
from bench.portal import IROH_VERSION, iroh_python
from meshkey.node.core import Node


async def _meshkey(route: str, count: int) -> dict[str, Any]:
    async with Node(tcp=None) as learner:
        channel = learner.channels.get(await learner.create_secure_channel(route))
        assert channel is not None
        key = channel.session.peer_static
        assert key is not None
    cold: list[float] = []
    for _ in range(count):
        async with Node(tcp=None) as node:
            started = time.perf_counter()
            resolved = await node.resolve_secure(route)
            opened = await node.channels.create(resolved, responder_key=key)
            await node.send(f"/service/{opened.address}/service/echo", b"x" * 64)
            cold.append((time.perf_counter() - started) * 1000)
            assert opened.handshake == "IK"
    warm: list[float] = []
    async with Node(tcp=None) as node:
        resolved = await node.resolve_secure(route)
        await node.channels.create(resolved, responder_key=key)  # the hop is up from now
        for _ in range(count):
            started = time.perf_counter()
            opened = await node.channels.create(resolved, responder_key=key)
            await node.send(f"/service/{opened.address}/service/echo", b"x" * 64)
            warm.append((time.perf_counter() - started) * 1000)
            await node.channels.delete(opened.address)
    return {"cold": summary(cold), "hop_up": summary(warm)}


def _iroh(count: int) -> dict[str, Any]:
    python = iroh_python()
    if python is None:
        return {"error": f"iroh {IROH_VERSION} (PyPI) could not be installed"}
    script = Path(__file__).with_name("iroh_setup.py")
    run = subprocess.run(
        [str(python), str(script), str(count)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if run.returncode != 0:
        return {"error": run.stderr.strip().splitlines()[-1] if run.stderr else "failed"}
    return {"cold": summary(json.loads(run.stdout)["first_reply_ms"])}


def main(*, quick: bool = False) -> None:
    count = 20 if quick else 100
    with daemons("blue") as home:
        route = f"{home.resolve_node('blue')}/service/api"
        ours = uvloop.run(_meshkey(route, count))
    theirs = _iroh(count)
    results: dict[str, Any] = {"meshkey": ours, "iroh": theirs}
    if "cold" in theirs:
        results["ratio_p50"] = round(ours["cold"]["p50_ms"] / theirs["cold"]["p50_ms"], 2)
    save("setup", results)
    print(f"connection set-up on loopback, request -> first reply ({count} tries each)")
    rows = [("meshkey, fresh node, IK", ours["cold"]), ("meshkey, hop already up", ours["hop_up"])]
    if "cold" in theirs:
        rows.append((f"iroh {IROH_VERSION}, fresh endpoint", theirs["cold"]))
    for label, figures in rows:
        print(f"  {label:<28} p50 {figures['p50_ms']:7.2f} ms  p99 {figures['p99_ms']:7.2f} ms")
    if "cold" in theirs:
        print(f"  ratio (p50, meshkey cold / iroh): {results['ratio_p50']}")
    else:
        print(f"  iroh: {theirs['error']}")
