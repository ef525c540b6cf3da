"""The sans-IO hop core: authentication in both directions, and every way it must fail."""

from __future__ import annotations

import pytest

from meshkey.identity import Identity
from meshkey.transport.hop import (
    HopConnection,
    HopError,
    MessageReceived,
    PeerAuthenticated,
    PeerClosed,
    PongReceived,
    Role,
    State,
)
from meshkey.wire.frames import FrameDecoder, encode_frame
from meshkey.wire.hop import (
    ClientProof,
    Close,
    CloseCode,
    MessageFrame,
    Ping,
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
    client.ping(42)
    assert server.receive_data(client.data_to_send()) == []
    assert client.receive_data(server.data_to_send()) == [PongReceived(42)]


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
    with pytest.raises(HopError, match="certificate"):
        client.receive_data(server.data_to_send())


def test_proof_signed_by_someone_else_is_refused() -> None:
    server, _ = pair()
    hello = frames(server.data_to_send())[0]
    assert isinstance(hello, ServerHello)
    mallory = Identity.generate()
    forged = ClientProof(CLIENT.node_id.raw, mallory.sign(b"anything"))
    with pytest.raises(HopError, match="does not verify") as info:
        server.receive_data(encode_frame(encode_hop_frame(forged)))
    assert info.value.code == CloseCode.AUTH_FAILED
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
    with pytest.raises(HopError, match="does not verify"):
        second.receive_data(proof)


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
    with pytest.raises(HopError, match="does not verify"):
        server.receive_data(proof)


def test_proof_for_another_transport_is_refused() -> None:
    server, _ = pair()
    quic_client = HopConnection(Role.CLIENT, CLIENT, "quic")
    quic_client.certificate_verified(SERVER.node_id)
    quic_client.receive_data(server.data_to_send())
    with pytest.raises(HopError, match="does not verify"):
        server.receive_data(quic_client.data_to_send())


def test_messages_before_authentication_are_a_protocol_error() -> None:
    server, _ = pair()
    with pytest.raises(HopError) as info:
        server.receive_data(encode_frame(encode_hop_frame(MessageFrame(b"sneaky"))))
    assert info.value.code == CloseCode.PROTOCOL_ERROR
    client = HopConnection(Role.CLIENT, CLIENT, "tcp")
    client.certificate_verified(SERVER.node_id)
    with pytest.raises(HopError):
        client.receive_data(encode_frame(encode_hop_frame(Ping(1))))


@pytest.mark.parametrize(
    "garbage", [b"\xff\xff\xff\xff", b"\x00\x00\x00\x01\x99", b"\x00\x00\x00\x00"]
)
def test_garbage_closes_with_protocol_error(garbage: bytes) -> None:
    server, _ = pair()
    with pytest.raises(HopError) as info:
        server.receive_data(garbage)
    assert info.value.code == CloseCode.PROTOCOL_ERROR
    assert server.receive_data(b"more") == []  # closed: ignores the rest


def test_peer_close_is_reported() -> None:
    server, client = pair()
    handshake(server, client)
    client.close(CloseCode.IDLE, "idle")
    assert server.receive_data(client.data_to_send()) == [PeerClosed(CloseCode.IDLE, "idle")]
    assert server.state is State.CLOSED
    with pytest.raises(RuntimeError):
        server.send_message(b"late")
