"""Send one message and wait for its reply, as a short-lived node without an event loop.

This is what ``meshkey message send`` does without ``--from``: a fresh identity, one
authenticated hop to the route's first address, the rest of the route beyond it.
"""

from __future__ import annotations

import secrets
import time

from meshkey.identity.keys import Identity
from meshkey.routing.address import Route, ServiceAddress, TransportAddress
from meshkey.routing.errors import RemoteError, RoutingError
from meshkey.routing.message import Message
from meshkey.transport.blocking import BlockingHop
from meshkey.wire.errors import WireError
from meshkey.wire.frames import MAX_PAYLOAD
from meshkey.wire.message import ErrorCode


def send_once(
    route: Route, payload: bytes, *, timeout: float, identity: Identity | None = None
) -> bytes:
    """Returns the reply's payload; RemoteError says why there is none."""
    if len(payload) > MAX_PAYLOAD:
        raise RemoteError(
            ErrorCode.TOO_LARGE, f"payload of {len(payload)} bytes (limit {MAX_PAYLOAD})"
        )
    first = route[0] if route else None
    if not isinstance(first, TransportAddress):
        raise RemoteError(
            ErrorCode.UNSUPPORTED,
            f"a route sent from the command line must start with a node or an address, not "
            f"{first}; to use a node's own services, send --from that node",
        )
    reply_to = ServiceAddress(f"_reply.{secrets.token_hex(8)}")
    deadline = time.monotonic() + timeout
    try:
        with BlockingHop(identity or Identity.generate(), first, timeout=timeout) as hop:
            hop.send(Message(route[1:], (reply_to,), payload).to_wire())
            while True:
                reply = Message.from_wire(hop.receive(deadline - time.monotonic()))
                if reply.onward[:1] == (reply_to,):
                    break
    except RoutingError as exc:
        if exc.code == ErrorCode.TIMEOUT:
            raise RemoteError(exc.code, f"no reply within {timeout:g}s") from None
        raise RemoteError(exc.code, exc.text) from exc
    except WireError as exc:
        raise RemoteError(ErrorCode.MALFORMED, f"malformed reply: {exc}") from exc
    if reply.is_error:
        raise RemoteError(*reply.error())
    return reply.payload
