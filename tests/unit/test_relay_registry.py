"""The relay registry proves each relay's owner by signature, never by the hop it came over."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from meshkey.identity import Identity, NodeId
from meshkey.relay import registry as registry_module
from meshkey.relay.registry import (
    CHALLENGE_LIFETIME,
    MAX_RELAYS_PER_OWNER,
    REGISTRY_SERVICE,
    RELAY_BURST_BYTES,
    RELAY_BYTES_PER_SECOND,
    ChallengeProblem,
    Challenges,
    RelayRegistry,
    automatic_name_refusal,
)
from meshkey.routing.address import ServiceAddress
from meshkey.routing.message import LocalInfo, Message
from meshkey.routing.router import Router
from meshkey.wire.message import ErrorCode
from meshkey.wire.relay import (
    RelayErrorCode,
    RelayRequest,
    RelayResponse,
    decode_relay_response,
    encode_relay_request,
    encode_relay_response,
    registration_payload,
)


class Harness:
    def __init__(self, admit: dict[NodeId, str] | None = None) -> None:
        self.host = Identity.generate()
        self.router = Router(self.host.node_id)
        self.now = 0.0
        refusals = admit or {}
        self.registry = RelayRegistry(self.router, admit=refusals.get, clock=lambda: self.now)
        self.answers: list[RelayResponse] = []

        async def collect(message: Message) -> None:
            self.answers.append(decode_relay_response(message.payload))

        self.router.register("answers", collect, inline=True)

    async def send(
        self, request: RelayRequest, hop: NodeId | None = None, *, via: str | None = None
    ) -> RelayResponse:
        """Sends ``request`` over ``hop``; ``via``: a worker standing for the connection the
        request came in on (the return route starts with it)."""
        back = (ServiceAddress(via),) if via else ()
        await self.router.route(
            Message(
                (ServiceAddress(REGISTRY_SERVICE),),
                (*back, ServiceAddress("answers")),
                encode_relay_request(request),
                local=LocalInfo(hop_peer=hop),
            )
        )
        for _ in range(20):
            await asyncio.sleep(0)
        return self.answers.pop()

    async def signed(
        self,
        owner: Identity,
        op: str,
        name: str,
        *,
        host: bytes | None = None,
        hop: NodeId | None = None,
        via: str | None = None,
    ) -> RelayRequest:
        """``owner``'s signed request; its challenge asked for over ``hop`` and ``via``."""
        issued = await self.send(RelayRequest("challenge", name, b"t" * 16), hop, via=via)
        assert issued.ok and issued.host == self.host.node_id.raw
        payload = registration_payload(
            host or issued.host, owner.node_id.raw, op, name, issued.challenge
        )
        return RelayRequest(
            op,
            name,
            b"t" * 16,
            owner=owner.node_id.raw,
            challenge=issued.challenge,
            signature=owner.sign(payload),
        )


async def test_the_signing_identity_owns_the_name_whoever_forwarded_it() -> None:
    harness = Harness()
    blue, mallory = Identity.generate(), Identity.generate()
    assert (await harness.send(await harness.signed(blue, "create", "blue"))).ok
    # Mallory's request arrives over blue's hop (the confused deputy): the hop is irrelevant.
    stolen = await harness.send(
        await harness.signed(mallory, "create", "blue", hop=blue.node_id), blue.node_id
    )
    assert (
        not stolen.ok
        and stolen.error_code is RelayErrorCode.CONFLICT
        and "belongs to another" in stolen.error
    )
    deleted = await harness.send(
        await harness.signed(mallory, "delete", "blue", hop=blue.node_id), blue.node_id
    )
    assert not deleted.ok and deleted.error_code is RelayErrorCode.CONFLICT
    [forwarder] = harness.registry.forwarders()
    assert forwarder.owner == blue.node_id


async def test_a_registration_cannot_be_replayed_forged_or_taken_to_another_node() -> None:
    harness = Harness()
    blue = Identity.generate()
    request = await harness.signed(blue, "create", "blue")
    assert (await harness.send(request)).ok
    replayed = await harness.send(request)
    assert (
        not replayed.ok
        and replayed.error_code is RelayErrorCode.STALE
        and "already used" in replayed.error
    )
    # Signed for another relay node: the signature does not cover this one.
    elsewhere = await harness.signed(blue, "create", "blue", host=Identity.generate().node_id.raw)
    assert (await harness.send(elsewhere)).error_code is RelayErrorCode.REFUSED
    # A signature by someone else than the claimed owner.
    forged = await harness.signed(Identity.generate(), "create", "blue")
    forged = replace(forged, owner=blue.node_id.raw)
    assert "does not verify" in (await harness.send(forged)).error
    # A challenge this node never issued, and one that expired.
    invented = replace(await harness.signed(blue, "create", "x"), challenge=b"\x00" * 32)
    assert "not issued by this node" in (await harness.send(invented)).error
    late = await harness.signed(blue, "create", "late")
    harness.now += 31
    assert (await harness.send(late)).error == "challenge expired"


