"""The simulator's clock and network: one fake clock with one event queue, WAN links with
delay, loss, jitter and duplication, and NAT boxes that behave like the Linux kernel's (what
NATLAB.md measured), for the sans-IO cores.

**The clock.** :class:`SimNet` is the one event loop of every simulation in this package
(paths and punching, the node graph, portals): ``call_at``/``call_later`` return a handle
that can be cancelled, ``time()`` reads the clock, and :meth:`SimNet.timer` gives the
daemon's own :class:`~meshkey.timing.DeadlineTimer` running on this clock, so a simulated
node follows its cores' deadlines exactly as the daemon's glue does (re-armed only when the
deadline changed, fired no earlier than it). Events at the same time run in the order they
were scheduled, and all randomness comes from ``SimNet.rng`` (seeded) or the cores' own
seeded rngs: a run with the same seed is the same run.

Topology, as in NATLAB.md's lab::

    host ── NatBox [lan | wan ip] ──┐
    host ── NatBox [lan | wan ip] ──┼── WAN (every attachment: a one-way delay, a loss rate)
    public host (observer, relay) ──┘

A packet between two WAN attachments takes ``a.port_delay + b.port_delay`` (the lab's
userspace switch: 10 ms per port, so 20 ms one way and 40 ms RTT between two NATs) and loses
``wan_hops`` from its TTL on the way, so a low-TTL packet dies before the far NAT (the lab's
``--ttl-lt 10`` drop rule; set ``wan_hops=0`` for the lab without it).

A NAT box keeps a conntrack table of flows, keyed by protocol and both ends:

- outbound: a known flow is reused and refreshed; a new one gets a public port. EIM
  (MASQUERADE) keeps the source port *unless that public port is already taken towards that
  same remote* — by another flow, or by an unreplied inbound entry (the conntrack clash) —
  then takes a random free one; EDM (``--random-fully``) always takes a random one, so every
  destination sees a different port.
- inbound: a packet matching a flow's public side reaches its host (address-and-port-
  dependent filtering), and marks the flow replied; one that matches nothing is dropped *and
  recorded as an unreplied inbound entry*, which is what later makes the host's own outbound
  flow to that remote clash and move to another port (NATLAB.md); a packet matching such an
  entry refreshes it and is dropped.
- every entry expires ``timeout`` seconds after its last packet (30 s: the lab's sysctl).
- UDP_BLOCKED drops every UDP packet in both directions (TCP passes, NATed); ``block(ip)``
  drops everything to and from one remote (an iptables rule a test adds and removes).

Each WAN attachment may also ``duplicate`` a packet (with that probability) and delay each
copy by up to ``jitter`` more seconds (so packets reorder); both are 0 in the NAT lab, and a
zero rate draws nothing from the rng (a scenario without them is the same run as before they
existed).
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import itertools
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from meshkey.timing import DeadlineTimer
from meshkey.wire.net import Endpoint

Receiver = Callable[["Packet"], None]

DEFAULT_TTL = 64


class NatKind(enum.Enum):
    PUBLIC = "public"
    EIM = "EIM"
    EDM = "EDM"
    UDP_BLOCKED = "UDP-blocked"


@dataclass(frozen=True, slots=True)
class Packet:
    src: Endpoint
    dst: Endpoint
    data: bytes
    ttl: int = DEFAULT_TTL
    proto: str = "udp"


class SimHandle:
    """One scheduled callback; :meth:`cancel` keeps it from running (it still takes its
    place in the queue: the clock passes its time as if it had run and done nothing)."""

    __slots__ = ("args", "callback", "cancelled")

    def __init__(self, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class SimNet:
    """The clock, the event queue and the WAN."""

    def __init__(self, seed: int = 1, *, wan_hops: int = 8, start: float = 0.0) -> None:
        self.now = start
        self.rng = random.Random(seed)
        self.wan_hops = wan_hops
        self._queue: list[tuple[float, int, SimHandle]] = []
        self._seq = itertools.count()
        self._wan: dict[str, Attachment] = {}
        self.dropped: Counter[str] = Counter()
        self.delivered = 0
        self.duplicated = 0

    # -- clock ------------------------------------------------------------------------

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> SimHandle:
        handle = SimHandle(callback, args)
        heapq.heappush(self._queue, (max(when, self.now), next(self._seq), handle))
        return handle

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> SimHandle:
        return self.call_at(self.now + delay, callback, *args)

    def timer(self, fire: Callable[[float], None]) -> DeadlineTimer:
        """The daemon's :class:`~meshkey.timing.DeadlineTimer` on this clock: the one way a
        simulated node follows a core's ``next_deadline()``."""
        # DeadlineTimer needs only call_at(when, callback) -> handle.cancel() and time().
        return DeadlineTimer(fire, cast(asyncio.AbstractEventLoop, self))

    def next_time(self) -> float | None:
        """When the next event is due (None: nothing will ever happen again)."""
        return self._queue[0][0] if self._queue else None

    def step(self) -> bool:
        if not self._queue:
            return False
        when, _, handle = heapq.heappop(self._queue)
        self.now = when
        if not handle.cancelled:
            handle.callback(*handle.args)
        return True

    def run_until(self, done: Callable[[], bool], limit: float) -> bool:
        """Runs events until ``done()`` or the clock passes ``limit`` (an absolute time);
        returns ``done()``."""
        while not done():
            if not self._queue or self._queue[0][0] > limit:
                self.now = max(self.now, limit)
                return done()
            self.step()
        return True

    def run_for(self, duration: float) -> None:
        end = self.now + duration
        self.run_until(lambda: False, end)

    # -- WAN --------------------------------------------------------------------------

    def attach(self, attachment: Attachment) -> None:
        if attachment.wan_ip in self._wan:
            raise ValueError(f"{attachment.wan_ip} is already on the WAN")
        self._wan[attachment.wan_ip] = attachment

    def drop(self, why: str) -> None:
        self.dropped[why] += 1

    def wan_send(self, sender: Attachment, packet: Packet) -> None:
        target = self._wan.get(packet.dst[0])
        if target is None:
            self.drop("no route")
            return
        if self.rng.random() < sender.loss or self.rng.random() < target.loss:
            self.drop("loss")
            return
        ttl = packet.ttl - self.wan_hops
        if ttl <= 0:
            self.drop("ttl expired on the WAN")
            return
        arriving = Packet(packet.src, packet.dst, packet.data, ttl, packet.proto)
        copies = 1
        for port in (sender, target):
            if port.duplicate and self.rng.random() < port.duplicate:
                copies += 1
        self.duplicated += copies - 1
        jitter = sender.jitter + target.jitter
        for _ in range(copies):
            delay = sender.port_delay + target.port_delay
            if jitter:
                delay += self.rng.random() * jitter
            self.call_later(delay, target.wan_receive, arriving)


