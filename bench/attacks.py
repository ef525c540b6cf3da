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
the daemon's RSS before and after.

Then the node graph's attacks (issue 19, item 5), on embedded nodes with their own
DhtService (so each attack can place its attacker: a server of the victim's graph, a
stranger beside one...), with real QUIC hops on loopback. What the victim sends on the
attacker's say-so is counted where it lands (UDP sockets where no meshkey runs), what the
attacker sends by a relay in front of it; the *amplification* is the one over the other.
The legitimate user's operation is measured before, during and after each:

* ``dht-forged-answers``: a server of the graph answers every FIND_NODE with 20 made-up
  NodeIds x 5 addresses of a host running no meshkey (legit: ``peer find`` of real nodes);
* ``dht-routed-ping``: a stranger routes PINGs claiming to be a client through a server
  (legit: that server is still handed out in FIND_NODE answers);
* ``dht-routed-dial-back``: a stranger routes DIAL_BACKs naming a victim through a server;
* ``dht-helper-dial-back``: a server of the graph asks for helper dials to a victim;
* ``dht-sybils``: 150 identities from one IP dial in and claim to be servers (the
  diversity limits enforced on loopback; legit: FIND_NODE answers of honest nodes);
* ``dht-stale-record``: the only node answering replays a superseded record (legit: the
  reader never takes it).

Run: ``python -m bench attacks`` (``--quick``: shorter; ``BENCH_ATTACKS=dht`` or
``BENCH_ATTACKS=daemon`` for one part).
Issue 19's attacks on punching, forwarding and relays, and on portals, follow, on daemons of
their own (the sections at the end; ``BENCH_ATTACKS=network`` or ``portal`` for one).
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
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

from bench.common import daemons, percentile, save
from meshkey.dht.budget import HELPER_PADDING
from meshkey.dht.diversity import Diversity
from meshkey.dht.hops import reply_slot
from meshkey.dht.records import sign_record
from meshkey.dht.service import DhtService
from meshkey.identity import Identity
from meshkey.identity.node_id import NodeId
from meshkey.node import launcher
from meshkey.node.core import Node
from meshkey.node.launcher import node_summary
from meshkey.node.state import Home
from meshkey.routing.address import ServiceAddress, TransportAddress, parse_address, parse_route
from meshkey.routing.message import Message
from meshkey.transport.blocking import BlockingHop
from meshkey.transport.interfaces import interface_addresses
from meshkey.transport.tls import SERVER_NAME, client_context
from meshkey.wire.dht import (
    Answer,
    DialBack,
    FindNode,
    FindValue,
    Mode,
    Nodes,
    Ping,
    Pong,
    Store,
    Value,
    WireContact,
    decode_rpc,
    encode_rpc,
)
from meshkey.wire.net import Endpoint


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


# -- the node graph's attacks (issue 19, item 5) ----------------------------------------


