"""The reflexive-address glue against a fake UDP transport: it answers WHOAMI with the address
a request came from, retransmits its own request (the same transaction id, from the injected
rng) until answered, hands answers to nobody else's request to ``on_unmatched``, and times out
with a typed error."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import cast

import pytest

from meshkey.nat.reflexive import ReflexiveAddressService
from meshkey.routing.address import TransportAddress
from meshkey.routing.errors import RemoteError
from meshkey.transport.udp import ControlHandler, QuicTransport
from meshkey.wire.message import ErrorCode
from meshkey.wire.net import Endpoint
from meshkey.wire.udp import (
    TXID_SIZE,
    ControlKind,
    WhoamiRequest,
    WhoamiResponse,
    decode_control_packet,
    encode_control_packet,
)

OBSERVER: Endpoint = ("192.0.2.10", 3478)
MAPPED: Endpoint = ("198.51.100.1", 41000)


class FakeUdp:
    """What the service uses of a QuicTransport; ``answer_after`` requests are lost before
    the observer answers one (None: never)."""

    def __init__(self, answer_after: int | None = 0) -> None:
        self.handlers: dict[int, ControlHandler] = {}
        self.unreachable_listeners: list[Callable[[Endpoint], None]] = []
        self.sent: list[tuple[bytes, Endpoint]] = []
        self.answer_after = answer_after

    def register_control(self, kind: int, handler: ControlHandler) -> None:
        self.handlers[kind] = handler

    def send_control(self, packet: bytes, address: Endpoint, *, socket_id: int = 0) -> None:
        self.sent.append((packet, address))
        request = decode_control_packet(packet)
        if not isinstance(request, WhoamiRequest) or address != OBSERVER:
            return
        if self.answer_after is not None and len(self.sent) > self.answer_after:
            answer = encode_control_packet(WhoamiResponse(request.txid, *MAPPED))
            self.handlers[ControlKind.WHOAMI_RESPONSE](answer, OBSERVER, 0)


def service(udp: FakeUdp, **options: object) -> ReflexiveAddressService:
    return ReflexiveAddressService(cast(QuicTransport, udp), **options)  # type: ignore[arg-type]


async def test_whoami_retransmits_one_request_until_answered() -> None:
    udp = FakeUdp(answer_after=2)  # two requests lost
    reflexive = service(udp, rng=random.Random(5))
    seen = await reflexive.whoami(TransportAddress.from_socket("udp", *OBSERVER))
    assert seen == TransportAddress.from_socket("udp", *MAPPED)
    assert [address for _, address in udp.sent] == [OBSERVER] * 3
    txids = {cast(WhoamiRequest, decode_control_packet(packet)).txid for packet, _ in udp.sent}
    assert txids == {random.Random(5).randbytes(TXID_SIZE)}  # one id, the rng's
    assert reflexive._pending == {}


async def test_whoami_without_an_answer_times_out_and_forgets_its_request() -> None:
    udp = FakeUdp(answer_after=None)
    reflexive = service(udp)
    with pytest.raises(RemoteError, match="no reflexive-address answer") as raised:
        await reflexive.whoami(TransportAddress.from_socket("udp", *OBSERVER), timeout=0.3)
    assert raised.value.code is ErrorCode.TIMEOUT
    assert len(udp.sent) >= 2  # the first request, and at least the one at the timeout
    assert reflexive._pending == {}


async def test_an_icmp_error_for_the_observer_fails_the_question_at_once() -> None:
    udp = FakeUdp(answer_after=None)
    reflexive = service(udp)
    asking = asyncio.ensure_future(
        reflexive.whoami(TransportAddress.from_socket("udp", *OBSERVER), timeout=30)
    )
    while not udp.sent:  # asked (after resolving the address)
        await asyncio.sleep(0.01)
    for listener in udp.unreachable_listeners:
        listener(("192.0.2.99", 1))  # someone else's: nothing happens
    await asyncio.sleep(0)
    assert not asking.done()
    for listener in udp.unreachable_listeners:
        listener(OBSERVER)
    with pytest.raises(RemoteError, match="nothing listens") as raised:
        await asking
    assert raised.value.code is ErrorCode.UNREACHABLE
    assert reflexive._pending == {} and reflexive._asking == {}


async def test_whoami_needs_a_udp_target() -> None:
    udp = FakeUdp()
    with pytest.raises(RemoteError) as raised:
        await service(udp).whoami(TransportAddress.from_socket("tcp", *OBSERVER))
    assert raised.value.code is ErrorCode.UNSUPPORTED
    assert udp.sent == []


def test_a_request_is_answered_with_its_source_and_stray_answers_go_to_on_unmatched() -> None:
    udp = FakeUdp()
    unmatched: list[tuple[WhoamiResponse, Endpoint]] = []
    service(udp, on_unmatched=lambda response, source: unmatched.append((response, source)))
    asker: Endpoint = ("203.0.113.9", 5000)
    udp.handlers[ControlKind.WHOAMI_REQUEST](
        encode_control_packet(WhoamiRequest(b"q" * TXID_SIZE)), asker, 0
    )
    ((packet, to),) = udp.sent
    assert to == asker
    assert decode_control_packet(packet) == WhoamiResponse(b"q" * TXID_SIZE, *asker)
    stray = WhoamiResponse(b"s" * TXID_SIZE, *MAPPED)
    udp.handlers[ControlKind.WHOAMI_RESPONSE](encode_control_packet(stray), OBSERVER, 0)
    udp.handlers[ControlKind.WHOAMI_RESPONSE](b"\x01junk", OBSERVER, 0)  # dropped, not raised
    assert unmatched == [(stray, OBSERVER)]
