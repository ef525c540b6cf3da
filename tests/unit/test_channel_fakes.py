"""Fakes for unit tests of the channel and relay glue, and tests that the fakes do their job.

* :class:`FakeClockLoop`: an asyncio loop whose clock moves only when a test moves it, or
  when it has nothing else to do (then it jumps to its next timer, as trio's autojump clock
  does), so a glue timer can be seen to fire exactly at its core's deadline (and never
  before), and seconds of keepalives and timeouts take no wall time. :func:`advance_to`
  stops at every timer on the way.
* :class:`FakeNet`: real :class:`~meshkey.routing.router.Router` objects joined as hops join
  them (a message forwarded to ``/ip4/127.0.0.1/udp/PORT`` arrives at that node with the
  sender's hop worker first on its return route and the sender as ``hop_peer``), with links
  that can be cut (a blackhole: no error, nothing arrives) and a count of what was carried.

Real routers, real cores, real crypto; only the clock and the sockets are fake.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import pytest

from meshkey.identity import Identity
from meshkey.routing.address import ServiceAddress, TransportAddress
from meshkey.routing.message import LocalInfo, Message
from meshkey.routing.router import Router
from meshkey.wire.message import HOST_IP4

T = TypeVar("T")


class _JumpingSelector(selectors.DefaultSelector):
    """Never blocks: where the loop would sleep until its next timer, the clock jumps there."""

    def __init__(self, loop: Callable[[], FakeClockLoop]) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        ready: list[Any] = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("fake clock: nothing to run and no timer armed (a deadlock)")
        self._loop().now += timeout
        return ready


class FakeClockLoop(asyncio.SelectorEventLoop):
    def __init__(self, start: float = 1000.0) -> None:
        super().__init__(_JumpingSelector(lambda: self))
        self.now = start

    def time(self) -> float:
        return self.now

    def next_timer(self) -> float | None:
        """The earliest armed timer's deadline."""
        scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        live = [handle.when() for handle in scheduled if not handle.cancelled()]
        return min(live) if live else None


def run(main: Callable[[FakeClockLoop], Awaitable[T]]) -> T:
    """Runs ``main(loop)`` on a new fake-clock loop, then cancels what is left."""
    loop = FakeClockLoop()
    try:
        return loop.run_until_complete(main(loop))
    finally:
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()


async def settle(rounds: int = 60) -> None:
    """Lets every ready callback and task run, without moving the clock."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def advance_to(loop: FakeClockLoop, until: float) -> None:
    """Moves the clock to ``until``, stopping at each timer on the way (so it fires at its
    deadline, and whatever it arms next is honoured too)."""
    await settle()
    while (due := loop.next_timer()) is not None and due <= until:
        loop.now = max(loop.now, due)
        await settle()
    loop.now = max(loop.now, until)
    await settle()


async def advance(loop: FakeClockLoop, seconds: float) -> None:
    await advance_to(loop, loop.now + seconds)


@dataclass
class FakeNode:
    identity: Identity
    router: Router
    port: int

    @property
    def address(self) -> TransportAddress:
        return TransportAddress("udp", HOST_IP4, "127.0.0.1", self.port, self.identity.node_id)


@dataclass
class FakeNet:
    nodes: dict[int, FakeNode] = field(default_factory=dict)
    cut: set[frozenset[int]] = field(default_factory=set)  # links that drop everything
    carried: int = 0
    #: Every message sent between nodes: (loop time, from port, to port, delivered).
    sent: list[tuple[float, int, int, bool]] = field(default_factory=list)

    def node(self, label: str) -> FakeNode:
        identity = Identity.generate()
        port = 4000 + len(self.nodes)
        node = FakeNode(identity, Router(identity.node_id, label=label), port)
        self.nodes[port] = node
        node.router.add_transport(_Transport(self, node))
        return node

    def link_up(self, a: FakeNode, b: FakeNode, up: bool) -> None:
        (self.cut.discard if up else self.cut.add)(frozenset({a.port, b.port}))

    def carry(self, source: FakeNode, port: int, message: Message) -> None:
        """``message`` (past the address it was sent to) leaves ``source`` for ``port``."""
        target = self.nodes.get(port)
        delivered = target is not None and frozenset({source.port, port}) not in self.cut
        self.sent.append((asyncio.get_running_loop().time(), source.port, port, delivered))
        if target is None or not delivered:
            return
        self.carried += 1
        hop = _hop_name(source.port)
        if not target.router.has_worker(hop):  # the far side's worker back to ``source``
            target.router.register(hop, partial(self._back, target, source.port), inline=True)
        arrived = message.with_return(ServiceAddress(hop)).with_local(
            LocalInfo(hop_peer=source.identity.node_id)
        )
        asyncio.get_running_loop().create_task(target.router.route(arrived))

    async def _back(self, node: FakeNode, port: int, message: Message) -> None:
        self.carry(node, port, message.step())


def _hop_name(port: int) -> str:
    return f"_hop.{port}"


@dataclass
class _Transport:
    net: FakeNet
    node: FakeNode
    protocol: str = "udp"

    async def send(self, address: TransportAddress, message: Message) -> None:
        self.net.carry(self.node, address.port, message)


# -- the fakes' own tests ------------------------------------------------------------------


def test_timers_fire_at_their_deadline_and_never_before() -> None:
    async def main(loop: FakeClockLoop) -> list[float]:
        fired: list[float] = []
        start = loop.now
        loop.call_at(start + 5.0, lambda: fired.append(loop.time()))
        loop.call_at(start + 2.0, lambda: fired.append(loop.time()))
        await advance(loop, 1.9)
        assert fired == []
        await advance_to(loop, start + 10.0)
        return [t - start for t in fired]

    assert run(main) == [2.0, 5.0]


def test_an_idle_loop_jumps_to_its_next_timer_instead_of_sleeping() -> None:
    async def main(loop: FakeClockLoop) -> float:
        start = loop.now
        await asyncio.sleep(3600.0)  # an hour, at once
        return loop.now - start

    assert run(main) == pytest.approx(3600.0)


def test_a_message_crosses_the_fake_net_and_its_answer_comes_back() -> None:
    async def main(loop: FakeClockLoop) -> tuple[list[Any], int, int]:
        net = FakeNet()
        green, blue = net.node("green"), net.node("blue")
        seen: list[Any] = []

        async def echo(message: Message) -> None:
            seen.append(message.local.hop_peer)
            await blue.router.reply(message, message.payload.upper())

        async def answers(message: Message) -> None:
            seen.append(message.payload)

        blue.router.register("echo", echo, inline=True)
        green.router.register("answers", answers, inline=True)
        onward = (blue.address, ServiceAddress("echo"))
        await green.router.route(Message(onward, (ServiceAddress("answers"),), b"hi"))
        await settle()
        net.link_up(green, blue, False)
        await green.router.route(Message(onward, (ServiceAddress("answers"),), b"lost"))
        await settle()
        assert seen[0] == green.identity.node_id  # the hop's authenticated peer
        return seen, net.carried, len(net.sent)

    seen, carried, sent = run(main)
    assert seen[1:] == [b"HI"] and carried == 2  # there and back; nothing over the cut link
    assert sent == 3
