"""Control packets on the one UDP socket: WHOAMI and the punch probes, their sizes (no
amplification), MACs, and typed errors on any bad input."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkey.nat.token import PunchKey
from meshkey.wire.errors import MalformedError, OversizeError, UnsupportedVersionError, WireError
from meshkey.wire.udp import (
    PUNCH_PROBE_SIZE,
    WHOAMI_REQUEST_SIZE,
    ControlKind,
    PunchAck,
    PunchProbe,
    PunchRole,
    WhoamiRequest,
    WhoamiResponse,
    decode_control_packet,
    decode_punch_packet,
    encode_control_packet,
    is_control_packet,
)

PUNCH_ID = bytes(range(16))
KEY = PunchKey.derive(PUNCH_ID, b"i" * 32, b"r" * 32)


def test_whoami_packets_round_trip_and_an_answer_is_never_larger_than_the_request() -> None:
    request = encode_control_packet(WhoamiRequest(b"t" * 16))
    assert len(request) == WHOAMI_REQUEST_SIZE
    assert decode_control_packet(request) == WhoamiRequest(b"t" * 16)
    for host in ("203.0.113.7", "2001:db8::1"):
        response = encode_control_packet(WhoamiResponse(b"t" * 16, host, 65535))
        assert len(response) <= len(request)
        assert decode_control_packet(response) == WhoamiResponse(b"t" * 16, host, 65535)


def test_probes_and_acks_round_trip_with_a_valid_mac() -> None:
    probe = KEY.probe(PunchRole.INITIATOR, 7)
    data = encode_control_packet(probe)
    assert len(data) == PUNCH_PROBE_SIZE
    assert is_control_packet(data)
    assert data[0] == ControlKind.PUNCH_PROBE
    decoded = decode_punch_packet(data)
    assert decoded == probe
    assert KEY.verify(decoded)
    for observed in (("198.51.100.4", 40000), ("2001:db8::ff", 1)):
        ack = KEY.ack(PunchRole.RESPONDER, 7, observed)
        encoded = encode_control_packet(ack)
        assert len(encoded) < len(data)  # no amplification, whatever the address family
        assert decode_punch_packet(encoded) == ack
        assert KEY.verify(ack)


def test_a_mac_binds_every_field_and_the_key() -> None:
    probe = KEY.probe(PunchRole.INITIATOR, 7)
    other_key = PunchKey.derive(PUNCH_ID, b"i" * 32, b"x" * 32)
    assert not other_key.verify(probe)
    for changed in (
        dataclasses.replace(probe, counter=8),
        dataclasses.replace(probe, role=PunchRole.RESPONDER),
        dataclasses.replace(probe, punch_id=b"\x01" * 16),
    ):
        assert not KEY.verify(changed)
    ack = KEY.ack(PunchRole.RESPONDER, 7, ("198.51.100.4", 40000))
    assert not KEY.verify(dataclasses.replace(ack, observed=("198.51.100.4", 40001)))
    # the same bytes under the channel-binding variant are a different key
    bound = PunchKey.derive(PUNCH_ID, b"i" * 32, b"r" * 32, binding=b"handshake hash")
    assert not bound.verify(probe)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", WireError),
        (bytes([ControlKind.PUNCH_PROBE, 2]) + bytes(62), UnsupportedVersionError),
        (bytes([ControlKind.PUNCH_PROBE, 1]) + bytes(40), MalformedError),  # short probe
        (bytes([ControlKind.PUNCH_PROBE, 1]) + bytes(63), MalformedError),  # long probe
        (bytes([ControlKind.PUNCH_ACK, 1]) + bytes(10), WireError),
        (bytes([ControlKind.WHOAMI_REQUEST, 1]) + bytes(62), MalformedError),  # not punch
        (bytes([0x3F, 1]) + bytes(62), MalformedError),
        (bytes(1300), OversizeError),
    ],
)
def test_bad_punch_packets_raise_typed_errors(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_punch_packet(data)


def test_probe_padding_must_be_zero_and_roles_known() -> None:
    good = bytearray(encode_control_packet(KEY.probe(PunchRole.INITIATOR, 1)))
    padded = bytearray(good)
    padded[-1] = 1
    with pytest.raises(MalformedError, match="padding"):
        decode_punch_packet(bytes(padded))
    bad_role = bytearray(good)
    bad_role[18] = 9
    with pytest.raises(MalformedError, match="role"):
        decode_punch_packet(bytes(bad_role))
    ack = bytearray(encode_control_packet(KEY.ack(PunchRole.RESPONDER, 1, ("192.0.2.1", 9))))
    ack[23] = 5  # address family
    with pytest.raises(MalformedError, match="family"):
        decode_punch_packet(bytes(ack))
    with pytest.raises(MalformedError, match="trailing"):
        decode_punch_packet(bytes(ack[:23]) + bytes([4]) + bytes(ack[24:]) + b"x")


def test_encoding_refuses_what_the_parser_would() -> None:
    with pytest.raises(ValueError, match="punch id"):
        encode_control_packet(PunchProbe(b"short", PunchRole.INITIATOR, 1, bytes(16)))
    with pytest.raises(ValueError, match="counter"):
        encode_control_packet(PunchProbe(PUNCH_ID, PunchRole.INITIATOR, 2**32, bytes(16)))
    with pytest.raises(ValueError, match="MAC"):
        encode_control_packet(PunchProbe(PUNCH_ID, PunchRole.INITIATOR, 1, b"mac"))
    with pytest.raises(ValueError, match="IP address"):
        encode_control_packet(PunchAck(PUNCH_ID, PunchRole.INITIATOR, 1, ("x", 1), bytes(16)))


@given(st.binary(max_size=1400))
def test_any_bytes_give_a_packet_or_a_typed_error(data: bytes) -> None:
    for decode in (decode_control_packet, decode_punch_packet):
        with contextlib.suppress(WireError):
            decode(data)


@given(st.integers(0, 2**32 - 1), st.sampled_from(list(PunchRole)), st.data())
def test_mutated_probes_decode_or_fail_typed_and_never_verify(
    counter: int, role: PunchRole, data: st.DataObject
) -> None:
    encoded = bytearray(encode_control_packet(KEY.probe(role, counter)))
    index = data.draw(st.integers(0, len(encoded) - 1))
    flip = data.draw(st.integers(1, 255))
    encoded[index] ^= flip
    try:
        packet = decode_punch_packet(bytes(encoded))
    except WireError:
        return
    assert not KEY.verify(packet)
