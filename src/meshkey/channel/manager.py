"""Secure channels on a node: listeners, initiators, and the workers that carry the traffic.

(Over 600 lines on purpose: this is the asyncio glue of every channel, and what it decides is
already in sans-IO cores beside it: :mod:`~meshkey.channel.session` and
:mod:`~meshkey.channel.keys` (the protocol), :mod:`~meshkey.channel.liveness`,
:mod:`~meshkey.channel.order`, :mod:`~meshkey.channel.admission` and
:mod:`~meshkey.channel.record` (one channel's routes and what it keeps to resend).)

A channel is two workers on each end:

* the **encryptor**, ``/service/<32 hex>``: what users send to. ``THAT/service/X`` seals the
  message (with its remaining route) and sends it to the peer's decryptor;
* the **decryptor**, ``/service/_sc.<hex>``: receives the peer's sealed messages, opens them
  and routes the inner message on this node, with the encryptor first on its return route
  (so replies go back through the channel) and the peer's NodeId as ``channel_peer``.

Routes: the initiator keeps the route it was created with (it starts with something this
node can dial again, or a relay) and swaps only its last address, the listener, for the
peer's decryptor; the responder follows the return route of each *authentic* message, so it
always answers the way the initiator last came. Errors from nodes on the route cannot be
authenticated: they make the channel UNREACHABLE until the peer is heard again, and never
close it. While it is unreachable or reconnecting, what users send waits, up to
:data:`HOLD_FOR_PATH` and :data:`MAX_HELD_BYTES`, for the route to work again (a relay that
died and was replaced, a direct path that fell back): then it goes, with the last
:data:`~meshkey.channel.record.RESEND_WINDOW` of sealed sends resent (the peer drops what it
had), and only if the wait runs out do the senders hear why.

One encryption layer on a direct hop (DESIGN decision 19): when the route a message takes is
one hop to the channel's peer itself (the path manager's direct hop, or a transport address
pinned to the peer's NodeId), DATA goes PLAIN; on any other route, sealed. A PLAIN payload is
taken only when it came over a hop whose authenticated NodeId is the channel's peer
(:meth:`PathHooks.is_direct_link`). What is resent after a path switch goes plain again only
on such a hop, and sealed under its own nonce on any other.

Handshakes (:mod:`~meshkey.channel.session`): Noise XX, or Noise IK when the caller of
:meth:`SecureChannels.create` knows the listener's node's static key (``responder_key``, from
its signed peer record: open after one round trip). A listener that cannot use an IK_HELLO
(the key is stale, or the hello a replay: this node keeps one
:class:`~meshkey.channel.freshness.ReplayGuard`) answers USE_XX, and the initiator's session
starts again as XX over the same route, inside the caller's timeout. A path manager that also
implements :class:`~meshkey.channel.session.HandshakeHooks` has the handshakes carry its early
data (a punch's candidates), guarded so that its failures never fail a handshake.

Liveness (:mod:`meshkey.channel.liveness`): sealed PING/PONG keep the route and its NAT
mappings alive, tell a dead or restarted peer within seconds of a send, and let the
initiator re-handshake transparently (same address) when the far node lost the session.

Limits, so that no peer can make this node hold much: half-open handshakes are bounded per
source (the authenticated hop they came over), per listener and in all
(:mod:`meshkey.channel.admission`), live only :data:`HANDSHAKE_TIMEOUT` and hold no workers of
their own but an inline decryptor; an identity holds at most :data:`MAX_CHANNELS_PER_PEER`
channels; a responder whose initiator stopped its keepalives closes; closed channels are listed
for :data:`CLOSED_KEPT_FOR`, then forgotten. A refused handshake is answered, so the initiator
hears why.

This module is the glue, and it is one machine: a channel's life (:class:`ChannelState`:
handshaking, open, unreachable or reconnecting, closed) fed by three inputs, a user's message
to the encryptor, the peer's to the decryptor, and the channel's timers, plus the node's
bookkeeping (listeners, limits, the listing of closed channels). What decides lives beside it,
sans-IO: the session (:mod:`~meshkey.channel.session`), liveness and half-open expiry
(:mod:`~meshkey.channel.liveness`), delivery order (:mod:`~meshkey.channel.order`), the
half-open limits (:mod:`~meshkey.channel.admission`), and one channel's record with its route
choices (:mod:`~meshkey.channel.record`).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from functools import partial
from typing import Any

from meshkey.channel.admission import HalfOpenLimits
from meshkey.channel.freshness import ReplayGuard, Timestamps
from meshkey.channel.keys import ChannelError, ReplayedMessage
from meshkey.channel.liveness import (
    HANDSHAKE_TIMEOUT,
    BecameReachable,
    BecameUnreachable,
    ChannelLiveness,
    Expired,
    HandshakeExpired,
    LivenessConfig,
    Rehandshake,
    SendPing,
)
from meshkey.channel.record import (
    RESEND_WINDOW,
    Channel,
    ChannelState,
    Listener,
    PathHooks,
    Sent,
    utc_now,
)
from meshkey.channel.session import HandshakeHooks, SecureSession, StaticKey, UseXXInstead
from meshkey.channel.session import State as SessionState
from meshkey.identity.keys import Identity
from meshkey.identity.node_id import NodeId
from meshkey.log import EventLogger
from meshkey.routing.address import (
    Address,
    PeerAddress,
    Route,
    ServiceAddress,
    TransportAddress,
    format_route,
)
from meshkey.routing.errors import RemoteError
from meshkey.routing.message import LocalInfo, Message, error_message
from meshkey.routing.router import Router, is_loopback_host
from meshkey.timing import DeadlineTimer
from meshkey.wire.channel import (
    MAX_EARLY_DATA,
    ChannelKind,
    Refuse,
    UseXX,
    encode_channel,
    peek_kind,
)
from meshkey.wire.errors import WireError
from meshkey.wire.message import ErrorCode

__all__ = [
    "CLOSED_KEPT_FOR",
    "DEFAULT_LISTENER",
    "MAX_CHANNELS_PER_PEER",
    "Channel",
    "ChannelState",
    "HandshakeHooks",
    "Listener",
    "PathHooks",
    "SecureChannels",
]

log = EventLogger("channel")

DEFAULT_LISTENER = "api"
MAX_CHANNELS_PER_PEER = 256
#: How long messages wait for an unreachable channel's route to work again before their
#: senders hear why (a relay replaced, a path fallen back: seconds).
HOLD_FOR_PATH = 5.0
MAX_HELD_BYTES = 1024 * 1024  # per channel: beyond it, senders hear at once
CLOSED_KEPT_FOR = 600.0
MAX_CLOSED_KEPT = 256


class SecureChannels:
    def __init__(
        self,
        identity: Identity,
        router: Router,
        *,
        liveness: LivenessConfig | None = None,
        static: StaticKey | None = None,
    ) -> None:
        self.identity = identity
        self.router = router
        if static is not None and static.identity.node_id != identity.node_id:
            raise ValueError("the static key given is attested by another identity")
        #: This node's X25519 static key: what its signed peer record names, for IK dials.
        self.static = static if static is not None else StaticKey(identity)
        self.liveness_config = liveness or LivenessConfig()
        self._timestamps = Timestamps()  # IK_HELLOs we send
        self._replay_guard = ReplayGuard()  # IK_HELLOs we receive
        self._loop = asyncio.get_running_loop()
        self._listeners: dict[str, Listener] = {}
        self._channels: dict[str, Channel] = {}
        self._half_open = HalfOpenLimits()
        self.paths: PathHooks | None = None  # set by the node when it manages paths

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

    def is_listener(self, name: str) -> bool:
        return name in self._listeners

    def listeners(self) -> list[Listener]:
        return [self._listeners[n] for n in sorted(self._listeners)]

    # -- channels ---------------------------------------------------------------------

    def get(self, address: str) -> Channel | None:
        return self._channels.get(address.removeprefix("/service/"))

    def describe(self, channel: Channel) -> dict[str, Any]:
        """The channel as ``secure-channel show`` prints it, with the path it uses now."""
        described = channel.describe()
        info = self.paths.path_info(channel.peer) if self.paths and channel.peer else None
        if info is not None and channel.no_direct:
            info = {
                **info,
                "now": f"{info.get('relay', 'the route it was opened over')} "
                "(this channel: --no-direct)",
            }
        described["path"] = info
        described["route"] = format_route(self._current_route(channel))
        return described

    def path_switched(self, peer: NodeId) -> None:
        """The path to ``peer`` changed: what was sent in the last few seconds goes again on
        the new one (the old may have died with it in flight; the peer drops duplicates)."""
        now = self._loop.time()
        for channel in self._channels.values():
            if channel.peer == peer and channel.state is ChannelState.OPEN:
                resend = [sent for sent in channel.recent if now - sent.at <= RESEND_WINDOW]
                if resend:
                    self._loop.create_task(self._resend(channel, resend))

    async def _resend(self, channel: Channel, resend: list[Sent]) -> None:
        """Sends ``resend`` again on the current route; a PLAIN one is sealed (under its own
        nonce) unless the route is a direct hop to the peer, so a relay never sees it."""
        for sent in resend:
            route = self._current_route(channel)
            payload: bytes | None = sent.payload
            if sent.plain is not None:
                nonce, data = sent.plain
                if self._direct_hop(channel, route):
                    payload = channel.session.plain_at(nonce, data)
                else:
                    payload = channel.session.reseal(nonce, data)
            if payload is not None:  # None: its key is gone, and the peer is past it
                await self._send(channel, payload, route)

    def channels(self) -> list[Channel]:
        self._expire_closed()
        return list(self._channels.values())

    def find_open(
        self, listener_route: Route, *, peers: frozenset[NodeId] | None = None
    ) -> Channel | None:
        """The newest open initiator channel created with ``listener_route`` (whose peer is
        one of ``peers``, when given): what a ``/secure/`` route reuses."""
        for channel in reversed(self._channels.values()):
            if (
                channel.initiator
                and channel.listener_route == listener_route
                and channel.state is ChannelState.OPEN
                and (peers is None or channel.peer in peers)
            ):
                return channel
        return None

    async def create(
        self,
        route: Route,
        *,
        authorized: frozenset[NodeId] | None = None,
        timeout: float = 10.0,
        no_direct: bool = False,
        responder_key: bytes | None = None,
    ) -> Channel:
        """Opens a channel to the listener at the end of ``route``; RemoteError if it fails.
        With ``no_direct`` its traffic stays on the route it was opened over.

        ``responder_key``: the listener's node's X25519 static key, when known beforehand (its
        signed peer record): the handshake is Noise IK, and the channel is open after one round
        trip. If the listener does not hold that key (the record was stale, the node has a new
        one) it answers USE_XX, and the handshake starts again as XX over the same route, within
        the same ``timeout`` (:attr:`Channel.handshake` says so). A listener that holds the key
        but proves an identity not in ``authorized`` is refused, as with XX.

        A route whose listener sits right after a ``/peer/NODEID`` hop names its peer: the
        channel must reach that NodeId (``authorized`` defaults to it), and its key comes
        from the peer's record (the path manager looks it up), so such a dial is IK."""
        peer = _peer_of(route)
        if peer is not None:
            authorized = authorized if authorized is not None else frozenset({peer})
            if responder_key is None and self.paths is not None:
                responder_key = await self.paths.peer_key(peer)
        session = SecureSession(
            True,
            self.static,
            authorized=authorized,
            responder_key=responder_key,
            # A channel kept off direct paths asks for no punch in its handshake either.
            hooks=None if no_direct else self._handshake_hooks(),
        )
        channel = self._new_channel(session, initiator=True)
        channel.no_direct = no_direct
        channel.listener_route = channel.route = route
        self._register_workers(channel)
        hello = session.start(timestamp=self._timestamps.next(time.time_ns()))
        await self._send(channel, hello, route)
        channel.handshake_sent_at = self._loop.time()  # after a dial the send may have waited on
        try:
            await asyncio.wait_for(asyncio.shield(channel.opened), timeout)
        except TimeoutError:
            await self._close(channel, "handshake timed out", notify=False)
            self._forget(channel)
            raise RemoteError(
                ErrorCode.TIMEOUT,
                f"no secure channel handshake answer from {format_route(route)} within "
                f"{timeout:g}s",
            ) from None
        except RemoteError:
            self._forget(channel)
            raise
        log.info("channel.opened", address=channel.address, peer=channel.peer, role="initiator")
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
            channel.timer.cancel()

    # -- internals: bookkeeping ---------------------------------------------------------

    def _new_channel(
        self, session: SecureSession, *, initiator: bool, listener: str | None = None
    ) -> Channel:
        now = self._loop.time()
        channel = Channel(
            address=secrets.token_hex(16),
            decryptor=f"_sc.{secrets.token_hex(8)}",
            session=session,
            initiator=initiator,
            listener=listener,
            liveness=ChannelLiveness(
                initiator,
                now,
                self.liveness_config,
                handshake_by=None if initiator else now + HANDSHAKE_TIMEOUT,
            ),
        )
        channel.timer = DeadlineTimer(partial(self._on_timer, channel), self._loop)
        channel.order_timer = DeadlineTimer(partial(self._order_due, channel), self._loop)
        self._channels[channel.address] = channel
        self._expire_closed()
        return channel

    def _register_workers(self, channel: Channel, *, handshake_only: bool = False) -> None:
        """A half-open responder gets only an inline decryptor (cheap: no task, no queue);
        an open channel gets its encryptor and a mailbox decryptor, both per peer."""

        async def encrypt(message: Message) -> None:
            await self._encrypt(channel, message)

        async def decrypt(message: Message) -> None:
            await self._decrypt(channel, message)

        if handshake_only:
            self.router.register(channel.decryptor, decrypt, inline=True)
            return
        self.router.unregister(channel.decryptor)
        self.router.register(channel.address, encrypt, per_peer=True)
        self.router.register(channel.decryptor, decrypt, per_peer=True)

    def _expire_closed(self) -> None:
        now = self._loop.time()
        closed = [c for c in self._channels.values() if c.closed_at is not None]
        stale = [c for c in closed if now - (c.closed_at or now) > CLOSED_KEPT_FOR]
        stale += closed[: max(0, len(closed) - MAX_CLOSED_KEPT)]
        for channel in stale:
            self._forget(channel)

    def _forget(self, channel: Channel) -> None:
        channel.timer.cancel()
        self._release_half_open(channel)
        self._channels.pop(channel.address, None)
        self.router.unregister(channel.address)
        self.router.unregister(channel.decryptor)

    def _release_half_open(self, channel: Channel) -> None:
        slot, channel.half_open = channel.half_open, None  # released once
        if slot is not None:
            self._half_open.release(slot)

    # -- internals: timers and liveness -------------------------------------------------

    def _rearm(self, channel: Channel) -> None:
        if channel.closed_reason is not None:
            channel.timer.cancel()
            return
        deadlines = [d for d in (channel.liveness.next_deadline(), channel.hold_until) if d]
        channel.timer.follow(min(deadlines, default=None))

    def _on_timer(self, channel: Channel, now: float) -> None:
        if channel.closed_reason is not None:
            return
        if channel.hold_until is not None and now >= channel.hold_until:
            channel.hold_until = None
            channel.task = self._loop.create_task(
                self._give_up_holding(channel), name=f"channel:{channel.address}:held"
            )
        channel.liveness.on_timer(now)
        channel.task = self._loop.create_task(
            self._after_liveness(channel), name=f"channel:{channel.address}"
        )

    async def _after_liveness(self, channel: Channel) -> None:
        """Carries out what the liveness core asked for, then re-arms the timer."""
        liveness = channel.liveness
        for command in liveness.commands():
            if isinstance(command, SendPing) and channel.session.state is SessionState.OPEN:
                await self._send(channel, channel.session.ping(), self._current_route(channel))
            elif isinstance(command, Rehandshake):
                # Its own task: the answers it waits for come through this channel's
                # decryptor, which may be the very worker running this.
                channel.task = self._loop.create_task(
                    self._rehandshake(channel, command.reason),
                    name=f"channel:{channel.address}:reconnect",
                )
        for event in liveness.events():
            if isinstance(event, BecameUnreachable):
                log.warning("channel.unreachable", address=channel.address, reason=event.reason)
                if channel.hold_until is None:
                    channel.hold_until = self._loop.time() + HOLD_FOR_PATH
                if channel.unanswered_since is None:
                    channel.unanswered_since = liveness.last_heard
            elif isinstance(event, BecameReachable):
                log.info("channel.reachable", address=channel.address, peer=channel.peer)
                await self._route_works_again(channel)
            elif isinstance(event, Expired):
                await self._close(channel, event.reason, notify=False)
            elif isinstance(event, HandshakeExpired):
                log.info("channel.handshake_expired", address=channel.address)
                self._forget(channel)
        self._rearm(channel)

    async def _route_works_again(self, channel: Channel) -> None:
        """The peer is heard again: what was sent into the dead route goes again, then what
        waited."""
        channel.hold_until = None
        since, channel.unanswered_since = channel.unanswered_since, None
        if since is None:
            since = self._loop.time() - RESEND_WINDOW
        resend = [sent for sent in channel.recent if sent.at >= since]
        if resend:
            await self._resend(channel, resend)
        while channel.held and channel.state is ChannelState.OPEN:
            message = channel.held.popleft()
            channel.held_bytes -= len(message.payload)
            await self._encrypt(channel, message)

    async def _give_up_holding(self, channel: Channel) -> None:
        """The route did not come back in time: senders hear why."""
        if channel.state is ChannelState.OPEN:
            await self._route_works_again(channel)
            return
        reason = channel.error or channel.state.value
        await self._answer_in_flight(channel, reason)
        await self._fail_held(
            channel, f"secure channel {channel.address} is {channel.state.value}: {reason}"
        )

    async def _fail_held(self, channel: Channel, text: str) -> None:
        while channel.held:
            message = channel.held.popleft()
            await self.router.fail(message, ErrorCode.UNREACHABLE, text)
        channel.held_bytes = 0

    async def _answer_in_flight(self, channel: Channel, reason: str) -> None:
        """Whoever sent a message the peer never acknowledged hears so now, not at its own
        timeout."""
        while channel.in_flight:
            text = f"secure channel {channel.address}: {reason}"
            await self.router.route(
                error_message(channel.in_flight.popleft(), ErrorCode.UNREACHABLE, text)
            )

    async def _rehandshake(self, channel: Channel, reason: str) -> None:
        """A new session over the original route, pinned to the same peer identity."""
        if channel.peer is None or not channel.listener_route:
            return
        log.info("channel.reconnecting", address=channel.address, reason=reason)
        channel.reconnecting = True
        for plaintext in channel.order.reset():  # the old session's last held messages
            await self._deliver(channel, plaintext)
        channel.forget_recent()
        channel.session = SecureSession(
            True,
            self.static,
            authorized=frozenset({channel.peer}),
            hooks=None if channel.no_direct else self._handshake_hooks(),
        )
        channel.route = channel.listener_route
        channel.opened = self._loop.create_future()
        await self._send(channel, channel.session.start(), channel.listener_route)
        channel.handshake_sent_at = self._loop.time()
        try:
            await asyncio.wait_for(asyncio.shield(channel.opened), HANDSHAKE_TIMEOUT)
        except (TimeoutError, RemoteError) as exc:
            channel.reconnecting = False
            text = exc.text if isinstance(exc, RemoteError) else "no handshake answer in time"
            channel.liveness.rehandshake_done(self._loop.time(), False, text)
            log.info("channel.reconnect_failed", address=channel.address, reason=text)
        else:
            channel.reconnecting = False
            channel.reconnects += 1
            channel.liveness.rehandshake_done(self._loop.time(), True)
            log.info("channel.reconnected", address=channel.address, peer=channel.peer)
            await self._route_works_again(channel)
        await self._after_liveness(channel)

    # -- internals: the handshake and the traffic ---------------------------------------

    async def _accept(self, listener: Listener, message: Message) -> None:
        if message.is_error:
            return
        source = str(message.local.hop_peer) if message.local.hop_peer else "local"
        refusal = self._half_open.refusal(listener.name, source)
        if refusal is not None:
            log.warning("channel.handshake_refused", listener=listener.name, reason=refusal)
            await self.router.fail(message, ErrorCode.BUSY, refusal)
            return
        session = SecureSession(
            False,
            self.static,
            authorized=listener.authorized,
            hooks=self._handshake_hooks(),
            replay_guard=self._replay_guard,
        )
        try:
            received = session.receive(message.payload)
        except ReplayedMessage:
            return
        except UseXXInstead as exc:  # an IK_HELLO this node cannot use: the initiator retries
            log.info("channel.ik_refused", listener=listener.name, reason=exc.reason)
            await self._answer(message, UseXX(exc.reason))
            return
        except ChannelError as exc:
            if exc.refuse:  # IK: the initiator proved an identity this listener does not want
                log.warning("channel.refused", listener=listener.name, reason=exc.reason)
                await self._answer(message, Refuse(exc.reason))
                return
            log.warning("channel.bad_hello", listener=listener.name, reason=exc.reason)
            await self.router.fail(
                message,
                ErrorCode.MALFORMED,
                f"/service/{listener.name} is a secure channel listener: {exc.reason}",
            )
            return
        channel = self._new_channel(session, initiator=False, listener=listener.name)
        channel.half_open = self._half_open.hold(listener.name, source)
        channel.route = message.return_route
        self._register_workers(channel, handshake_only=True)
        assert received.reply is not None
        await self._send(channel, received.reply)
        channel.handshake_sent_at = self._loop.time()
        self._rearm(channel)

    async def _answer(self, message: Message, answer: Refuse | UseXX) -> None:
        """Tells a handshake's sender why it goes no further (unauthenticated, like the
        router's errors: it only makes the failure readable, and the fallback fast)."""
        await self.router.route(Message(message.return_route, (), encode_channel(answer)))

    def _handshake_hooks(self) -> HandshakeHooks | None:
        """The path manager's early data hooks, if it has them, guarded so that a failing
        or oversized hook costs a log line, never the handshake."""
        paths = self.paths
        return _GuardedHooks(paths) if isinstance(paths, HandshakeHooks) else None

    def _current_route(self, channel: Channel) -> Route:
        """Where sealed traffic goes now (:meth:`Channel.current_route`), asking the path
        manager for a direct hop only when the channel may use one."""
        direct = None
        peer = channel.peer
        may_go_direct = channel.session.state is SessionState.OPEN and channel.route
        if may_go_direct and self.paths is not None and peer is not None and not channel.no_direct:
            direct = self.paths.direct_route(peer)
        return channel.current_route(direct, self.router.has_worker)

    def _direct_hop(self, channel: Channel, route: Route) -> bool:
        """Whether ``route`` is one hop to the channel's peer itself (then the peer's
        decryptor): a hop that is mutually authenticated between the channel's two NodeIds
        and encrypted, so that DATA need not be sealed again on it (DESIGN decision 19), once
        the peer was heard open (it takes PLAIN only then). A transport address pinned to the
        peer's NodeId is such a hop: the transport opens it only to that NodeId. A node
        without a path manager cannot tell such hops (:meth:`_from_peer_hop`) and so takes no
        PLAIN: it sends none either (every node has one; the channels' unit tests do not)."""
        peer = channel.peer
        if peer is None or self.paths is None or len(route) != 2:
            return False  # without a path manager, as at the peer's end, nothing goes plain
        if not channel.session.peer_open:
            return False
        first = route[0]
        if isinstance(first, TransportAddress):  # a hop dialled pinned to the peer's NodeId
            return first.node_id == peer
        return self._from_peer_hop(channel, first)

    async def _send_sealed(
        self,
        channel: Channel,
        sealed: bytes,
        plain: tuple[int, bytes] | None = None,
        route: Route | None = None,
    ) -> None:
        # A plain one is kept as its data alone (it may go sealed), not twice.
        kept = Sent(self._loop.time(), b"", plain) if plain else Sent(self._loop.time(), sealed)
        channel.remember(kept)
        await self._send(channel, sealed, route or self._current_route(channel))

    async def _send(self, channel: Channel, payload: bytes, route: Route | None = None) -> None:
        await self.router.route(
            Message(
                route if route is not None else channel.route,
                (ServiceAddress(channel.decryptor),),
                payload,
            )
        )

    async def _encrypt(self, channel: Channel, message: Message) -> None:
        if not _starts_here(message):
            # Whoever learned the channel's address must not send through it as its owner
            # (the peer would take them for this node): like Ockam's LocalOriginOnly.
            await self.router.fail(
                message,
                ErrorCode.REFUSED,
                f"secure channel {channel.address} carries only messages that start on its node",
            )
            return
        state = channel.state
        waiting = state in (ChannelState.UNREACHABLE, ChannelState.RECONNECTING)
        if waiting and channel.held_bytes + len(message.payload) <= MAX_HELD_BYTES:
            channel.held.append(message)
            channel.held_bytes += len(message.payload)
            if channel.hold_until is None:
                channel.hold_until = self._loop.time() + HOLD_FOR_PATH
                self._rearm(channel)
            return
        if state is not ChannelState.OPEN:
            error = channel.error
            why = f": {error}" if error and error != state.value else ""
            text = f"secure channel {channel.address} is {state.value}{why}"
            await self.router.fail(message, ErrorCode.UNREACHABLE, text)
            return
        current = self._current_route(channel)
        first = current[0] if current else None
        if isinstance(first, ServiceAddress) and not self.router.has_worker(first.name):
            await self.router.fail(
                message,
                ErrorCode.UNREACHABLE,
                f"secure channel {channel.address}: the connection its peer last used has "
                "closed; it reconnects when the peer sends again",
            )
            return
        inner = Message(message.onward[1:], message.return_route, message.payload, message.kind)
        plain: tuple[int, bytes] | None = None
        try:
            wire = inner.to_wire()
            if self._direct_hop(channel, current):
                nonce, sealed = channel.session.plain(wire)
                plain = (nonce, wire)
                channel.plain_sent += 1
            else:
                sealed = channel.session.seal(wire)
        except (WireError, ValueError) as exc:
            await self.router.fail(message, ErrorCode.MALFORMED, str(exc))
            return
        if message.return_route:
            channel.in_flight.append(message.return_route)
        await self._send_sealed(channel, sealed, plain, current)
        channel.liveness.sent(self._loop.time())
        await self._after_liveness(channel)

    async def _decrypt(self, channel: Channel, message: Message) -> None:
        now = self._loop.time()
        if message.is_error:
            await self._route_error(channel, message, now)
            return
        reconnecting = channel.reconnecting and channel.session.state is SessionState.HANDSHAKING
        if reconnecting and peek_kind(message.payload) not in _NEW_SESSION_KINDS:
            return  # late traffic of the old session: its keys are gone
        first = message.return_route[0] if message.return_route else None
        plain = peek_kind(message.payload) is ChannelKind.PLAIN
        # Whether it came over a hop to the peer itself: the one place PLAIN is taken from.
        hop_to_peer = plain and self._from_peer_hop(channel, first)
        try:
            received = channel.session.receive(message.payload, direct=hop_to_peer)
        except ReplayedMessage as exc:
            log.debug("channel.replay_dropped", address=channel.address, reason=str(exc))
            return
        except ChannelError as exc:
            log.warning("channel.failed", address=channel.address, reason=exc.reason)
            if exc.refuse:
                await self._answer(message, Refuse(exc.reason))
            channel.fail_handshake(RemoteError(ErrorCode.REFUSED, exc.reason))
            if not channel.reconnecting:
                await self._close(channel, exc.reason, notify=False)
            return
        if received.restarted is not None:  # USE_XX (unauthenticated): again, as XX
            log.info("channel.ik_fallback", address=channel.address, reason=received.restarted)
            assert received.reply is not None
            channel.route = channel.listener_route
            await self._send(channel, received.reply, channel.listener_route)
            channel.handshake_sent_at = self._loop.time()
            return
        # Authentic from here on.
        if plain:
            channel.plain_received += 1
        came_direct = not channel.initiator and (
            hop_to_peer or (not plain and self._from_peer_hop(channel, first))
        )
        channel.heard_over(message.return_route, came_direct=came_direct)
        if not plain and self.paths is not None and channel.peer is not None:
            # (PLAIN is only ever taken over a hop to the peer: nothing to learn from it.)
            worker = first.name if isinstance(first, ServiceAddress) else None
            self.paths.heard_from(channel.peer, worker)
        channel.liveness.heard(now, pong=received.pong)
        if received.opened:
            channel.liveness.handshake_done()
        if channel.handshake_sent_at is not None:  # the first answer to our handshake message
            channel.handshake_rtt = max(0.0, now - channel.handshake_sent_at)
            channel.handshake_sent_at = None
        if received.reply is not None:
            await self._send(channel, received.reply, self._current_route(channel))
        if received.opened:
            await self._opened(channel)
        if received.closed is not None:
            await self._close(channel, f"closed by the peer: {received.closed}", notify=False)
        if received.nonce is not None:
            for plaintext in channel.order.accept(received.nonce, received.plaintext, now):
                await self._deliver(channel, plaintext)
            channel.order_timer.follow(channel.order.next_deadline())
        await self._after_liveness(channel)

    def _from_peer_hop(self, channel: Channel, first: Address | None) -> bool:
        """Whether a message whose return route starts with ``first`` came over a hop to the
        channel's peer itself (its authenticated NodeId), not through a relay."""
        return (
            isinstance(first, ServiceAddress)
            and self.paths is not None
            and channel.peer is not None
            and self.paths.is_direct_link(first.name, channel.peer)
        )

    def _order_due(self, channel: Channel, now: float) -> None:
        """A message waited for one sent before it (a path switch) until the hold ran out:
        what is held goes now, in order."""
        ready = channel.order.on_timer(now)
        if ready:
            self._loop.create_task(self._deliver_all(channel, ready))
        channel.order_timer.follow(channel.order.next_deadline())

    async def _deliver_all(self, channel: Channel, plaintexts: list[bytes | memoryview]) -> None:
        for plaintext in plaintexts:
            await self._deliver(channel, plaintext)

    async def _opened(self, channel: Channel) -> None:
        peer = channel.session.peer
        assert peer is not None
        if channel.peer is None:
            channel.peer = peer
            channel.opened_at = utc_now()
        if not channel.initiator:
            self._release_half_open(channel)
            held = sum(
                1
                for other in self._channels.values()
                if other.peer == peer and other.closed_reason is None and other is not channel
            )
            if held >= MAX_CHANNELS_PER_PEER:
                reason = f"{peer.short()} already has {held} secure channels here"
                log.warning("channel.too_many", peer=peer, held=held)
                goodbye = channel.session.close(reason)
                if goodbye is not None:
                    await self._send(channel, goodbye)
                await self._close(channel, reason, notify=False)
                return
            self._register_workers(channel)
            log.info("channel.opened", address=channel.address, peer=peer, role="responder")
        if self.paths is not None:
            self.paths.channel_opened(peer, channel.address, channel.no_direct)
        if not channel.opened.done():
            channel.opened.set_result(None)

    async def _route_error(self, channel: Channel, message: Message, now: float) -> None:
        """A node on the route could not deliver our message (unauthenticated: reported,
        and it makes sends fail fast, but it never closes the channel)."""
        code, text = message.error()
        log.warning("channel.route_error", address=channel.address, reason=text)
        if channel.route_failed(code, text, now):
            await self._after_liveness(channel)

    async def _deliver(self, channel: Channel, plaintext: bytes | memoryview) -> None:
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
        if channel.closed_reason is not None:
            return
        channel.closed_reason = reason
        channel.closed_at = self._loop.time()
        goodbye = channel.session.close(reason)
        log.info("channel.closed", address=channel.address, reason=reason)
        channel.timer.cancel()
        self._release_half_open(channel)
        self.router.unregister(channel.decryptor)
        channel.fail_handshake(RemoteError(ErrorCode.UNREACHABLE, reason))
        await self._answer_in_flight(channel, f"closed: {reason}")
        await self._fail_held(channel, f"secure channel {channel.address} closed: {reason}")
        channel.order_timer.cancel()
        if self.paths is not None and channel.peer is not None:
            self.paths.channel_closed(channel.peer, channel.address)
        if notify and goodbye is not None and channel.route:
            await self.router.route(Message(self._current_route(channel), (), goodbye))


