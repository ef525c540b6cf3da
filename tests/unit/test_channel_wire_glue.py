"""What the secure-channel glue reads off the wire without decoding it all: a route error's
missing service (is it the peer's decryptor?) and a channel payload's kind."""

from __future__ import annotations

import asyncio

from meshkey.identity import Identity
from meshkey.routing.address import ServiceAddress
from meshkey.routing.message import Message
from meshkey.routing.router import Router
from meshkey.wire.channel import (
    ChannelKind,
    Handshake,
    Refuse,
    Sealed,
    encode_channel,
    peek_kind,
)
from meshkey.wire.message import ErrorCode, missing_service, no_such_service_text


async def test_the_router_names_the_missing_service_so_that_a_channel_can_read_it() -> None:
    """Pins the router's NO_SUCH_SERVICE text to the parser the channel uses (if the two ever
    drift apart, a restarted peer would no longer trigger a re-handshake)."""
    router = Router(Identity.generate().node_id, label="blue")
    errors: list[Message] = []

    async def collect(message: Message) -> None:
        errors.append(message)

    router.register("answers", collect, inline=True)
    for gone in ("_sc.00ff", "forward_to_blue"):
        await router.route(Message((ServiceAddress(gone),), (ServiceAddress("answers"),), b"x"))
    await asyncio.sleep(0)
    assert [missing_service(*error.error()) for error in errors] == ["_sc.00ff", "forward_to_blue"]


def test_missing_service_reads_only_no_such_service_errors_written_as_such() -> None:
    text = no_such_service_text("ab12", "_sc.00ff")
    assert missing_service(ErrorCode.NO_SUCH_SERVICE, text) == "_sc.00ff"
    assert missing_service(ErrorCode.NO_SUCH_SERVICE, no_such_service_text("x", "it's")) == "it's"
    assert missing_service(ErrorCode.UNREACHABLE, text) is None
    # A name that merely appears in the text is not the missing service.
    assert missing_service(ErrorCode.NO_SUCH_SERVICE, "relay _sc.00ff is gone") is None
    assert missing_service(ErrorCode.NO_SUCH_SERVICE, text + " (and more)") is None


def test_peek_kind_reads_the_kind_byte_only() -> None:
    assert peek_kind(encode_channel(Handshake(ChannelKind.HELLO, b"e" * 32))) is ChannelKind.HELLO
    assert peek_kind(encode_channel(Sealed(ChannelKind.DATA, 7, b"c" * 20))) is ChannelKind.DATA
    assert peek_kind(encode_channel(Refuse("no"))) is ChannelKind.REFUSE
    assert peek_kind(b"") is None
    assert peek_kind(b"\x01") is None
    assert peek_kind(b"\x01\xff") is None
