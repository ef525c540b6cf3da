"""Issue 21's copies: a GSO run leaves as its datagrams, each intact, without being joined
first; a sealed payload decodes to a view that opens as the bytes did; the allocator's policy
is set once per process; qh3 does not parse each packet for a logger nobody configured."""

from __future__ import annotations

import os
import socket

import pytest
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection
from qh3.quic.logger import QuicLogger

from meshkey.transport import udp_socket
from meshkey.transport.quic import _no_packet_log, skip_packet_logs
from meshkey.transport.udp_socket import UdpEndpoint
from meshkey.wire.channel import (
    ChannelKind,
    Handshake,
    Sealed,
    decode_channel,
    encode_channel,
)
from meshkey.wire.errors import TruncatedError


async def test_a_gso_run_arrives_as_its_datagrams_in_order() -> None:
    endpoint = UdpEndpoint(lambda *_: None, lambda: None, lambda *_: None, batching=True)
    endpoint.bind("127.0.0.1", 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(2)
        run = [bytes([i]) * 1200 for i in range(5)] + [b"\xff" * 700]  # a shorter last one
        endpoint.send(run, receiver.getsockname())
        got = [receiver.recv(2000) for _ in run]
    endpoint.close()
    assert got == run
    # One system call when the kernel segments; one per datagram where it cannot.
    assert endpoint.stats["syscalls_out"] == (1 if endpoint.gso else len(run))


def test_a_sealed_payload_decodes_to_a_view_of_its_ciphertext() -> None:
    ciphertext = bytes(range(256)) * 4
    encoded = encode_channel(Sealed(ChannelKind.DATA, 2**40 + 3, ciphertext))
    decoded = decode_channel(encoded)
    assert isinstance(decoded, Sealed)
    assert isinstance(decoded.ciphertext, memoryview)
    assert decoded == Sealed(ChannelKind.DATA, 2**40 + 3, ciphertext)
    assert bytes(decoded.ciphertext) == ciphertext


@pytest.mark.parametrize("kind", [ChannelKind.CLOSE, ChannelKind.PING, ChannelKind.CONFIRM])
def test_every_sealed_kind_takes_the_view_path(kind: ChannelKind) -> None:
    decoded = decode_channel(encode_channel(Sealed(kind, 9, b"tag" * 6)))
    assert decoded == Sealed(kind, 9, b"tag" * 6)


def test_short_sealed_payloads_and_handshakes_still_decode_as_before() -> None:
    with pytest.raises(TruncatedError):
        decode_channel(bytes([1, ChannelKind.DATA, 0, 0, 0]))  # a nonce cut short
    hello = decode_channel(encode_channel(Handshake(ChannelKind.HELLO, b"e" * 32)))
    assert hello == Handshake(ChannelKind.HELLO, b"e" * 32)


def test_the_allocator_policy_is_set_at_most_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(udp_socket, "_allocator_set", False)
    first = udp_socket.keep_freed_memory()
    assert udp_socket.keep_freed_memory() is False
    assert first is bool(_glibc())


def _glibc() -> str:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        return ""


def test_qh3_skips_packet_logs_only_where_no_logger_would_read_them() -> None:
    quiet = QuicConnection(configuration=QuicConfiguration(is_client=True))
    skip_packet_logs(quiet)
    assert quiet._log_packets is _no_packet_log
    logged = QuicConnection(
        configuration=QuicConfiguration(is_client=True, quic_logger=QuicLogger())
    )
    skip_packet_logs(logged)
    assert logged._log_packets is not _no_packet_log
