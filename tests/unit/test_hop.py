"""The sans-IO hop core: authentication in both directions, and every way it must fail."""

from __future__ import annotations

import typing
from collections.abc import Sequence

import pytest

from meshkey.identity import Identity
from meshkey.transport.hop import (
    MAX_AUTH_FRAME,
    TRANSITIONS,
    HopConnection,
    HopError,
    HopFailed,
    HopIdle,
    HopLocalError,
    HopUnresponsive,
    Liveness,
    MessageReceived,
    PeerAuthenticated,
    PeerClosed,
    Phase,
    PongReceived,
    Role,
    State,
)
from meshkey.wire.frames import FrameDecoder, encode_frame
from meshkey.wire.hop import (
    AuthOk,
    ClientProof,
    Close,
    CloseCode,
    HopFrame,
    MessageFrame,
    Ping,
    Pong,
    ServerHello,
    decode_hop_frame,
    encode_hop_frame,
)

SERVER = Identity.generate()
CLIENT = Identity.generate()


def pair(expected=None):
    server = HopConnection(Role.SERVER, SERVER, "tcp", random_bytes=lambda n: b"\x07" * n)
    client = HopConnection(Role.CLIENT, CLIENT, "tcp", expected_peer=expected)
    return server, client


def handshake(server, client):
    client.certificate_verified(SERVER.node_id)
    assert client.receive_data(server.data_to_send()) == []
    assert server.receive_data(client.data_to_send()) == [PeerAuthenticated(CLIENT.node_id)]
    assert client.receive_data(server.data_to_send()) == [PeerAuthenticated(SERVER.node_id)]


def frames(data: bytes):
    return [decode_hop_frame(body) for body in FrameDecoder().feed(data)]


def test_handshake_then_messages_both_ways() -> None:
    server, client = pair(expected=SERVER.node_id)
    handshake(server, client)
    assert server.is_open
    assert client.is_open
    assert server.peer == CLIENT.node_id
    assert client.peer == SERVER.node_id
    client.send_message(b"one")
    client.send_message(b"two")
    assert server.receive_data(client.data_to_send()) == [
        MessageReceived(b"one"),
        MessageReceived(b"two"),
    ]
    server.send_message(b"back")
    assert client.receive_data(server.data_to_send()) == [MessageReceived(b"back")]


def test_ping_is_answered_with_pong() -> None:
    server, client = pair()
    handshake(server, client)
    client.ping()
    assert server.receive_data(client.data_to_send()) == []
    assert client.receive_data(server.data_to_send()) == [PongReceived(1)]


def failure(events: Sequence[object]) -> HopFailed:
    """The HopFailed that ends ``events`` (a violation never raises out of receive_data)."""
    assert events and isinstance(events[-1], HopFailed), events
    return events[-1]


def test_wrong_certificate_node_id_is_refused_before_anything_is_sent() -> None:
    _server, client = pair(expected=Identity.generate().node_id)
    with pytest.raises(HopError) as info:
        client.certificate_verified(SERVER.node_id)
    assert info.value.code == CloseCode.AUTH_FAILED
    assert frames(client.data_to_send()) == [Close(CloseCode.AUTH_FAILED, info.value.reason)]
    assert client.state is State.CLOSED


def test_server_hello_that_disagrees_with_the_certificate_is_refused() -> None:
    server, client = pair()
    client.certificate_verified(Identity.generate().node_id)
    assert "certificate" in failure(client.receive_data(server.data_to_send())).reason


def test_proof_signed_by_someone_else_is_refused() -> None:
    server, _ = pair()
    hello = frames(server.data_to_send())[0]
    assert isinstance(hello, ServerHello)
    mallory = Identity.generate()
    forged = ClientProof(CLIENT.node_id.raw, mallory.sign(b"anything"))
    failed = failure(server.receive_data(encode_frame(encode_hop_frame(forged))))
    assert "does not verify" in failed.reason
    assert failed.code == CloseCode.AUTH_FAILED
    assert server.peer is None


def test_proof_replayed_to_a_new_connection_is_refused() -> None:
    first = HopConnection(Role.SERVER, SERVER, "tcp", random_bytes=lambda n: b"\x01" * n)
    client = HopConnection(Role.CLIENT, CLIENT, "tcp")
    client.certificate_verified(SERVER.node_id)
    client.receive_data(first.data_to_send())
    proof = client.data_to_send()
    assert first.receive_data(proof) == [PeerAuthenticated(CLIENT.node_id)]
    second = HopConnection(Role.SERVER, SERVER, "tcp", random_bytes=lambda n: b"\x02" * n)
    second.data_to_send()
    assert "does not verify" in failure(second.receive_data(proof)).reason


