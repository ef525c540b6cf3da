"""Bad input at a node's TCP port: it refuses, logs, and keeps serving."""

from __future__ import annotations

import os
import random
import socket
import ssl
import struct

import pytest

from meshkey.cli.errors import ExitCode
from meshkey.identity import Identity, NodeId
from meshkey.routing.address import ServiceAddress, TransportAddress, parse_address
from meshkey.routing.message import Message
from meshkey.transport.blocking import BlockingHop
from meshkey.transport.hop import HopConnection, HopError, Role
from meshkey.transport.tls import SERVER_NAME, client_context
from meshkey.wire.frames import FrameDecoder, encode_frame
from meshkey.wire.hop import ClientProof, Close, CloseCode, decode_hop_frame, encode_hop_frame

from .conftest import Cli

pytestmark = pytest.mark.integration


@pytest.fixture
def blue(cli: Cli) -> tuple[Cli, TransportAddress]:
    cli.ok("node", "create", "blue")
    address = parse_address(cli.address("blue", "tcp"))
    assert isinstance(address, TransportAddress)
    return cli, address


def tls(address: TransportAddress) -> ssl.SSLSocket:
    raw = socket.create_connection(address.endpoint, timeout=5)
    return client_context().wrap_socket(raw, server_hostname=SERVER_NAME)


def read_frames(sock: ssl.SSLSocket) -> list[bytes]:
    decoder, frames = FrameDecoder(), list[bytes]()
    while not frames:
        data = sock.recv(65536)
        if not data:
            break
        frames = decoder.feed(data)
    return frames


def authenticated(address: TransportAddress) -> BlockingHop:
    """A hop to the node driven by the sans-IO core over a blocking TLS socket."""
    return BlockingHop(Identity.generate(), address, timeout=5)


def still_serving(cli: Cli) -> None:
    assert cli.ok("message", "send", "ok", "--to", "/node/blue/service/uppercase") == "OK\n"
    assert "Traceback" not in cli.log("blue")


def test_garbage_before_and_after_tls(blue: tuple[Cli, TransportAddress]) -> None:
    cli, address = blue
    idle = tls(address)  # a connection that never speaks must not block anyone else
    for size in (1, 17, 5000):
        with socket.create_connection(address.endpoint, timeout=5) as raw:
            raw.sendall(os.urandom(size))  # not TLS at all: the handshake fails
    refused = CloseCode.PROTOCOL_ERROR
    for garbage, answer in (
        (random.Random(7).randbytes(3000), refused),  # random frames (the first over the limit)
        (struct.pack("!I", 100) + b"short", None),  # a truncated frame: the rest is awaited
        (struct.pack("!I", 0xFFFFFFFF), refused),  # a frame far over the size limit
        (encode_frame(b"\x10" + os.urandom(50)), refused),  # a message before authenticating
        (encode_frame(b""), refused),  # an empty frame
    ):
        with tls(address) as sock:
            read_frames(sock)  # server hello
            sock.sendall(garbage)
            if answer is None:
                sock.settimeout(2)  # the bounded wait for an answer that must not come
                with pytest.raises(TimeoutError):
                    sock.recv(65536)
                continue  # closing the socket now is the EOF: the server closes quietly
            reply = read_frames(sock)
        assert reply, f"no CLOSE for {garbage[:8]!r}"
        close = decode_hop_frame(reply[0])
        assert isinstance(close, Close) and close.code == answer, (garbage[:8], close)
    still_serving(cli)
    idle.close()


def test_forged_client_proof_is_refused_and_logged(blue: tuple[Cli, TransportAddress]) -> None:
    cli, address = blue
    claimed = Identity.generate().node_id
    with tls(address) as sock:
        read_frames(sock)
        proof = ClientProof(claimed.raw, Identity.generate().sign(b"not the proof"))
        sock.sendall(encode_frame(encode_hop_frame(proof)))
        close = decode_hop_frame(read_frames(sock)[0])
    assert isinstance(close, Close) and close.code == CloseCode.AUTH_FAILED
    assert f"proof of NodeId {claimed} does not verify" in cli.log("blue")
    assert "event=hop.refused" in cli.log("blue")
    still_serving(cli)


def test_wrong_node_id_is_refused_and_logged(blue: tuple[Cli, TransportAddress]) -> None:
    cli, address = blue
    cli.ok("node", "create", "green")
    impostor = address.with_node_id(Identity.generate().node_id)
    message = cli.fails(
        ExitCode.REFUSED,
        "message",
        "send",
        "x",
        "--from",
        "green",
        "--to",
        f"{impostor}/service/echo",
    )
    assert f"presented NodeId {address.node_id}" in message
    assert "event=hop.refused" in cli.log("green")
    still_serving(cli)


def test_malformed_messages_on_an_authenticated_hop_are_dropped(
    blue: tuple[Cli, TransportAddress],
) -> None:
    cli, address = blue
    with authenticated(address) as hop:
        for body in (b"", b"\x01", os.urandom(200), b"\x01\x00\x01\x00\x03abc"):
            hop.send(body)
        good = Message((ServiceAddress("uppercase"),), (ServiceAddress("me"),), b"still here")
        hop.send(good.to_wire())
        reply = Message.from_wire(hop.receive(timeout=5))
    assert reply.payload == b"STILL HERE"
    assert "event=message.malformed" in cli.log("blue")
    still_serving(cli)


def test_node_id_from_wrong_certificate_is_refused_locally() -> None:
    core = HopConnection(
        Role.CLIENT, Identity.generate(), "tcp", expected_peer=NodeId(b"\x01" * 32)
    )
    with pytest.raises(HopError):
        core.certificate_verified(NodeId(b"\x02" * 32))
