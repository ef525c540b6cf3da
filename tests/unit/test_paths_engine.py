"""The paths engine (paths/engine.py) without sockets: what it asks the glue to do, with a
fake clock."""

from __future__ import annotations

import random

from meshkey.identity.node_id import NodeId
from meshkey.nat.classify import SendWhoami
from meshkey.nat.punch import PunchFailed
from meshkey.paths.classifier import NatClassified, NetworkChanged
from meshkey.paths.engine import (
    PathEngine,
    PingHop,
    SendPathSignal,
)
from meshkey.wire.net import NatClass
from meshkey.wire.punch import AbortReason
from meshkey.wire.udp import WhoamiRequest, WhoamiResponse, decode_control_packet

ME = NodeId(b"\x01" * 32)
PEER = NodeId(b"\x02" * 32)
LOCAL = ("10.1.0.2", 5000)
OBSERVERS = [("203.0.113.10", 7000), ("198.51.100.10", 7000)]


def engine() -> PathEngine:
    e = PathEngine(ME, observers=list(OBSERVERS), rng=random.Random(1))
    e.set_listening((LOCAL,), (), now=0.0)
    return e


def answer(e: PathEngine, seen: tuple[str, int], now: float) -> None:
    """Answers every WHOAMI the engine asked with ``seen``, as each observer would."""
    for command in e.commands():
        if isinstance(command, SendWhoami):
            request = decode_control_packet(command.packet)
            assert isinstance(request, WhoamiRequest)
            e.on_whoami_response(command.observer, WhoamiResponse(request.txid, *seen), now)


def classified(e: PathEngine) -> list[NatClassified]:
    return [event for event in e.events() if isinstance(event, NatClassified)]


def test_a_classification_is_due_at_once_and_its_result_reported() -> None:
    e = engine()
    assert e.next_deadline() == 0.0
    e.on_timer(0.0)
    answer(e, ("203.0.113.1", 5000), 0.05)
    (result,) = classified(e)
    assert result.classification.nat_class is NatClass.ENDPOINT_INDEPENDENT
    assert not result.changed


def test_a_changed_mapping_is_seen_within_the_watch_interval_and_reclassified() -> None:
    e = engine()
    e.on_timer(0.0)
    answer(e, ("203.0.113.1", 5000), 0.05)
    e.events()
    watch_at = e.next_deadline()
    assert watch_at is not None and watch_at <= 0.05 + 5.0
    e.on_timer(watch_at)
    (watch,) = [c for c in e.commands() if isinstance(c, SendWhoami)]
    request = decode_control_packet(watch.packet)
    assert isinstance(request, WhoamiRequest)
    # The router was renumbered: the observer sees another address.
    e.on_whoami_response(watch.observer, WhoamiResponse(request.txid, "203.0.113.77", 5000), 5.1)
    assert any(isinstance(event, NetworkChanged) for event in e.events())
    e.on_timer(5.1)  # the round is due now
    answer(e, ("203.0.113.77", 5000), 5.2)
    (result,) = classified(e)
    assert result.changed and result.classification.mappings[0] == ("203.0.113.77", 5000)


def test_an_unchanged_mapping_changes_nothing() -> None:
    e = engine()
    e.on_timer(0.0)
    answer(e, ("203.0.113.1", 5000), 0.05)
    e.events()
    watch_at = e.next_deadline()
    assert watch_at is not None
    e.on_timer(watch_at)
    answer(e, ("203.0.113.1", 5000), watch_at + 0.05)
    assert e.events() == [] and not e.classifying


def test_new_host_addresses_are_a_network_change() -> None:
    e = engine()
    e.on_timer(0.0)
    answer(e, ("203.0.113.1", 5000), 0.05)
    e.events()
    e.set_listening((("10.9.0.2", 5000),), (), now=7.0)
    assert [type(x) for x in e.events()] == [NetworkChanged]
    assert e.nat.recheck.next_deadline() == 7.0  # a round at once


def test_a_network_change_pings_every_udp_hop_this_node_dialled() -> None:
    """From the new address, a PING lets each peer move the connection there (QUIC
    migration) or shows at once that the hop is gone; hops dialled in, and TCP ones, are
    the peer's to keep."""
    e = engine()
    e.on_timer(0.0)
    answer(e, ("203.0.113.1", 5000), 0.05)
    e.events()
    for link, transport, outbound in (
        ("out", "udp", True),
        ("in", "udp", False),
        ("t", "tcp", True),
    ):
        e.on_hop_up(
            link,
            PEER,
            transport=transport,
            remote=("203.0.113.2", 5000),
            outbound=outbound,
            socket=0,
            now=1.0,
        )
    e.commands()
    e.set_listening((("10.9.0.2", 5000),), (), now=7.0)
    assert [c.link for c in e.commands() if isinstance(c, PingHop)] == ["out"]


def test_a_peers_state_goes_with_its_last_channel() -> None:
    e = engine()
    e.channel_opened(PEER, "c1", 1.0, initiator=True, relay="/ip4/203.0.113.10/udp/7000")
    e.channel_opened(PEER, "c2", 1.0, initiator=True, relay="/ip4/203.0.113.10/udp/7000")
    e.on_signal(PEER, "c2", bytes([1, 2]) + (7).to_bytes(8, "big"), 1.5)  # a relay-path PING
    assert any(isinstance(c, SendPathSignal) and c.channel == "c2" for c in e.commands())
    e.channel_closed(PEER, "c2", 2.0)
    assert e.paths.report(PEER) is not None  # c1 still open
    e.channel_closed(PEER, "c1", 3.0)
    assert e.paths.report(PEER) is None and e.relay_description(PEER) is None


