"""The registering side: keeps this node's relays registered on other nodes.

Each relay has a supervisor task: register, then wait for the connection that carries the
registration to close, then register again with exponential backoff (0.5 s doubling to 30 s,
jittered by the client's injected ``rng``, so a dead relay node costs nothing:
:class:`meshkey.retry.RetrySchedule`). A
registration refused for a reason that will not fix itself (name taken, not allowed) stops
it, with the reason in its status.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import enum
import random
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from meshkey.errors import MeshkeyError
from meshkey.identity.keys import Identity
from meshkey.log import EventLogger
from meshkey.relay.registry import REGISTRY_SERVICE
from meshkey.retry import RetrySchedule
from meshkey.routing.address import Route, ServiceAddress, TransportAddress
from meshkey.routing.errors import RemoteError, RoutingError
from meshkey.routing.message import Message
from meshkey.routing.router import Router
from meshkey.wire.errors import WireError
from meshkey.wire.message import ErrorCode
from meshkey.wire.relay import (
    TOKEN_SIZE,
    RelayErrorCode,
    RelayOp,
    RelayRequest,
    RelayResponse,
    check_relay_name,
    decode_relay_response,
    encode_relay_request,
    registration_payload,
)

log = EventLogger("relay.client")

Resolve = Callable[[str], Route]
Watch = Callable[[TransportAddress], Awaitable[str]]

RETRY_FIRST = 0.5
RETRY_MAX = 30.0
#: Refusals that will not fix themselves: the supervisor stops (FAILED) instead of retrying.
#: A relay node at its limit (LIMIT) may have room later, and a challenge issued for a route
#: that changed on the way (STALE) is asked for again: both are retried, with backoff.
_FINAL_REFUSALS = frozenset({RelayErrorCode.CONFLICT, RelayErrorCode.REFUSED})


class RelayStatus(enum.StrEnum):
    REGISTERING = "registering"  # the first registration is on its way
    ACTIVE = "active"  # the relay node holds the registration (over a live connection)
    RETRYING = "retrying"  # the connection to the relay node is gone: registering again
    FAILED = "failed"  # refused for good (name taken, not allowed): not retried


@dataclass
class Relay:
    name: str
    at: str
    status: RelayStatus = RelayStatus.REGISTERING
    address: str | None = None
    error: str | None = None
    registered_at: str | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    pending: dict[bytes, asyncio.Future[Message]] = field(default_factory=dict, repr=False)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "at": self.at,
            "status": self.status,
            "address": self.address,
            "error": self.error,
            "registered_at": self.registered_at,
        }


class RelayClient:
    def __init__(
        self,
        identity: Identity,
        router: Router,
        resolve: Resolve,
        watch: Watch,
        *,
        timeout: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        self._identity = identity
        self._rng = rng or random.Random()  # the retry jitter (a test passes a seeded one)
        self.router = router
        self._resolve = resolve
        self._watch = watch
        self._timeout = timeout
        self._relays: dict[str, Relay] = {}

    def get(self, name: str) -> Relay | None:
        return self._relays.get(name)

    def relays(self) -> list[Relay]:
        return [self._relays[n] for n in sorted(self._relays)]

    async def create(self, name: str, at: str, *, wait: bool = True) -> Relay:
        """Registers relay ``name`` on the node at route ``at`` and keeps it registered.

        With ``wait`` the first attempt must succeed (RemoteError otherwise, and nothing is
        kept); without it (restoring relays at start-up) the supervisor just starts.
        """
        check_relay_name(name)
        if name in self._relays:
            raise ValueError(f"this node already has a relay named {name!r}")
        relay = Relay(name, at)
        self._relays[name] = relay
        self.router.register(self._endpoint(name), self._endpoint_handler(relay), inline=True)
        first = asyncio.get_running_loop().create_future() if wait else None
        relay.task = asyncio.get_running_loop().create_task(
            self._supervise(relay, first), name=f"relay:{name}"
        )
        if first is not None:
            try:
                await first
            except MeshkeyError:
                await self._remove(relay)
                raise
        return relay

    async def delete(self, name: str) -> None:
        relay = self._relays.get(name)
        if relay is None:
            raise KeyError(name)
        if relay.status is RelayStatus.ACTIVE:
            with contextlib.suppress(RemoteError, RoutingError, ValueError, LookupError):
                await self._request(relay, RelayOp.DELETE, self._route(relay))
        await self._remove(relay)

    async def close(self) -> None:
        for relay in list(self._relays.values()):
            await self._remove(relay)

    async def _remove(self, relay: Relay) -> None:
        self._relays.pop(relay.name, None)
        self.router.unregister(self._endpoint(relay.name))
        if relay.task is not None and relay.task is not asyncio.current_task():
            relay.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay.task

    @staticmethod
    def _endpoint(name: str) -> str:
        return f"_relay.{name}"

    def _endpoint_handler(self, relay: Relay) -> Callable[[Message], Awaitable[None]]:
        async def endpoint(message: Message) -> None:
            if len(message.onward) > 1:  # traffic through the relay: on to this node's workers
                await self.router.route(message.step())
                return
            # Otherwise an answer to a registration (or an error on its way).
            token = b""
            if not message.is_error:
                try:
                    token = decode_relay_response(message.payload).token
                except WireError:
                    return
            futures = (
                list(relay.pending.values())
                if message.is_error
                else [relay.pending[token]]
                if token in relay.pending
                else []
            )
            for future in futures:
                if not future.done():
                    future.set_result(message)

        return endpoint

    def _route(self, relay: Relay) -> Route:
        route = self._resolve(relay.at)
        if not route or not isinstance(route[0], TransportAddress):
            raise RemoteError(
                ErrorCode.UNSUPPORTED, f"--at {relay.at}: must start with a node or an address"
            )
        return route

    async def _request(self, relay: Relay, op: RelayOp, route: Route) -> str:
        """Creates or deletes ``relay`` on the node at ``route``: asks that node for a
        challenge, then sends the operation signed by this node's identity (the relay node
        accepts the owner only from a valid signature, never from whoever forwarded it)."""
        issued = await self._exchange(
            relay, route, RelayRequest(RelayOp.CHALLENGE, relay.name, b"")
        )
        owner = self._identity.node_id.raw
        payload = registration_payload(issued.host, owner, op, relay.name, issued.challenge)
        request = RelayRequest(
            op,
            relay.name,
            b"",
            owner=owner,
            challenge=issued.challenge,
            signature=self._identity.sign(payload),
        )
        return (await self._exchange(relay, route, request)).address

    async def _exchange(self, relay: Relay, route: Route, request: RelayRequest) -> RelayResponse:
        """Sends ``request`` (with a fresh token) and returns the relay node's success answer;
        RemoteError for anything else."""
        token = secrets.token_bytes(TOKEN_SIZE)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        relay.pending[token] = future
        try:
            await self.router.route(
                Message(
                    (*route, ServiceAddress(REGISTRY_SERVICE)),
                    (ServiceAddress(self._endpoint(relay.name)),),
                    encode_relay_request(dataclasses.replace(request, token=token)),
                )
            )
            try:
                reply = await asyncio.wait_for(future, self._timeout)
            except TimeoutError:
                raise RemoteError(
                    ErrorCode.TIMEOUT, f"no answer from the relay node within {self._timeout:g}s"
                ) from None
        finally:
            relay.pending.pop(token, None)
        if reply.is_error:
            code, text = reply.error()
            raise RemoteError(code, text)
        response = decode_relay_response(reply.payload)
        if not response.ok:
            final = response.error_code in _FINAL_REFUSALS  # else retried (STALE, unknown)
            raise RemoteError(ErrorCode.REFUSED if final else ErrorCode.INTERNAL, response.error)
        return response

    async def _supervise(self, relay: Relay, first: asyncio.Future[None] | None) -> None:
        retry = RetrySchedule(RETRY_FIRST, RETRY_MAX, rng=self._rng)
        while True:
            try:
                route = self._route(relay)
                relay.address = await self._request(relay, RelayOp.CREATE, route)
            except MeshkeyError as exc:
                text = exc.text if isinstance(exc, RoutingError) else str(exc)
                relay.error = text
                if first is not None and not first.done():
                    first.set_exception(exc)  # the caller sees the failure as it is
                    return
                if isinstance(exc, RoutingError) and exc.code == ErrorCode.REFUSED:
                    relay.status = RelayStatus.FAILED
                    log.warning("relay.refused", name=relay.name, reason=text)
                    return
                relay.status = RelayStatus.RETRYING
                delay = retry.next_delay() or RETRY_MAX
                log.info("relay.retrying", name=relay.name, reason=text, delay=f"{delay:.1f}")
                await asyncio.sleep(delay)
                continue
            retry.reset()
            relay.status, relay.error = RelayStatus.ACTIVE, None
            relay.registered_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            log.info("relay.active", name=relay.name, at=relay.at, address=relay.address)
            if first is not None and not first.done():
                first.set_result(None)
            first_hop = route[0]
            assert isinstance(first_hop, TransportAddress)
            reason = await self._watch(first_hop)
            relay.status = RelayStatus.RETRYING
            relay.error = f"connection to the relay node lost: {reason}"
            log.info("relay.connection_lost", name=relay.name, reason=reason)
            await asyncio.sleep(retry.next_delay() or RETRY_FIRST)
