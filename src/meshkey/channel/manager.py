"""Secure channels on a node: listeners, initiators, and the workers that carry the traffic.

A channel is two workers on each end:

* the **encryptor**, ``/service/<32 hex>``: what users send to. ``THAT/service/X`` seals the
  message (with its remaining route) and sends it to the peer's decryptor;
* the **decryptor**, ``/service/_sc.<hex>``: receives the peer's sealed messages, opens them
  and routes the inner message on this node, with the encryptor first on its return route
  (so replies go back through the channel) and the peer's NodeId as ``channel_peer``.

The route to the peer is learned from the handshake and then follows the return route of
each *authentic* message, so a channel survives a path that changes underneath it as long as
the peer speaks first. Errors from nodes on the route cannot be authenticated: they are
recorded and reported, and make later sends fail fast, but they never close the channel.
"""

from __future__ import annotations

import asyncio
import datetime
import secrets
from dataclasses import dataclass, field
from typing import Any

from meshkey.channel.session import ChannelError, ReplayedMessage, SecureSession, State, StaticKey
from meshkey.identity.keys import Identity
from meshkey.identity.node_id import NodeId
from meshkey.log import EventLogger
from meshkey.routing.address import Route, ServiceAddress, format_route
from meshkey.routing.errors import RemoteError
from meshkey.routing.message import LocalInfo, Message
from meshkey.routing.router import Router
from meshkey.wire.channel import Refuse, encode_channel
from meshkey.wire.errors import WireError
from meshkey.wire.message import ErrorCode

log = EventLogger("channel")

DEFAULT_LISTENER = "api"
MAX_HALF_OPEN = 1024
MAX_CLOSED_KEPT = 256


@dataclass
class Listener:
    name: str
    authorized: frozenset[NodeId] | None

    def describe(self) -> dict[str, Any]:
        return {
            "address": f"/service/{self.name}",
            "authorized": sorted(str(n) for n in self.authorized) if self.authorized else None,
        }


@dataclass
class Channel:
    address: str  # the encryptor's worker name
    decryptor: str
    session: SecureSession
    initiator: bool
    listener: str | None = None
    route: Route = ()
    closed: bool = False
    error: str | None = None  # why it closed, or the last error a node on its route reported
    created_at: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    )
    opened: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def state(self) -> str:
        return self.session.state.value

    def describe(self) -> dict[str, Any]:
        return {
            "address": f"/service/{self.address}",
            "role": "initiator" if self.initiator else "responder",
            "peer": str(self.session.peer) if self.session.peer else None,
            "state": self.state,
            "route": format_route(self.route),
            "listener": f"/service/{self.listener}" if self.listener else None,
            "error": self.error,
            "created_at": self.created_at,
        }


