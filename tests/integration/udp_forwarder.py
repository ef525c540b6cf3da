"""A UDP forwarder on loopback for tests: drops a fraction of datagrams each way, can go
silent (a "blackhole", so no ICMP tells anyone), and records what passed for replay."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

Address = tuple[str, int]


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, forwarder: LossyForwarder, client: Address) -> None:
        self.forwarder = forwarder
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: list[bytes] = []  # what arrived before the upstream socket existed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        for data in self.pending:
            self.transport.sendto(data)
        self.pending.clear()

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.forwarder.relay("down", data, lambda d: self.forwarder.send_to_client(d, self.client))


@dataclass
class LossyForwarder(asyncio.DatagramProtocol):
    server: Address
    drop: float = 0.0
    blackhole: bool = False
    seed: int = 7
    captured: list[tuple[str, bytes]] = field(default_factory=list)
    dropped: int = 0
    passed: int = 0

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._upstreams: dict[Address, _Upstream] = {}
        self._listener: asyncio.DatagramTransport | None = None
        self._tasks: list[asyncio.Task[object]] = []

    async def start(self) -> Address:
        loop = asyncio.get_running_loop()
        self._listener, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        address = self._listener.get_extra_info("sockname")
        return str(address[0]), int(address[1])

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for upstream in self._upstreams.values():
            if upstream.transport is not None:
                upstream.transport.close()

    def datagram_received(self, data: bytes, addr: Address) -> None:
        upstream = self._upstreams.get(addr)
        if upstream is None:
            upstream = _Upstream(self, addr)
            self._upstreams[addr] = upstream
            loop = asyncio.get_running_loop()
            self._tasks.append(
                loop.create_task(
                    loop.create_datagram_endpoint(lambda: upstream, remote_addr=self.server)
                )
            )
        self.relay("up", data, lambda d: self._send_up(upstream, d))

    def _send_up(self, upstream: _Upstream, data: bytes) -> None:
        if upstream.transport is None:
            upstream.pending.append(data)
        else:
            upstream.transport.sendto(data)

    def send_to_client(self, data: bytes, client: Address) -> None:
        if self._listener is not None:
            self._listener.sendto(data, client)

    def relay(self, direction: str, data: bytes, send: Callable[[bytes], None]) -> None:
        if self.blackhole or self._random.random() < self.drop:
            self.dropped += 1
            return
        self.passed += 1
        self.captured.append((direction, data))
        send(data)

    def replay_up(self) -> int:
        """Sends every datagram that went towards the server once more, from its client."""
        count = 0
        for (direction, data), upstream in (
            (item, next(iter(self._upstreams.values()))) for item in list(self.captured)
        ):
            if direction == "up":
                self._send_up(upstream, data)
                count += 1
        return count