async def test_a_forgery_does_not_spend_the_challenge_of_an_honest_request() -> None:
    harness = Harness()
    blue = Identity.generate()
    honest = await harness.signed(blue, "create", "blue")
    forged = replace(honest, signature=b"\x01" * 64)
    assert not (await harness.send(forged)).ok
    assert (await harness.send(honest)).ok


async def test_policy_and_per_owner_limit() -> None:
    blocked = Identity.generate()
    harness = Harness(admit={blocked.node_id: "not on the list"})
    refused = await harness.send(await harness.signed(blocked, "create", "blocked"))
    assert refused.error_code is RelayErrorCode.REFUSED and refused.error == "not on the list"
    greedy = Identity.generate()
    for index in range(MAX_RELAYS_PER_OWNER):
        assert (await harness.send(await harness.signed(greedy, "create", f"n{index}"))).ok
    over = await harness.send(await harness.signed(greedy, "create", "one-more"))
    assert over.error_code is RelayErrorCode.LIMIT and "limit" in over.error
    # Re-registering a name it already holds is not a new name.
    assert (await harness.send(await harness.signed(greedy, "create", "n0"))).ok


async def test_a_malformed_request_gets_no_answer_and_creates_nothing() -> None:
    harness = Harness()
    await harness.router.route(
        Message(
            (ServiceAddress(REGISTRY_SERVICE),),
            (ServiceAddress("answers"),),
            encode_relay_request(RelayRequest("challenge", "blue", b"t" * 16))[:-3],
        )
    )
    await asyncio.sleep(0)
    assert harness.answers == []
    assert harness.registry.forwarders() == []


def test_challenge_problems_say_whether_to_retry() -> None:
    assert ChallengeProblem.MALFORMED.code is RelayErrorCode.REFUSED  # a broken client
    for problem in (ChallengeProblem.FOREIGN, ChallengeProblem.EXPIRED, ChallengeProblem.USED):
        assert problem.code is RelayErrorCode.STALE  # ask for a new challenge
    now = [0.0]
    challenges = Challenges(clock=lambda: now[0])
    assert challenges.check(b"short", consume=False) is ChallengeProblem.MALFORMED
    issued = challenges.issue()
    assert challenges.check(issued, consume=True) is None
    assert challenges.check(issued, consume=False) is ChallengeProblem.USED
    assert challenges.check(Challenges().issue(), consume=False) is ChallengeProblem.FOREIGN
    late = challenges.issue()
    now[0] += CHALLENGE_LIFETIME + 1
    assert challenges.check(late, consume=False) is ChallengeProblem.EXPIRED


def test_a_refusal_code_this_version_does_not_know_still_decodes() -> None:
    known = RelayResponse(b"t" * 16, False, code=RelayErrorCode.CONFLICT, error="taken")
    assert decode_relay_response(encode_relay_response(known)).error_code is RelayErrorCode.CONFLICT
    newer = RelayResponse(b"t" * 16, False, code="overloaded", error="later")
    decoded = decode_relay_response(encode_relay_response(newer))
    assert decoded.code == "overloaded" and decoded.error_code is None


async def test_a_signed_registration_is_good_only_by_the_route_it_was_issued_for() -> None:
    """The finding: a registration's signature did not cover the route it arrived by, so a
    node that saw it on its way could deliver it by a route of its own."""
    harness = Harness()
    blue, mallory = Identity.generate(), Identity.generate()
    honest = await harness.signed(blue, "create", "blue", hop=blue.node_id)
    taken = await harness.send(honest, mallory.node_id)  # delivered over mallory's hop
    assert taken.error_code is RelayErrorCode.STALE and "another route" in taken.error
    assert harness.registry.forwarders() == []
    # By another return route over the same hop: refused too.
    await harness.router.route(
        Message(
            (ServiceAddress(REGISTRY_SERVICE),),
            (ServiceAddress("answers"), ServiceAddress("mallory-slot")),
            encode_relay_request(honest),
            local=LocalInfo(hop_peer=blue.node_id),
        )
    )
    for _ in range(20):
        await asyncio.sleep(0)
    assert harness.answers == [] or not harness.answers.pop().ok
    # The route it was issued for: accepted (it was not spent by the attempts above).
    assert (await harness.send(honest, blue.node_id)).ok
    assert Challenges().check(Challenges().issue(b"r"), consume=False) is ChallengeProblem.FOREIGN
    challenges = Challenges()
    assert challenges.check(challenges.issue(b"r1"), consume=False, route=b"r2") is (
        ChallengeProblem.ROUTE
    )


