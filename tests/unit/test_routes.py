from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkey.identity import Identity
from meshkey.routing.address import (
    NodeNameAddress,
    RouteError,
    ServiceAddress,
    TransportAddress,
    address_from_wire,
    address_to_wire,
    expand_placeholders,
    format_route,
    parse_route,
)
from meshkey.routing.message import Message
from meshkey.wire.errors import MalformedError, WireError
from meshkey.wire.message import HOST_DNS, HOST_IP4, HOST_IP6, AddressKind, WireAddress

NODE_ID = Identity.generate().node_id


def test_parses_every_kind_of_address() -> None:
    route = parse_route(
        f"/node/green/ip4/10.0.0.1/tcp/4000/id/{NODE_ID}/ip6/::1/udp/5/dns/Example.ORG/tcp/443"
        "/service/uppercase"
    )
    assert route == (
        NodeNameAddress("green"),
        TransportAddress("tcp", HOST_IP4, "10.0.0.1", 4000, NODE_ID),
        TransportAddress("udp", HOST_IP6, "::1", 5),
        TransportAddress("tcp", HOST_DNS, "example.org", 443),
        ServiceAddress("uppercase"),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty route"),
        ("/", "empty route"),
        ("service/echo", "must start with '/'"),
        ("/service", "needs a name"),
        ("/service/", "needs a name"),
        ("/service/a b", "service name"),
        ("/ip4/999.1.1.1/tcp/1", "not an ip4 address"),
        ("/ip4/10.0.0.1/tcp/0", "not in 1-65535"),
        ("/ip4/10.0.0.1/tcp/65536", "not in 1-65535"),
        ("/ip4/10.0.0.1/tcp/x", "not in 1-65535"),
        ("/ip4/10.0.0.1/sctp/1", "expected tcp or udp"),
        ("/ip4/10.0.0.1", "needs /tcp/PORT"),
        ("/ip6/1.2.3.4/tcp/1", "not an ip6 address"),
        ("/dns/-bad-/tcp/1", "not a valid DNS name"),
        ("/bogus/x", "unknown address type 'bogus'"),
        ("/node", "needs a node name"),
        ("/id/abc", "/id must follow"),
        ("/ip4/10.0.0.1/tcp/1/id/nope", "not a NodeId"),
        ("/service/echo//service/x", "empty segment"),
    ],
)
def test_rejects_malformed_routes_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(RouteError, match=message):
        parse_route(text)


@given(st.text(max_size=80))
def test_parser_only_raises_route_errors(text: str) -> None:
    try:
        route = parse_route(text)
    except RouteError:
        return
    assert parse_route(format_route(route)) == route


@pytest.mark.parametrize(
    "text",
    [
        "/service/echo",
        "/ip4/127.0.0.1/tcp/4000/service/uppercase",
        "/ip6/fe80::1/udp/9/service/x",
        f"/dns/h.example/tcp/1/id/{NODE_ID}/service/_tcp.ab12",
    ],
)
def test_format_is_the_inverse_of_parse(text: str) -> None:
    assert format_route(parse_route(text)) == text


def test_expand_placeholders() -> None:
    lines = iter(["/service/3fa2\n", "/node/blue"])
    assert (
        expand_placeholders("-/service/uppercase", lambda: next(lines))
        == "/service/3fa2/service/uppercase"
    )
    assert expand_placeholders("/node/green/-", lambda: next(lines)) == "/node/green/node/blue"
    assert expand_placeholders("/service/a-b", lambda: "unused") == "/service/a-b"
    with pytest.raises(RouteError, match="standard input"):
        expand_placeholders("-/service/x", lambda: "")


def test_wire_addresses_round_trip() -> None:
    text = f"/service/echo/ip4/1.2.3.4/tcp/9/id/{NODE_ID}/dns/a.b/udp/7/peer/{NODE_ID}"
    assert format_route(parse_route(text)) == text
    for address in parse_route(text):
        assert address_from_wire(address_to_wire(address)) == address
    with pytest.raises(RouteError):
        address_to_wire(NodeNameAddress("blue"))


@pytest.mark.parametrize(
    "wire",
    [
        WireAddress(AddressKind.LOCAL, b""),
        WireAddress(AddressKind.LOCAL, b"\xff"),
        WireAddress(AddressKind.LOCAL, b"a/b"),
        WireAddress(AddressKind.TCP, bytes([4, 1, 2, 3, 4, 0, 0])),
        WireAddress(AddressKind.TCP, bytes([0x64, 3]) + b"a_b" + b"\x00\x01"),
        WireAddress(AddressKind.PEER, b"\x00" * 31),  # a NodeId is 32 bytes
    ],
)
def test_wire_addresses_rejected(wire: WireAddress) -> None:
    with pytest.raises(WireError):
        address_from_wire(wire)


@given(st.binary(max_size=400))
def test_message_from_wire_only_raises_wire_errors(data: bytes) -> None:
    with contextlib.suppress(WireError):
        Message.from_wire(data)


def test_message_round_trip_and_helpers() -> None:
    route = parse_route("/ip4/127.0.0.1/tcp/1/service/echo")
    message = Message(route, (ServiceAddress("me"),), b"hi")
    assert Message.from_wire(message.to_wire()) == message
    assert message.step().onward == route[1:]
    assert message.with_return(ServiceAddress("x")).return_route[0] == ServiceAddress("x")
    with pytest.raises(MalformedError):
        Message.from_wire(bytes([1, 0, 1, 0, 0, 0]))
