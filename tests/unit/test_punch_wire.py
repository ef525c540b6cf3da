"""Punch signalling messages (CONNECT, SYNC, RESULT, ABORT): round trips, limits, typed
errors, and the optional ``start_in`` of a timed start."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkey.wire.errors import MalformedError, OversizeError, UnsupportedVersionError, WireError
from meshkey.wire.net import NatClass
from meshkey.wire.punch import (
    MAX_CANDIDATES,
    MAX_CREDIT_PAD,
    MAX_PUNCH_MESSAGE,
    MAX_START_IN,
    Abort,
    AbortReason,
    Capability,
    Connect,
    Credit,
    Result,
    Sync,
    decode_punch_message,
    encode_punch_message,
)

PUNCH_ID = b"p" * 16


def connect(**changes: Any) -> Connect:
    fields: dict[str, Any] = {
        "punch_id": PUNCH_ID,
        "reply": False,
        "key_share": b"k" * 32,
        "nat_class": NatClass.ENDPOINT_INDEPENDENT,
        "local": (("10.1.0.2", 5000),),
        "reflexive": (("203.0.113.1", 5000), ("2001:db8::1", 5000)),
        "tcp": (("203.0.113.1", 6000),),
        "capabilities": frozenset({Capability.BIRTHDAY, Capability.LOW_TTL}),
    }
    fields.update(changes)
    return Connect(**fields)


@pytest.mark.parametrize(
    "message",
    [
        connect(),
        connect(reply=True, nat_class=NatClass.UDP_BLOCKED, local=(), reflexive=(), tcp=()),
        connect(reply=True, start_in=0.04),
        connect(reply=True, start_in=0.0),
        connect(reply=True, start_in=MAX_START_IN),
        connect(capabilities=frozenset({Capability.TIMED_START})),
        Sync(PUNCH_ID),
        Result(PUNCH_ID, ("198.51.100.9", 17665)),
        Abort(PUNCH_ID, AbortReason.BOTH_ENDPOINT_DEPENDENT, "both EDM", 60.0),
        Credit(PUNCH_ID, 0),
        Credit(PUNCH_ID, MAX_CREDIT_PAD),
    ],
)
def test_messages_round_trip(message: Any) -> None:
    data = encode_punch_message(message)
    assert len(data) <= MAX_PUNCH_MESSAGE
    assert decode_punch_message(data) == message


def test_a_full_connect_fits_the_limit() -> None:
    many = tuple((f"2001:db8::{i:x}", 65535) for i in range(MAX_CANDIDATES))
    caps = frozenset(f"{'c' * 30}{i:02d}" for i in range(16))
    data = encode_punch_message(connect(local=many, reflexive=many, tcp=many, capabilities=caps))
    assert len(data) <= MAX_PUNCH_MESSAGE


def test_unknown_capabilities_are_kept_but_unknown_classes_refused() -> None:
    data = encode_punch_message(connect(capabilities=frozenset({"teleport"})))
    assert decode_punch_message(data).capabilities == frozenset({"teleport"})  # type: ignore[union-attr]
    body = msgpack.unpackb(data)
    body["class"] = "cone"
    with pytest.raises(MalformedError, match="NAT class"):
        decode_punch_message(msgpack.packb(body))


def _raw(**body: Any) -> bytes:
    packed: bytes = msgpack.packb({"v": 1, "id": PUNCH_ID, **body}, use_bin_type=True)
    return packed


def test_start_in_is_optional_and_an_older_reply_means_sync() -> None:
    """A reply of a peer that predates the timed start has no start_in: None (wait for SYNC);
    an integer is accepted as seconds."""
    reply = {"t": "connect", "reply": True, "share": b"k" * 32, "class": "public"}
    assert decode_punch_message(_raw(**reply)).start_in is None  # type: ignore[union-attr]
    assert decode_punch_message(_raw(**reply, start_in=1)).start_in == 1.0  # type: ignore[union-attr]


def _reply_with(start_in: Any, reply: bool = True) -> bytes:
    return _raw(t="connect", reply=reply, share=b"k" * 32, start_in=start_in, **{"class": "public"})


@pytest.mark.parametrize(
    "data",
    [
        _reply_with(-0.001),
        _reply_with(MAX_START_IN + 0.001),
        _reply_with(float("nan")),
        _reply_with(float("inf")),
        _reply_with(True),
        _reply_with("0.04"),
        _reply_with([0.04]),
        _reply_with(0.04, reply=False),  # only a reply says when its sender starts
    ],
)
def test_a_bad_start_in_is_a_typed_error(data: bytes) -> None:
    with pytest.raises(MalformedError, match="start_in"):
        decode_punch_message(data)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\xc1", MalformedError),
        (msgpack.packb([1, 2]), MalformedError),
        (msgpack.packb({"v": 2, "t": "sync", "id": PUNCH_ID}), UnsupportedVersionError),
        (msgpack.packb({"v": 1, "t": "sync", "id": b"short"}), MalformedError),
        (_raw(t="dance"), MalformedError),
        (_raw(t="result", remote=["example.com", 80]), MalformedError),  # names are refused
        (_raw(t="result", remote=["192.0.2.1", 0]), MalformedError),
        (_raw(t="result", remote=["192.0.2.1", 70000]), MalformedError),
        (_raw(t="result", remote=["192.0.2.1", True]), MalformedError),
        (_raw(t="result", remote="192.0.2.1:80"), MalformedError),
        (_raw(t="abort", reason="because"), MalformedError),
        (_raw(t="abort", reason="timeout", retry_after=-1), MalformedError),
        (_raw(t="abort", reason="timeout", retry_after=float("nan")), MalformedError),
        (_raw(t="abort", reason="timeout", detail="x" * 300), MalformedError),
        (
            _raw(t="connect", reply=1, share=b"k" * 32, **{"class": "public"}),
            MalformedError,
        ),
        (
            _raw(
                t="connect",
                reply=False,
                share=b"k" * 32,
                local=[["192.0.2.1", 1]] * 9,
                **{"class": "public"},
            ),
            MalformedError,
        ),
        (
            _raw(t="connect", reply=False, share=b"k" * 32, caps=[1], **{"class": "public"}),
            MalformedError,
        ),
        (b"\x81" + b"\xa1v\x01" + bytes(MAX_PUNCH_MESSAGE), OversizeError),
        (_raw(t="credit", pad=bytes(MAX_CREDIT_PAD + 1)), MalformedError),
        (_raw(t="credit", pad="zeros"), MalformedError),
    ],
)
def test_bad_messages_raise_typed_errors(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_punch_message(data)


def test_encoding_refuses_what_the_peer_would() -> None:
    with pytest.raises(MalformedError):
        encode_punch_message(connect(local=(("10.0.0.1", 1),) * 9))
    with pytest.raises(MalformedError):
        encode_punch_message(Result(PUNCH_ID, ("not-an-ip", 1)))
    with pytest.raises(MalformedError):
        encode_punch_message(connect(key_share=b"short"))
    with pytest.raises(ValueError, match="retry_after"):
        encode_punch_message(Abort(PUNCH_ID, AbortReason.TIMEOUT, retry_after=-1))
    with pytest.raises(ValueError, match="start_in"):
        encode_punch_message(connect(start_in=0.04))  # not a reply
    with pytest.raises(ValueError, match="start_in"):
        encode_punch_message(connect(reply=True, start_in=MAX_START_IN * 2))
    with pytest.raises(ValueError, match="padding"):
        encode_punch_message(Credit(PUNCH_ID, MAX_CREDIT_PAD + 1))


def _decodes_to_a_stable_message(data: bytes) -> None:
    """Decoding gives a typed error, or a message that encodes and decodes to itself (so
    nothing a peer sends is accepted that this side could not have sent)."""
    try:
        message = decode_punch_message(data)
    except WireError:
        return
    assert decode_punch_message(encode_punch_message(message)) == message


@given(st.binary(max_size=3000))
def test_any_bytes_give_a_message_or_a_typed_error(data: bytes) -> None:
    _decodes_to_a_stable_message(data)


address_like = st.lists(
    st.one_of(st.sampled_from(["192.0.2.1", "2001:db8::1", "x"]), st.integers(-1, 70000)),
    max_size=3,
)
field_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 70000),
    st.floats(allow_nan=True),
    st.sampled_from([*(c.value for c in NatClass), *(r.value for r in AbortReason), "?"]),
    st.binary(min_size=30, max_size=33),
    address_like,
    st.lists(address_like, max_size=10),
)


@given(
    st.sampled_from(["connect", "sync", "result", "abort", "credit", "x"]),
    st.dictionaries(
        st.sampled_from(
            [
                "reply",
                "share",
                "class",
                "local",
                "reflexive",
                "tcp",
                "caps",
                "remote",
                "reason",
                "detail",
                "retry_after",
                "start_in",
                "pad",
            ]
        ),
        field_value,
    ),
)
def test_any_map_gives_a_message_or_a_typed_error(kind: str, body: dict[str, Any]) -> None:
    _decodes_to_a_stable_message(_raw(t=kind, **body))
