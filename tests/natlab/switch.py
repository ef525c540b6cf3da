"""The lab's WAN: a userspace Ethernet switch over TAP devices, with delay, loss, reordering
and a bandwidth cap per port.

Why userspace: this kernel has no ``sch_netem``, so ``tc`` cannot add latency or loss, and
without latency between the routers the lab lies about hole punching (NATLAB.md). So every
router and public host gets a TAP device whose other end is this process: it reads the
Ethernet frames the namespace sends, learns source MACs, and writes each frame to the
destination port (flooding broadcast and unknown destinations), after the configured delay.

Theory of operation. A frame crosses two *links*: the ingress link of the port it came in on
(device -> switch) and the egress link of the port it goes out on (switch -> device). Each link
applies, in order: loss (a frame is dropped with probability ``loss``), the bandwidth cap (a
frame occupies the link for ``len * 8 / rate`` seconds; a frame that would wait behind more
than ``queue_bytes`` of backlog is tail-dropped), then the one-way ``delay``. So with the
default 10 ms per port, a frame between two ports takes 20 ms and a round trip between two
NATed hosts (four crossings) 40 ms. Loss set on a port applies to both of its links, i.e. to
traffic in both directions. Reordering: a fraction ``reorder`` of frames is held back an extra
``reorder_ms`` and so overtaken by the frames behind it.

Each link keeps a FIFO of (due time, frame) and at most one timer (for its head), because one
timer per frame would make bulk traffic pay a heap operation per packet; the due times are
monotonic (a lowered delay does not let new frames overtake queued ones). Held-back
(reordered) frames are the exception and get their own timer.

Control: a Unix stream socket, one JSON object per line each way (this is test tooling, not a
meshkey wire format). Operations: ``ping``, ``add_port`` (creates the TAP device, named by the
caller, in this process's namespace: the caller then moves it into a namespace with ``ip link
set NAME netns NS``, and the file descriptor stays valid), ``remove_port``, ``set`` (delay_ms,
loss and reorder in percent, reorder_ms, rate_mbit, queue_bytes; for some ports or all),
``get``, ``counters``, ``reset_counters``, ``shutdown``. The process exits when its owner
process (``--owner PID``) ends, so a killed test run leaves no switch behind; its TAP devices
vanish with it (they are not persistent).

This file is self-contained (stdlib, and uvloop when installed) because it runs as a script.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import fcntl
import functools
import json
import os
import random
import signal
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
MAX_FRAME = 65536
READ_BATCH = 64  # frames read per wake-up of one port, so one busy port cannot starve others
EARLY = 0.0005  # uvloop timers fire up to ~1 ms early; frames this close to due go now
BROADCAST_BIT = 0x01  # the group bit of the first destination byte: broadcast and multicast


def open_tap(name: str) -> int:
    """Creates TAP device ``name`` (no packet-info header) and returns its non-blocking fd."""
    if len(name.encode()) > 15:
        raise ValueError(f"interface name {name!r} is longer than 15 bytes")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


@dataclass
class LinkCounters:
    frames: int = 0
    bytes: int = 0
    lost: int = 0  # dropped by the configured loss
    queue_drops: int = 0  # dropped by the bandwidth cap's full queue


@dataclass
class Link:
    """One direction through one port: loss, bandwidth cap, then delay."""

    delay: float = 0.010
    loss: float = 0.0
    reorder: float = 0.0
    reorder_delay: float = 0.005
    rate: float | None = None  # bytes per second; None = unlimited
    queue_bytes: int = 256 * 1024
    queue: collections.deque[tuple[float, bytes, Callable[[bytes], None]]] = field(
        default_factory=collections.deque
    )
    timer: asyncio.TimerHandle | None = None
    busy_until: float = 0.0
    last_due: float = 0.0
    counters: LinkCounters = field(default_factory=LinkCounters)


@dataclass
class Port:
    name: str  # the TAP device's name
    label: str  # what the lab calls it (a host or router)
    fd: int
    ingress: Link = field(default_factory=Link)  # device -> switch
    egress: Link = field(default_factory=Link)  # switch -> device
    write_errors: int = 0
    floods_in: int = 0
    # Made once per port, so the data path allocates no closure per frame.
    to_switch: Callable[[bytes], None] = field(default=lambda frame: None, repr=False)
    to_device: Callable[[bytes], None] = field(default=lambda frame: None, repr=False)


class Switch:
    def __init__(self, loop: asyncio.AbstractEventLoop, rng: random.Random) -> None:
        self.loop = loop
        self.rng = rng
        self.ports: dict[str, Port] = {}
        self.macs: dict[bytes, Port] = {}

    # -- ports -------------------------------------------------------------------------------

    def add_port(self, name: str, label: str, fd: int | None = None) -> Port:
        """A port on a new TAP device ``name``, or on ``fd``: any non-blocking descriptor that
        reads and writes whole frames (the unit tests use datagram socket pairs)."""
        if name in self.ports:
            raise ValueError(f"port {name!r} exists")
        if fd is None:
            fd = open_tap(name)
        port = Port(name, label or name, fd)
        port.to_switch = functools.partial(self._forward, port)
        port.to_device = functools.partial(self._deliver, port)
        self.ports[name] = port
        self.loop.add_reader(fd, self._readable, port)
        return port

    def remove_port(self, name: str) -> None:
        port = self.ports.pop(name)
        self.loop.remove_reader(port.fd)
        for link in (port.ingress, port.egress):
            if link.timer is not None:
                link.timer.cancel()
            link.queue.clear()
        os.close(port.fd)
        for mac in [m for m, p in self.macs.items() if p is port]:
            del self.macs[mac]

    def close(self) -> None:
        for name in list(self.ports):
            self.remove_port(name)

    # -- the data path -----------------------------------------------------------------------

    def _readable(self, port: Port) -> None:
        for _ in range(READ_BATCH):
            try:
                frame = os.read(port.fd, MAX_FRAME)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # the device went away (its namespace was deleted)
                self.loop.remove_reader(port.fd)
                return
            if len(frame) < 14:
                continue
            port.ingress.counters.frames += 1
            port.ingress.counters.bytes += len(frame)
            self._enter(port.ingress, frame, port.to_switch)

    def _forward(self, source: Port, frame: bytes) -> None:
        if source.name not in self.ports:
            return
        self.macs[frame[6:12]] = source
        destination = frame[0:6]
        if not destination[0] & BROADCAST_BIT:
            target = self.macs.get(destination)
            if target is not None:
                if target is not source:
                    self._enter(target.egress, frame, target.to_device)
                return
        source.floods_in += 1
        for port in list(self.ports.values()):
            if port is not source:
                self._enter(port.egress, frame, port.to_device)

    def _deliver(self, port: Port, frame: bytes) -> None:
        if port.name not in self.ports:
            return
        try:
            os.write(port.fd, frame)
        except OSError:
            port.write_errors += 1
            return
        port.egress.counters.frames += 1
        port.egress.counters.bytes += len(frame)

    def _enter(self, link: Link, frame: bytes, then: Callable[[bytes], None]) -> None:
        """Puts ``frame`` on ``link``; ``then(frame)`` runs when it comes out the far end."""
        if link.loss and self.rng.random() < link.loss:
            link.counters.lost += 1
            return
        now = self.loop.time()
        start = now
        if link.rate:
            backlog = max(0.0, link.busy_until - now) * link.rate
            if backlog + len(frame) > link.queue_bytes:
                link.counters.queue_drops += 1
                return
            link.busy_until = max(now, link.busy_until) + len(frame) / link.rate
            start = link.busy_until
        due = start + link.delay
        if link.reorder and self.rng.random() < link.reorder:
            self.loop.call_at(due + link.reorder_delay, then, frame)
            return
        if due <= now and not link.queue:
            then(frame)
            return
        due = max(due, link.last_due)
        link.last_due = due
        link.queue.append((due, frame, then))
        if link.timer is None:
            link.timer = self.loop.call_at(due, self._drain, link)

    def _drain(self, link: Link) -> None:
        link.timer = None
        now = self.loop.time() + EARLY
        queue = link.queue
        while queue and queue[0][0] <= now:
            _, frame, then = queue.popleft()
            then(frame)
        if queue and link.timer is None:
            link.timer = self.loop.call_at(queue[0][0], self._drain, link)

    # -- control -----------------------------------------------------------------------------

    def configure(self, names: list[str] | None, settings: dict[str, Any]) -> None:
        ports = [self.ports[n] for n in names] if names is not None else list(self.ports.values())
        apply_settings(Link(), settings)  # all or nothing: a bad value changes no port
        for port in ports:
            for link in (port.ingress, port.egress):
                apply_settings(link, settings)

    def describe(self, port: Port) -> dict[str, Any]:
        link = port.ingress
        return {
            "name": port.name,
            "label": port.label,
            "delay_ms": round(link.delay * 1000, 3),
            "loss": round(link.loss * 100, 4),
            "reorder": round(link.reorder * 100, 4),
            "reorder_ms": round(link.reorder_delay * 1000, 3),
            "rate_mbit": None if link.rate is None else round(link.rate * 8 / 1e6, 3),
            "queue_bytes": link.queue_bytes,
        }

    def counters(self, port: Port) -> dict[str, int]:
        """``in``: what the port's device sent into the WAN; ``out``: what it was given."""
        ingress, egress = port.ingress.counters, port.egress.counters
        return {
            "frames_in": ingress.frames,
            "bytes_in": ingress.bytes,
            "frames_out": egress.frames,
            "bytes_out": egress.bytes,
            "lost_in": ingress.lost,
            "lost_out": egress.lost,
            "queue_drops": ingress.queue_drops + egress.queue_drops,
            "write_errors": port.write_errors,
            "floods_in": port.floods_in,
        }


