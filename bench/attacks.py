"""Attacks on a node daemon, each for a few seconds, while a legitimate client measures.

One daemon (the target) runs on loopback. A legitimate client in this process sends 64-byte
echo requests to it, one at a time, over UDP (QUIC), and records success and latency in three
windows: before, during and after each attack. The attacks are the ones the security review
found (issue 8), bounded in time and count and sent only to loopback:

* ``timeout-loop``: requests whose sender gives up at once (the error-reply loop);
* ``junk-initials``: QUIC Initials full of garbage, from 64 source ports;
* ``preauth-frames``: TLS connections announcing 2 MiB frames before authenticating;
* ``handshake-flood``: secure-channel message 1s from one identity (~300/s);
* ``slow-reader``: echo requests whose replies are never read;
* ``quic-firehose``: one authenticated QUIC peer sending 64 KiB messages as fast as it can;
* ``malformed``: malformed messages on an authenticated hop (the log must not explode).

The table gives the legitimate client's success rate and p50/p99 latency in each window and
the daemon's RSS before and after. Run: ``python -m bench attacks`` (``--quick``: shorter).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import random
import socket
import ssl
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

from bench.common import daemons, percentile, save
from meshkey.identity import Identity
from meshkey.node.core import Node
from meshkey.node.launcher import node_summary
from meshkey.node.state import Home
from meshkey.routing.address import ServiceAddress, TransportAddress, parse_address, parse_route
from meshkey.routing.message import Message
from meshkey.transport.blocking import BlockingHop
from meshkey.transport.tls import SERVER_NAME, client_context


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _log_bytes(home: Home) -> int:
    node = home.node("target")
    return sum(p.stat().st_size for p in node.path.glob("node.log*"))


class Target:
    def __init__(self, pid: int, udp: str, tcp: str) -> None:
        self.pid = pid
        self.udp_text, self.tcp_text = udp, tcp
        address = parse_address(udp)
        assert isinstance(address, TransportAddress)
        self.udp = address
        address = parse_address(tcp)
        assert isinstance(address, TransportAddress)
        self.tcp = address

    @classmethod
    def of(cls, home: Home) -> Target:
        summary = node_summary(home, "target")
        udp = next(a for a in summary["addresses"] if "/udp/" in a)
        tcp = next(a for a in summary["addresses"] if "/tcp/" in a)
        return cls(int(summary["pid"]), udp, tcp)


async def _measure(client: Node, route: str, seconds: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    latencies, failures = [], 0
    while loop.time() < end:
        started = time.perf_counter()  # loop.time() is millisecond-grained under uvloop
        try:
            await client.send(route, b"x" * 64, timeout=2.0)
            latencies.append((time.perf_counter() - started) * 1000)
        except Exception:
            failures += 1
        await asyncio.sleep(0.01)
    total = len(latencies) + failures
    return {
        "success": len(latencies) / total if total else 0.0,
        "p50_ms": round(percentile(latencies, 0.5), 2) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99), 2) if latencies else None,
        "n": total,
    }


# -- the attacks: each runs in its own process (so it does not take the measuring client's
# -- GIL), until ``stop`` is set ----------------------------------------------------------


def _in_loop(
    work: Callable[[Target, asyncio.Event], Awaitable[None]],
) -> Callable[[Target, threading.Event], None]:
    def run(target: Target, stop: threading.Event) -> None:
        async def main() -> None:
            flag = asyncio.Event()
            running: asyncio.Future[None] = asyncio.ensure_future(work(target, flag))
            await asyncio.to_thread(stop.wait)
            flag.set()
            await running

        uvloop.run(main())

    return run


def _attack_process(name: str, pid: int, udp: str, tcp: str, stop: Any) -> None:
    ATTACKS[name](Target(pid, udp, tcp), stop)


async def timeout_loop(target: Target, stop: asyncio.Event) -> None:
    async with Node(tcp=None) as mallory:
        route = f"{target.udp}/service/uppercase"
        while not stop.is_set():
            with contextlib.suppress(Exception):
                await mallory.send(route, b"y" * 90_000, timeout=0.001)
            await asyncio.sleep(0.05)


def _junk_initials(target: Target, stop: threading.Event) -> None:
    rng = random.Random(1)
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(64)]
    sent = 0
    while not stop.is_set() and sent < 200_000:
        for sock in senders:
            dcid, scid = rng.randbytes(8), rng.randbytes(8)
            header = b"\xc3\x00\x00\x00\x01\x08" + dcid + b"\x08" + scid + b"\x00"
            body = rng.randbytes(1200 - len(header) - 2)
            sock.sendto(header + struct.pack("!H", 0x4000 | len(body)) + body, target.udp.endpoint)
            sent += 1
        time.sleep(0.001)
    for sock in senders:
        sock.close()


def _preauth_frames(target: Target, stop: threading.Event) -> None:
    context, held = client_context(), list[ssl.SSLSocket]()
    announce = struct.pack("!I", 2 * 1024 * 1024)
    while not stop.is_set() and len(held) < 2000:
        try:
            raw = socket.create_connection(target.tcp.endpoint, timeout=2)
            tls = context.wrap_socket(raw, server_hostname=SERVER_NAME)
            tls.sendall(announce + os.urandom(256 * 1024))
            held.append(tls)
        except (OSError, ssl.SSLError):
            time.sleep(0.01)
    for sock in held:
        sock.close()


async def handshake_flood(target: Target, stop: asyncio.Event) -> None:
    async with Node(tcp=None) as mallory:
        hello = Message(parse_route(f"{target.udp}/service/api"), (), b"\x01\x01" + bytes(32))
        while not stop.is_set():
            for _ in range(30):
                await mallory.router.route(hello)
            await asyncio.sleep(0.1)


def _slow_reader(target: Target, stop: threading.Event) -> None:
    hop = BlockingHop(Identity.generate(), target.tcp, timeout=5)
    hop.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    request = Message((ServiceAddress("echo"),), (ServiceAddress("me"),), b"z" * 65536)
    wire = request.to_wire()
    sent = 0
    while not stop.is_set() and sent < 2000:
        hop.sock.settimeout(0.2)
        try:
            hop.send(wire)
            sent += 1
        except Exception:
            time.sleep(0.05)
    hop.sock.close()


async def quic_firehose(target: Target, stop: asyncio.Event) -> None:
    async with Node(tcp=None) as mallory:
        message = Message(parse_route(f"{target.udp}/service/echo"), (), b"f" * 65536)
        while not stop.is_set():
            for _ in range(16):
                await mallory.router.route(message)
            await asyncio.sleep(0)


def _malformed(target: Target, stop: threading.Event) -> None:
    with BlockingHop(Identity.generate(), target.tcp, timeout=5) as hop:
        sent = 0
        while not stop.is_set() and sent < 200_000:
            hop.send(b"\x01\x00\x01\x00\x03abc" + os.urandom(16))
            sent += 1


ATTACKS: dict[str, Callable[[Target, Any], None]] = {
    "timeout-loop": _in_loop(timeout_loop),
    "junk-initials": _junk_initials,
    "preauth-frames": _preauth_frames,
    "handshake-flood": _in_loop(handshake_flood),
    "slow-reader": _slow_reader,
    "quic-firehose": _in_loop(quic_firehose),
    "malformed": _malformed,
}


async def _run(home: Home, window: float) -> list[dict[str, Any]]:
    target = Target.of(home)
    route = f"{target.udp}/service/echo"
    context = multiprocessing.get_context("spawn")
    rows = []
    async with Node(tcp=None) as client:
        await client.send(route, b"warm-up")
        for name in ATTACKS:
            rss_before, log_before = _rss_mib(target.pid), _log_bytes(home)
            before = await _measure(client, route, window)
            stop = context.Event()
            process = context.Process(
                target=_attack_process,
                args=(name, target.pid, target.udp_text, target.tcp_text, stop),
            )
            process.start()
            await asyncio.sleep(1.0)  # spawning, then letting it build up
            during = await _measure(client, route, window)
            stop.set()
            await asyncio.to_thread(process.join, 30)
            if process.is_alive():
                process.kill()
            after = await _measure(client, route, window)
            rows.append(
                {
                    "attack": name,
                    "before": before,
                    "during": during,
                    "after": after,
                    "rss_before_mib": round(rss_before, 1),
                    "rss_after_mib": round(_rss_mib(target.pid), 1),
                    "log_growth_kib": round((_log_bytes(home) - log_before) / 1024, 1),
                }
            )
    return rows


def _cell(window: dict[str, Any]) -> str:
    return f"{window['success']:.0%} {window['p50_ms']}/{window['p99_ms']}"


def main(*, quick: bool = False) -> None:
    window = 1.5 if quick else 3.0
    with daemons("target") as home:
        rows = uvloop.run(_run(home, window))
    print("\nattacks on one daemon; legit echo over QUIC: success, p50/p99 ms")
    print(f"{'attack':<16} {'before':<18} {'during':<18} {'after':<18} {'RSS MiB':<13} log KiB")
    for row in rows:
        print(
            f"{row['attack']:<16} {_cell(row['before']):<18} {_cell(row['during']):<18} "
            f"{_cell(row['after']):<18} {row['rss_before_mib']:>5}->{row['rss_after_mib']:<6} "
            f"{row['log_growth_kib']}"
        )
    save("attacks", {"window_s": window, "rows": rows})


if __name__ == "__main__":
    main()
