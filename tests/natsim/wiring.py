"""Two :class:`~meshkey.nat.puncher.Puncher` cores wired together on the simulator's clock,
without NAT boxes: for unit tests of the punch scheduler's timing and bookkeeping.

Every socket has one address (a birthday socket of side b gets ``(b_ip, random port)``, as
if its NAT mapped it there); a datagram takes ``delay``, a signalling message
``signal_delay`` one way; the receiving glue knows the signalling round trip (twice
``signal_delay``, plus ``rtt_error``) unless ``rtt_known`` is False. Low-TTL packets never
arrive (they die on the WAN). ``drop`` decides, per datagram, whether the network loses it.
Everything the cores emit is logged with its time.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from meshkey.identity.node_id import NodeId
from meshkey.nat.punch import (
    MAIN_SOCKET,
    CloseBirthdaySockets,
    DialHop,
    LocalCandidates,
    OpenBirthdaySockets,
    PunchCommand,
    PunchEvent,
    SendDatagram,
    SendSignal,
)
from meshkey.nat.puncher import Puncher
from meshkey.nat.strategy import MESHKEY, PunchConfig
from meshkey.wire.net import Endpoint
from tests.natsim.net import SimNet

Side = str  # "a" or "b"


@dataclass
class Logged:
    at: float
    side: Side
    command: PunchCommand


@dataclass
class Wiring:
    a_info: LocalCandidates
    b_info: LocalCandidates
    config: PunchConfig = MESHKEY
    b_config: PunchConfig | None = None
    delay: float = 0.020
    signal_delay: float = 0.040
    seed: int = 1
    a_id: NodeId = field(default_factory=lambda: NodeId(b"\x01" * 32))
    b_id: NodeId = field(default_factory=lambda: NodeId(b"\x02" * 32))
    drop: Callable[[Side, SendDatagram], bool] = lambda side, command: False
    signals_lost: bool = False
    rtt_known: bool = True
    rtt_error: float = 0.0

    def __post_init__(self) -> None:
        self.net = SimNet(self.seed)
        self.a = Puncher(self.a_id, config=self.config, rng=self._rng(1), local=self.a_info)
        self.b = Puncher(
            self.b_id, config=self.b_config or self.config, rng=self._rng(2), local=self.b_info
        )
        self.log: list[Logged] = []
        self.events: dict[Side, list[tuple[float, PunchEvent]]] = {"a": [], "b": []}
        self.addresses: dict[tuple[Side, int], Endpoint] = {
            ("a", MAIN_SOCKET): _main(self.a_info),
            ("b", MAIN_SOCKET): _main(self.b_info),
        }
        self.open_sockets: dict[Side, set[int]] = {"a": {MAIN_SOCKET}, "b": {MAIN_SOCKET}}
        # The daemon's DeadlineTimer, one per puncher, on the simulator's clock.
        self._timers = {side: self.net.timer(self._firing(side)) for side in ("a", "b")}

    def _rng(self, salt: int) -> random.Random:
        return random.Random(self.seed * 10 + salt)

    def puncher(self, side: Side) -> Puncher:
        return self.a if side == "a" else self.b

    def other(self, side: Side) -> Side:
        return "b" if side == "a" else "a"

    def node_id(self, side: Side) -> NodeId:
        return self.a_id if side == "a" else self.b_id

    # -- driving ----------------------------------------------------------------------

    def start(self, side: Side = "a") -> bytes:
        punch_id = self.puncher(side).start(self.node_id(self.other(side)), self.net.now)
        self.pump(side)
        return punch_id

    def run(self, duration: float) -> None:
        self.net.run_for(duration)

    def run_until(self, done: Callable[[], bool], limit: float) -> bool:
        return self.net.run_until(done, limit)

    def commands(self, side: Side, kind: type | tuple[type, ...] = object) -> list[Logged]:
        return [x for x in self.log if x.side == side and isinstance(x.command, kind)]

    def pump(self, side: Side) -> None:
        puncher = self.puncher(side)
        now = self.net.now
        for command in puncher.commands():
            self.log.append(Logged(now, side, command))
            self._execute(side, command)
        for event in puncher.events():
            self.events[side].append((now, event))
        self._timers[side].follow(puncher.next_deadline())

    def _firing(self, side: Side) -> Callable[[float], None]:
        def fire(now: float) -> None:
            self.puncher(side).on_timer(now)
            self.pump(side)

        return fire

    def _execute(self, side: Side, command: PunchCommand) -> None:
        other = self.other(side)
        if isinstance(command, SendSignal):
            if self.signals_lost:
                return
            sender = self.node_id(side)
            data = command.data

            def deliver_signal() -> None:
                rtt = 2 * self.signal_delay + self.rtt_error if self.rtt_known else None
                self.puncher(other).on_signal(sender, data, self.net.now, signalling_rtt=rtt)
                self.pump(other)

            self.net.call_later(self.signal_delay, deliver_signal)
        elif isinstance(command, SendDatagram):
            self._send(side, command)
        elif isinstance(command, OpenBirthdaySockets):
            host = self.addresses[(side, MAIN_SOCKET)][0]
            for socket in command.sockets:
                port = self.net.rng.randint(1024, 65535)
                self.addresses[(side, socket)] = (host, port)
                self.open_sockets[side].add(socket)
        elif isinstance(command, CloseBirthdaySockets):
            for socket in command.sockets:
                self.open_sockets[side].discard(socket)
        elif isinstance(command, DialHop):
            pass  # the log is what tests look at

    def _send(self, side: Side, command: SendDatagram) -> None:
        if command.socket not in self.open_sockets[side]:
            raise AssertionError(f"{side} sent from closed socket {command.socket}")
        if command.ttl is not None or self.drop(side, command):
            return
        source = self.addresses[(side, command.socket)]
        other = self.other(side)
        target = next(
            (
                socket
                for (owner, socket), address in self.addresses.items()
                if owner == other
                and address == command.destination
                and socket in self.open_sockets[other]
            ),
            None,
        )
        if target is None:
            return
        data = command.data

        def deliver() -> None:
            self.puncher(other).on_control_packet(target, source, data, self.net.now)
            self.pump(other)

        self.net.call_later(self.delay, deliver)


def _main(info: LocalCandidates) -> Endpoint:
    return (info.reflexive or info.local)[0]
