"""Control packets on the one UDP socket: WHOAMI and the punch probes, their sizes (no
amplification), MACs, and typed errors on any bad input."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection

from meshkey.nat.token import PunchKey
from meshkey.wire.errors import MalformedError, OversizeError, UnsupportedVersionError, WireError
from meshkey.wire.udp import (
    CID_LENGTH,
    MIN_STALE_TRIGGER,
    PUNCH_PROBE_SIZE,
    WHOAMI_REQUEST_SIZE,
    ControlDatagram,
    ControlKind,
    Garbage,
    PunchAck,
    PunchProbe,
    PunchRole,
    QuicLongHeader,
    QuicShortHeader,
    WhoamiRequest,
    WhoamiResponse,
    classify,
    decode_control_packet,
    decode_punch_packet,
    encode_control_packet,
    gro_runs,
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
    assert classify(data) == ControlDatagram(ControlKind.PUNCH_PROBE)
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


# -- classify: what a datagram on the socket is ------------------------------------------------

CID = b"C" * CID_LENGTH


def short_header(cid: bytes = CID, size: int = 100) -> bytes:
    return (bytes([0x41]) + cid).ljust(size, b"\x00")


def client_initial() -> tuple[bytes, bytes]:
    """A real client's first datagram (qh3's) and the destination connection ID it names."""
    quic = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=["x"]))
    quic.connect(("192.0.2.1", 4433), now=0.0)
    datagram = quic.datagrams_to_send(now=0.0)[0][0]
    return datagram, quic.original_destination_connection_id


def test_control_packets_are_told_by_their_first_byte() -> None:
    probe = encode_control_packet(KEY.probe(PunchRole.INITIATOR, 1))
    assert classify(probe) == ControlDatagram(ControlKind.PUNCH_PROBE)
    assert classify(b"\x3f") == ControlDatagram(0x3F)  # unknown kinds too: no handler drops it
    assert isinstance(classify(b"\x80" * 30), Garbage)  # a long header without the QUIC bit


def test_a_short_header_names_its_connection_by_the_first_eight_bytes() -> None:
    assert classify(short_header()) == QuicShortHeader(CID, answerable=True)
    assert classify(short_header(size=MIN_STALE_TRIGGER - 1)) == QuicShortHeader(CID, False)
    assert isinstance(classify(short_header()[:CID_LENGTH]), Garbage)  # cut short


def test_only_a_full_size_v1_initial_may_open_a_connection() -> None:
    initial, dcid = client_initial()
    assert len(initial) >= 1200
    assert classify(initial) == QuicLongHeader(dcid, initial=True)
    trimmed = initial[:1199]  # below RFC 9000's minimum
    assert classify(trimmed) == QuicLongHeader(dcid, initial=False)
    other_version = initial[:1] + b"\x00\x00\x00\x02" + initial[5:]
    assert classify(other_version) == QuicLongHeader(dcid, initial=False)
    handshake = bytes([initial[0] | 0x20]) + initial[1:]  # packet type 2: Handshake
    assert classify(handshake) == QuicLongHeader(dcid, initial=False)
    assert isinstance(classify(initial[: 6 + len(dcid) - 1]), Garbage)
    assert isinstance(classify(initial[:5]), Garbage)
    assert isinstance(classify(b""), Garbage)


@given(st.binary(max_size=1400))
def test_any_bytes_are_classified_and_never_raise(data: bytes) -> None:
    kind = classify(data)
    if isinstance(kind, ControlDatagram):
        assert data[0] < 0x40 and kind.kind == data[0]
    elif isinstance(kind, QuicShortHeader):
        assert data[0] & 0xC0 == 0x40 and kind.dcid == data[1 : 1 + CID_LENGTH]
        assert len(kind.dcid) == CID_LENGTH
        assert kind.answerable == (len(data) >= MIN_STALE_TRIGGER)
    elif isinstance(kind, QuicLongHeader):
        assert data[0] & 0xC0 == 0xC0 and kind.dcid == data[6 : 6 + data[5]]
        assert len(kind.dcid) == data[5]
        assert not kind.initial or len(data) >= 1200
    else:
        assert isinstance(kind, Garbage) and kind.reason
        assert not data or data[0] & 0xC0 != 0  # a control packet is never garbage


def test_gro_runs_group_one_connections_short_headers_and_nothing_else() -> None:
    other = b"D" * CID_LENGTH
    initial, _ = client_initial()
    segment = 100
    datagrams = [
        short_header(),
        short_header(),
        short_header(other),
        initial[:segment],
        short_header(other),
        short_header(other, size=40),  # the last of a GRO buffer may be shorter
    ]
    buffer = b"".join(datagrams)
    runs = [(start, end, type(kind).__name__) for start, end, kind in gro_runs(buffer, segment)]
    assert runs == [
        (0, 200, "QuicShortHeader"),
        (200, 300, "QuicShortHeader"),
        (300, 400, "QuicLongHeader"),
        (400, 540, "QuicShortHeader"),
    ]
    with pytest.raises(ValueError):
        next(gro_runs(buffer, 0))


@given(st.integers(1, 64), st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=12))
def test_gro_runs_cover_the_buffer_and_agree_with_classify(
    segment: int, parts: list[bytes]
) -> None:
    """Any buffer: runs tile it in whole segments; a run's kind is its first datagram's, and a
    run of several holds only short headers for that one connection ID."""
    datagrams = [part.ljust(segment, b"\x00")[:segment] for part in parts]
    datagrams[-1] = parts[-1][:segment]  # the last may be shorter
    buffer = b"".join(datagrams)
    position = 0
    for start, end, kind in gro_runs(buffer, segment):
        assert start == position and start % segment == 0 and end > start
        assert kind == classify(buffer[start : start + segment])
        if end - start > segment:
            assert isinstance(kind, QuicShortHeader)
            for offset in range(start, end, segment):
                assert classify(buffer[offset : offset + segment]) in (
                    kind,
                    QuicShortHeader(kind.dcid, not kind.answerable),
                )
        position = end
    assert position == len(buffer)