def _starts_here(message: Message) -> bool:
    """Whether ``message`` started on this node: not forwarded in over a hop or out of a
    channel (a program on this host, reaching it over loopback, counts as here)."""
    local = message.local
    if local.channel_peer is not None:
        return False
    if local.hop_peer is None:
        return True
    remote = local.hop_remote
    return remote is not None and is_loopback_host(remote[0])


def _peer_of(route: Route) -> NodeId | None:
    """The NodeId a route names for its listener's node: ``.../peer/NODEID/service/L``."""
    if len(route) >= 2 and isinstance(route[-2], PeerAddress):
        return route[-2].node_id
    return None


#: What a re-handshaking initiator reads: the new session's handshake, its CONFIRM, a REFUSE.
_NEW_SESSION_KINDS = frozenset(
    {
        ChannelKind.HELLO,
        ChannelKind.HELLO_REPLY,
        ChannelKind.FINISH,
        ChannelKind.IK_REPLY,
        ChannelKind.USE_XX,
        ChannelKind.CONFIRM,
        ChannelKind.REFUSE,
    }
)


class _GuardedHooks:
    """The path manager's :class:`HandshakeHooks` as a session calls them: an exception, or
    more early data than a handshake carries, is logged and sends (or delivers) nothing."""

    def __init__(self, hooks: HandshakeHooks) -> None:
        self._hooks = hooks

    def handshake_payload(self, peer: NodeId | None, initiator: bool) -> bytes:
        try:
            data = self._hooks.handshake_payload(peer, initiator)
        except Exception as exc:  # the layer above's bug must not fail the handshake
            log.warning("channel.early_data_failed", peer=peer, reason=repr(exc))
            return b""
        if len(data) > MAX_EARLY_DATA:
            log.warning("channel.early_data_too_long", peer=peer, size=len(data))
            return b""
        return data

    def on_handshake_payload(self, peer: NodeId, data: bytes, initiator: bool) -> None:
        try:
            self._hooks.on_handshake_payload(peer, data, initiator)
        except Exception as exc:
            log.warning("channel.early_data_failed", peer=peer, reason=repr(exc))
