"""DHT wire formats: round trips, limits, and "only typed errors" on any bytes."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkey.wire.dht import (
    MAX_CONTACTS,
    MAX_DHT_MESSAGE,
    MAX_PEER_RECORD,
    RECORD_DOMAIN,
    DhtError,
    DhtErrorCode,
    DialBack,
    DialBackResult,
    FindNode,
    FindValue,
    Mode,
    Nodes,
    Ping,
    Pong,
    Store,
    Stored,
    Value,
    WireContact,
    WirePeerRecord,
    decode_peer_record,
    decode_rpc,
    encode_peer_record,
    encode_rpc,
    is_request,
    record_body,
    signed_bytes,
)
from meshkey.wire.errors import MalformedError, OversizeError, UnsupportedVersionError, WireError
from meshkey.wire.net import NatClass

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
endpoints = st.tuples(st.one_of(ipv4, ipv6), st.integers(1, 65535))
node_ids = st.binary(min_size=32, max_size=32)
txids = st.binary(min_size=8, max_size=8)
nonces = st.binary(min_size=16, max_size=16)
modes = st.sampled_from(list(Mode))
contacts = st.builds(WireContact, node_ids, modes, st.lists(endpoints, max_size=5).map(tuple))
contact_lists = st.lists(contacts, max_size=MAX_CONTACTS).map(tuple)
records = st.binary(max_size=MAX_PEER_RECORD)
reasons = st.text(max_size=200)

rpcs = st.one_of(
    st.builds(Ping, txids, modes, st.one_of(st.none(), nonces)),
    st.builds(Pong, txids, modes, st.one_of(st.none(), endpoints)),
    st.builds(FindNode, txids, modes, node_ids),
    st.builds(FindValue, txids, modes, node_ids),
    st.builds(Nodes, txids, modes, contact_lists),
    st.builds(Value, txids, modes, st.one_of(st.none(), records), contact_lists),
    st.builds(Store, txids, modes, records),
    st.builds(Stored, txids, modes),
    st.builds(
        DialBack,
        txids,
        modes,
        nonces,
        st.one_of(st.none(), contacts),
        st.integers(min_value=0, max_value=2048),
    ),
    st.builds(DialBackResult, txids, modes, st.booleans(), st.booleans(), reasons),
    st.builds(DhtError, txids, modes, st.sampled_from(list(DhtErrorCode)), reasons),
)


@given(rpcs)
def test_every_rpc_round_trips(rpc: object) -> None:
    encoded = encode_rpc(rpc)  # type: ignore[arg-type]
    assert len(encoded) <= MAX_DHT_MESSAGE
    assert decode_rpc(encoded) == rpc


def test_requests_and_answers_are_told_apart() -> None:
    assert is_request(Ping(b"t" * 8, Mode.SERVER))
    assert is_request(DialBack(b"t" * 8, Mode.SERVER, b"n" * 16))
    assert not is_request(Stored(b"t" * 8, Mode.SERVER))
    assert not is_request(DhtError(b"t" * 8, Mode.SERVER, DhtErrorCode.MALFORMED, "x"))


@given(st.binary(max_size=400))
def test_rpc_parser_only_raises_wire_errors(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_rpc(data)


@given(
    st.dictionaries(
        st.sampled_from(["v", "k", "tx", "m", "n", "o", "t", "c", "r", "ok", "h", "s", "e"]),
        st.one_of(
            st.integers(-3, 300),
            st.binary(max_size=40),
            st.text(max_size=5),
            st.none(),
            st.booleans(),
            st.lists(
                st.one_of(st.integers(-(2**63), 2**64 - 1), st.binary(max_size=33)), max_size=4
            ),
            st.lists(
                st.lists(st.one_of(st.binary(max_size=33), st.integers(0, 70000)), max_size=4)
            ),
        ),
    )
)
def test_rpc_parser_only_raises_wire_errors_on_plausible_maps(body: dict[str, object]) -> None:
    with contextlib.suppress(WireError):
        decode_rpc(msgpack.packb(body, use_bin_type=True))


def test_rpc_limits_and_versions() -> None:
    contact = WireContact(b"x" * 32, Mode.SERVER, (("::1", 1),) * 5)
    with pytest.raises(ValueError, match="at most 5"):
        encode_rpc(
            Nodes(b"t" * 8, Mode.SERVER, (WireContact(b"x" * 32, Mode.SERVER, (("::1", 1),) * 6),))
        )
    too_many = msgpack.packb(
        {"v": 1, "k": 4, "tx": b"t" * 8, "m": 1, "c": [[b"x" * 32, 1, []]] * (MAX_CONTACTS + 1)}
    )
    with pytest.raises(OversizeError):
        decode_rpc(too_many)
    assert decode_rpc(encode_rpc(Nodes(b"t" * 8, Mode.SERVER, (contact,) * MAX_CONTACTS)))
    with pytest.raises(UnsupportedVersionError):
        decode_rpc(msgpack.packb({"v": 2, "k": 1, "tx": b"t" * 8, "m": 1}))
    with pytest.raises(MalformedError):
        decode_rpc(msgpack.packb({"v": 1, "k": 99, "tx": b"t" * 8, "m": 1}))
    with pytest.raises(MalformedError):
        decode_rpc(msgpack.packb({"v": 1, "k": 1, "tx": b"short", "m": 1}))
    with pytest.raises(MalformedError):  # port 0 is no address
        decode_rpc(msgpack.packb({"v": 1, "k": 2, "tx": b"t" * 8, "m": 1, "o": b"\x7f\0\0\1\0\0"}))
    with pytest.raises(OversizeError):
        decode_rpc(b"\x80" * (MAX_DHT_MESSAGE + 1))
    unknown = decode_rpc(msgpack.packb({"v": 1, "k": 11, "tx": b"t" * 8, "m": 0, "e": 77}))
    assert isinstance(unknown, DhtError) and unknown.code == DhtErrorCode.INTERNAL


record_fields = st.builds(
    WirePeerRecord,
    node_ids,
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.sampled_from(list(NatClass)),
    st.lists(endpoints, max_size=5).map(tuple),
    st.lists(endpoints, max_size=5).map(tuple),
    st.lists(st.text(min_size=1, max_size=40), max_size=4).map(tuple),
    st.binary(min_size=64, max_size=64),
)


@given(record_fields)
def test_peer_record_round_trips_and_has_one_byte_form(record: WirePeerRecord) -> None:
    encoded = encode_peer_record(record)
    assert len(encoded) <= MAX_PEER_RECORD
    decoded = decode_peer_record(encoded)
    assert decoded == record
    # What is signed is a fixed layout: the same fields give the same bytes, always.
    assert signed_bytes(decoded) == RECORD_DOMAIN + record_body(record)
    assert encode_peer_record(decoded) == encoded


@given(st.binary(max_size=1100))
def test_peer_record_parser_only_raises_wire_errors(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_peer_record(data)


def test_peer_record_rejects_truncation_trailing_bytes_and_bad_counts() -> None:
    record = WirePeerRecord(
        b"n" * 32, 1, 2, NatClass.PUBLIC, (("1.2.3.4", 5),), (), ("/a",), b"s" * 64
    )
    encoded = encode_peer_record(record)
    for cut in range(len(encoded)):
        with pytest.raises(WireError):
            decode_peer_record(encoded[:cut])
    with pytest.raises(MalformedError):
        decode_peer_record(encoded + b"\0")
    with pytest.raises(UnsupportedVersionError):
        decode_peer_record(b"\x01" + encoded[1:])  # version 1 records are not read any more
    too_many = bytearray(encoded)
    too_many[1 + 32 + 16 + 1] = 6  # six direct addresses
    with pytest.raises(WireError):
        decode_peer_record(bytes(too_many))
    with pytest.raises(OversizeError):
        decode_peer_record(b"\x01" * (MAX_PEER_RECORD + 1))
    with pytest.raises(ValueError, match="relay route"):
        record_body(WirePeerRecord(b"n" * 32, 1, 2, relays=("x" * 201,)))


def test_a_record_carries_the_channel_key_and_local_addresses() -> None:
    record = WirePeerRecord(
        b"n" * 32,
        1,
        2,
        NatClass.ENDPOINT_INDEPENDENT,
        (),
        (("203.0.113.1", 4000),),
        ("/a",),
        b"s" * 64,
        b"k" * 32,
        (("10.1.0.2", 4000), ("192.168.1.7", 4000)),
    )
    assert decode_peer_record(encode_peer_record(record)) == record
    with pytest.raises(ValueError, match="channel key"):
        record_body(WirePeerRecord(b"n" * 32, 1, 2, channel_key=b"short"))
    bad = bytearray(encode_peer_record(WirePeerRecord(b"n" * 32, 1, 2, signature=b"s" * 64)))
    bad[-64 - 2] = 7  # a channel key of 7 bytes
    with pytest.raises(WireError):
        decode_peer_record(bytes(bad))
