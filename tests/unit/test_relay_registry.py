"""The relay registry proves each relay's owner by signature, never by the hop it came over."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from meshkey.identity import Identity, NodeId
from meshkey.relay.registry import (
    CHALLENGE_LIFETIME,
    MAX_RELAYS_PER_OWNER,
    REGISTRY_SERVICE,
    ChallengeProblem,
    Challenges,
    RelayRegistry,
)
from meshkey.routing.address import ServiceAddress
from meshkey.routing.message import LocalInfo, Message
from meshkey.routing.router import Router
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

    async def send(self, request: RelayRequest, hop: NodeId | None = None) -> RelayResponse:
        await self.router.route(
            Message(
                (ServiceAddress(REGISTRY_SERVICE),),
                (ServiceAddress("answers"),),
                encode_relay_request(request),
                local=LocalInfo(hop_peer=hop),
            )
        )
        for _ in range(20):
            await asyncio.sleep(0)
        return self.answers.pop()

    async def signed(
        self, owner: Identity, op: str, name: str, *, host: bytes | None = None
    ) -> RelayRequest:
        issued = await self.send(RelayRequest("challenge", name, b"t" * 16))
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
    stolen = await harness.send(await harness.signed(mallory, "create", "blue"), blue.node_id)
    assert (
        not stolen.ok
        and stolen.error_code is RelayErrorCode.CONFLICT
        and "belongs to another" in stolen.error
    )
    deleted = await harness.send(await harness.signed(mallory, "delete", "blue"), blue.node_id)
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
    assert over.error_code is RelayErrorCode.REFUSED and "limit" in over.error
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
