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

A registration is bound to the route it arrived by: a challenge is issued for the route its
request came by (the return route, with the hop's NodeId) and accepted only from that route,
so the signature, which covers the challenge, covers the route too. Whoever learns a signed
registration on its way (a node it passes through, a capture) cannot deliver it by another
route of its own, where the relay would then forward the owner's traffic. (Nothing changes on
the wire: an owner asks for the challenge and registers over the same route anyway; if that
route changed in between, the registration is STALE and asked for again.)

A name belongs to the NodeId that first registered it (persisted by the caller through
``on_claim``), so no one else can take it over, not even while its owner is offline. An
automatic relay's name (``a.<26 characters of the owner's NodeId>.<8 of this node's>``,
:mod:`meshkey.node.autorelay`) is its owner's before it exists: it is refused to anyone else,
so nobody can squat it.

Bounds (DESIGN.md decision 15): an owner holds at most :data:`MAX_RELAYS_PER_OWNER` names,
the node at most :data:`MAX_RELAYS` in all (refused beyond, code ``limit``), and a forwarder
passes on at most :data:`RELAY_BYTES_PER_SECOND` a second per owner (burst
:data:`RELAY_BURST_BYTES`); beyond, messages are answered BUSY, saying so.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import re
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from meshkey.identity.keys import verify_signature
from meshkey.identity.node_id import NodeId
from meshkey.log import EventLogger
from meshkey.ratelimit import TokenBucket
from meshkey.routing.address import Route, ServiceAddress, address_to_wire, format_route
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
#: Names this node holds for everyone together.
MAX_RELAYS = 1024
#: Bytes a second a forwarder passes on for one owner (a relay carries a channel until a
#: direct path takes over, portals included), and the burst it may reach.
RELAY_BYTES_PER_SECOND = 4 * 1024 * 1024
RELAY_BURST_BYTES = 8 * 1024 * 1024
#: An automatic relay's name: ``a.`` 26 characters of the owner's NodeId text after "mk",
#: ``.`` 8 of the relay node's (any case: no look-alike either).
AUTOMATIC_NAME = re.compile(r"a\.([a-z0-9]{26})\.([a-z0-9]{8})", re.IGNORECASE)

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
    ROUTE = "challenge was issued for another route (a connection on the way changed?)"
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
    """Stateless, single-use challenges, each for one route: ``expiry | random |
    MAC(secret, expiry | random)[:8] | MAC(secret, expiry | random | route)[:8]`` (the first
    MAC tells a foreign challenge from one issued for another ``route``).

    Only challenges that were *used* are remembered (until they expire), and a use requires a
    valid signature, so what this holds is bounded by honest registrations.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._secret = os.urandom(32)
        self._clock = clock
        self._used: dict[bytes, float] = {}

    def issue(self, route: bytes = b"") -> bytes:
        """A challenge for requests that come by ``route`` (:func:`route_key`)."""
        expiry = self._clock() + CHALLENGE_LIFETIME
        body = struct.pack("!d", expiry) + os.urandom(8)
        return body + self._mac(body)[:8] + self._mac(body + route)[:8]

    def check(
        self, challenge: bytes, *, consume: bool, route: bytes = b""
    ) -> ChallengeProblem | None:
        """None when ``challenge`` is valid, unused and issued for ``route``, else why not;
        ``consume`` marks it used (only once the request it came with has proven its
        signature)."""
        if len(challenge) != CHALLENGE_SIZE:
            return ChallengeProblem.MALFORMED
        body, mac, route_mac = challenge[:16], challenge[16:24], challenge[24:]
        if not hmac.compare_digest(mac, self._mac(body)[:8]):
            return ChallengeProblem.FOREIGN
        if not hmac.compare_digest(route_mac, self._mac(body + route)[:8]):
            return ChallengeProblem.ROUTE
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


def route_key(message: Message) -> bytes:
    """What binds a challenge to the route a request came by: its return route (each node's
    connection on the way, as this node and those before it named them) and the NodeId of the
    hop it arrived over."""
    digest = hashlib.sha256()
    for address in message.return_route:
        kind, value = address_to_wire(address)
        digest.update(bytes([kind]) + len(value).to_bytes(2, "big") + value)
    hop = message.local.hop_peer
    digest.update(hop.raw if hop is not None else b"")
    return digest.digest()


def automatic_name_refusal(name: str, owner: NodeId, host: NodeId) -> str | None:
    """Why ``owner`` may not register ``name`` on ``host``, when ``name`` is shaped like an
    automatic relay's (``a.<26 of the owner's id>.<8 of the host's>``); None otherwise."""
    match = AUTOMATIC_NAME.fullmatch(name)
    if match is None:
        return None
    if match.group(1) != str(owner)[2:28]:
        return (
            f"relay name {name!r} is reserved: names a.<26>.<8> are automatic relays, and "
            f"these 26 characters are not those of node {owner.short()}"
        )
    if match.group(2) != str(host)[2:10]:
        return (
            f"relay name {name!r} is reserved: an automatic relay's last 8 characters name "
            f"its relay node, and this node is {host.short()}"
        )
    return None


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
        self._clock = clock
        self._challenges = Challenges(clock)
        self._forwarders: dict[str, Forwarder] = {}
        self._rates: dict[NodeId, TokenBucket] = {}  # per owner: bytes forwarded
        for name, owner in (claims or {}).items():
            self._install(Forwarder(name, owner))
        # Admission is decided here, on the proven owner, not by the router on the hop.
        router.register(REGISTRY_SERVICE, self._handle, admit=False)

    def forwarders(self) -> list[Forwarder]:
        return [self._forwarders[n] for n in sorted(self._forwarders)]

    def describe(self) -> list[dict[str, Any]]:
        return [f.describe(self.router) for f in self.forwarders()]

    def addresses_of(self, owner: NodeId) -> list[tuple[str, int]]:
        """Where ``owner``'s registrations came from (the remote of the connection each of its
        online relays here goes over): addresses observed for it, which a punch with it may
        trust (``Puncher.on_signal(..., observed=...)``)."""
        found: dict[tuple[str, int], None] = {}
        for forwarder in self._forwarders.values():
            first = forwarder.route[0] if forwarder.route else None
            if forwarder.owner == owner and isinstance(first, ServiceAddress):
                address = self._address_of(first.name)
                if address is not None:
                    found[address] = None
        return list(found)

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
        rate = self._rates.get(forwarder.owner)
        if rate is None:
            rate = self._rates[forwarder.owner] = TokenBucket(
                RELAY_BYTES_PER_SECOND, RELAY_BURST_BYTES
            )
        if not message.is_error and not rate.allow(self._clock(), len(message.payload)):
            log.debug("relay.over_rate", name=forwarder.name, owner=forwarder.owner)
            await self.router.fail(
                message,
                ErrorCode.BUSY,
                f"relay {forwarder.name!r} is over its rate on node {self.router.node_id.short()} "
                f"({RELAY_BYTES_PER_SECOND // 1024} KiB/s for node {forwarder.owner.short()}): "
                "message dropped, send slower",
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

        route = route_key(message)
        if request.op == RelayOp.CHALLENGE:
            await answer(
                RelayResponse(
                    request.token,
                    True,
                    challenge=self._challenges.issue(route),
                    host=self.router.node_id.raw,
                )
            )
            return
        owner = self._verify(request, route)
        if isinstance(owner, Unproven):
            log.warning("relay.unproven_registration", name=request.name, reason=owner.reason)
            await refuse(owner.code, owner.reason)
            return
        refusal = self._admit(owner)
        if refusal is not None:
            log.warning("relay.refused", name=request.name, owner=owner, reason=refusal)
            await refuse(RelayErrorCode.REFUSED, refusal)
            return
        reserved = automatic_name_refusal(request.name, owner, self.router.node_id)
        if reserved is not None:
            log.warning("relay.reserved_name", name=request.name, by=owner)
            await refuse(RelayErrorCode.CONFLICT, reserved)
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
                if not any(f.owner == owner for f in self._forwarders.values()):
                    self._rates.pop(owner, None)
                await self._on_release(request.name)
                log.info("relay.deleted", name=request.name, owner=owner)
            await answer(RelayResponse(request.token, True, address=""))
            return
        if existing is None:
            held = sum(1 for f in self._forwarders.values() if f.owner == owner)
            if held >= MAX_RELAYS_PER_OWNER:
                await refuse(
                    RelayErrorCode.LIMIT,
                    f"node {owner.short()} already holds {held} relays here "
                    f"(limit {MAX_RELAYS_PER_OWNER})",
                )
                return
            if len(self._forwarders) >= MAX_RELAYS:
                log.warning("relay.full", name=request.name, owner=owner)
                await refuse(
                    RelayErrorCode.LIMIT,
                    f"node {self.router.node_id.short()} hosts {len(self._forwarders)} relays, "
                    f"its limit ({MAX_RELAYS}): try another relay node",
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

    def _verify(self, request: RelayRequest, route: bytes) -> NodeId | Unproven:
        """The proven owner of a signed request that came by ``route`` (:func:`route_key`),
        or why it is not proven."""
        # The MAC first (cheap, and rejects what this node never issued, or issued for another
        # route), then the signature, and only then is the challenge spent: a forgery cannot
        # burn an honest one.
        problem = self._challenges.check(request.challenge, consume=False, route=route)
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
        problem = self._challenges.check(request.challenge, consume=True, route=route)
        return owner if problem is None else Unproven(problem.code, problem.value)
