"""``/secure/LISTENER`` in route text: parsed, printed, never sent on the wire."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkey.identity import Identity
from meshkey.routing.address import (
    NodeNameAddress,
    RouteError,
    SecureAddress,
    ServiceAddress,
    TransportAddress,
    address_to_wire,
    expand_placeholders,
    format_route,
    parse_address,
    parse_route,
)
from meshkey.routing.message import Message
from meshkey.wire.message import HOST_IP4, MAX_ROUTE_LENGTH

NODE_ID = Identity.generate().node_id


def test_parses_the_readme_route_and_nested_secure_hops() -> None:
    route = parse_route("/node/green/service/forward_to_blue/secure/api/service/uppercase")
    assert route == (
        NodeNameAddress("green"),
        ServiceAddress("forward_to_blue"),
        SecureAddress("api"),
        ServiceAddress("uppercase"),
    )
    nested = parse_route(
        f"/ip4/10.0.0.1/udp/9/id/{NODE_ID}/secure/api/node/blue/secure/private.v2/service/x"
    )
    assert nested == (
        TransportAddress("udp", HOST_IP4, "10.0.0.1", 9, NODE_ID),
        SecureAddress("api"),
        NodeNameAddress("blue"),
        SecureAddress("private.v2"),
        ServiceAddress("x"),
    )
    assert parse_address("/secure/api") == SecureAddress("api")
    assert str(SecureAddress("api")) == "/secure/api"


@pytest.mark.parametrize(
    "text",
    [
        "/secure/api/service/echo",
        "/node/green/service/forward_to_blue/secure/api/service/outlet",
        f"/ip4/127.0.0.1/tcp/4000/id/{NODE_ID}/secure/api/secure/inner/service/x",
        "/secure/api",
    ],
)
def test_format_is_the_inverse_of_parse(text: str) -> None:
    assert format_route(parse_route(text)) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("/secure", "needs a listener name"),
        ("/secure/", "needs a listener name"),
        ("/secure//service/x", "needs a listener name"),
        ("/secure/a b/service/x", "listener name 'a b'"),
        ("/secure/" + "x" * 65, "listener name"),
        ("/secure/-api", "listener name '-api'"),
        ("/bogus/x", "expected service, node, peer, secure, ip4, ip6 or dns"),
    ],
)
def test_rejects_malformed_secure_hops_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(RouteError, match=message):
        parse_route(text)


def test_secure_hops_count_toward_the_route_limit() -> None:
    fits = "/secure/api" * (MAX_ROUTE_LENGTH - 1) + "/service/x"
    assert len(parse_route(fits)) == MAX_ROUTE_LENGTH
    with pytest.raises(RouteError, match="the limit is"):
        parse_route("/secure/api" * MAX_ROUTE_LENGTH + "/service/x")


def test_a_secure_hop_is_never_sent_on_the_wire() -> None:
    with pytest.raises(RouteError, match="resolved by the node that sends"):
        address_to_wire(SecureAddress("api"))
    message = Message(parse_route("/secure/api/service/echo"), (), b"hi")
    with pytest.raises(RouteError, match="/secure/api"):
        message.to_wire()


def test_placeholders_expand_around_secure_hops() -> None:
    expanded = expand_placeholders("-/secure/api/service/echo", lambda: "/node/green\n")
    assert parse_route(expanded) == (
        NodeNameAddress("green"),
        SecureAddress("api"),
        ServiceAddress("echo"),
    )


_segment = st.sampled_from(
    ["secure", "service", "node", "api", "x", "", "ip4", "127.0.0.1", "udp", "9", "id", "-"]
)


@given(st.lists(_segment, max_size=12))
def test_routes_with_secure_segments_parse_only_to_route_errors(segments: list[str]) -> None:
    text = "/" + "/".join(segments)
    try:
        route = parse_route(text)
    except RouteError:
        return
    assert parse_route(format_route(route)) == route
