"""The UDP transport's glue that must never fail a whole node: the QUIC server certificate
loads whatever its serial number, and a datagram handler that raises costs one datagram."""

from __future__ import annotations

import asyncio
import socket

import pytest
from cryptography import x509

from meshkey.identity import Identity
from meshkey.transport.udp import server_configuration
from meshkey.transport.udp_socket import UdpEndpoint
from meshkey.wire.net import Endpoint


def test_the_quic_certificate_loads_for_every_serial_number_length(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """qh3 failed to parse the joined certificate and key ("Incorrect padding") for some
    DER lengths; the serial number (random, 1 to 20 bytes) is what varies them."""
    identity = Identity.generate()
    for bits in range(1, 159, 3):
        monkeypatch.setattr(x509, "random_serial_number", lambda bits=bits: (1 << bits) | 1)
        configuration = server_configuration(identity, 30.0)
        assert configuration.certificate is not None
        assert configuration.private_key is not None


async def test_a_raising_handler_costs_one_datagram_and_never_the_socket() -> None:
    got: list[bytes] = []

    def on_datagrams(data: bytes, segment: int, source: Endpoint) -> None:
        if data == b"bug":
            raise RuntimeError("a bug in a handler")
        got.append(data)

    endpoint = UdpEndpoint(on_datagrams, lambda: None, lambda *_: None, batching=False)
    address = endpoint.bind("127.0.0.1", 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for payload in (b"one", b"bug", b"two"):
            sender.sendto(payload, address)
        for _ in range(100):
            if len(got) == 2:
                break
            await asyncio.sleep(0.01)
    endpoint.close()
    assert got == [b"one", b"two"]
    assert endpoint.stats["handler_errors"] == 1