async def test_the_node_bounds_the_relays_it_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "MAX_RELAYS", 3)
    harness = Harness()
    for index in range(3):
        owner = Identity.generate()
        assert (await harness.send(await harness.signed(owner, "create", f"r{index}"))).ok
    full = await harness.send(await harness.signed(Identity.generate(), "create", "r3"))
    assert full.error_code is RelayErrorCode.LIMIT and "its limit (3)" in full.error


async def test_a_relay_forwards_at_most_its_rate_per_owner() -> None:
    harness = Harness()
    blue = Identity.generate()
    forwarded: list[Message] = []

    chunk = b"x" * (1024 * 1024)

    async def blues_connection(message: Message) -> None:
        if message.payload == chunk:  # traffic through the relay, reaching blue
            forwarded.append(message)
        else:  # an answer to blue's registration
            await harness.router.route(message.step())

    harness.router.register("blue-link", blues_connection, inline=True)
    request = await harness.signed(blue, "create", "blue", via="blue-link")
    assert (await harness.send(request, via="blue-link")).ok
    assert harness.registry.forwarders()[0].route[0] == ServiceAddress("blue-link")
    assert harness.registry.addresses_of(blue.node_id) == []  # the harness knows no addresses
    errors: list[Message] = []

    async def sender(message: Message) -> None:
        errors.append(message)

    harness.router.register("sender", sender, inline=True)
    for _ in range(RELAY_BURST_BYTES // len(chunk) + 4):
        await harness.router.route(
            Message((ServiceAddress("forward_to_blue"),), (ServiceAddress("sender"),), chunk)
        )
    assert len(forwarded) == RELAY_BURST_BYTES // len(chunk)
    assert len(errors) == 4
    code, text = errors[0].error()
    assert code is ErrorCode.BUSY and "over its rate" in text
    harness.now += 1.0  # a second later: a second's worth again
    await harness.router.route(
        Message((ServiceAddress("forward_to_blue"),), (ServiceAddress("sender"),), chunk)
    )
    assert len(forwarded) == RELAY_BURST_BYTES // len(chunk) + 1
    assert len(chunk) <= RELAY_BYTES_PER_SECOND


async def test_an_automatic_relay_name_cannot_be_squatted() -> None:
    harness = Harness()
    owner, squatter = Identity.generate(), Identity.generate()
    name = f"a.{str(owner.node_id)[2:28]}.{str(harness.host.node_id)[2:10]}"
    for attempt in (name, name.upper(), f"a.{str(owner.node_id)[2:28]}.{'b' * 8}"):
        squatted = await harness.send(await harness.signed(squatter, "create", attempt))
        assert squatted.error_code is RelayErrorCode.CONFLICT and "reserved" in squatted.error
    wrong_host = f"a.{str(owner.node_id)[2:28]}.{'b' * 8}"
    refused = await harness.send(await harness.signed(owner, "create", wrong_host))
    assert not refused.ok and "relay node" in refused.error
    assert (await harness.send(await harness.signed(owner, "create", name))).ok
    assert automatic_name_refusal("a.b.c", squatter.node_id, harness.host.node_id) is None


async def test_where_an_owner_registered_from_is_an_address_observed_for_it() -> None:
    harness = Harness()
    harness.registry._address_of = {"blue-link": ("198.51.100.4", 4000)}.get
    blue = Identity.generate()

    async def blues_connection(message: Message) -> None:
        await harness.router.route(message.step())

    harness.router.register("blue-link", blues_connection, inline=True)
    request = await harness.signed(blue, "create", "blue", via="blue-link")
    assert (await harness.send(request, via="blue-link")).ok
    assert harness.registry.addresses_of(blue.node_id) == [("198.51.100.4", 4000)]
    assert harness.registry.addresses_of(Identity.generate().node_id) == []