class Attachment:
    """Something with an address on the WAN: a public host or a NAT box. ``duplicate`` and
    ``jitter`` are class-level zeros unless an attachment sets its own."""

    wan_ip: str
    port_delay: float
    loss: float
    duplicate: float = 0.0
    jitter: float = 0.0

    def wan_receive(self, packet: Packet) -> None:
        raise NotImplementedError


class SimSocket:
    """A bound UDP (or, with ``proto="tcp"``, a TCP-like datagram) socket on a host."""

    def __init__(self, host: Host, port: int, proto: str) -> None:
        self.host = host
        self.port = port
        self.proto = proto
        self.receiver: Receiver = lambda packet: None
        self.closed = False
        self.sent = 0

    @property
    def address(self) -> Endpoint:
        return (self.host.ip, self.port)

    def sendto(self, data: bytes, destination: Endpoint, ttl: int | None = None) -> None:
        if self.closed:
            raise OSError("socket closed")
        self.sent += 1
        self.host.send(Packet(self.address, destination, data, ttl or DEFAULT_TTL, self.proto))

    def close(self) -> None:
        self.closed = True
        self.host.sockets.pop((self.proto, self.port), None)


class Host(Attachment):
    """A machine: on the WAN itself (public) or on a NAT box's LAN."""

    def __init__(
        self,
        net: SimNet,
        ip: str,
        *,
        nat: NatBox | None = None,
        port_delay: float = 0.010,
        loss: float = 0.0,
    ) -> None:
        self.net = net
        self.ip = ip
        self.wan_ip = ip
        self.nat = nat
        self.port_delay = port_delay
        self.loss = loss
        self.sockets: dict[tuple[str, int], SimSocket] = {}
        if nat is None:
            net.attach(self)
        else:
            nat.hosts[ip] = self

    def open_socket(self, port: int | None = None, proto: str = "udp") -> SimSocket:
        if port is None:
            while True:
                port = self.net.rng.randint(32768, 60999)
                if (proto, port) not in self.sockets:
                    break
        if (proto, port) in self.sockets:
            raise OSError(f"{self.ip}:{port}/{proto} is in use")
        sock = SimSocket(self, port, proto)
        self.sockets[(proto, port)] = sock
        return sock

    def send(self, packet: Packet) -> None:
        if self.nat is None:
            self.net.wan_send(self, packet)
        elif packet.dst[0] in self.nat.hosts:  # the same LAN: no NAT on the way
            peer = self.nat.hosts[packet.dst[0]]
            self.net.call_later(self.nat.lan_delay, lambda: peer.deliver(packet))
        else:
            self.net.call_later(self.nat.lan_delay, lambda: self.nat.outbound(packet))  # type: ignore[union-attr]

    def wan_receive(self, packet: Packet) -> None:
        self.deliver(packet)

    def deliver(self, packet: Packet) -> None:
        sock = self.sockets.get((packet.proto, packet.dst[1]))
        if sock is None:
            self.net.drop("no socket")
            return
        self.net.delivered += 1
        sock.receiver(packet)


