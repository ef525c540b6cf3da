"""The WAN switch's data path, without root: ports on datagram socket pairs instead of TAP
devices (both carry whole frames), a seeded random generator, the real event loop."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from .switch import ControlServer, Switch

BROADCAST = b"\xff" * 6


def mac(index: int) -> bytes:
    return bytes([0x02, 0, 0, 0, 0, index])


def frame(destination: bytes, source: bytes, payload: bytes) -> bytes:
    return destination + source + b"\x08\x00" + payload


class Device:
    """The namespace's end of a port: what it sends, and what the switch delivered to it."""

    def __init__(self, switch: Switch, name: str, index: int) -> None:
        self.mac = mac(index)
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        # A burst the switch delivers in one go must fit in the pair's buffer (a TAP device
        # takes every frame written to it; a socket pair refuses once its buffer is full).
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        theirs.setblocking(False)
        self.theirs = theirs
        self.port = switch.add_port(name, name, theirs.fileno())
        self.sock.setblocking(False)
        self.got: list[bytes] = []
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._read)

    def _read(self) -> None:
        while True:
            try:
                self.got.append(self.sock.recv(65536))
            except BlockingIOError:
                return

    async def send(self, destination: bytes, payload: bytes) -> None:
        while True:  # a socket pair queues only a few datagrams: let the switch read them
            try:
                self.sock.send(frame(destination, self.mac, payload))
                return
            except BlockingIOError:
                await asyncio.sleep(0.001)

    def payloads(self) -> list[bytes]:
        return [f[14:] for f in self.got]

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


async def until(predicate: object, what: str, limit: float = 10.0) -> None:
    assert callable(predicate)
    deadline = asyncio.get_running_loop().time() + limit
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


@pytest.fixture(autouse=True)
def nothing_refused(wan: tuple[Switch, list[Device]]) -> Iterator[None]:
    """Every frame the switch wrote reached its device (else counts above would not add up)."""
    yield
    switch, _ = wan
    assert [p.write_errors for p in switch.ports.values()] == [0] * len(switch.ports)


@pytest.fixture
async def wan() -> AsyncIterator[tuple[Switch, list[Device]]]:
    switch = Switch(asyncio.get_running_loop(), random.Random(7))
    devices = [Device(switch, f"p{i}", i) for i in range(3)]
    switch.configure(None, {"delay_ms": 1})
    yield switch, devices
    for device in devices:
        device.close()
    switch.close()


async def learn(devices: list[Device]) -> None:
    """Every device says hello to everyone, so the switch knows every MAC."""
    for device in devices:
        await device.send(BROADCAST, b"hello")
    await until(lambda: all(len(d.got) == len(devices) - 1 for d in devices), "the hellos")
    for device in devices:
        device.got.clear()


async def test_broadcast_floods_and_learned_macs_go_to_one_port(wan) -> None:
    switch, (a, b, c) = wan
    await a.send(BROADCAST, b"who")
    await until(lambda: b.got and c.got, "the flood")
    assert a.got == [] and b.payloads() == c.payloads() == [b"who"]
    await b.send(a.mac, b"to a")  # a's MAC was learned from its broadcast
    await c.send(mac(99), b"unknown")  # nobody has this MAC: flooded
    await until(lambda: len(a.got) == 2 and len(b.got) == 2, "the unicast and the flood")
    assert sorted(a.payloads()) == [b"to a", b"unknown"] and b.payloads()[1] == b"unknown"
    assert c.payloads() == [b"who"]  # not its own flood, not b's unicast to a
    counters = switch.counters(a.port)
    assert (counters["frames_in"], counters["frames_out"]) == (1, 2)
    assert counters["bytes_in"] == len(frame(BROADCAST, a.mac, b"who"))


async def test_frames_on_one_path_keep_their_order_through_the_delay(wan) -> None:
    switch, devices = wan
    a, b, _ = devices
    await learn(devices)
    switch.configure(None, {"delay_ms": 3})
    sent = [str(i).encode() for i in range(150)]
    for payload in sent:
        await a.send(b.mac, payload)
    await until(lambda: len(b.got) == len(sent), "every frame")
    assert b.payloads() == sent


async def test_loss_drops_a_share_in_both_directions_and_counts_it(wan) -> None:
    switch, devices = wan
    a, b, _ = devices
    await learn(devices)
    switch.configure([a.port.name], {"loss": 30})
    for i in range(300):
        await a.send(b.mac, b"a%d" % i)  # crosses a's ingress
        await b.send(a.mac, b"b%d" % i)  # crosses a's egress
    lost_in = lambda: switch.counters(a.port)["lost_in"]  # noqa: E731
    lost_out = lambda: switch.counters(a.port)["lost_out"]  # noqa: E731
    await until(lambda: len(b.got) + lost_in() == 300, "a's frames")
    await until(lambda: len(a.got) + lost_out() == 300, "b's frames")
    assert 50 < lost_in() < 130 and 50 < lost_out() < 130  # 30 % of 300 is 90
    assert switch.counters(b.port)["lost_in"] == 0  # b's own port loses nothing


async def test_reordering_holds_some_frames_back_and_loses_none(wan) -> None:
    switch, devices = wan
    a, b, _ = devices
    await learn(devices)
    switch.configure([a.port.name], {"reorder": 20, "reorder_ms": 20})
    sent = [str(i).encode() for i in range(200)]
    for payload in sent:
        await a.send(b.mac, payload)
    await until(lambda: len(b.got) == len(sent), "every frame")
    assert sorted(b.payloads()) == sorted(sent) and b.payloads() != sent


async def test_a_bandwidth_cap_queues_and_then_tail_drops(wan) -> None:
    switch, devices = wan
    a, b, _ = devices
    await learn(devices)
    switch.configure([b.port.name], {"rate_mbit": 1, "queue_bytes": 20_000})
    payload = b"x" * 986  # 1000-byte frames: 20 fit in the queue, 8 ms each at 1 Mbit/s
    for _ in range(60):
        await a.send(b.mac, payload)
    drops = lambda: switch.counters(b.port)["queue_drops"]  # noqa: E731
    await until(lambda: len(b.got) + drops() == 60, "the queue to drain")
    assert 15 <= len(b.got) <= 30 and drops() > 0


async def test_the_control_protocol(wan) -> None:
    switch, (a, _, _) = wan
    server = ControlServer(switch, asyncio.Event())
    answer = server.handle({"op": "set", "ports": ["p0"], "settings": {"delay_ms": 25}})
    assert [p["delay_ms"] for p in answer["ports"]] == [25.0]
    with pytest.raises(ValueError, match="loss is a percentage"):
        server.handle({"op": "set", "settings": {"delay_ms": 1, "loss": 101}})
    assert a.port.ingress.delay == 0.025  # the bad request changed nothing
    with pytest.raises(KeyError):
        server.handle({"op": "set", "ports": ["nope"], "settings": {}})
    with pytest.raises(ValueError, match="unknown op"):
        server.handle({"op": "explode"})
    with pytest.raises(TypeError):
        server.handle(["not", "an", "object"])
    assert set(server.handle({"op": "counters"})["counters"]) == {"p0", "p1", "p2"}
    server.handle({"op": "remove_port", "name": "p2"})
    assert [p["label"] for p in server.handle({"op": "get"})["ports"]] == ["p0", "p1"]