def test_proof_relayed_to_another_server_is_refused() -> None:
    # A man in the middle gets the client's proof for itself and presents it to SERVER.
    mitm = Identity.generate()
    fake = HopConnection(Role.SERVER, mitm, "tcp", random_bytes=lambda n: b"\x07" * n)
    client = HopConnection(Role.CLIENT, CLIENT, "tcp")
    client.certificate_verified(mitm.node_id)
    client.receive_data(fake.data_to_send())
    proof = client.data_to_send()
    server, _ = pair()  # same nonce as the fake server: only the server id differs
    server.data_to_send()
    assert "does not verify" in failure(server.receive_data(proof)).reason


def test_proof_for_another_transport_is_refused() -> None:
    server, _ = pair()
    quic_client = HopConnection(Role.CLIENT, CLIENT, "quic")
    quic_client.certificate_verified(SERVER.node_id)
    quic_client.receive_data(server.data_to_send())
    assert "does not verify" in failure(server.receive_data(quic_client.data_to_send())).reason


def test_messages_before_authentication_are_a_protocol_error() -> None:
    server, _ = pair()
    failed = failure(server.receive_data(encode_frame(encode_hop_frame(MessageFrame(b"sneaky")))))
    assert failed.code == CloseCode.PROTOCOL_ERROR
    client = HopConnection(Role.CLIENT, CLIENT, "tcp")
    client.certificate_verified(SERVER.node_id)
    assert failure(client.receive_data(encode_frame(encode_hop_frame(Ping(1))))).code == (
        CloseCode.PROTOCOL_ERROR
    )


@pytest.mark.parametrize(
    "garbage", [b"\xff\xff\xff\xff", b"\x00\x00\x00\x01\x99", b"\x00\x00\x00\x00"]
)
def test_garbage_closes_with_protocol_error(garbage: bytes) -> None:
    server, _ = pair()
    assert failure(server.receive_data(garbage)).code == CloseCode.PROTOCOL_ERROR
    assert server.receive_data(b"more") == []  # closed: ignores the rest


def test_peer_close_is_reported() -> None:
    server, client = pair()
    handshake(server, client)
    client.close(CloseCode.IDLE, "idle")
    assert server.receive_data(client.data_to_send()) == [PeerClosed(CloseCode.IDLE, "idle")]
    assert server.state is State.CLOSED
    with pytest.raises(RuntimeError):
        server.send_message(b"late")


def test_messages_before_a_malformed_frame_still_come_out() -> None:
    """A message and a malformed frame in one read: the message is delivered, then the
    failure is reported (it used to be lost with the error)."""
    server, client = pair()
    handshake(server, client)
    client.send_message(b"first")
    data = client.data_to_send() + encode_frame(b"\x99junk")
    events = server.receive_data(data)
    assert events[0] == MessageReceived(b"first")
    assert failure(events).code == CloseCode.PROTOCOL_ERROR
    assert server.state is State.CLOSED
    assert frames(server.data_to_send())[-1] == Close(CloseCode.PROTOCOL_ERROR, events[-1].reason)


def test_before_authentication_only_small_frames_are_accepted() -> None:
    """A stranger cannot make a node buffer a big frame: the announced length alone fails."""
    server, client = pair()
    huge = (MAX_AUTH_FRAME + 1).to_bytes(4, "big")
    assert "over the 512-byte limit" in failure(server.receive_data(huge)).reason
    server, client = pair()
    handshake(server, client)
    client.send_message(b"x" * 100_000)  # once open, full-size messages flow
    assert server.receive_data(client.data_to_send()) == [MessageReceived(b"x" * 100_000)]


LIVE = Liveness(
    auth_timeout=5,
    idle_timeout=60,
    keepalive_interval=20,
    dead_after=60,
    probe_quiet=1,
    answer_timeout=2,
    suspect_grace=1,
)


def live_pair(now: float = 0.0) -> tuple[HopConnection, HopConnection]:
    server = HopConnection(Role.SERVER, SERVER, "tcp", liveness=LIVE, now=now)
    client = HopConnection(Role.CLIENT, CLIENT, "tcp", liveness=LIVE, now=now)
    client.certificate_verified(SERVER.node_id)
    client.receive_data(server.data_to_send(), now)
    server.receive_data(client.data_to_send(), now)
    client.receive_data(server.data_to_send(), now)
    return server, client


def test_authentication_must_finish_in_time() -> None:
    server = HopConnection(Role.SERVER, SERVER, "tcp", liveness=LIVE, now=100.0)
    assert server.next_deadline() == 105.0
    assert server.on_timer(104.9) == []
    [failed] = server.on_timer(105.0)
    assert failed == HopFailed(CloseCode.AUTH_FAILED, "authentication timed out", timed_out=True)
    assert server.state is State.CLOSED and server.next_deadline() is None