@dataclass(slots=True)
class Flow:
    proto: str
    internal: Endpoint | None  # None: an unreplied inbound entry (nobody inside asked)
    public_port: int
    remote: Endpoint
    expires: float
    replied: bool = False


class NatBox(Attachment):
    def __init__(
        self,
        net: SimNet,
        wan_ip: str,
        kind: NatKind,
        *,
        port_delay: float = 0.010,
        lan_delay: float = 0.0001,
        loss: float = 0.0,
        timeout: float = 30.0,
    ) -> None:
        if kind is NatKind.PUBLIC:
            raise ValueError("a public host has no NAT box")
        self.net = net
        self.wan_ip = wan_ip
        self.kind = kind
        self.port_delay = port_delay
        self.lan_delay = lan_delay
        self.loss = loss
        self.timeout = timeout
        self.hosts: dict[str, Host] = {}
        self._by_internal: dict[tuple[str, Endpoint, Endpoint], Flow] = {}
        self._by_public: dict[tuple[str, int, Endpoint], Flow] = {}
        self.clashes = 0
        self.blocked: set[str] = set()  # remote IPs an iptables DROP rule cuts off
        net.attach(self)

    def block(self, remote_ip: str) -> None:
        """``iptables -I FORWARD -s/-d remote_ip -j DROP``: no packet to or from it passes."""
        self.blocked.add(remote_ip)

    def unblock(self, remote_ip: str) -> None:
        self.blocked.discard(remote_ip)

    # -- the conntrack table ----------------------------------------------------------

    def flows(self) -> list[Flow]:
        self._expire()
        return list(self._by_public.values())

    def flush(self, remote: Endpoint | None = None) -> None:
        """``conntrack -D``: forget every flow (or those towards ``remote``)."""
        for key, flow in list(self._by_public.items()):
            if remote is None or flow.remote == remote:
                self._remove(key, flow)

    def _remove(self, key: tuple[str, int, Endpoint], flow: Flow) -> None:
        self._by_public.pop(key, None)
        if flow.internal is not None:
            self._by_internal.pop((flow.proto, flow.internal, flow.remote), None)

    def _expire(self) -> None:
        now = self.net.now
        for key, flow in list(self._by_public.items()):
            if flow.expires <= now:
                self._remove(key, flow)

    def _live(self, flow: Flow | None) -> Flow | None:
        if flow is not None and flow.expires <= self.net.now:
            self._remove((flow.proto, flow.public_port, flow.remote), flow)
            return None
        return flow

    def _public_port(self, proto: str, source_port: int, remote: Endpoint) -> int:
        def free(port: int) -> bool:
            return self._live(self._by_public.get((proto, port, remote))) is None

        if self.kind is not NatKind.EDM and free(source_port):
            return source_port
        if self.kind is not NatKind.EDM:
            self.clashes += 1
        while True:
            port = self.net.rng.randint(1024, 65535)
            if free(port):
                return port

    # -- forwarding -------------------------------------------------------------------

    def outbound(self, packet: Packet) -> None:
        if packet.ttl - 1 <= 0:
            self.net.drop("ttl expired at the NAT")
            return
        if (self.kind is NatKind.UDP_BLOCKED and packet.proto == "udp") or (
            packet.dst[0] in self.blocked
        ):
            self.net.drop("udp blocked")
            return
        key = (packet.proto, packet.src, packet.dst)
        flow = self._live(self._by_internal.get(key))
        if flow is None:
            port = self._public_port(packet.proto, packet.src[1], packet.dst)
            flow = Flow(packet.proto, packet.src, port, packet.dst, 0.0)
            self._by_internal[key] = flow
            self._by_public[(packet.proto, port, packet.dst)] = flow
        flow.expires = self.net.now + self.timeout
        translated = Packet(
            (self.wan_ip, flow.public_port), packet.dst, packet.data, packet.ttl - 1, packet.proto
        )
        self.net.wan_send(self, translated)

    def wan_receive(self, packet: Packet) -> None:
        if (self.kind is NatKind.UDP_BLOCKED and packet.proto == "udp") or (
            packet.src[0] in self.blocked
        ):
            self.net.drop("udp blocked")
            return
        key = (packet.proto, packet.dst[1], packet.src)
        flow = self._live(self._by_public.get(key))
        if flow is None:
            # Unsolicited: dropped, but conntrack remembers it (the clash of NATLAB.md).
            self._by_public[key] = Flow(
                packet.proto, None, packet.dst[1], packet.src, self.net.now + self.timeout
            )
            self.net.drop("filtered by the NAT")
            return
        flow.expires = self.net.now + self.timeout
        if flow.internal is None:
            self.net.drop("filtered by the NAT (stale inbound entry)")
            return
        flow.replied = True
        if packet.ttl - 1 <= 0:
            self.net.drop("ttl expired at the NAT")
            return
        host = self.hosts.get(flow.internal[0])
        if host is None:
            self.net.drop("no such host")
            return
        inside = Packet(packet.src, flow.internal, packet.data, packet.ttl - 1, packet.proto)
        self.net.call_later(self.lan_delay, lambda: host.deliver(inside))


@dataclass
class Lab:
    """NATLAB.md's topology: two sides (each a host behind a NAT box, or a public host)."""

    net: SimNet
    a: Host
    b: Host
    a_nat: NatBox | None
    b_nat: NatBox | None
    observers: list[Host] = field(default_factory=list)


def side(
    net: SimNet, kind: NatKind, index: int, **nat_options: float
) -> tuple[Host, NatBox | None]:
    """Side ``index`` (1, 2, ...) of the lab: 10.index.0.2 behind 203.0.113.index, or a
    public host at 203.0.113.(20 + index)."""
    if kind is NatKind.PUBLIC:
        return Host(net, f"203.0.113.{20 + index}"), None
    nat = NatBox(net, f"203.0.113.{index}", kind, **nat_options)
    return Host(net, f"10.{index}.0.2", nat=nat), nat


def build_lab(
    net: SimNet, a_kind: NatKind, b_kind: NatKind, *, observers: int = 4, **nat_options: float
) -> Lab:
    a, a_nat = side(net, a_kind, 1, **nat_options)
    b, b_nat = side(net, b_kind, 2, **nat_options)
    seen = [Host(net, f"203.0.113.{10 + i}") for i in range(observers)]
    return Lab(net, a, b, a_nat, b_nat, seen)
