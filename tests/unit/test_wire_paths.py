from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkey.wire.errors import MalformedError, OversizeError, UnsupportedVersionError, WireError
from meshkey.wire.paths import (
    PathPing,
    PathPong,
    PunchSignal,
    decode_path_signal,
    encode_path_signal,
)


@pytest.mark.parametrize("signal", [PunchSignal(b"connect..."), PathPing(7), PathPong(2**64 - 1)])
def test_path_signals_round_trip(signal: PunchSignal | PathPing | PathPong) -> None:
    assert decode_path_signal(encode_path_signal(signal)) == signal


def test_bad_path_signals_are_typed_errors() -> None:
    with pytest.raises(UnsupportedVersionError):
        decode_path_signal(b"\x02\x01")
    with pytest.raises(MalformedError, match="unknown path signal kind"):
        decode_path_signal(b"\x01\x09")
    with pytest.raises(MalformedError, match="trailing"):
        decode_path_signal(encode_path_signal(PathPing(1)) + b"x")
    with pytest.raises(OversizeError):
        decode_path_signal(b"\x01\x01" + b"x" * 5000)
    with pytest.raises(OversizeError):
        encode_path_signal(PunchSignal(b"x" * 5000))


@given(st.binary(max_size=64))
def test_path_signal_parser_only_raises_wire_errors(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_path_signal(data)