def test_idle_hop_reports_idle_after_the_timeout_of_no_traffic() -> None:
    server, client = live_pair()
    assert client.next_deadline() == 60.0
    client.send_message(b"hi", now=30.0)  # activity moves the deadline
    server.receive_data(client.data_to_send(), 30.0)
    client.receive_data(server.data_to_send(), 30.0)  # the pong to the probe
    assert client.next_deadline() == 90.0
    assert client.on_timer(89.0) == []
    assert client.on_timer(90.0) == [HopIdle()]


def test_keepalive_pings_when_quiet_and_declares_a_silent_peer_dead() -> None:
    _server, client = live_pair()
    client.keepalive = True
    assert client.next_deadline() == 20.0
    assert client.on_timer(20.0) == []
    assert [type(f).__name__ for f in frames(client.data_to_send())] == ["Ping"]
    assert client.next_deadline() == 40.0  # one ping per interval, not one per wake-up
    client.on_timer(40.0)
    assert [type(f).__name__ for f in frames(client.data_to_send())] == ["Ping"]
    assert client.on_timer(59.9) == []
    [dead] = client.on_timer(60.0)
    assert isinstance(dead, HopUnresponsive) and "keepalives" in dead.reason


def test_a_watched_hop_pings_often_and_a_silent_peer_is_dead_in_seconds() -> None:
    """A hop that carries a relay registration: its death must be seen in seconds (the
    client then moves its relay), not after the minute of plain keepalives."""
    server, client = live_pair()
    client.keepalive = True
    client.watch_interval = 2.0
    assert client.next_deadline() == 2.0
    assert client.on_timer(2.0) == []
    ping = client.data_to_send()
    assert [type(f).__name__ for f in frames(ping)] == ["Ping"]
    server.receive_data(ping, 2.01)
    assert client.receive_data(server.data_to_send(), 2.02)  # answered: alive
    next_ping = client.next_deadline()
    assert next_ping is not None and next_ping <= 4.02
    client.on_timer(next_ping)  # this one is never answered (the relay node died)
    client.data_to_send()
    [dead] = client.on_timer(next_ping + client.liveness.answer_timeout)
    assert isinstance(dead, HopUnresponsive) and "keepalive" in dead.reason


def test_keepalive_answered_keeps_the_hop_and_measures_rtt() -> None:
    server, client = live_pair()
    client.keepalive = True
    heard = 0.0
    for token in range(1, 11):
        now = client.next_deadline()
        assert now == heard + 20  # quiet for one interval: ping
        assert client.on_timer(now) == []
        server.receive_data(client.data_to_send(), now + 0.02)
        heard = now + 0.04
        assert client.receive_data(server.data_to_send(), heard) == [PongReceived(token)]
    assert client.rtt is not None and abs(client.rtt - 0.04) < 1e-9
    assert client.state is State.OPEN


def test_traffic_to_a_dead_peer_is_noticed_within_the_answer_timeout() -> None:
    _server, client = live_pair()
    client.send_message(b"are you there", now=10.0)  # quiet for 10 s: a probe goes along
    sent = frames(client.data_to_send())
    assert [type(f).__name__ for f in sent] == ["MessageFrame", "Ping"]
    assert client.next_deadline() == 12.0
    [dead] = client.on_timer(12.0)
    assert isinstance(dead, HopUnresponsive) and "no answer to traffic" in dead.reason


def test_an_answering_peer_clears_the_probe_and_busy_traffic_needs_no_probe() -> None:
    server, client = live_pair()
    client.send_message(b"one", now=10.0)
    server.receive_data(client.data_to_send(), 10.0)
    client.receive_data(server.data_to_send(), 10.1)  # pong: the peer is there
    assert client.on_timer(12.0) == []
    client.send_message(b"two", now=10.5)  # heard from it 0.4 s ago: no new probe
    assert not any(isinstance(f, Ping) for f in frames(client.data_to_send()))


def test_icmp_suspicion_closes_only_a_peer_that_does_not_answer() -> None:
    server, client = live_pair()
    client.suspect(5.0)
    server.receive_data(client.data_to_send(), 5.0)
    client.receive_data(server.data_to_send(), 5.01)  # it answers: forged or stale ICMP
    assert client.on_timer(6.0) == [] and client.state is State.OPEN
    client.suspect(7.0)
    [gone] = client.on_timer(8.0)
    assert isinstance(gone, HopUnresponsive) and "ICMP" in gone.reason


def test_rtt_is_the_smoothed_ping_round_trip() -> None:
    """The first PONG sets the RTT; later ones move it by 1/8 (RFC 6298's smoothing)."""
    server, client = live_pair()
    for sent, answered in ((1.0, 1.1), (2.0, 2.02)):
        client.ping(sent)
        server.receive_data(client.data_to_send(), sent)
        client.receive_data(server.data_to_send(), answered)
    assert client.rtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.02)
    assert client.ping_rtt.samples == 2
    client.receive_data(encode_frame(encode_hop_frame(Pong(99))), 3.0)  # not a ping of ours
    assert client.ping_rtt.samples == 2