def classified_engine(node: NodeId, local: tuple[str, int], public: tuple[str, int]) -> PathEngine:
    e = PathEngine(node, observers=list(OBSERVERS), rng=random.Random(node.raw[0]))
    e.set_listening((local,), (), now=0.0)
    e.on_timer(0.0)
    answer(e, public, 0.05)
    e.events()
    e.commands()
    return e


def test_the_punch_rides_the_channel_handshake_and_is_not_started_twice() -> None:
    """Issue 20: the initiator's CONNECT goes in its first handshake message, the
    responder's answer in its reply; when the channel then opens, the path manager counts
    that punch as its upgrade attempt instead of starting another one."""
    a = classified_engine(ME, LOCAL, ("203.0.113.1", 5000))
    b = classified_engine(PEER, ("10.2.0.2", 5000), ("203.0.113.2", 5000))
    hello = a.handshake_payload(PEER, True, 1.0)
    assert hello  # an encoded path signal: a PUNCH
    assert a.puncher.session(PEER) is not None
    assert not [c for c in a.commands() if isinstance(c, SendPathSignal)]  # it rode the hello
    b.on_handshake_payload(ME, hello, False, 1.04)
    reply = b.handshake_payload(ME, False, 1.04)
    assert reply and b.puncher.session(ME) is not None
    a.on_handshake_payload(PEER, reply, True, 1.08)
    a.channel_opened(PEER, "c1", 1.08, initiator=True, relay="/ip4/203.0.113.10/udp/7000")
    report = a.paths.report(PEER)
    assert report is not None and "handshake" in report.punch
    superseded = [
        e for e in a.events() if isinstance(e, PunchFailed) and e.reason is AbortReason.SUPERSEDED
    ]
    assert superseded == []  # no second punch replaced the one the handshake carried


def test_no_early_punch_before_this_node_knows_its_nat() -> None:
    e = engine()  # not classified yet, a round is due at once
    assert e.handshake_payload(PEER, True, 0.0) == b""
    assert e.puncher.session(PEER) is None


def test_a_silent_direct_path_is_passed_over_before_it_is_declared_dead() -> None:
    """Traffic went out on the punched path and nothing came back for half a second: new
    traffic takes the relay at once (the path is declared dead at 1.5 s)."""
    e = classified_engine(ME, LOCAL, ("203.0.113.1", 5000))
    e.channel_opened(PEER, "c1", 1.0, initiator=True, relay="/ip4/203.0.113.10/udp/7000")
    e.on_hop_up(
        "hop1",
        PEER,
        transport="udp",
        remote=("203.0.113.2", 5000),
        outbound=True,
        socket=0,
        now=1.1,
    )
    assert e.hop_link(PEER, 1.2) == "hop1"
    e.on_hop_traffic("hop1", sent=100, now=2.0)
    assert e.hop_link(PEER, 2.4) == "hop1"  # not silent for long yet
    assert e.hop_link(PEER, 2.6) is None  # silent for 0.6 s: the relay carries new traffic
    e.on_hop_traffic("hop1", received=40, now=2.7)  # the peer's packets still arrive...
    assert e.hop_link(PEER, 2.8) is None  # ...which a path broken one way also does
    e.on_timer(2.8)
    pings = [c for c in e.commands() if isinstance(c, PingHop) and c.link == "hop1"]
    assert pings  # the manager asks the path itself
    e.on_hop_pong("hop1", pings[-1].token, 2.85)  # and the PONG proves it both ways
    assert e.hop_link(PEER, 2.9) == "hop1"


def direct_pair() -> PathEngine:
    """A channel to PEER through a relay, and a direct hop ``hop1`` to it, its current path."""
    e = classified_engine(ME, LOCAL, ("203.0.113.1", 5000))
    e.channel_opened(PEER, "c1", 1.0, initiator=True, relay="/ip4/203.0.113.10/udp/7000")
    e.on_hop_up(
        "hop1",
        PEER,
        transport="udp",
        remote=("203.0.113.2", 5000),
        outbound=True,
        socket=0,
        now=1.1,
    )
    e.commands()
    assert e.hop_link(PEER, 1.2) == "hop1"
    return e


def test_the_peers_traffic_through_the_relay_passes_the_direct_path_over_at_once() -> None:
    """The peer's channel traffic came through its relay while our current path to it is a
    direct hop: it cannot reach us on that hop (broken toward us), so our reply takes the
    relay now, and the hop is pinged at once instead of after our own sends go unanswered."""
    e = direct_pair()
    e.on_heard_elsewhere(PEER, None, 2.0)
    assert e.hop_link(PEER, 2.0) is None
    pings = [c for c in e.commands() if isinstance(c, PingHop) and c.link == "hop1"]
    assert pings
    e.on_timer(3.6)  # nothing came back on it: dead within dead_after of the suspicion
    current = e.paths.current_path(PEER)
    assert current is not None and not current.kind.is_direct


def test_a_straggler_through_the_relay_costs_one_ping() -> None:
    """A message the peer sent through the relay before it moved to the direct path arrives
    after we did: the hop is suspected, and its PONG clears it."""
    e = direct_pair()
    e.on_heard_elsewhere(PEER, None, 2.0)
    pings = [c for c in e.commands() if isinstance(c, PingHop) and c.link == "hop1"]
    e.on_hop_pong("hop1", pings[-1].token, 2.05)
    assert e.hop_link(PEER, 2.1) == "hop1"
    e.on_timer(4.0)
    assert e.hop_link(PEER, 4.0) == "hop1"


def test_traffic_over_the_direct_hop_itself_suspects_nothing() -> None:
    e = direct_pair()
    e.on_heard_elsewhere(PEER, "hop1", 2.0)
    assert e.hop_link(PEER, 2.0) == "hop1"
    assert not [c for c in e.commands() if isinstance(c, PingHop)]