class _Sink:
    """A UDP socket where no meshkey runs (a victim of reflection): counts what lands."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.bytes = 0
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._read)

    @property
    def address(self) -> Endpoint:
        host, port = self.sock.getsockname()
        return host, port

    def _read(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                self.bytes += len(self.sock.recv(65536))

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


class _Relay(asyncio.DatagramProtocol):
    """A UDP relay in front of one node, for one client: counts what each sends through."""

    def __init__(self, target: Endpoint) -> None:
        self.target = target
        self.client: Endpoint | None = None
        self.sent_by_target = 0
        self.sent_by_client = 0
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        source = (str(addr[0]), int(addr[1]))
        if source == self.target:
            self.sent_by_target += len(data)
            if self.client is not None:
                self.transport.sendto(data, self.client)
        else:
            self.client = source
            self.sent_by_client += len(data)
            self.transport.sendto(data, self.target)


def _endpoint(node: Node) -> Endpoint:
    address = node.udp.address
    assert address is not None
    return address.host, address.port


def _hop(node: Node) -> TransportAddress:
    return TransportAddress.from_socket("udp", *_endpoint(node), node.node_id)


class _Lab:
    """Embedded nodes, their graphs, sinks and relays; all closed at the end."""

    def __init__(self, stack: contextlib.AsyncExitStack) -> None:
        self.stack = stack

    async def bare(self, host: str = "127.0.0.1") -> Node:
        """A node without a graph service (an attacker's own /service/dht goes there)."""
        node = await self.stack.enter_async_context(Node(tcp=None, udp=f"{host}:0"))
        await node.graph.close()
        return node

    async def node(self, host: str = "127.0.0.1", **options: Any) -> tuple[Node, DhtService]:
        node = await self.bare(host)
        options.setdefault("mode", Mode.SERVER)
        graph = DhtService(node.router, node.identity, node.udp, **options)
        node.events.subscribe(graph.on_transport_event)
        self.stack.push_async_callback(graph.close)
        return node, await graph.start()

    def sinks(self, count: int) -> list[_Sink]:
        sinks = [_Sink() for _ in range(count)]
        for sink in sinks:
            self.stack.callback(sink.close)
        return sinks

    async def relay(self, target: Node) -> tuple[_Relay, Endpoint]:
        loop = asyncio.get_running_loop()
        transport, relay = await loop.create_datagram_endpoint(
            lambda: _Relay(_endpoint(target)), local_addr=("127.0.0.1", 0)
        )
        self.stack.callback(transport.close)
        host, port = transport.get_extra_info("sockname")[:2]
        return relay, (host, port)


async def _legit(operation: Callable[[], Awaitable[bool]], seconds: float) -> dict[str, Any]:
    """The legitimate user's operation, again and again for ``seconds``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    latencies, failures = [], 0
    while loop.time() < end:
        started = time.perf_counter()
        try:
            ok = await asyncio.wait_for(operation(), 10.0)
        except Exception:
            ok = False
        if ok:
            latencies.append((time.perf_counter() - started) * 1000)
        else:
            failures += 1
        await asyncio.sleep(0.02)
    total = len(latencies) + failures
    return {
        "success": len(latencies) / total if total else 0.0,
        "p50_ms": round(percentile(latencies, 0.5), 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99), 1) if latencies else None,
        "n": total,
    }


async def _windows(
    window: float,
    legit: Callable[[], Awaitable[bool]],
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
) -> dict[str, Any]:
    before = await _legit(legit, window)
    await start()
    during = await _legit(legit, window)
    await stop()
    await asyncio.sleep(1.0)  # the last dials' closes land
    after = await _legit(legit, window)
    return {"before": before, "during": during, "after": after}


def _forged(sinks: list[_Sink]) -> tuple[WireContact, ...]:
    return tuple(
        WireContact(
            Identity.generate().node_id.raw,
            Mode.SERVER,
            tuple(s.address for s in sinks[5 * i : 5 * i + 5]),
        )
        for i in range(20)
    )


async def _running(work: Callable[[], Awaitable[None]], flag: asyncio.Event) -> None:
    while not flag.is_set():
        with contextlib.suppress(Exception):
            await work()


async def dht_forged_answers(lab: _Lab, window: float) -> dict[str, Any]:
    sinks = lab.sinks(100)
    _, victim_graph = await lab.node()
    honest = [await lab.node() for _ in range(5)]
    forger = await lab.bare()
    forging = asyncio.Event()
    answered = [0]

    async def forge(message: Message) -> None:
        rpc = decode_rpc(message.payload)
        contacts = _forged(sinks) if forging.is_set() else ()
        answer: Answer
        if isinstance(rpc, Ping):
            answer = Pong(rpc.txid, Mode.SERVER, None)
        elif isinstance(rpc, FindNode):
            answer = Nodes(rpc.txid, Mode.SERVER, contacts)
            answered[0] += 1
        elif isinstance(rpc, FindValue):
            answer = Value(rpc.txid, Mode.SERVER, None, contacts)
            answered[0] += 1
        else:
            return
        await forger.router.reply(message, encode_rpc(answer))

    forger.router.register("dht", forge, admit=False)
    relay, relay_address = await lab.relay(forger)
    await victim_graph.add(forger.node_id, relay_address)
    for node, _ in honest:
        await victim_graph.add(node.node_id, _endpoint(node))
    refreshing = asyncio.Event()

    # The victim's own lookups (refreshes, /peer/ routes): each asks the forger too.
    async def refresh() -> None:
        await victim_graph.lookup(Identity.generate().node_id, timeout=10)
        await asyncio.sleep(0.2)  # five a second: well within every peer's request rate

    refresher = asyncio.ensure_future(_running(refresh, refreshing))
    marks: dict[str, int] = {}

    async def start() -> None:
        marks["sent"], marks["reached"] = relay.sent_by_target, sum(s.bytes for s in sinks)
        marks["answers"] = answered[0]
        forging.set()

    async def stop() -> None:
        forging.clear()
        marks["answers"] = answered[0] - marks["answers"]

    async def legit() -> bool:
        target, _ = random.choice(honest)
        return (await victim_graph.find(target.node_id, timeout=10)).found

    windows = await _windows(window, legit, start, stop)
    refreshing.set()
    await refresher
    sent = relay.sent_by_target - marks["sent"]
    reached = sum(s.bytes for s in sinks) - marks["reached"]
    return {
        **windows,
        "amplification": round(reached / sent, 2) if sent else None,
        "detail": f"{marks['answers']} forged answers, {sent} B from the forger, "
        f"{reached} B to {sum(s.bytes > 0 for s in sinks)} of 100 addresses",
    }


async def _three(lab: _Lab) -> tuple[tuple[Node, DhtService], ...]:
    """C (the victim), B (a server of C's graph), L (a legitimate asker), all joined."""
    victim = await lab.node()
    server = await lab.node()
    asker = await lab.node()
    await victim[1].join([(server[0].node_id, _endpoint(server[0]))], timeout=10)
    await asker[1].add(victim[0].node_id, _endpoint(victim[0]))
    return victim, server, asker


async def _route_through(
    sender: Node, via: TransportAddress, to: Node, rpc: Ping | DialBack
) -> None:
    """``sender`` routes ``rpc`` to ``to``'s DHT service through the node at ``via``."""
    onward = (via, _hop(to), ServiceAddress("dht"))
    route = (ServiceAddress(reply_slot(rpc.txid)),)
    await sender.router.route(Message(onward, route, encode_rpc(rpc)))


async def _through_relay(lab: _Lab, node: Node) -> tuple[_Relay, TransportAddress]:
    """A relay in front of ``node`` and the hop address that reaches it through the relay
    (pinned to its NodeId): what a stranger sends that way is counted."""
    relay, (host, port) = await lab.relay(node)
    return relay, TransportAddress.from_socket("udp", host, port, node.node_id)


async def _find_node(asker: DhtService, victim: Node, target: NodeId) -> Answer:
    ask = FindNode(random.randbytes(8), Mode.SERVER, target.raw)
    return await asker.request(victim.node_id, _endpoint(victim), ask)


def _flood(
    work: Callable[[], Awaitable[None]],
) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    """``start`` and ``stop`` of ``work`` done again and again in the background."""
    flag = asyncio.Event()
    task: list[asyncio.Future[None]] = []

    async def start() -> None:
        task.append(asyncio.ensure_future(_running(work, flag)))

    async def stop() -> None:
        flag.set()
        await task[0]

    return start, stop


async def dht_routed_ping(lab: _Lab, window: float) -> dict[str, Any]:
    (victim, victim_graph), (server, _), (_, asker) = await _three(lab)
    stranger, _ = await lab.node()
    relay, via = await _through_relay(lab, server)

    async def ping() -> None:
        await _route_through(stranger, via, victim, Ping(random.randbytes(8), Mode.CLIENT))
        await asyncio.sleep(0.02)

    async def legit() -> bool:
        answer = await _find_node(asker, victim, server.node_id)
        return isinstance(answer, Nodes) and any(
            c.node_id == server.node_id.raw for c in answer.contacts
        )

    start, stop = _flood(ping)
    windows = await _windows(window, legit, start, stop)
    entry = victim_graph.engine.table.get(server.node_id)
    demoted = entry is None or entry.mode != Mode.SERVER
    return {
        **windows,
        "amplification": 0.0,  # dropped unanswered: nothing is sent on its say-so
        "detail": f"{relay.sent_by_client} B of routed PINGs; server demoted: {demoted}",
    }


async def dht_routed_dial_back(lab: _Lab, window: float) -> dict[str, Any]:
    (victim, _), (server, _), (_, asker) = await _three(lab)
    stranger, _ = await lab.node()
    (sink,) = lab.sinks(1)
    relay, via = await _through_relay(lab, server)
    target = WireContact(Identity.generate().node_id.raw, Mode.CLIENT, (sink.address,))

    async def ask() -> None:
        rpc = DialBack(random.randbytes(8), Mode.SERVER, bytes(16), target, HELPER_PADDING)
        await _route_through(stranger, via, victim, rpc)
        await asyncio.sleep(0.05)

    async def legit() -> bool:
        return isinstance(await _find_node(asker, victim, server.node_id), Nodes)

    start, stop = _flood(ask)
    windows = await _windows(window, legit, start, stop)
    sent = relay.sent_by_client
    return {
        **windows,
        "amplification": round(sink.bytes / sent, 3) if sent else None,
        "detail": f"{sent} B from the stranger, {sink.bytes} B to the address it named",
    }


async def dht_helper_dial_back(lab: _Lab, window: float) -> dict[str, Any]:
    (victim, victim_graph), (_, _), (_, asker) = await _three(lab)
    attacker, attacker_graph = await lab.node()
    (sink,) = lab.sinks(1)
    relay, relay_address = await lab.relay(attacker)
    await victim_graph.add(attacker.node_id, relay_address)  # a server of the graph
    target = WireContact(Identity.generate().node_id.raw, Mode.CLIENT, (sink.address,))
    marks: dict[str, int] = {}

    async def ask() -> None:
        rpc = DialBack(random.randbytes(8), Mode.SERVER, bytes(16), target, HELPER_PADDING)
        # Over the victim's own hop to it (the one the relay counts).
        await attacker_graph.request(victim.node_id, None, rpc, timeout=5)
        await asyncio.sleep(0.05)

    async def legit() -> bool:
        return isinstance(await _find_node(asker, victim, attacker.node_id), Nodes)

    begin, end = _flood(ask)

    async def start() -> None:
        marks["sent"] = relay.sent_by_target
        await begin()

    async def stop() -> None:
        await end()

    windows = await _windows(window, legit, start, stop)
    sent = relay.sent_by_target - marks["sent"]
    return {
        **windows,
        "amplification": round(sink.bytes / sent, 3) if sent else None,
        "detail": f"{sent} B from the asker, {sink.bytes} B to the address it named",
    }


async def dht_sybils(lab: _Lab, window: float) -> dict[str, Any]:
    strict = Diversity(exempt=lambda ip: False)  # loopback is exempt by default
    victim, victim_graph = await lab.node("127.0.1.1", diversity=strict)
    honest = [await lab.node(f"127.0.{2 + i}.1") for i in range(6)]
    for _, graph in honest:
        await graph.request(victim.node_id, _endpoint(victim), Ping(b"hello000", Mode.SERVER))
    for _ in range(500):  # the victim checks each claim with a dial of its own
        entries = [victim_graph.engine.table.get(node.node_id) for node, _ in honest]
        if all(e is not None and e.mode == Mode.SERVER for e in entries):
            break
        await asyncio.sleep(0.01)
    sybils = [await lab.node("127.0.99.1") for _ in range(150)]
    sybil_ids = {node.node_id for node, _ in sybils}
    _, asker = honest[0]
    shares: list[int] = []

    async def start() -> None:
        for number, (_, graph) in enumerate(sybils):
            txid = number.to_bytes(8, "big")
            await graph.request(victim.node_id, _endpoint(victim), Ping(txid, Mode.SERVER))
        await asyncio.sleep(0.5)  # the victim checks their claims with dials of its own

    async def stop() -> None:
        pass

    async def legit() -> bool:
        answer = await _find_node(asker, victim, NodeId(random.randbytes(32)))
        if not isinstance(answer, Nodes):
            return False
        handed = {NodeId(c.node_id) for c in answer.contacts}
        shares.append(len(handed & sybil_ids))
        return {node.node_id for node, _ in honest[1:]} <= handed

    windows = await _windows(window, legit, start, stop)
    table = victim_graph.engine.table
    held = [e for e in table.entries() if e.node_id in sybil_ids]
    per_bucket = Counter(table.bucket_of(e.node_id) for e in held)
    return {
        **windows,
        "amplification": None,
        "detail": f"150 identities on one IP: {len(held)} places in the graph, at most "
        f"{max(per_bucket.values(), default=0)} in a bucket, at most {max(shares, default=0)} "
        f"of an answer",
    }


async def dht_stale_record(lab: _Lab, window: float) -> dict[str, Any]:
    owner = Identity.generate()
    wall = time.time()
    old = sign_record(owner, 1, wall + 3600, direct=(("192.0.2.1", 4000),))
    new = sign_record(owner, 2, wall + 3600, direct=(("192.0.2.2", 4000),))
    reader, reader_graph = await lab.node()
    forger, forger_graph = await lab.node()
    await reader_graph.request(
        forger.node_id, _endpoint(forger), Store(b"stale001", Mode.SERVER, old.raw)
    )
    await forger_graph.request(
        reader.node_id, _endpoint(reader), Store(b"fresh001", Mode.SERVER, new.raw)
    )
    taken = [0]

    async def legit() -> bool:
        found = await reader_graph.find(owner.node_id, timeout=10)
        stale = found.record is not None and found.record.sequence < 2
        taken[0] += stale
        return not stale

    async def nothing() -> None:
        pass

    windows = await _windows(window, legit, nothing, nothing)
    return {
        **windows,
        "amplification": None,
        "detail": f"superseded record taken {taken[0]} times (the forger the only one asked)",
    }


DHT_ATTACKS: dict[str, Callable[[_Lab, float], Awaitable[dict[str, Any]]]] = {
    "dht-forged-answers": dht_forged_answers,
    "dht-routed-ping": dht_routed_ping,
    "dht-routed-dial-back": dht_routed_dial_back,
    "dht-helper-dial-back": dht_helper_dial_back,
    "dht-sybils": dht_sybils,
    "dht-stale-record": dht_stale_record,
}


async def _run_dht(window: float) -> list[dict[str, Any]]:
    rows = []
    for name, attack in DHT_ATTACKS.items():
        async with contextlib.AsyncExitStack() as stack:
            row = await attack(_Lab(stack), window)
        rows.append({"attack": name, **row})
        print(f"  {name}: {row['detail']}", flush=True)
    return rows


def _factor(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def main(*, quick: bool = False) -> None:
    window = 1.5 if quick else 3.0
    parts = os.environ.get("BENCH_ATTACKS", "daemon,dht,network,portal").split(",")
    results: dict[str, Any] = {"window_s": window}
    if "daemon" in parts:
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
        results["rows"] = rows
    if "dht" in parts:
        print("\nthe node graph's attacks (issue 19, item 5), embedded nodes on loopback")
        dht_rows = uvloop.run(_run_dht(window))
        print("legit operation: success, p50/p99 ms; amplification = bytes sent on the")
        print("attacker's say-so / bytes the attacker sent (target <= 3x)")
        print(f"{'attack':<22} {'before':<18} {'during':<18} {'after':<18} amplification")
        for row in dht_rows:
            print(
                f"{row['attack']:<22} {_cell(row['before']):<18} {_cell(row['during']):<18} "
                f"{_cell(row['after']):<18} {_factor(row['amplification'])}"
            )
        results["dht"] = dht_rows
    if "network" in parts:
        results["network"] = network_attacks(quick=quick)  # issue 19's section, below
    save("attacks", results)
    if "portal" in parts:
        portal_main(quick=quick)


# -- portal attacks (issue 19) ------------------------------------------------------------
#
# Three daemons: "outlet", next to an echo server (its /service/outlet allows only "legit")
# and a firehose server (its /service/firehose takes anyone authenticated); "legit", the
# legitimate client's node, with an inlet to /service/outlet; "inlet", with an inlet to
# /service/firehose. The servers run in a process of their own and count connections. The
# legitimate client opens a new connection through its inlet for every 64-byte echo, so
# each request is a new portal session (admission included). The attacks:
#
# * ``portal-deputy``: a stranger routes packets of 300 OPENs through "legit" (forwarding
#   is open by default) to the outlet that allows only "legit", with an empty return route
#   (it was served as "legit" before issue 19); amplification: the bytes that came back to
#   it over the bytes it sent;
# * ``portal-slow-clients``: 200 TCP clients through the inlet of "inlet" that never read,
#   while the firehose writes as fast as it is let;
# * ``portal-open-flood``: one identity sends 1,000 OPENs (1 MiB windows) to the firehose's
#   outlet and reads nothing (no ACK, no window); what it is sent is the server's data, to
#   itself, resent until its sessions time out: not a reflection, so no factor.
#
# Each row: the legitimate client's success and latency before, during and after; each
# daemon's RSS before, at its peak during, and after the attack's sessions ended; the
# connections the servers saw during it.

PORTAL_DAEMONS = ("outlet", "legit", "inlet")


def _portal_servers(ports: Any, stop: Any) -> None:
    import threading as _threading

    counts = {"echo": 0, "firehose": 0}
    listeners = {name: socket.create_server(("127.0.0.1", 0), backlog=2048) for name in counts}
    chunk = os.urandom(256 * 1024)

    def echo(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def pour(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            while True:
                conn.sendall(chunk)

    def accept(name: str) -> None:
        while True:
            try:
                conn, _ = listeners[name].accept()
            except OSError:
                return
            counts[name] += 1
            serve = echo if name == "echo" else pour
            _threading.Thread(target=serve, args=(conn,), daemon=True).start()

    for name in counts:
        _threading.Thread(target=accept, args=(name,), daemon=True).start()
    ports.put({name: listener.getsockname()[1] for name, listener in listeners.items()})
    while True:  # answers "how many connections so far?" until told to stop
        request = stop.get()
        if request is True:
            break
        ports.put(dict(counts))
    for listener in listeners.values():
        listener.close()


def _portal_client(port: int, seconds: float, pids: dict[str, int]) -> tuple[Any, dict[str, int]]:
    """The legitimate client's window: (success, p50/p99 ms), and each daemon's peak RSS."""
    latencies, failures = [], 0
    peaks = dict.fromkeys(pids, 0)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for name, pid in pids.items():
            peaks[name] = max(peaks[name], int(_rss_mib(pid) * 1024))
        started = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(b"x" * 64)
                got = b""
                while len(got) < 64:
                    data = sock.recv(64 - len(got))
                    if not data:
                        break
                    got += data
            if len(got) != 64:
                raise ConnectionError("short echo")
            latencies.append((time.perf_counter() - started) * 1000)
        except OSError:
            failures += 1
        time.sleep(0.01)
    total = len(latencies) + failures
    window = {
        "success": len(latencies) / total if total else 0.0,
        "p50_ms": round(percentile(latencies, 0.5), 2) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99), 2) if latencies else None,
        "n": total,
    }
    return window, peaks


def _portal_deputy(info: dict[str, Any], stop: Any, results: Any) -> None:
    from meshkey.wire.errors import WireError
    from meshkey.wire.portal import Open, OpenOk, OpenRefused, decode_packet, encode_packet

    async def main() -> None:
        tally = {"sent": 0, "received": 0, "open_ok": 0, "refused": 0}
        async with Node(tcp=None) as stranger:

            def capture(message: Message) -> None:
                if message.local.hop_peer is None or message.onward:
                    return  # its own sends, and what is not an answer to them
                try:
                    frames = decode_packet(message.payload)
                except WireError:
                    return
                tally["received"] += len(message.to_wire())
                tally["open_ok"] += sum(isinstance(f, OpenOk) for f in frames)
                tally["refused"] += sum(isinstance(f, OpenRefused) for f in frames)

            stranger.router.capture = capture
            route = parse_route(f"{info['legit_udp']}{info['outlet_udp']}/service/outlet")
            session = 1
            while not stop.is_set():
                opens = [Open(session + i, 1 << 20) for i in range(300)]
                session += 300
                message = Message(route, (), encode_packet(opens))
                tally["sent"] += len(message.to_wire())
                await stranger.router.route(message)
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # the last answers
        results.put(tally)

    uvloop.run(main())


def _portal_slow_clients(info: dict[str, Any], stop: Any, results: Any) -> None:
    clients = []
    for _ in range(200):
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        with contextlib.suppress(OSError):
            client.connect(("127.0.0.1", info["inlet_port"]))
            clients.append(client)
    stop.wait()
    for client in clients:
        client.close()
    results.put({"clients": len(clients)})


def _portal_open_flood(info: dict[str, Any], stop: Any, results: Any) -> None:
    from meshkey.wire.errors import WireError
    from meshkey.wire.portal import (
        Open,
        OpenOk,
        OpenRefused,
        RefuseReason,
        decode_packet,
        encode_packet,
    )

    async def main() -> None:
        tally = {"sent": 0, "received": 0, "open_ok": 0, "too_many": 0}
        async with Node(tcp=None) as flooder:
            worker = "_portal.flood"

            async def drop(message: Message) -> None:  # reads nothing: no ACK, no window
                try:
                    frames = decode_packet(message.payload)
                except WireError:
                    return
                tally["received"] += len(message.to_wire())
                tally["open_ok"] += sum(isinstance(f, OpenOk) for f in frames)
                tally["too_many"] += sum(
                    isinstance(f, OpenRefused) and f.reason is RefuseReason.TOO_MANY for f in frames
                )

            flooder.router.register(worker, drop, inline=True)
            route = parse_route(f"{info['outlet_udp']}/service/firehose")
            opens = [Open(session, 1 << 20) for session in range(1, 1001)]
            for start in range(0, len(opens), 200):
                message = Message(
                    route, (ServiceAddress(worker),), encode_packet(opens[start : start + 200])
                )
                tally["sent"] += len(message.to_wire())
                await flooder.router.route(message)
            await asyncio.to_thread(stop.wait)
        results.put(tally)

    uvloop.run(main())


PORTAL_ATTACKS: dict[str, Callable[[dict[str, Any], Any, Any], None]] = {
    "portal-deputy": _portal_deputy,
    "portal-slow-clients": _portal_slow_clients,
    "portal-open-flood": _portal_open_flood,
}


def _control(home: Home, node: str, op: str, args: dict[str, Any] | None = None) -> Any:
    from meshkey.node.control_client import ControlClient

    return ControlClient(home.node(node).socket_path, timeout=30).call(op, args)


def _portal_sessions_open(home: Home) -> int:
    return sum(int(o["sessions_open"]) for o in _control(home, "outlet", "tcp_outlet.list"))


def _run_portal(home: Home, window: float) -> list[dict[str, Any]]:
    summaries = {name: node_summary(home, name) for name in PORTAL_DAEMONS}
    udp = {n: next(a for a in s["addresses"] if "/udp/" in a) for n, s in summaries.items()}
    pids = {name: int(summaries[name]["pid"]) for name in ("outlet", "inlet")}
    context = multiprocessing.get_context("spawn")
    ports_queue, control = context.Queue(), context.Queue()
    servers = context.Process(target=_portal_servers, args=(ports_queue, control))
    servers.start()
    rows = []
    try:
        ports = ports_queue.get(timeout=30)
        legit_id = summaries["legit"]["node_id"]
        echo = {"to": f"127.0.0.1:{ports['echo']}", "allow": [legit_id]}
        _control(home, "outlet", "tcp_outlet.create", echo)
        firehose = {"to": f"127.0.0.1:{ports['firehose']}", "name": "firehose"}
        _control(home, "outlet", "tcp_outlet.create", firehose)
        inlets = {}
        for node, service in (("legit", "outlet"), ("inlet", "firehose")):
            to = f"{udp['outlet']}/service/{service}"
            created = _control(home, node, "tcp_inlet.create", {"from": "127.0.0.1:0", "to": to})
            inlets[node] = int(str(created["address"]).rpartition(":")[2])
        info = {
            "outlet_udp": udp["outlet"],
            "legit_udp": udp["legit"],
            "inlet_port": inlets["inlet"],
        }
        _portal_client(inlets["legit"], 1.0, pids)  # warm-up

        def connections() -> dict[str, int]:
            control.put("count")
            counts: dict[str, int] = ports_queue.get(timeout=10)
            return counts

        for name, attack in PORTAL_ATTACKS.items():
            rss_before = {n: _rss_mib(pid) for n, pid in pids.items()}
            before, _ = _portal_client(inlets["legit"], window, pids)
            counted = connections()
            stop, results = context.Event(), context.Queue()
            process = context.Process(target=attack, args=(info, stop, results))
            process.start()
            time.sleep(1.0)  # spawning, then letting it build up
            during, peaks = _portal_client(inlets["legit"], window, pids)
            stop.set()
            tally = results.get(timeout=60)
            process.join(30)
            if process.is_alive():
                process.kill()
            made = {k: v - counted[k] for k, v in connections().items()}
            deadline = time.monotonic() + 60
            while _portal_sessions_open(home) > 0 and time.monotonic() < deadline:
                time.sleep(0.5)  # silent sessions time out (15 s)
            time.sleep(1.5)  # the heaps are trimmed a second after the last session ended
            after, _ = _portal_client(inlets["legit"], window, pids)
            factor = None
            if name == "portal-deputy" and tally["sent"]:
                factor = round(tally["received"] / tally["sent"], 2)
            rows.append(
                {
                    "attack": name,
                    "before": before,
                    "during": during,
                    "after": after,
                    "rss_before_mib": {n: round(v, 1) for n, v in rss_before.items()},
                    "rss_peak_mib": {n: round(v / 1024, 1) for n, v in peaks.items()},
                    "rss_after_mib": {n: round(_rss_mib(pid), 1) for n, pid in pids.items()},
                    "server_connections": made,
                    "attacker": tally,
                    "amplification": factor,
                }
            )
    finally:
        control.put(True)
        servers.join(10)
        if servers.is_alive():
            servers.kill()
    return rows


def portal_main(*, quick: bool = False) -> None:
    window = 1.5 if quick else 3.0
    with daemons(*PORTAL_DAEMONS) as home:
        rows = _run_portal(home, window)
    print("\nportal attacks; legit: a new session per 64 B echo: success, p50/p99 ms")
    print(
        f"{'attack':<20} {'before':<18} {'during':<18} {'after':<18} "
        f"{'outlet RSS MiB':<18} {'inlet RSS MiB':<18} {'conns':<8} factor"
    )
    for row in rows:
        rss = {
            n: f"{row['rss_before_mib'][n]}/{row['rss_peak_mib'][n]}/{row['rss_after_mib'][n]}"
            for n in ("outlet", "inlet")
        }
        conns = sum(row["server_connections"].values())
        factor = row["amplification"]
        print(
            f"{row['attack']:<20} {_cell(row['before']):<18} {_cell(row['during']):<18} "
            f"{_cell(row['after']):<18} {rss['outlet']:<18} {rss['inlet']:<18} {conns:<8} "
            f"{factor if factor is not None else '-'}"
        )
    print("(RSS: before/peak during/after the attack's sessions ended; conns: made to the")
    print(" servers during the attack, the legitimate client's included; factor: bytes sent")
    print(" to the attacker on its say-so / bytes it sent, where it applies)")
    save("attacks_portal", {"window_s": window, "rows": rows})


# -- issue 19: amplifiers and open doors (punching, forwarding, relays, strangers) --------
#
# Each attack runs for one window against a daemon ("edge") that listens on a non-loopback
# address of this host when there is one (so the attacker, connecting from it too, is a
# stranger from elsewhere, not a program on the node's own host), while a legitimate client
# sends echo requests to it. What the daemon sends on the attacker's say-so is counted where
# it lands: UDP sockets and a TCP listener of this process stand for the victims. The factor
# is those bytes over the payload bytes the attacker sent (its real cost on the wire, with
# QUIC and the secure channel, is higher: the factor is an upper bound). Target: <= 3.


class _Victims:
    """UDP sockets and a TCP listener on loopback addresses that run no meshkey."""

    def __init__(self, count: int) -> None:
        self.udp = []
        for index in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((f"127.0.0.{40 + index}", 0))
            sock.setblocking(False)
            self.udp.append(sock)
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.39", 0))
        self.tcp.listen(64)
        self.tcp.setblocking(False)
        self.accepted: list[socket.socket] = []
        self.landed = 0

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(str(s.getsockname()[0]), int(s.getsockname()[1])) for s in self.udp]

    def drain(self) -> None:
        for sock in self.udp + self.accepted:
            with contextlib.suppress(BlockingIOError, ConnectionError):
                while data := sock.recv(65536):
                    self.landed += len(data)
        with contextlib.suppress(BlockingIOError):
            while True:
                conn, _ = self.tcp.accept()
                conn.setblocking(False)
                self.accepted.append(conn)
                self.landed += 60  # the handshake's SYN at least

    def close(self) -> None:
        for sock in [*self.udp, *self.accepted, self.tcp]:
            sock.close()


def _punch_signal(message: Any) -> bytes:
    from meshkey.wire.paths import PunchSignal, encode_path_signal
    from meshkey.wire.punch import encode_punch_message

    return encode_path_signal(PunchSignal(encode_punch_message(message)))


def _connect(victims: list[tuple[str, int]], nat: str) -> Any:
    from meshkey.wire.net import NatClass
    from meshkey.wire.punch import Capability, Connect

    return Connect(
        os.urandom(16),
        reply=False,
        key_share=os.urandom(32),
        nat_class=NatClass(nat),
        local=tuple(victims[:8]),
        reflexive=tuple(victims[8:16]),
        capabilities=frozenset({Capability.BIRTHDAY, Capability.TIMED_START}),
    )


async def _punch_reflector(
    edge: str, host: str, victims: _Victims, stop: asyncio.Event, nat: str
) -> int:
    """One CONNECT (and the SYNC that starts it) a second, naming 16 victims."""
    from meshkey.wire.punch import Sync

    sent = 0
    async with Node(tcp=None, udp=f"{host}:0") as mallory:
        channel = await mallory.create_secure_channel(f"{edge}/service/api")
        to_paths = parse_route(f"{channel}/service/_paths")
        while not stop.is_set():
            connect = _connect(victims.addresses, nat)
            for signal in (_punch_signal(connect), _punch_signal(Sync(connect.punch_id))):
                sent += len(signal)
                await mallory.router.route(Message(to_paths, (), signal))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    return sent


async def _forward_dial(edge: str, host: str, victims: _Victims, stop: asyncio.Event) -> int:
    """Messages through the node to addresses of the attacker's choosing, 20 a second."""
    sent = 0
    async with Node(tcp=None, udp=f"{host}:0") as mallory:
        udp_host, udp_port = victims.addresses[0]
        tcp_port = victims.tcp.getsockname()[1]
        routes = [
            parse_route(f"{edge}/ip4/{udp_host}/udp/{udp_port}/service/echo"),
            parse_route(f"{edge}/ip4/127.0.0.39/tcp/{tcp_port}/service/echo"),
        ]
        while not stop.is_set():
            for route in routes:
                message = Message(route, (), b"x" * 32)
                sent += len(message.to_wire())
                await mallory.router.route(message)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
    return sent


def _slowloris(address: tuple[str, int], stop: threading.Event) -> None:
    """250 source IPs open TCP connections and never say a word, 200 new ones a second."""
    held: list[socket.socket] = []
    index = 0
    while not stop.is_set():
        sock = socket.socket()
        sock.bind((f"127.0.1.{1 + index % 250}", 0))
        index += 1
        try:
            sock.connect(address)
            held.append(sock)
        except OSError:
            sock.close()
        time.sleep(0.005)
    for sock in held:
        sock.close()


def _fresh_tcp_clients(address: TransportAddress, count: int) -> float:
    """The share of ``count`` new TCP clients that get an echo through."""
    served = 0
    for _ in range(count):
        try:
            with BlockingHop(Identity.generate(), address, timeout=5) as hop:
                request = Message((ServiceAddress("echo"),), (ServiceAddress("me"),), b"hi")
                hop.send(request.to_wire())
                served += Message.from_wire(hop.receive(5)).payload == b"hi"
        except Exception:
            continue
    return served / count


def _birthday_core() -> dict[str, Any]:
    """The birthday claim against an endpoint-independent node, on the core itself (a NAT
    would be needed to make a daemon on loopback endpoint-independent): a CONNECT claiming
    an endpoint-dependent NAT at a victim's IP, unpaid and then paid in CREDIT."""
    from meshkey.identity.node_id import NodeId
    from meshkey.nat.punch import LocalCandidates, SendDatagram
    from meshkey.nat.puncher import Puncher
    from meshkey.wire.net import NatClass
    from meshkey.wire.punch import MAX_CREDIT_PAD, Capability, Credit, encode_punch_message

    rows = {}
    for credits in (0, 12):
        victim = Puncher(
            NodeId(b"\x01" * 32),
            rng=random.Random(1),
            local=LocalCandidates(
                NatClass.ENDPOINT_INDEPENDENT,
                local=(("192.168.7.10", 4000),),
                reflexive=(("198.51.100.1", 4000),),
                capabilities=frozenset({Capability.BIRTHDAY}),
            ),
        )
        mallory = NodeId(b"\x09" * 32)
        connect = _connect([("203.0.113.9", 443)] * 16, "endpoint-dependent")
        signals = [encode_punch_message(connect)]
        signals += [encode_punch_message(Credit(connect.punch_id, MAX_CREDIT_PAD))] * credits
        now, landed = 0.0, 0
        for data in signals:
            victim.on_signal(mallory, data, now, signalling_rtt=0.05)
        while (deadline := victim.next_deadline()) is not None and deadline < 30.0:
            now = max(now, deadline)
            victim.on_timer(now)
            landed += sum(len(c.data) for c in victim.commands() if isinstance(c, SendDatagram))
        sent = sum(len(s) for s in signals)
        rows["unpaid" if not credits else "paid"] = (sent, landed)
    return rows


async def _net_run(home: Home, host: str, window: float) -> list[dict[str, Any]]:
    summary = node_summary(home, "edge")
    edge = next(a for a in summary["addresses"] if "/udp/" in a)
    tcp = parse_address(next(a for a in summary["addresses"] if "/tcp/" in a))
    assert isinstance(tcp, TransportAddress)
    route = f"{edge}/service/echo"
    rows: list[dict[str, Any]] = []
    async with Node(tcp=None) as client:
        await client.send(route, b"warm-up")
        attacks: list[tuple[str, Callable[[_Victims, asyncio.Event], Awaitable[int]]]] = [
            (
                "punch-reflector",
                lambda v, s: _punch_reflector(edge, host, v, s, "endpoint-independent"),
            ),
            (
                "punch-edm-claim",
                lambda v, s: _punch_reflector(edge, host, v, s, "endpoint-dependent"),
            ),
            ("forward-dial", lambda v, s: _forward_dial(edge, host, v, s)),
        ]
        for name, attack in attacks:
            victims = _Victims(16)
            before = await _measure(client, route, window)
            stop = asyncio.Event()
            running = asyncio.ensure_future(attack(victims, stop))
            during = await _measure(client, route, window)
            stop.set()
            sent = await running
            await asyncio.sleep(6.0)  # a punch runs on after its last CONNECT
            victims.drain()
            after = await _measure(client, route, window)
            landed = victims.landed
            victims.close()
            rows.append(
                {
                    "attack": name,
                    "before": before,
                    "during": during,
                    "after": after,
                    "attacker_bytes": sent,
                    "landed_bytes": landed,
                    "factor": round(landed / sent, 2) if sent else None,
                }
            )
        # Slowloris from 250 source IPs: what fresh TCP clients get.
        fresh_before = await asyncio.to_thread(_fresh_tcp_clients, tcp, 10)
        stop_thread = threading.Event()
        attacker = threading.Thread(target=_slowloris, args=(tcp.endpoint, stop_thread))
        attacker.start()
        await asyncio.sleep(2.0)
        during = await _measure(client, route, window)
        fresh_during = await asyncio.to_thread(_fresh_tcp_clients, tcp, 35)
        stop_thread.set()
        await asyncio.to_thread(attacker.join, 30)
        rows.append(
            {
                "attack": "slowloris-250-ips",
                "before": {"success": fresh_before, "p50_ms": None, "p99_ms": None},
                "during": {**during, "fresh_tcp_clients": fresh_during},
                "after": await _measure(client, route, window),
                "attacker_bytes": None,
                "landed_bytes": None,
                "factor": None,
            }
        )
    for label, (sent, landed) in _birthday_core().items():
        rows.append(
            {
                "attack": f"birthday-claim-{label} (core)",
                "attacker_bytes": sent,
                "landed_bytes": landed,
                "factor": round(landed / sent, 2),
            }
        )
    return rows


def network_attacks(*, quick: bool = False) -> list[dict[str, Any]]:
    """Issue 19's attacks; prints a table and returns its rows."""
    window = 1.5 if quick else 3.0
    host = next(
        (a for a in interface_addresses() if not a.startswith("127.")), "127.0.0.1"
    )  # with none, the attacker is "local" and may make the node dial: the row says so
    with tempfile.TemporaryDirectory(prefix="meshkey-bench-") as directory:
        home = Home(directory)
        launcher.create_node(home, "edge", tcp=f"{host}:0", udp=f"{host}:0", identity=None)
        launcher.start_node(home, "edge")
        try:
            rows = uvloop.run(_net_run(home, host, window))
        finally:
            launcher.stop_node(home, "edge")
    print(f"\nissue 19: amplifiers and open doors; node on {host}; legit echo success, p50 ms")
    print(f"{'attack':<30} {'before':<12} {'during':<12} {'after':<12} {'sent B':>8} "
          f"{'landed B':>9} factor")  # fmt: skip
    for row in rows:
        cells = [
            f"{row[w]['success']:.0%} {row[w]['p50_ms']}" if w in row else "-"
            for w in ("before", "during", "after")
        ]
        if "fresh_tcp_clients" in row.get("during", {}):
            cells[1] = f"tcp {row['during']['fresh_tcp_clients']:.0%}"
            cells[0] = f"tcp {row['before']['success']:.0%}"
        print(
            f"{row['attack']:<30} {cells[0]:<12} {cells[1]:<12} {cells[2]:<12} "
            f"{row['attacker_bytes'] or '-':>8} {row['landed_bytes'] or '-':>9} "
            f"{row['factor'] if row['factor'] is not None else '-'}"
        )
    return rows


if __name__ == "__main__":
    main()
