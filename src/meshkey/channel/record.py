"""One secure channel as the manager keeps it, and what the rest of the node sees of it.

A :class:`Channel` holds the two sans-IO cores that decide (its :class:`SecureSession`, and its
:class:`ChannelLiveness`), its in-order buffer, its routes, and the glue's handles (workers,
timers, the open future); :attr:`Channel.state` is derived from the cores, never stored.
:meth:`Channel.current_route` is the one routing decision of the datapath, pure: where sealed
traffic goes now. :class:`PathHooks` is what the path manager (paths/, a higher layer) tells
channels, as an interface this layer defines; :class:`~meshkey.channel.session.HandshakeHooks`
(beside the session that calls it), what it may have their handshakes carry.
"""

from __future__ import annotations

import asyncio
import datetime
import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from meshkey.channel.admission import Slot
from meshkey.channel.liveness import ChannelLiveness, Health
from meshkey.channel.order import InOrder
from meshkey.channel.session import SecureSession
from meshkey.channel.session import State as SessionState
from meshkey.identity.node_id import NodeId
from meshkey.routing.address import Route, ServiceAddress, format_route
from meshkey.routing.errors import RemoteError
from meshkey.routing.message import Message
from meshkey.timing import DeadlineTimer
from meshkey.wire.message import ErrorCode, missing_service

#: Messages sent since the peer was last heard whose senders are told if it never answers.
MAX_IN_FLIGHT = 64
#: Sealed messages kept to resend on a new path when the one they went on may have died with
#: them in flight (the peer drops what it already has: the replay window), and for how long.
MAX_RECENT = 128
#: ...and at most this many bytes of them (128 full messages would be 128 MiB a channel).
MAX_RECENT_BYTES = 4 * 1024 * 1024
RESEND_WINDOW = 3.0


class PathHooks(Protocol):
    """What the node's path manager tells secure channels (channel/ cannot import paths/).
    When the object also has the two methods of
    :class:`~meshkey.channel.session.HandshakeHooks`, handshakes carry its
    early data (checked at run time, so a path manager without them still fits)."""

    def direct_route(self, peer: NodeId) -> Route | None:
        """A route prefix that reaches ``peer`` directly now (a hop to it), or None."""

    def is_direct_link(self, worker: str, peer: NodeId) -> bool:
        """Whether local worker ``worker`` is a hop to ``peer`` itself (not a relay)."""

    def heard_from(self, peer: NodeId, worker: str | None) -> None:
        """An authentic sealed message from ``peer`` came over local worker ``worker`` (its
        return route's first hop; None if none): if that is not the direct hop traffic to
        the peer takes now, the peer is not reaching us there (see PathEngine)."""

    def channel_opened(self, peer: NodeId, address: str, no_direct: bool) -> None:
        """A channel with ``peer`` is open (the relay path exists: look for a direct one)."""

    def path_info(self, peer: NodeId) -> dict[str, Any] | None:
        """What ``secure-channel show`` says about the path to ``peer``."""

    def channel_closed(self, peer: NodeId, address: str) -> None:
        """A channel with ``peer`` closed for good (its path state may go with the last)."""

    async def peer_key(self, peer: NodeId) -> bytes | None:
        """``peer``'s channel key from its signed record (looked up if need be), for a
        Noise IK dial to a ``/peer/NODEID`` route; None when it has none."""


@dataclass(frozen=True, slots=True)
class Sent:
    """A payload sent on the channel, kept to go again on a new path (:data:`RESEND_WINDOW`).
    A PLAIN one keeps only its nonce and data (``payload`` is empty): on a direct hop to the
    peer it goes plain again, on any other path sealed (under that nonce), never plain."""

    at: float  # loop time
    payload: bytes
    plain: tuple[int, bytes] | None = None

    @property
    def size(self) -> int:
        return len(self.payload) + (len(self.plain[1]) if self.plain else 0)


class ChannelState(enum.StrEnum):
    HANDSHAKING = "handshaking"
    OPEN = "open"
    UNREACHABLE = "unreachable"  # the peer does not answer or the route is broken
    RECONNECTING = "reconnecting"  # the initiator is making a new session
    CLOSED = "closed"