class SecureChannels:
    def __init__(self, identity: Identity, router: Router) -> None:
        self.identity = identity
        self.router = router
        self.static = StaticKey(identity)
        self._listeners: dict[str, Listener] = {}
        self._channels: dict[str, Channel] = {}

    # -- listeners --------------------------------------------------------------------

    def add_listener(self, name: str, authorized: frozenset[NodeId] | None = None) -> Listener:
        if name in self._listeners:
            raise ValueError(f"a secure channel listener already exists at /service/{name}")
        listener = Listener(name, authorized)

        async def accept(message: Message) -> None:
            await self._accept(listener, message)

        self.router.register(name, accept)
        self._listeners[name] = listener
        return listener

    def remove_listener(self, name: str) -> None:
        if self._listeners.pop(name, None) is None:
            raise KeyError(name)
        self.router.unregister(name)

    def listeners(self) -> list[Listener]:
        return [self._listeners[n] for n in sorted(self._listeners)]

    # -- channels ---------------------------------------------------------------------

    def get(self, address: str) -> Channel | None:
        return self._channels.get(address.removeprefix("/service/"))

    def channels(self) -> list[Channel]:
        return list(self._channels.values())

    async def create(
        self, route: Route, *, authorized: frozenset[NodeId] | None = None, timeout: float = 10.0
    ) -> Channel:
        """Opens a channel to the listener at the end of ``route``; RemoteError if it fails."""
        channel = self._new_channel(SecureSession(True, self.static, authorized=authorized))
        channel.route = route
        await self.router.route(
            Message(route, (ServiceAddress(channel.decryptor),), channel.session.start())
        )
        try:
            await asyncio.wait_for(asyncio.shield(channel.opened), timeout)
        except TimeoutError:
            await self._close(channel, "handshake timed out", notify=False)
            raise RemoteError(
                ErrorCode.TIMEOUT,
                f"no secure channel handshake answer from {format_route(route)} within "
                f"{timeout:g}s",
            ) from None
        except RemoteError:
            self._forget(channel)
            raise
        log.info(
            "channel.opened", address=channel.address, peer=channel.session.peer, role="initiator"
        )
        return channel

    async def delete(self, address: str) -> None:
        channel = self.get(address)
        if channel is None:
            raise KeyError(address)
        await self._close(channel, "deleted by its owner", notify=True)
        self._forget(channel)

    async def close_all(self) -> None:
        for channel in list(self._channels.values()):
            await self._close(channel, "node shutting down", notify=True)

    # -- internals --------------------------------------------------------------------

    def _new_channel(self, session: SecureSession, listener: str | None = None) -> Channel:
        channel = Channel(
            address=secrets.token_hex(16),
            decryptor=f"_sc.{secrets.token_hex(8)}",
            session=session,
            initiator=session.initiator,
            listener=listener,
        )

        async def encrypt(message: Message) -> None:
            await self._encrypt(channel, message)

        async def decrypt(message: Message) -> None:
            await self._decrypt(channel, message)

        self.router.register(channel.address, encrypt, per_peer=True)
        self.router.register(channel.decryptor, decrypt, per_peer=True)
        self._channels[channel.address] = channel
        self._trim_closed()
        return channel

    def _trim_closed(self) -> None:
        closed = [c for c in self._channels.values() if c.session.state is State.CLOSED]
        for channel in closed[: max(0, len(closed) - MAX_CLOSED_KEPT)]:
            self._forget(channel)

    def _forget(self, channel: Channel) -> None:
        self._channels.pop(channel.address, None)
        self.router.unregister(channel.address)
        self.router.unregister(channel.decryptor)

    async def _accept(self, listener: Listener, message: Message) -> None:
        if message.is_error:
            return
        half_open = sum(1 for c in self._channels.values() if c.session.state is State.HANDSHAKING)
        if half_open >= MAX_HALF_OPEN:
            log.warning("channel.too_many_handshakes", listener=listener.name)
            return
        session = SecureSession(False, self.static, authorized=listener.authorized)
        try:
            received = session.receive(message.payload)
        except ChannelError as exc:
            log.warning("channel.bad_hello", listener=listener.name, reason=exc.reason)
            await self.router.fail(
                message,
                ErrorCode.MALFORMED,
                f"/service/{listener.name} is a secure channel listener: {exc.reason}",
            )
            return
        channel = self._new_channel(session, listener.name)
        channel.route = message.return_route
        assert received.reply is not None
        await self._send(channel, received.reply)
        # A handshake that is never finished must not hold its workers forever.
        asyncio.get_running_loop().call_later(30.0, self._expire, channel)

    def _expire(self, channel: Channel) -> None:
        if channel.session.state is State.HANDSHAKING and channel.address in self._channels:
            log.info("channel.handshake_expired", address=channel.address)
            self._forget(channel)

    async def _send(self, channel: Channel, payload: bytes) -> None:
        await self.router.route(
            Message(channel.route, (ServiceAddress(channel.decryptor),), payload)
        )

    async def _encrypt(self, channel: Channel, message: Message) -> None:
        if channel.session.state is not State.OPEN:
            reason = channel.error or channel.state
            await self.router.fail(
                message, ErrorCode.UNREACHABLE, f"secure channel {channel.address} is {reason}"
            )
            return
        lost = self._route_lost(channel)
        if lost is not None:
            await self.router.fail(
                message,
                ErrorCode.UNREACHABLE,
                f"secure channel {channel.address} lost its route ({lost}); create a new one",
            )
            return
        inner = Message(message.onward[1:], message.return_route, message.payload, message.kind)
        try:
            sealed = channel.session.seal(inner.to_wire())
        except (WireError, ValueError) as exc:
            await self.router.fail(message, ErrorCode.MALFORMED, str(exc))
            return
        await self._send(channel, sealed)

    def _route_lost(self, channel: Channel) -> str | None:
        """Why the channel's route is known to be broken, or None.

        Either its first hop is a connection of this node that has closed, or a node on the
        route reported an error and the peer has not spoken since.
        """
        first = channel.route[0] if channel.route else None
        if (
            isinstance(first, ServiceAddress)
            and first.name.startswith("_")
            and not self.router.has_worker(first.name)
        ):
            return "its first connection has closed"
        if channel.error and channel.error.startswith("route error"):
            return channel.error
        return None

    async def _decrypt(self, channel: Channel, message: Message) -> None:
        if message.is_error:
            # A node on the route could not deliver our message: unauthenticated, so it is
            # reported but does not close the channel.
            code, text = message.error()
            channel.error = f"route error: {text}"
            log.warning("channel.route_error", address=channel.address, reason=text)
            if channel.session.state is State.HANDSHAKING:
                self._fail_handshake(channel, RemoteError(code, text))
            return
        try:
            received = channel.session.receive(message.payload)
        except ReplayedMessage as exc:
            log.debug("channel.replay_dropped", address=channel.address, reason=str(exc))
            return
        except ChannelError as exc:
            log.warning("channel.failed", address=channel.address, reason=exc.reason)
            if exc.refuse:
                await self.router.route(
                    Message(message.return_route, (), encode_channel(Refuse(exc.reason)))
                )
            await self._close(channel, exc.reason, notify=False)
            self._fail_handshake(channel, RemoteError(ErrorCode.REFUSED, exc.reason))
            return
        channel.route = message.return_route  # authentic: follow the path it came by
        if channel.error and channel.error.startswith("route error"):
            channel.error = None
        if received.reply is not None:
            await self._send(channel, received.reply)
        if received.opened:
            if not channel.initiator:
                log.info(
                    "channel.opened",
                    address=channel.address,
                    peer=channel.session.peer,
                    role="responder",
                )
            if not channel.opened.done():
                channel.opened.set_result(None)
        if received.closed is not None:
            await self._close(channel, f"closed by the peer: {received.closed}", notify=False)
        if received.plaintext is not None:
            await self._deliver(channel, received.plaintext)

    @staticmethod
    def _fail_handshake(channel: Channel, error: RemoteError) -> None:
        if channel.opened.done():
            return
        if channel.initiator:  # someone awaits it in create()
            channel.opened.set_exception(error)
        else:
            channel.opened.cancel()

    async def _deliver(self, channel: Channel, plaintext: bytes) -> None:
        try:
            inner = Message.from_wire(plaintext)
        except WireError as exc:
            log.warning("channel.bad_inner_message", address=channel.address, reason=str(exc))
            return
        local = LocalInfo(channel_peer=channel.session.peer, channel_address=channel.address)
        await self.router.route(
            inner.with_return(ServiceAddress(channel.address)).with_local(local)
        )

    async def _close(self, channel: Channel, reason: str, *, notify: bool) -> None:
        if channel.closed:
            return
        channel.closed = True
        goodbye = channel.session.close(reason)
        channel.error = reason
        log.info("channel.closed", address=channel.address, reason=reason)
        self.router.unregister(channel.decryptor)
        if notify and goodbye is not None and channel.route:
            await self.router.route(Message(channel.route, (), goodbye))
