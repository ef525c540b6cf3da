"""The relay client's glue on a fake clock and a fake network, against a real registry: it
retries on the injected rng's schedule, stops on a final refusal, and says so in its status."""

from __future__ import annotations

import asyncio
import random

import pytest

from meshkey.relay.client import RETRY_FIRST, RETRY_MAX, Relay, RelayClient, RelayStatus
from meshkey.relay.registry import RelayRegistry
from meshkey.retry import RetrySchedule
from meshkey.routing.address import Route, TransportAddress
from meshkey.routing.errors import RemoteError
from meshkey.wire.message import ErrorCode

from .test_channel_fakes import FakeClockLoop, FakeNet, FakeNode, advance, advance_to, run

TIMEOUT = 10.0
SEED = 7


def status(relay: Relay) -> tuple[RelayStatus, str | None]:
    """Read through a call: mypy would otherwise keep the first narrowing of the attribute."""
    return relay.status, relay.error


class Setup:
    """Blue registers relays on green; blue's connection to green is ``lost`` on demand."""

    def __init__(self, loop: FakeClockLoop, refuse: str | None = None) -> None:
        self.net = FakeNet()
        self.green, self.blue = self.net.node("green"), self.net.node("blue")
        self.registry = RelayRegistry(
            self.green.router, admit=lambda owner: refuse, clock=loop.time
        )
        self.connection: asyncio.Future[str] = loop.create_future()
        self.client = RelayClient(
            self.blue.identity,
            self.blue.router,
            self.resolve,
            self.watch,
            timeout=TIMEOUT,
            rng=random.Random(SEED),
        )

    def resolve(self, at: str) -> Route:
        assert at == "green"
        return (self.green.address,)

    async def watch(self, first_hop: TransportAddress) -> str:
        assert first_hop == self.green.address
        return await self.connection

    def lose_connection(self, loop: FakeClockLoop) -> None:
        self.connection.set_result("idle timeout")
        self.connection = loop.create_future()

    def requests(self, since: float) -> list[float]:
        """When blue sent something to green (a challenge or a registration) since then."""
        return [at for at, src, dst, _ in self.net.sent if (src, dst) == self.ports and at > since]

    @property
    def ports(self) -> tuple[int, int]:
        return self.blue.port, self.green.port


def test_a_lost_relay_connection_is_retried_on_the_injected_schedule() -> None:
    expected = RetrySchedule(RETRY_FIRST, RETRY_MAX, rng=random.Random(SEED))
    delays = [expected.next_delay() or 0.0 for _ in range(3)]

    async def main(loop: FakeClockLoop) -> None:
        setup = Setup(loop)
        relay = await setup.client.create("blue", "green")
        assert status(relay) == (RelayStatus.ACTIVE, None)
        assert relay.address == "/service/forward_to_blue"
        assert relay.describe()["status"] == "active"  # the listing prints the same text
        setup.net.link_up(setup.blue, setup.green, False)  # nothing gets through any more
        lost_at = loop.now
        setup.lose_connection(loop)
        await advance(loop, 0)
        assert status(relay) == (
            RelayStatus.RETRYING,
            "connection to the relay node lost: idle timeout",
        )
        # Each attempt waits for its challenge's answer (the timeout), then the next delay.
        attempts = [lost_at + delays[0]]
        attempts.append(attempts[-1] + TIMEOUT + delays[1])
        attempts.append(attempts[-1] + TIMEOUT + delays[2])
        await advance_to(loop, attempts[-1] + 1.0)
        assert setup.requests(lost_at) == pytest.approx(attempts)
        assert status(relay) == (
            RelayStatus.RETRYING,
            f"no answer from the relay node within {TIMEOUT:g}s",
        )
        setup.net.link_up(setup.blue, setup.green, True)
        await advance_to(loop, attempts[-1] + TIMEOUT + RETRY_MAX)
        assert status(relay) == (RelayStatus.ACTIVE, None)
        await setup.client.close()

    run(main)


def test_a_final_refusal_stops_the_supervisor_and_says_why() -> None:
    async def main(loop: FakeClockLoop) -> None:
        setup = Setup(loop, refuse="not on the list")
        with pytest.raises(RemoteError) as info:
            await setup.client.create("blue", "green")
        assert info.value.code == ErrorCode.REFUSED and info.value.text == "not on the list"
        assert setup.client.get("blue") is None  # nothing kept when the first attempt fails
        relay = await setup.client.create("blue", "green", wait=False)  # as at a restart
        await advance(loop, 1.0)
        assert status(relay) == (RelayStatus.FAILED, "not on the list")
        before = len(setup.net.sent)
        await advance(loop, 10 * RETRY_MAX)
        assert len(setup.net.sent) == before  # not retried
        await setup.client.close()

    run(main)


def test_a_name_taken_by_another_node_is_final_too() -> None:
    async def main(loop: FakeClockLoop) -> None:
        setup = Setup(loop)
        await setup.client.create("blue", "green")
        other: FakeNode = setup.net.node("mallory")
        thief = RelayClient(
            other.identity, other.router, setup.resolve, setup.watch, timeout=TIMEOUT
        )
        with pytest.raises(RemoteError) as info:
            await thief.create("blue", "green")
        assert info.value.code == ErrorCode.REFUSED and "belongs to another" in info.value.text
        await thief.close()
        await setup.client.close()

    run(main)