def apply_settings(link: Link, settings: dict[str, Any]) -> None:
    if "delay_ms" in settings:
        link.delay = _non_negative(settings["delay_ms"], "delay_ms") / 1000
    if "loss" in settings:
        link.loss = _percent(settings["loss"], "loss")
    if "reorder" in settings:
        link.reorder = _percent(settings["reorder"], "reorder")
    if "reorder_ms" in settings:
        link.reorder_delay = _non_negative(settings["reorder_ms"], "reorder_ms") / 1000
    if "rate_mbit" in settings:
        rate = settings["rate_mbit"]
        link.rate = None if rate is None else _positive(rate, "rate_mbit") * 1e6 / 8
    if "queue_bytes" in settings:
        link.queue_bytes = int(_positive(settings["queue_bytes"], "queue_bytes"))


def _non_negative(value: Any, name: str) -> float:
    if not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, not {value!r}")
    return float(value)


def _positive(value: Any, name: str) -> float:
    if not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"{name} must be a number > 0, not {value!r}")
    return float(value)


def _percent(value: Any, name: str) -> float:
    number = _non_negative(value, name)
    if number > 100:
        raise ValueError(f"{name} is a percentage (0-100), not {value!r}")
    return number / 100


class ControlServer:
    """One JSON request per line, one JSON answer per line: ``{"ok": true, ...}`` or
    ``{"ok": false, "error": "..."}``."""

    def __init__(self, switch: Switch, stop: asyncio.Event) -> None:
        self.switch = switch
        self.stop = stop

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    answer = {"ok": True, **self.handle(json.loads(line))}
                except (ValueError, KeyError, OSError, TypeError) as exc:
                    answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def handle(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict):
            raise TypeError("a request is a JSON object")
        op = request.get("op")
        switch = self.switch
        if op == "ping":
            return {"pid": os.getpid()}
        if op == "add_port":
            port = switch.add_port(str(request["name"]), str(request.get("label") or ""))
            switch.configure([port.name], request.get("settings") or {})
            return {"port": switch.describe(port)}
        if op == "remove_port":
            switch.remove_port(str(request["name"]))
            return {}
        if op == "set":
            names = self._names(request)
            switch.configure(names, request.get("settings") or {})
            return {"ports": [switch.describe(switch.ports[n]) for n in names or switch.ports]}
        if op == "get":
            return {"ports": [switch.describe(p) for p in switch.ports.values()]}
        if op == "counters":
            return {"counters": {p.label: switch.counters(p) for p in switch.ports.values()}}
        if op == "reset_counters":
            for port in switch.ports.values():
                port.ingress.counters = LinkCounters()
                port.egress.counters = LinkCounters()
                port.write_errors = port.floods_in = 0
            return {}
        if op == "shutdown":
            self.stop.set()
            return {}
        raise ValueError(f"unknown op {op!r}")

    def _names(self, request: dict[str, Any]) -> list[str] | None:
        """Ports named by device name or by label; None (every port) when not given."""
        wanted = request.get("ports")
        if wanted is None:
            return None
        by_label = {p.label: p.name for p in self.switch.ports.values()}
        names = []
        for each in wanted:
            name = each if each in self.switch.ports else by_label.get(each)
            if name is None:
                raise KeyError(f"no port {each!r}")
            names.append(name)
        return names


async def run(control: str, owner: int | None, seed: int | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    switch = Switch(loop, random.Random(seed))
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if owner is not None:
        try:
            pidfd = os.pidfd_open(owner)
        except ProcessLookupError:
            return
        loop.add_reader(pidfd, stop.set)  # readable when the owner exits
    server = await asyncio.start_unix_server(ControlServer(switch, stop).serve, path=control)
    os.chmod(control, 0o600)
    try:
        await stop.wait()
    finally:
        server.close()
        switch.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(control)


def main() -> int:
    parser = argparse.ArgumentParser(description="the NAT lab's WAN switch")
    parser.add_argument("--control", required=True, help="path of the control socket")
    parser.add_argument("--owner", type=int, help="exit when this process ends")
    parser.add_argument("--seed", type=int, help="seed of the loss/reorder random generator")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(args.control, args.owner, args.seed))
    else:
        uvloop.run(run(args.control, args.owner, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