@dataclass
class Listener:
    name: str
    authorized: frozenset[NodeId] | None

    def describe(self) -> dict[str, Any]:
        return {
            "address": f"/service/{self.name}",
            "authorized": sorted(str(n) for n in self.authorized) if self.authorized else None,
        }


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


@dataclass
class Channel:
    address: str  # the encryptor's worker name
    decryptor: str
    session: SecureSession
    initiator: bool
    liveness: ChannelLiveness
    listener: str | None = None
    listener_route: Route = ()  # initiator: the route it was created with
    route: Route = ()  # where sealed messages go now
    #: Responder, while half-open: the (listener, source) slot it holds in the limits, the
    #: source being the authenticated hop its HELLO came over (or "local").
    half_open: Slot | None = None
    peer: NodeId | None = None  # fixed by the first handshake; re-handshakes must match
    closed_reason: str | None = None
    route_error: str | None = None  # the last error a node on the route reported
    reconnecting: bool = False
    reconnects: int = 0
    created_at: str = field(default_factory=utc_now)
    opened_at: str | None = None
    closed_at: float | None = None  # loop time, for expiry of the listing
    #: One round trip over the channel's route, from its last handshake, before any PING
    #: (initiator: HELLO to HELLO_REPLY, or IK_HELLO to IK_REPLY; responder: HELLO_REPLY to
    #: FINISH, or IK_REPLY to the initiator's first sealed message), timed from when
    #: the message was handed to the hop (a dial it waited for is not counted): the path
    #: service times a punch's start with it.
    handshake_rtt: float | None = None
    handshake_sent_at: float | None = None  # loop time of the message now awaiting its answer
    in_flight: deque[Route] = field(default_factory=lambda: deque(maxlen=MAX_IN_FLIGHT))
    relay_route: Route = ()  # responder: the latest return route that did not come direct
    no_direct: bool = False  # keep this channel's traffic off direct paths
    recent: deque[Sent] = field(default_factory=deque)  # see remember()
    recent_bytes: int = 0
    #: DATA messages sent and received as PLAIN (on a direct hop to the peer, not sealed
    #: again: DESIGN decision 19).
    plain_sent: int = 0
    plain_received: int = 0
    #: Messages sent while the channel is unreachable or reconnecting: they wait (a bounded
    #: time and amount) for the route to work again instead of failing at once (issue 18).
    held: deque[Message] = field(default_factory=deque)
    held_bytes: int = 0
    hold_until: float | None = None  # loop time: then held and in-flight senders hear why
    #: When the peer was last heard before it went unreachable: what was sealed since may
    #: have died on the way, and goes again once it is heard (the peer drops duplicates).
    unanswered_since: float | None = None
    order: InOrder[bytes | memoryview] = field(default_factory=InOrder)
    #: Follows ``order``'s deadline (a message held for its predecessors).
    order_timer: DeadlineTimer = field(init=False, repr=False)
    #: Follows ``liveness``'s deadline (and a half-open handshake's expiry).
    timer: DeadlineTimer = field(init=False, repr=False)
    task: asyncio.Task[None] | None = None  # the latest timer or reconnect work
    opened: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def state(self) -> ChannelState:
        if self.closed_reason is not None:
            return ChannelState.CLOSED
        if self.reconnecting:
            return ChannelState.RECONNECTING
        if self.session.state is SessionState.HANDSHAKING:
            if self.peer is None:
                return ChannelState.HANDSHAKING
            # A channel that was open and whose re-handshake failed: it waits, as unreachable,
            # for the liveness core's next attempt (not "handshaking", which refuses sends).
            return ChannelState.UNREACHABLE
        if self.liveness.health is Health.UNREACHABLE:
            return ChannelState.UNREACHABLE
        return ChannelState.OPEN

    @property
    def error(self) -> str | None:
        """Why it is closed, or why it is unreachable, or the last route error."""
        if self.closed_reason is not None:
            return self.closed_reason
        if self.liveness.health is Health.UNREACHABLE:
            return self.liveness.reason
        return self.route_error

    def remember(self, sent: Sent) -> None:
        """Keeps ``sent`` to resend after a path switch: the newest :data:`MAX_RECENT`, and no
        more than :data:`MAX_RECENT_BYTES` of them (the newest one always)."""
        self.recent.append(sent)
        self.recent_bytes += sent.size
        while len(self.recent) > 1 and (
            len(self.recent) > MAX_RECENT or self.recent_bytes > MAX_RECENT_BYTES
        ):
            self.recent_bytes -= self.recent.popleft().size

    def forget_recent(self) -> None:
        self.recent.clear()
        self.recent_bytes = 0

    def current_route(self, direct: Route | None, has_worker: Callable[[str], bool]) -> Route:
        """Where sealed traffic goes now: through ``direct`` (the path manager's hop to the
        peer, if any) when the session is open, else the channel's own route (for a responder
        whose last route came over a direct hop that closed: the last one that came through
        the relay). ``has_worker`` tells whether a local hop worker still exists."""
        if self.session.state is not SessionState.OPEN or not self.route:
            return self.route
        if direct is not None:
            return (*direct, self.route[-1])  # the peer's decryptor ends every route
        first = self.route[0]
        gone = isinstance(first, ServiceAddress) and not has_worker(first.name)
        if gone and not self.initiator and self.relay_route:
            return self.relay_route
        return self.route

    def heard_over(self, return_route: Route, *, came_direct: bool) -> None:
        """An authentic message came with ``return_route``, which proves the route good. The
        initiator keeps the route it was created with and learns the peer's decryptor from the
        session's first answer (HELLO_REPLY or IK_REPLY: it ends the return route; until then
        the route is the listener's, and each new session starts there again); the responder
        follows the way the initiator came, and remembers it as the way through the relay
        unless it ``came_direct`` (over a hop to the peer itself)."""
        if self.initiator:
            if self.route == self.listener_route and return_route:
                self.route = (*self.listener_route[:-1], return_route[-1])
        else:
            self.route = return_route
            if not came_direct:
                self.relay_route = return_route
        self.route_error = None
        self.in_flight.clear()

    @property
    def handshake(self) -> str:
        """Which handshake made the current session: "IK", "XX", or "XX (fell back from IK:
        why)"."""
        session = self.session
        if session.fell_back is not None:
            return f"XX (fell back from IK: {session.fell_back})"
        return session.pattern

    def fail_handshake(self, error: RemoteError) -> None:
        """The handshake cannot finish: whoever awaits it (``create()``, a re-handshake)
        hears ``error``; a responder's future is only cancelled (nobody awaits it)."""
        if self.opened.done():
            return
        if self.initiator:
            self.opened.set_exception(error)
        else:
            self.opened.cancel()

    def route_failed(self, code: ErrorCode, text: str, now: float) -> bool:
        """A node on the route could not deliver our message. Unauthenticated, so it is
        reported and makes sends fail fast, but never closes the channel: it fails a
        handshake in progress, else it goes to the liveness core (as the peer forgetting the
        channel when what is missing is the peer's decryptor). True when the liveness core
        was told (drain it)."""
        self.route_error = f"route error: {text}"
        if self.session.state is SessionState.HANDSHAKING:
            self.fail_handshake(RemoteError(code, text))
            return False
        peer_decryptor = self.route[-1] if self.route else None
        missing = missing_service(code, text)
        if isinstance(peer_decryptor, ServiceAddress) and missing == peer_decryptor.name:
            self.liveness.session_unknown(
                now, "the peer no longer knows this channel (it restarted or deleted it)"
            )
        else:
            self.liveness.route_error(now, text)
        return True

    def describe(self) -> dict[str, Any]:
        rtt = self.liveness.rtt
        return {
            "address": f"/service/{self.address}",
            "role": "initiator" if self.initiator else "responder",
            "peer": str(self.peer) if self.peer else None,
            "state": self.state.value,
            "route": format_route(self.route),
            "listener": f"/service/{self.listener}" if self.listener else None,
            "error": self.error,
            "rtt_ms": round(rtt * 1000, 2) if rtt is not None else None,
            "reconnects": self.reconnects,
            "created_at": self.created_at,
            "opened_at": self.opened_at,
            "no_direct": self.no_direct,
            "handshake": self.handshake,
        }
