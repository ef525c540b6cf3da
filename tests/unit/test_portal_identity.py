"""Who an outlet serves: the identity authenticated end to end, for every route shape a portal
packet can arrive by (the return routes as the receiving node's router hands them over)."""

from __future__ import annotations

import pytest

from meshkey.identity import Identity
from meshkey.identity.node_id import NodeId
from meshkey.portal.outlet import end_to_end_identity
from meshkey.routing.address import Address, ServiceAddress
from meshkey.routing.message import LocalInfo, Message

OWN, ALLOWED, RELAY = (Identity.generate().node_id for _ in range(3))
WORKER = ServiceAddress("_portal.0123456789abcdef")  # the sender's portal multiplexer
LINK = ServiceAddress("_udp.00112233aabbccdd")  # the link a message arrived on (this node's)
FAR_LINK = ServiceAddress("_udp.ffeeddccbbaa9988")  # a link on the node before
CHANNEL = ServiceAddress("0123456789abcdef0123456789abcdef")  # a secure channel's address
FAR_CHANNEL = ServiceAddress("fedcba9876543210fedcba9876543210")
HOP = ServiceAddress("hop")


def arriving(
    return_route: tuple[Address, ...],
    *,
    hop: NodeId | None = None,
    channel: NodeId | None = None,
) -> Message:
    local = LocalInfo(hop_peer=hop, channel_peer=channel)
    return Message((ServiceAddress("outlet"),), return_route, b"", local=local)


@pytest.mark.parametrize(
    ("message", "identity"),
    [
        # A portal on this node.
        (arriving((WORKER,)), OWN),
        # A direct hop from the allowed node's portal.
        (arriving((LINK, WORKER), hop=ALLOWED), ALLOWED),
        # Out of a secure channel the allowed node opened (directly, through a relay, or
        # nested in another channel: the outer ones end before this node).
        (arriving((CHANNEL, WORKER), channel=ALLOWED), ALLOWED),
        # Through a relay without a channel: the relay saw the bytes; nobody is authenticated.
        (arriving((LINK, FAR_LINK, WORKER), hop=RELAY), None),
        # A stranger through the allowed node with an empty return route: two addresses, and
        # the hop's peer allowed, but the second is the allowed node's link to the stranger.
        (arriving((LINK, FAR_LINK), hop=ALLOWED), None),
        # ... naming its own portal worker: three addresses.
        (arriving((LINK, FAR_LINK, WORKER), hop=ALLOWED), None),
        # ... through the allowed node's hop service.
        (arriving((LINK, HOP, FAR_LINK), hop=ALLOWED), None),
        # ... out of a channel the stranger opened to the allowed node, forwarded here.
        (arriving((LINK, FAR_CHANNEL), hop=ALLOWED), None),
        # ... fed into the allowed node's channel to this node.
        (arriving((CHANNEL, FAR_LINK), channel=ALLOWED), None),
        (arriving((CHANNEL, FAR_LINK, WORKER), channel=ALLOWED), None),
        # A local worker other than a portal (this node's hop service, forwarding for a peer).
        (arriving((HOP, LINK), hop=ALLOWED), None),
        (arriving((HOP,)), None),
        # No return route at all: nothing can be answered, nobody is known.
        (arriving((), hop=ALLOWED), None),
    ],
    ids=[
        "local-portal",
        "direct-hop",
        "secure-channel",
        "relay-without-channel",
        "stranger-through-allowed-empty-return",
        "stranger-through-allowed-own-worker",
        "stranger-through-allowed-hop-service",
        "stranger-out-of-its-channel-to-allowed",
        "stranger-into-allowed-channel",
        "stranger-into-allowed-channel-own-worker",
        "local-hop-service-for-a-peer",
        "local-non-portal-worker",
        "no-return-route",
    ],
)
def test_the_end_to_end_identity_of_each_route_shape(
    message: Message, identity: NodeId | None
) -> None:
    assert end_to_end_identity(message, OWN) == identity
