"""One channel's pure decisions: where sealed traffic goes, and which way a reply follows."""

from __future__ import annotations

from meshkey.channel.liveness import ChannelLiveness
from meshkey.channel.record import MAX_RECENT, MAX_RECENT_BYTES, Channel, Sent
from meshkey.channel.session import SecureSession, StaticKey
from meshkey.identity import Identity
from meshkey.routing.address import Route, ServiceAddress, TransportAddress
from meshkey.wire.message import HOST_IP4

ALICE, BOB = Identity.generate(), Identity.generate()
RELAY = TransportAddress("udp", HOST_IP4, "192.0.2.1", 4000)
DIRECT = (ServiceAddress("_udp.7"),)
DECRYPTOR = ServiceAddress("_sc.00ff")


def open_session(initiator: bool) -> SecureSession:
    alice = SecureSession(True, StaticKey(ALICE))
    bob = SecureSession(False, StaticKey(BOB))
    reply = bob.receive(alice.start()).reply
    assert reply is not None
    finish = alice.receive(reply).reply
    assert finish is not None
    confirm = bob.receive(finish).reply
    assert confirm is not None
    alice.receive(confirm)
    return alice if initiator else bob


def channel(initiator: bool, route: Route, *, opened: bool = True) -> Channel:
    session = open_session(initiator) if opened else SecureSession(initiator, StaticKey(ALICE))
    return Channel(
        address="a" * 32,
        decryptor="_sc.0001",
        session=session,
        initiator=initiator,
        liveness=ChannelLiveness(initiator, 0.0),
        route=route,
    )


async def test_sealed_traffic_goes_direct_when_there_is_a_hop_to_the_peer() -> None:
    relayed = channel(True, (RELAY, ServiceAddress("forward_to_bob"), DECRYPTOR))
    assert relayed.current_route(DIRECT, lambda worker: True) == (*DIRECT, DECRYPTOR)
    assert relayed.current_route(None, lambda worker: True) == relayed.route
    handshaking = channel(True, relayed.route, opened=False)
    assert handshaking.current_route(DIRECT, lambda worker: True) == relayed.route


async def test_a_responder_whose_direct_hop_closed_answers_through_the_relay_again() -> None:
    responder = channel(False, ())
    through_relay: Route = (ServiceAddress("_udp.1"), DECRYPTOR)
    responder.heard_over(through_relay, came_direct=False)
    came_direct: Route = (ServiceAddress("_udp.7"), DECRYPTOR)
    responder.heard_over(came_direct, came_direct=True)
    assert responder.route == came_direct and responder.relay_route == through_relay
    assert responder.current_route(None, lambda worker: True) == came_direct
    assert responder.current_route(None, lambda worker: worker != "_udp.7") == through_relay


async def test_the_initiator_keeps_its_route_and_learns_only_the_peers_decryptor() -> None:
    initiator = channel(True, (), opened=False)
    initiator.listener_route = (RELAY, ServiceAddress("forward_to_bob"), ServiceAddress("api"))
    initiator.route = initiator.listener_route  # as create() starts it
    initiator.route_error = "route error: relay 'bob' is offline"
    initiator.heard_over((ServiceAddress("_udp.1"), DECRYPTOR), came_direct=False)
    assert initiator.route == (RELAY, ServiceAddress("forward_to_bob"), DECRYPTOR)
    # Later messages come back however they came: the route stays the one it was made with.
    initiator.heard_over((ServiceAddress("_udp.2"), ServiceAddress("_sc.9")), came_direct=False)
    assert initiator.route == (RELAY, ServiceAddress("forward_to_bob"), DECRYPTOR)
    assert initiator.route_error is None  # an authentic message proves the route good


async def test_what_is_kept_to_resend_is_bounded_in_count_and_bytes() -> None:
    kept = channel(True, (RELAY, DECRYPTOR))
    for index in range(MAX_RECENT + 10):
        kept.remember(Sent(float(index), b"x" * 10))
    assert len(kept.recent) == MAX_RECENT and kept.recent[0].at == 10.0
    assert kept.recent_bytes == MAX_RECENT * 10
    big = 1024 * 1024
    for index in range(10):  # 1 MiB each, PLAIN ones count their data
        kept.remember(Sent(100.0 + index, b"", (index, b"y" * big)))
    assert kept.recent_bytes <= MAX_RECENT_BYTES
    assert kept.recent[-1].at == 109.0 and kept.recent_bytes == sum(s.size for s in kept.recent)
    kept.remember(Sent(200.0, b"z" * (MAX_RECENT_BYTES + 1)))  # the newest is always kept
    assert [s.at for s in kept.recent] == [200.0]
    kept.forget_recent()
    assert not kept.recent and kept.recent_bytes == 0
