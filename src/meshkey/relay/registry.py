"""The hosting side: the ``relay`` service creates ``forward_to_NAME`` workers.

A forwarder sends every message it gets to the node that registered it, over the route the
registration came by (which starts with the connection *that* node opened, so it works when
the node is behind a NAT). The forwarder does not touch the return route, so replies go back
the way the request came, not through the relay's owner again.

Ownership is proven end to end (:mod:`meshkey.wire.relay`): the owner first asks for a
challenge, then signs the registration (this node's NodeId, the operation, the name, the
challenge) with its identity. Challenges are stateless (a MAC under a per-process secret, with
an expiry) and accepted once, so a flood of challenge requests costs no memory, and a signed
registration can be neither replayed nor taken to another relay node. Whoever forwarded the
request is irrelevant: a node on the route cannot register a name for anyone but itself.

A name belongs to the NodeId that first registered it (persisted by the caller through
``on_claim``), so no one else can take it over, not even while its owner is offline. An owner
holds at most :data:`MAX_RELAYS_PER_OWNER` names.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from meshkey.identity.keys import verify_signature
from meshkey.identity.node_id import NodeId
from meshkey.log import EventLogger
from meshkey.routing.address import Route, ServiceAddress, format_route
from meshkey.routing.message import Message
from meshkey.routing.router import Router
from meshkey.wire.errors import WireError
from meshkey.wire.message import ErrorCode
from meshkey.wire.relay import (
    CHALLENGE_SIZE,
    RelayErrorCode,
    RelayOp,
    RelayRequest,
    RelayResponse,
    decode_relay_request,
    encode_relay_response,
    registration_payload,
)

log = EventLogger("relay.registry")

REGISTRY_SERVICE = "relay"
PREFIX = "forward_to_"
#: How long a challenge may be used: a few round trips, even over slow paths.
CHALLENGE_LIFETIME = 30.0
#: Names one identity may hold on this node; more is almost certainly abuse (each is a
#: worker and a database row).
MAX_RELAYS_PER_OWNER = 16

Admit = Callable[[NodeId], str | None]


@dataclass
class Forwarder:
    name: str
    owner: NodeId
    route: Route = ()  # to the owner's relay endpoint; empty while the owner is offline

    def describe(self, router: Router) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": f"/service/{PREFIX}{self.name}",
            "owner": str(self.owner),
            "online": _online(router, self.route),
            "route": format_route(self.route),
        }


def _online(router: Router, route: Route) -> bool:
    first = route[0] if route else None
    # The route starts with the owner's connection worker; gone means the owner is offline.
    return isinstance(first, ServiceAddress) and router.has_worker(first.name)


async def _nothing(*_args: Any) -> None:
    return None


class ChallengeProblem(enum.StrEnum):
    """Why a challenge is not accepted (the value is the text the owner is told)."""

    MALFORMED = "malformed challenge"
    FOREIGN = "challenge was not issued by this node (it may have restarted)"
    EXPIRED = "challenge expired"
    USED = "challenge already used"

    @property
    def code(self) -> RelayErrorCode:
        """What the owner should do: a well-formed challenge that is no longer good is STALE
        (ask for a new one); a malformed one is a broken client, REFUSED."""
        return (
            RelayErrorCode.REFUSED if self is ChallengeProblem.MALFORMED else RelayErrorCode.STALE
        )


@dataclass(frozen=True, slots=True)
class Unproven:
    """A registration whose owner is not proven: the refusal's code and why."""

    code: RelayErrorCode
    reason: str


