"""The hosting side: the ``relay`` service creates ``forward_to_NAME`` workers.

A forwarder sends every message it gets to the node that registered it, over the route the
registration came by (which starts with the connection *that* node opened, so it works when
the node is behind a NAT). The forwarder does not touch the return route, so replies go back
the way the request came, not through the relay's owner again.

A name belongs to the NodeId that first registered it (persisted by the caller through
``on_claim``), so no one else can take it over, not even while its owner is offline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshkey.identity.node_id import NodeId
from meshkey.log import EventLogger
from meshkey.routing.address import Route, ServiceAddress, format_route
from meshkey.routing.message import Message
from meshkey.routing.router import Router
from meshkey.wire.errors import WireError
from meshkey.wire.message import ErrorCode
from meshkey.wire.relay import (
    RelayResponse,
    decode_relay_request,
    encode_relay_response,
)

log = EventLogger("relay.registry")

REGISTRY_SERVICE = "relay"
PREFIX = "forward_to_"


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


class RelayRegistry:
    def __init__(
        self,
        router: Router,
        *,
        claims: dict[str, NodeId] | None = None,
        on_claim: Callable[[str, NodeId], None] = lambda name, owner: None,
        on_release: Callable[[str], None] = lambda name: None,
    ) -> None:
        self.router = router
        self._on_claim = on_claim
        self._on_release = on_release
        self._forwarders: dict[str, Forwarder] = {}
        for name, owner in (claims or {}).items():
            self._install(Forwarder(name, owner))
        # hop_identity: a node creating a relay is identified by its authenticated hop.
        router.register(REGISTRY_SERVICE, self._handle, hop_identity=True)

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
        owner = message.local.channel_peer or message.local.hop_peer or self.router.node_id
        existing = self._forwarders.get(request.name)

        async def answer(response: RelayResponse) -> None:
            await self.router.reply(message, encode_relay_response(response))

        if existing is not None and existing.owner != owner:
            log.warning("relay.name_taken", name=request.name, by=owner, owner=existing.owner)
            await answer(
                RelayResponse(
                    request.token,
                    False,
                    code="conflict",
                    error=f"relay name {request.name!r} belongs to another node "
                    f"({existing.owner.short()})",
                )
            )
            return
        if request.op == "delete":
            if existing is not None:
                self._forwarders.pop(request.name)
                self.router.unregister(f"{PREFIX}{request.name}")
                self._on_release(request.name)
                log.info("relay.deleted", name=request.name, owner=owner)
            await answer(RelayResponse(request.token, True, address=""))
            return
        if existing is None:
            existing = Forwarder(request.name, owner)
            self._install(existing)
            self._on_claim(request.name, owner)
        existing.route = message.return_route
        log.info(
            "relay.registered", name=request.name, owner=owner, route=format_route(existing.route)
        )
        await answer(RelayResponse(request.token, True, address=f"/service/{PREFIX}{request.name}"))
