"""The portal scenarios' simulator (:mod:`tests.natsim.portal`: two multiplexers on the one
simulator's WAN, a simulated local socket at each session end), re-exported for the tests of
the session core and the multiplexer; the tests here check the simulated route itself, so a
lenient simulator cannot hide a bug."""

from __future__ import annotations

from tests.natsim.net import SimNet
from tests.natsim.portal import READ_SIZE, TICK, Pair, PortalRoute, SimApp

__all__ = ["READ_SIZE", "TICK", "Pair", "PortalRoute", "SimApp"]


def _arrivals(route: PortalRoute) -> list[int]:
    arrived: list[int] = []
    route.listen("b", lambda payload: arrived.append(int.from_bytes(payload, "big")))
    return arrived


def test_the_path_loses_duplicates_and_reorders_as_told() -> None:
    net = SimNet(3)
    route = PortalRoute(net, loss=0.1, duplicate=0.1, reorder=0.05)
    arrived = _arrivals(route)
    delivered_before = sum(route.send("a", i.to_bytes(4, "big")) for i in range(2000))
    assert 150 < route.lost < 250
    assert delivered_before == 2000 - route.lost
    assert 130 < route.duplicated < 250
    net.run_for(1.0)
    assert len(arrived) == 2000 - route.lost + route.duplicated
    assert arrived != sorted(arrived)  # reordered


def test_a_perfect_path_keeps_order_and_everything() -> None:
    net = SimNet(3)
    route = PortalRoute(net)
    arrived = _arrivals(route)
    for i in range(100):
        net.call_at(i * 0.001, route.send, "a", bytes([i]))
    net.run_for(10.0)
    assert arrived == list(range(100))
    assert route.sent == 100 and route.lost == route.duplicated == 0


def test_a_blocked_path_loses_everything_and_says_nothing() -> None:
    net = SimNet(3)
    route = PortalRoute(net)
    arrived = _arrivals(route)
    route.blocked = True
    assert not any(route.send("a", bytes([i])) for i in range(10))
    net.run_for(1.0)
    assert arrived == [] and route.lost == route.sent == 10


def test_a_reader_consumes_at_its_rate_and_idle_apps_schedule_nothing() -> None:
    server = SimApp(consume_rate=100_000.0, eof_after=False)  # 100 kB/s
    pair = Pair(acceptor_app=lambda: server)
    client = SimApp(outgoing=b"x" * 50_000, eof_after=False)
    pair.open(client)
    pair.run(lambda: len(server.received) == 50_000, limit=1.0)
    arrived = pair.now
    pair.run(lambda: server.unconsumed == 0, limit=5.0)
    assert 0.45 <= pair.now - arrived <= 0.55  # half a second of reading, a tick at a time
    pair.settle(5.0)
    assert pair._ticker is None  # nobody busy: no tick is scheduled