class Challenges:
    """Stateless, single-use challenges: ``expiry | random | MAC(secret, expiry | random)``.

    Only challenges that were *used* are remembered (until they expire), and a use requires a
    valid signature, so what this holds is bounded by honest registrations.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._secret = os.urandom(32)
        self._clock = clock
        self._used: dict[bytes, float] = {}

    def issue(self) -> bytes:
        expiry = self._clock() + CHALLENGE_LIFETIME
        body = struct.pack("!d", expiry) + os.urandom(8)
        return body + self._mac(body)

    def check(self, challenge: bytes, *, consume: bool) -> ChallengeProblem | None:
        """None when ``challenge`` is valid and unused, else why not; ``consume`` marks it used
        (only once the request it came with has proven its signature)."""
        if len(challenge) != CHALLENGE_SIZE:
            return ChallengeProblem.MALFORMED
        body, mac = challenge[:16], challenge[16:]
        if not hmac.compare_digest(mac, self._mac(body)):
            return ChallengeProblem.FOREIGN
        now = self._clock()
        (expiry,) = struct.unpack("!d", body[:8])
        if expiry < now:
            return ChallengeProblem.EXPIRED
        self._used = {c: e for c, e in self._used.items() if e >= now}
        if challenge in self._used:
            return ChallengeProblem.USED
        if consume:
            self._used[challenge] = expiry
        return None

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()[:16]


class RelayRegistry:
    def __init__(
        self,
        router: Router,
        *,
        claims: dict[str, NodeId] | None = None,
        on_claim: Callable[[str, NodeId], Awaitable[None]] = _nothing,
        on_release: Callable[[str], Awaitable[None]] = _nothing,
        admit: Admit = lambda owner: None,
        clock: Callable[[], float] = time.monotonic,
        address_of: Callable[[str], tuple[str, int] | None] = lambda worker: None,
        on_address: Callable[[str, tuple[str, int]], Awaitable[None]] = _nothing,
    ) -> None:
        self.router = router
        self._address_of = address_of
        self._on_address = on_address
        self._on_claim = on_claim
        self._on_release = on_release
        self._admit = admit
        self._challenges = Challenges(clock)
        self._forwarders: dict[str, Forwarder] = {}
        for name, owner in (claims or {}).items():
            self._install(Forwarder(name, owner))
        # Admission is decided here, on the proven owner, not by the router on the hop.
        router.register(REGISTRY_SERVICE, self._handle, admit=False)

    def forwarders(self) -> list[Forwarder]:
        return [self._forwarders[n] for n in sorted(self._forwarders)]

    def describe(self) -> list[dict[str, Any]]:
        return [f.describe(self.router) for f in self.forwarders()]

    def _install(self, forwarder: Forwarder) -> None:
        async def forward(message: Message) -> None:
            await self._forward(forwarder, message)

        self._forwarders[forwarder.name] = forwarder
        self.router.register(f"{PREFIX}{forwarder.name}", forward, inline=True)

    async def _forward(self, forwarder: Forwarder, message: Message) -> None:
        if not _online(self.router, forwarder.route):
            await self.router.fail(
                message,
                ErrorCode.UNREACHABLE,
                f"relay {forwarder.name!r} is offline: its node {forwarder.owner.short()} "
                "is not connected",
            )
            return
        await self.router.route(
            Message(
                (*forwarder.route, *message.onward[1:]),
                message.return_route,
                message.payload,
                message.kind,
                message.local,
            )
        )

    async def _handle(self, message: Message) -> None:
        if message.is_error:
            return
        try:
            request = decode_relay_request(message.payload)
        except WireError as exc:
            log.warning("relay.bad_request", reason=str(exc))
            return

        async def answer(response: RelayResponse) -> None:
            await self.router.reply(message, encode_relay_response(response))

        async def refuse(code: RelayErrorCode, error: str) -> None:
            await answer(RelayResponse(request.token, False, code=code, error=error))

        if request.op == RelayOp.CHALLENGE:
            await answer(
                RelayResponse(
                    request.token,
                    True,
                    challenge=self._challenges.issue(),
                    host=self.router.node_id.raw,
                )
            )
            return
        owner = self._verify(request)
        if isinstance(owner, Unproven):
            log.warning("relay.unproven_registration", name=request.name, reason=owner.reason)
            await refuse(owner.code, owner.reason)
            return
        refusal = self._admit(owner)
        if refusal is not None:
            log.warning("relay.refused", name=request.name, owner=owner, reason=refusal)
            await refuse(RelayErrorCode.REFUSED, refusal)
            return
        existing = self._forwarders.get(request.name)
        if existing is not None and existing.owner != owner:
            log.warning("relay.name_taken", name=request.name, by=owner, owner=existing.owner)
            await refuse(
                RelayErrorCode.CONFLICT,
                f"relay name {request.name!r} belongs to another node ({existing.owner.short()})",
            )
            return
        if request.op == RelayOp.DELETE:
            if existing is not None:
                self._forwarders.pop(request.name)
                self.router.unregister(f"{PREFIX}{request.name}")
                await self._on_release(request.name)
                log.info("relay.deleted", name=request.name, owner=owner)
            await answer(RelayResponse(request.token, True, address=""))
            return
        if existing is None:
            held = sum(1 for f in self._forwarders.values() if f.owner == owner)
            if held >= MAX_RELAYS_PER_OWNER:
                await refuse(
                    RelayErrorCode.REFUSED,
                    f"node {owner.short()} already holds {held} relays here "
                    f"(limit {MAX_RELAYS_PER_OWNER})",
                )
                return
            existing = Forwarder(request.name, owner)
            self._install(existing)
            await self._on_claim(request.name, owner)
        existing.route = message.return_route
        first = existing.route[0] if existing.route else None
        address = self._address_of(first.name) if isinstance(first, ServiceAddress) else None
        if address is not None:  # where to nudge the owner if this node restarts
            await self._on_address(request.name, address)
        log.info(
            "relay.registered", name=request.name, owner=owner, route=format_route(existing.route)
        )
        await answer(RelayResponse(request.token, True, address=f"/service/{PREFIX}{request.name}"))

    def _verify(self, request: RelayRequest) -> NodeId | Unproven:
        """The proven owner of a signed request, or why it is not proven."""
        # The MAC first (cheap, and rejects what this node never issued), then the signature,
        # and only then is the challenge spent: a forgery cannot burn an honest one.
        problem = self._challenges.check(request.challenge, consume=False)
        if problem is not None:
            return Unproven(problem.code, problem.value)
        owner = NodeId(request.owner)
        payload = registration_payload(
            self.router.node_id.raw, owner.raw, request.op, request.name, request.challenge
        )
        if not verify_signature(owner, payload, request.signature):
            return Unproven(
                RelayErrorCode.REFUSED,
                f"the registration's signature does not verify for {owner.short()}",
            )
        problem = self._challenges.check(request.challenge, consume=True)
        return owner if problem is None else Unproven(problem.code, problem.value)
