"""Portal frames: round trips, whole / byte-at-a-time / trailing-byte input, bounds, fuzzing."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkey.wire.errors import (
    MalformedError,
    OversizeError,
    TruncatedError,
    UnsupportedVersionError,
    WireError,
)
from meshkey.wire.frames import MAX_PAYLOAD
from meshkey.wire.portal import (
    MAX_CHUNK,
    MAX_SACK_RANGES,
    MAX_TEXT,
    MAX_WINDOW,
    PORTAL_VERSION,
    Ack,
    Data,
    Fin,
    Frame,
    FrameKind,
    FrameReader,
    Open,
    OpenOk,
    OpenRefused,
    Ping,
    Pong,
    RefuseReason,
    Reset,
    ResetReason,
    decode_packet,
    encode_frame,
    encode_packet,
    pack_frames,
)

EXAMPLES: list[Frame] = [
    Open(1, MAX_WINDOW),
    OpenOk(0xFFFFFFFF, 0),
    OpenRefused(2, RefuseReason.NOT_ALLOWED, "mk…: not in the allow list"),
    Data(3, 2**63, b"\x00" * MAX_CHUNK),
    Data(3, 0, b"x"),
    Ack(3, 100, 5000),
    Ack(3, 100, 5000, True, ((200, 300), (400, 2**64 - 1))),
    Fin(3, 123456789),
    Reset(4, ResetReason.TIMEOUT, ""),
    Ping(5, 0),
    Pong(5, 2**64 - 1),
]


def test_every_frame_kind_round_trips_in_one_packet() -> None:
    packet = encode_packet(EXAMPLES)
    assert packet[0] == PORTAL_VERSION
    assert decode_packet(packet) == EXAMPLES
    assert {type(f) for f in EXAMPLES} == {
        Open,
        OpenOk,
        OpenRefused,
        Data,
        Ack,
        Fin,
        Reset,
        Ping,
        Pong,
    }
    assert len(FrameKind) == 9


def test_the_reader_takes_whole_input_one_byte_at_a_time_and_with_trailing_bytes() -> None:
    packet = encode_packet(EXAMPLES)
    assert FrameReader().feed(packet) == EXAMPLES  # whole
    reader, frames = FrameReader(), []
    for i in range(len(packet)):
        frames += reader.feed(packet[i : i + 1])  # one byte at a time
        assert reader.buffered <= 1 + 9 + 8 + MAX_CHUNK
    assert frames == EXAMPLES and reader.buffered == 0
    extra = encode_frame(Ping(9, 9))
    reader = FrameReader()
    assert reader.feed(packet + extra[:5]) == EXAMPLES  # trailing: a frame's beginning
    assert reader.buffered == 5
    assert reader.feed(extra[5:]) == [Ping(9, 9)]
    with pytest.raises(TruncatedError):
        decode_packet(packet + extra[:5])  # a payload must end on a frame boundary
    with pytest.raises(MalformedError):
        decode_packet(packet + b"\x00")  # and a byte that starts no frame is rejected


def test_a_failed_reader_stays_failed() -> None:
    reader = FrameReader()
    with pytest.raises(UnsupportedVersionError):
        reader.feed(b"\x02")
    with pytest.raises(UnsupportedVersionError):
        reader.feed(encode_packet([Ping(1, 1)]))


def header(kind: int, session: int, length: int) -> bytes:
    return struct.pack("!BII", kind, session, length)


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"", TruncatedError),
        (b"\x01", TruncatedError),  # no frames
        (b"\x00" + encode_frame(Ping(1, 1)), UnsupportedVersionError),
        (b"\x01" + header(99, 1, 0), MalformedError),
        (b"\x01" + header(FrameKind.DATA, 1, 8 + MAX_CHUNK + 1), OversizeError),
        (b"\x01" + header(FrameKind.DATA, 1, 8) + bytes(8), TruncatedError),  # no data
        (b"\x01" + header(FrameKind.OPEN, 1, 4) + struct.pack("!I", MAX_WINDOW + 1), OversizeError),
        (b"\x01" + header(FrameKind.OPEN, 1, 5) + bytes(5), MalformedError),
        (b"\x01" + header(FrameKind.PING, 1, 7) + bytes(7), TruncatedError),
        (b"\x01" + header(FrameKind.ACK, 1, 14) + struct.pack("!QIBB", 0, 0, 2, 0), MalformedError),
        (
            b"\x01"
            + header(FrameKind.ACK, 1, 14 + 16 * (MAX_SACK_RANGES + 1))
            + struct.pack("!QIBB", 0, 0, 0, MAX_SACK_RANGES + 1)
            + bytes(16 * (MAX_SACK_RANGES + 1)),
            OversizeError,
        ),
        (
            b"\x01"
            + header(FrameKind.ACK, 1, 30)
            + struct.pack("!QIBB", 10, 0, 0, 1)
            + struct.pack("!QQ", 5, 20),  # a range before the acknowledged offset
            MalformedError,
        ),
        (b"\x01" + header(FrameKind.RST, 1, 1) + b"\x63", MalformedError),
        (b"\x01" + header(FrameKind.RST, 1, 2) + b"\x01\xff", MalformedError),  # not UTF-8
        (b"\x01" + header(FrameKind.RST, 1, 0), TruncatedError),
        (
            b"\x01"
            + header(FrameKind.OPEN_REFUSED, 1, 2 + MAX_TEXT)
            + b"\x01"
            + b"a" * (MAX_TEXT + 1),
            OversizeError,
        ),
        (
            b"\x01" + header(FrameKind.DATA, 1, 9) + struct.pack("!Q", 2**64 - 1) + b"x",
            MalformedError,
        ),
    ],
)
def test_bad_packets_raise_typed_errors(payload: bytes, error: type[WireError]) -> None:
    with pytest.raises(error):
        decode_packet(payload)


def test_encoding_refuses_what_the_format_cannot_say() -> None:
    for frame in (
        Data(1, 0, b""),
        Data(1, 0, b"x" * (MAX_CHUNK + 1)),
        Open(1, MAX_WINDOW + 1),
        Open(2**32, 1),
        Ack(1, 0, 0, False, tuple((i * 2 + 1, i * 2 + 2) for i in range(MAX_SACK_RANGES + 1))),
        Ack(1, 10, 0, False, ((5, 20),)),
    ):
        with pytest.raises(WireError):
            encode_frame(frame)
    with pytest.raises(MalformedError):
        encode_packet([])
    long = OpenRefused(1, RefuseReason.REFUSED, "é" * MAX_TEXT)
    (decoded,) = decode_packet(encode_packet([long]))
    assert isinstance(decoded, OpenRefused) and len(decoded.text.encode()) <= MAX_TEXT


def test_packing_respects_the_packet_limit() -> None:
    frames = [Data(1, i * MAX_CHUNK, b"d" * MAX_CHUNK) for i in range(40)]
    packets = pack_frames(frames)
    assert all(len(p) <= MAX_PAYLOAD for p in packets)
    assert len(packets) == 3  # 15 full chunks fit in 1 MiB with their headers
    assert [f for p in packets for f in decode_packet(p)] == frames


frames_strategy = st.one_of(
    st.builds(Open, st.integers(0, 2**32 - 1), st.integers(0, MAX_WINDOW)),
    st.builds(OpenOk, st.integers(0, 2**32 - 1), st.integers(0, MAX_WINDOW)),
    st.builds(
        OpenRefused, st.integers(0, 2**32 - 1), st.sampled_from(RefuseReason), st.text(max_size=40)
    ),
    st.builds(
        Data, st.integers(0, 2**32 - 1), st.integers(0, 2**40), st.binary(min_size=1, max_size=300)
    ),
    st.builds(
        Ack,
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**40),
        st.integers(0, MAX_WINDOW),
        st.booleans(),
    ),
    st.builds(Fin, st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)),
    st.builds(Reset, st.integers(0, 2**32 - 1), st.sampled_from(ResetReason), st.text(max_size=40)),
    st.builds(Ping, st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)),
    st.builds(Pong, st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)),
)


@given(st.lists(frames_strategy, min_size=1, max_size=8), st.data())
def test_any_frames_round_trip_however_the_input_is_split(
    frames: list[Frame], data: st.DataObject
) -> None:
    packet = encode_packet(frames)
    assert decode_packet(packet) == frames
    cuts = sorted(data.draw(st.lists(st.integers(0, len(packet)), max_size=6)))
    reader, out, start = FrameReader(), [], 0
    for cut in [*cuts, len(packet)]:
        out += reader.feed(packet[start:cut])
        start = cut
    assert out == frames and reader.buffered == 0


@given(st.binary(max_size=400))
def test_random_bytes_only_ever_raise_typed_errors(payload: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_packet(payload)
    reader = FrameReader()
    with contextlib.suppress(WireError):
        reader.feed(payload)


@given(
    st.lists(frames_strategy, min_size=1, max_size=4),
    st.integers(0, 400),
    st.binary(min_size=1, max_size=4),
)
def test_corrupted_packets_only_ever_raise_typed_errors(
    frames: list[Frame], at: int, junk: bytes
) -> None:
    packet = bytearray(encode_packet(frames))
    position = at % len(packet)
    packet[position : position + len(junk)] = junk
    with contextlib.suppress(WireError):
        decode_packet(bytes(packet))


@given(
    st.lists(frames_strategy, min_size=1, max_size=4),
    st.integers(0, 400),
    st.binary(min_size=1, max_size=4),
    st.lists(st.integers(0, 500), max_size=6),
)
def test_corrupted_input_fed_in_pieces_only_ever_raises_typed_errors(
    frames: list[Frame], at: int, junk: bytes, cuts: list[int]
) -> None:
    """The reader holds a partial frame between feeds; a bad frame found then must still be a
    WireError (it was a BufferError: the error's traceback kept a view of the buffer)."""
    packet = bytearray(encode_packet(frames))
    position = at % len(packet)
    packet[position : position + len(junk)] = junk
    reader, start, failure = FrameReader(), 0, None
    for cut in [*sorted(c % (len(packet) + 1) for c in cuts), len(packet)]:
        try:
            reader.feed(bytes(packet[start:cut]))
        except WireError as exc:
            failure = exc
            break
        start = max(start, cut)
    if failure is not None:  # and a failed reader stays failed, with the same error
        with pytest.raises(type(failure)):
            reader.feed(encode_packet([Ping(1, 1)]))


@pytest.mark.parametrize(
    "body",
    [
        header(FrameKind.RST, 1, 2) + b"\x01\xff",  # reason text not UTF-8
        header(FrameKind.DATA, 1, 9) + struct.pack("!Q", 2**64 - 1) + b"x",  # past 2**64
        header(FrameKind.ACK, 1, 30)
        + struct.pack("!QIBB", 10, 0, 0, 1)
        + struct.pack("!QQ", 5, 20),
    ],
    ids=["rst-text-not-utf8", "data-past-2**64", "ack-range-before-acked"],
)
def test_a_bad_frame_body_is_a_typed_error_for_the_reader_too(body: bytes) -> None:
    reader = FrameReader()
    with pytest.raises(WireError):
        reader.feed(b"\x01" + body)
    assert reader.buffered == 0