# -- the transition table: every (phase, frame) pair ---------------------------------------

FRAME_KINDS: tuple[type[HopFrame], ...] = typing.get_args(HopFrame)
SAMPLES: dict[type[HopFrame], HopFrame] = {
    ServerHello: ServerHello(SERVER.node_id.raw, b"\x07" * 32),
    ClientProof: ClientProof(CLIENT.node_id.raw, bytes(64)),
    AuthOk: AuthOk(),
    Close: Close(CloseCode.NORMAL, "bye"),
    MessageFrame: MessageFrame(b"m"),
    Ping: Ping(1),
    Pong: Pong(1),
}
assert set(SAMPLES) == set(FRAME_KINDS)


def hop_in(phase: Phase) -> tuple[HopConnection, bytes]:
    """A hop in ``phase``, with nothing left to send, and the bytes its peer would send next
    (the authentication frame the phase waits for, if any)."""
    server, client = pair()
    if phase is Phase.AWAIT_HELLO:
        client.certificate_verified(SERVER.node_id)
        return client, server.data_to_send()
    if phase is Phase.AWAIT_PROOF:
        client.certificate_verified(SERVER.node_id)
        client.receive_data(server.data_to_send())
        return server, client.data_to_send()
    if phase is Phase.AWAIT_AUTH_OK:
        client.certificate_verified(SERVER.node_id)
        client.receive_data(server.data_to_send())
        server.receive_data(client.data_to_send())
        return client, server.data_to_send()
    handshake(server, client)
    if phase is Phase.CLOSED:
        client.close()
        client.data_to_send()
    return client, b""


def test_every_phase_and_frame_kind_is_covered() -> None:
    assert set(TRANSITIONS) == set(Phase)
    assert all(set(allowed) <= set(FRAME_KINDS) for allowed in TRANSITIONS.values())
    assert TRANSITIONS[Phase.CLOSED] == {}
    assert all(allowed[Close] is Phase.CLOSED for p, allowed in TRANSITIONS.items() if allowed)


ALLOWED = [(phase, kind) for phase in Phase for kind in TRANSITIONS[phase]]
REFUSED = [
    (phase, kind) for phase in Phase for kind in FRAME_KINDS if kind not in TRANSITIONS[phase]
]


def pair_id(value: object) -> str:
    return value.name if isinstance(value, Phase) else getattr(value, "__name__", str(value))


@pytest.mark.parametrize(("phase", "kind"), ALLOWED, ids=pair_id)
def test_each_allowed_frame_leads_where_the_table_says(phase: Phase, kind: type[HopFrame]) -> None:
    hop, peer_next = hop_in(phase)
    assert hop.phase is phase
    if kind in (ServerHello, ClientProof, AuthOk):
        [frame] = frames(peer_next)
        assert isinstance(frame, kind)
        data = peer_next
    else:
        data = encode_frame(encode_hop_frame(SAMPLES[kind]))
    events = hop.receive_data(data, 1.0)
    assert not any(isinstance(event, HopFailed) for event in events)
    assert hop.phase is TRANSITIONS[phase][kind]
    assert hop.state is hop.phase.state


@pytest.mark.parametrize(("phase", "kind"), REFUSED, ids=pair_id)
def test_each_frame_the_table_does_not_allow_is_refused(phase: Phase, kind: type[HopFrame]) -> None:
    """Refused with a typed event (HopFailed, PROTOCOL_ERROR, the CLOSE queued) and CLOSED;
    in CLOSED, the terminal phase, nothing is read at all."""
    hop, _ = hop_in(phase)
    events = hop.receive_data(encode_frame(encode_hop_frame(SAMPLES[kind])), 1.0)
    if phase is Phase.CLOSED:
        assert events == []
        assert hop.data_to_send() == b""
    else:
        failed = failure(events)
        assert failed.code == CloseCode.PROTOCOL_ERROR
        assert f"unexpected {kind.__name__}" in failed.reason
        assert frames(hop.data_to_send()) == [Close(CloseCode.PROTOCOL_ERROR, failed.reason)]
    assert hop.phase is Phase.CLOSED and hop.state is State.CLOSED
    assert hop.next_deadline() is None
    with pytest.raises(HopLocalError):
        hop.send_message(b"late")


@pytest.mark.parametrize("phase", [p for p in Phase if p is not Phase.OPEN], ids=pair_id)
def test_sending_is_refused_unless_open_and_changes_nothing(phase: Phase) -> None:
    hop, _ = hop_in(phase)
    with pytest.raises(HopLocalError, match="cannot send"):
        hop.send_message(b"too soon")
    assert hop.phase is phase
    assert hop.data_to_send() == b""
