"""Wire formats: round trips, limits, and typed errors on every kind of bad input."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkey.wire.channel import decode_channel, decode_identity_proof
from meshkey.wire.control import decode_control, encode_control
from meshkey.wire.errors import (
    MalformedError,
    OversizeError,
    TruncatedError,
    UnsupportedVersionError,
    WireError,
)
from meshkey.wire.frames import MAX_FRAME, FrameDecoder, encode_frame
from meshkey.wire.hop import (
    AuthOk,
    ClientProof,
    Close,
    MessageFrame,
    Ping,
    Pong,
    ServerHello,
    decode_hop_frame,
    encode_hop_frame,
)
from meshkey.wire.message import (
    HOST_DNS,
    HOST_IP4,
    HOST_IP6,
    AddressKind,
    ErrorCode,
    MessageKind,
    WireAddress,
    WireEndpoint,
    WireMessage,
    decode_endpoint,
    decode_error,
    decode_message,
    encode_endpoint,
    encode_error,
    encode_message,
)
from meshkey.wire.relay import (
    RelayRequest,
    RelayResponse,
    decode_relay_request,
    decode_relay_response,
    encode_relay_request,
    encode_relay_response,
)


def test_frame_decoder_reassembles_frames_split_anywhere() -> None:
    stream = b"".join(encode_frame(body) for body in [b"a", b"", b"x" * 1000, b"end"])
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        frames = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert frames == [b"a", b"", b"x" * 1000, b"end"]
        assert decoder.buffered == 0


def test_frame_decoder_rejects_oversize_length_before_buffering_it() -> None:
    decoder = FrameDecoder(max_frame=100)
    with pytest.raises(OversizeError):
        decoder.feed((101).to_bytes(4, "big"))
    with pytest.raises(OversizeError):
        encode_frame(b"x" * (MAX_FRAME + 1))


@given(st.lists(st.binary(max_size=300), max_size=10), st.data())
def test_frame_decoder_any_chunking(bodies: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(b) for b in bodies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    decoder = FrameDecoder()
    frames: list[bytes] = []
    previous = 0
    for cut in [*cuts, len(stream)]:
        frames += decoder.feed(stream[previous:cut])
        previous = cut
    assert frames == bodies


HOP_FRAMES = [
    ServerHello(b"\x01" * 32, b"\x02" * 32),
    ClientProof(b"\x03" * 32, b"\x04" * 64),
    AuthOk(),
    Close(2, "bad proof"),
    MessageFrame(b"payload"),
    Ping(7),
    Pong(2**64 - 1),
]


@pytest.mark.parametrize("frame", HOP_FRAMES, ids=lambda f: type(f).__name__)
def test_hop_frames_round_trip(frame: object) -> None:
    assert decode_hop_frame(encode_hop_frame(frame)) == frame  # type: ignore[arg-type]


@pytest.mark.parametrize("frame", HOP_FRAMES[:2] + HOP_FRAMES[5:], ids=lambda f: type(f).__name__)
def test_hop_frames_truncated_or_padded_are_rejected(frame: object) -> None:
    encoded = encode_hop_frame(frame)  # type: ignore[arg-type]
    with pytest.raises(TruncatedError):
        decode_hop_frame(encoded[:-1])
    with pytest.raises(MalformedError):
        decode_hop_frame(encoded + b"\x00")


def test_hop_frame_unknown_type_and_version() -> None:
    with pytest.raises(MalformedError):
        decode_hop_frame(b"\x7f")
    with pytest.raises(TruncatedError):
        decode_hop_frame(b"")
    with pytest.raises(UnsupportedVersionError):
        decode_hop_frame(b"\x01\x09" + b"\x00" * 64)


@given(st.binary(max_size=200))
def test_hop_frame_parser_only_raises_wire_errors(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_hop_frame(data)


def _addresses() -> st.SearchStrategy[WireAddress]:
    return st.builds(
        WireAddress, st.sampled_from([int(k) for k in AddressKind]), st.binary(max_size=60)
    )


@given(
    st.lists(_addresses(), max_size=32),
    st.lists(_addresses(), max_size=32),
    st.binary(max_size=2000),
    st.sampled_from(list(MessageKind)),
)
def test_message_round_trip(
    onward: list[WireAddress], back: list[WireAddress], payload: bytes, kind: MessageKind
) -> None:
    message = WireMessage(tuple(onward), tuple(back), payload, kind)
    assert decode_message(encode_message(message)) == message


@given(st.binary(max_size=300))
def test_message_parser_only_raises_wire_errors(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_message(data)


def test_message_limits_and_versions() -> None:
    too_long = tuple(WireAddress(0, b"a") for _ in range(33))
    with pytest.raises(OversizeError):
        encode_message(WireMessage(too_long, (), b""))
    with pytest.raises(OversizeError):
        decode_message(bytes([1, 0, 33]))
    with pytest.raises(UnsupportedVersionError):
        decode_message(bytes([2, 0, 0, 0]))
    with pytest.raises(MalformedError):
        decode_message(bytes([1, 9, 0, 0]))
    with pytest.raises(MalformedError):
        decode_message(bytes([1, 0, 1, 99, 0, 0]))
    with pytest.raises(TruncatedError):
        decode_message(bytes([1, 0, 1, 0, 5, 65]))


@pytest.mark.parametrize(
    "endpoint",
    [
        WireEndpoint(HOST_IP4, "127.0.0.1", 4000, None),
        WireEndpoint(HOST_IP6, "::1", 1, b"\x05" * 32),
        WireEndpoint(HOST_DNS, "example.org", 65535, None),
    ],
)
def test_endpoint_round_trip(endpoint: WireEndpoint) -> None:
    assert decode_endpoint(encode_endpoint(endpoint)) == endpoint


@given(st.binary(max_size=80))
def test_endpoint_parser_only_raises_wire_errors(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_endpoint(data)


def test_endpoint_with_partial_node_id_is_rejected() -> None:
    encoded = encode_endpoint(WireEndpoint(HOST_IP4, "10.0.0.1", 1, None)) + b"\x01" * 31
    with pytest.raises(TruncatedError):
        decode_endpoint(encoded)


def test_error_payload_round_trip_and_unknown_code() -> None:
    assert decode_error(encode_error(ErrorCode.TIMEOUT, "slow")) == (ErrorCode.TIMEOUT, "slow")
    assert decode_error(b"\xeenope") == (ErrorCode.INTERNAL, "nope")
    with pytest.raises(TruncatedError):
        decode_error(b"")


def test_control_round_trip_and_errors() -> None:
    body = {"op": "status", "args": {"payload": b"\x00\x01", "n": 3}}
    assert decode_control(encode_control(body)) == {"v": 1, **body}
    with pytest.raises(MalformedError):
        decode_control(b"\xc1")
    with pytest.raises(MalformedError):
        decode_control(encode_control({"op": "x"})[:-1])
    with pytest.raises(UnsupportedVersionError):
        decode_control(msgpack.packb({"v": 99}))


def test_oversize_structured_messages_say_so() -> None:
    with pytest.raises(OversizeError):
        decode_control(b"\x00" * (MAX_FRAME + 1))
    with pytest.raises(OversizeError):
        decode_relay_request(b"\x00" * 5000)


def test_relay_messages_round_trip_and_reject_bad_input() -> None:
    challenge = RelayRequest("challenge", "blue", b"t" * 16)
    assert decode_relay_request(encode_relay_request(challenge)) == challenge
    signed = RelayRequest(
        "create", "blue", b"t" * 16, owner=b"o" * 32, challenge=b"c" * 32, signature=b"s" * 64
    )
    assert decode_relay_request(encode_relay_request(signed)) == signed
    ok = RelayResponse(b"t" * 16, True, address="/service/forward_to_blue")
    assert decode_relay_response(encode_relay_response(ok)) == ok
    issued = RelayResponse(b"t" * 16, True, challenge=b"c" * 32, host=b"h" * 32)
    assert decode_relay_response(encode_relay_response(issued)) == issued
    refused = RelayResponse(b"t" * 16, False, code="conflict", error="taken")
    assert decode_relay_response(encode_relay_response(refused)) == refused
    with pytest.raises(MalformedError, match="token"):
        decode_relay_request(encode_relay_request(RelayRequest("challenge", "blue", b"short")))
    with pytest.raises(MalformedError, match="invalid relay name"):
        decode_relay_request(encode_relay_request(RelayRequest("challenge", "a/b", b"t" * 16)))
    with pytest.raises(MalformedError, match="op"):
        decode_relay_request(encode_relay_request(RelayRequest("steal", "blue", b"t" * 16)))
    # A create or delete without a full proof of its owner is malformed, not "anonymous".
    unsigned = RelayRequest("create", "blue", b"t" * 16, owner=b"o" * 32, challenge=b"c" * 32)
    with pytest.raises(MalformedError, match="'sig' must be 64 bytes"):
        decode_relay_request(encode_relay_request(unsigned))
    with pytest.raises(UnsupportedVersionError):
        decode_relay_request(msgpack.packb({"v": 1, "op": "create", "name": "b", "token": b"t"}))


@given(st.binary(max_size=200))
def test_relay_and_channel_parsers_only_raise_wire_errors(data: bytes) -> None:
    for parse in (
        decode_relay_request,
        decode_relay_response,
        decode_channel,
        decode_identity_proof,
    ):
        with contextlib.suppress(WireError):
            parse(data)


@given(st.binary(max_size=200))
def test_control_parser_only_raises_wire_errors(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_control(data)
