"""The asyncio glue of NAT classification, hole punching and path choice (DESIGN.md 10-12).

One :class:`PathService` per node drives three sans-IO cores with one timer: the
:class:`~meshkey.nat.classify.ClassificationRound` (and its
:class:`~meshkey.nat.classify.RecheckPolicy`), the :class:`~meshkey.nat.puncher.Puncher`
and the :class:`~meshkey.paths.manager.PathManager`. It maps their commands to operations —
sockets of the UDP transport (the main one, and a birthday punch's extra ones), hop dials,
messages through secure channels — and feeds them what happens: WHOAMI answers, punch
packets, hop authentications and closes, traffic and pongs on each path.

Secure channels ask it for the path to their peer (:meth:`direct_route`, through the
:class:`~meshkey.channel.manager.PathHooks` interface: channel/ cannot import this layer):
the relay route they were opened over until a direct hop to the peer is authenticated, that
hop from then on, the relay again within ~2 s when the hop stops answering. Punch signals
and the relay path's pings travel inside the channel, to the peer's ``/service/_paths``
(:mod:`meshkey.wire.paths`), and are accepted only from a channel's authenticated peer.

Observers for the classification: the addresses given (``--observer``, seeds), and the
remote addresses of this node's outbound QUIC hops (relay nodes); only distinct IPs count.
"""

from __future__ import annotations

import asyncio
import datetime
import random
import time
from dataclasses import dataclass, field
from typing import Any

from meshkey.channel.manager import SecureChannels
from meshkey.identity.node_id import NodeId
from meshkey.log import EventLogger
from meshkey.nat.classify import (
    Classification,
    ClassificationRound,
    RecheckPolicy,
    classify,
)
from meshkey.nat.punch import (
    CloseBirthdaySockets,
    DialHop,
    LocalInfo,
    OpenBirthdaySockets,
    PunchFailed,
    PunchSucceeded,
    SendDatagram,
    SendSignal,
)
from meshkey.nat.puncher import Puncher
from meshkey.nat.reflexive import ReflexiveAddressService
from meshkey.nat.strategy import MESHKEY, PunchConfig
from meshkey.paths.manager import (
    CancelPunch,
    ClosePath,
    CloseSocket,
    PathConfig,
    PathManager,
    PathSwitched,
    SendPing,
    StartPunch,
)
from meshkey.paths.path import PathKey, PathKind
from meshkey.routing.address import Route, ServiceAddress, TransportAddress, format_route
from meshkey.routing.message import Message
from meshkey.routing.router import Router
from meshkey.transport.events import HopAuthenticated, HopClosed
from meshkey.transport.link import HopLink
from meshkey.transport.tcp import TcpTransport
from meshkey.transport.udp import QuicTransport
from meshkey.wire.errors import WireError
from meshkey.wire.net import Endpoint, NatClass
from meshkey.wire.paths import (
    PathPing,
    PathPong,
    PunchSignal,
    decode_path_signal,
    encode_path_signal,
)
from meshkey.wire.punch import Capability
from meshkey.wire.udp import (
    ControlKind,
    WhoamiResponse,
)

log = EventLogger("paths")

PATHS_SERVICE = "_paths"
#: A punch's hop may be accepted this long after the punch started (an inbound hop from the
#: peer then is the punched path, not a stranger's).
PUNCH_HOP_WINDOW = 30.0


@dataclass
class _Monitor:
    """Reports one direct hop's traffic to the path manager."""

    service: PathService
    peer: NodeId
    key: PathKey

    def received(self, size: int) -> None:
        self.service.paths.on_received(self.peer, self.key, size, self.service.now())
        self.service.wake()

    def sent(self, size: int) -> None:
        self.service.paths.on_sent(self.peer, self.key, size, self.service.now())
        self.service.wake()

    def pong(self, token: int) -> None:
        self.service.paths.on_pong(self.peer, self.key, token, self.service.now())
        self.service.wake()


@dataclass
class _PeerState:
    channel: str | None = None  # a channel to it, for signals
    relay_key: PathKey | None = None
    punch_started: float | None = None
    switched_at_wall: str | None = None


@dataclass
class PathService:
    router: Router
    udp: QuicTransport
    tcp: TcpTransport
    channels: SecureChannels
    reflexive: ReflexiveAddressService
    observers: list[Endpoint] = field(default_factory=list)
    no_direct: bool = False
    config: PathConfig | None = None
    punch: PunchConfig = MESHKEY
    rng: random.Random = field(default_factory=random.SystemRandom)

    def __post_init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        node_id = self.router.node_id
        self.puncher = Puncher(node_id, config=self.punch, rng=self.rng)
        self.paths = PathManager(self.config, rng=self.rng, no_direct=self.no_direct)
        self.recheck = RecheckPolicy(rng=self.rng)
        self.classification: Classification | None = None
        self.classified_at: str | None = None
        self._round: ClassificationRound | None = None
        self._round_waiters: list[asyncio.Future[Classification]] = []
        self._peers: dict[NodeId, _PeerState] = {}
        self._deferred_punches: set[NodeId] = set()
        self._links: dict[tuple[NodeId, PathKey], HopLink] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._wake_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.router.register(PATHS_SERVICE, self._on_signal_message, inline=True, admit=False)
        self.channels.paths = self
        self.reflexive.on_unmatched = self._on_whoami_response
        for kind in (ControlKind.PUNCH_PROBE, ControlKind.PUNCH_ACK):
            self.udp.register_control(kind, self._on_punch_packet)
        self._clock_offset = time.time() - self._loop.time()

    def now(self) -> float:
        return self._loop.time()

    def _wall(self, at: float | None) -> str | None:
        if at is None:
            return None
        stamp = datetime.datetime.fromtimestamp(at + self._clock_offset, datetime.UTC)
        return stamp.isoformat(timespec="milliseconds")

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        for socket_id in list(self.udp.sockets):
            if socket_id:
                self.udp.close_socket(socket_id)

    # -- classification -----------------------------------------------------------------

    def known_observers(self) -> list[Endpoint]:
        """Configured observers, then the remotes of outbound QUIC hops, one per IP."""
        seen: dict[str, Endpoint] = {}
        candidates = list(self.observers) + [
            link.remote
            for link in self.udp.links
            if link.direction == "outbound" and link.core.is_open
        ]
        for address in candidates:
            seen.setdefault(address[0], address)
        return list(seen.values())

    def classify(self, observers: list[Endpoint] | None = None) -> asyncio.Future[Classification]:
        """Starts a classification round (now); the future resolves with its result."""
        future: asyncio.Future[Classification] = self._loop.create_future()
        self._round_waiters.append(future)
        if self._round is None or self._round.result is not None:
            self._start_round(observers)
        return future

    def _start_round(self, observers: list[Endpoint] | None = None) -> None:
        local = [self.udp.address.endpoint] if self.udp.address is not None else []
        tcp_works = self._tcp_works()
        round_ = ClassificationRound(
            observers if observers is not None else self.known_observers(),
            local,
            tcp_works=tcp_works,
            rng=self.rng,
        )
        self._round = round_
        round_.start(self.now())
        self.recheck.on_round_started(self.now())
        self.wake()

    def _on_whoami_response(self, response: WhoamiResponse, source: Endpoint) -> None:
        if self._round is not None:
            self._round.on_response(source, response, self.now())
            self.wake()

    def _tcp_works(self) -> bool | None:
        return any(link.core.is_open for link in self.tcp.links) or None

    def _classified(self, classification: Classification) -> None:
        if (
            classification.nat_class is NatClass.UNKNOWN
            and classification.observations
            and not any(o.reflexive for o in classification.observations)
            and self._tcp_works()
        ):
            # No UDP answer at all, and TCP hops came up while the round ran: UDP is blocked
            # (the round began before there was any evidence of TCP).
            classification = classify(
                classification.observations,
                [self.udp.address.endpoint] if self.udp.address is not None else [],
                tcp_works=True,
                at=classification.at,
            )
        self.classification = classification
        self.classified_at = self._wall(classification.at)
        self.recheck.on_classified(classification, self.now())
        log.info(
            "nat.classified",
            nat=classification.nat_class.value,
            reason=classification.reason,
            confidence=f"{classification.confidence:.2f}",
        )
        self._update_local()
        self._start_deferred_punches()
        for waiter in self._round_waiters:
            if not waiter.done():
                waiter.set_result(classification)
        self._round_waiters.clear()

    def _update_local(self) -> None:
        """What this node tells a peer in a punch: its socket's local address, and what the
        classification found (before one, the class is unknown: a plain punch is tried)."""
        found = self.classification
        nat_class = found.nat_class if found is not None else NatClass.UNKNOWN
        local = (self.udp.address.endpoint,) if self.udp.address is not None else ()
        tcp: tuple[Endpoint, ...] = ()
        if nat_class is NatClass.PUBLIC and self.tcp.address is not None:
            tcp = (self.tcp.address.endpoint,)
        self.puncher.update_local(
            LocalInfo(
                nat_class,
                local=local,
                reflexive=tuple(found.mappings[:1]) if found is not None else (),
                tcp=tcp,
                capabilities=frozenset(
                    {Capability.BIRTHDAY, Capability.LOW_TTL, Capability.TCP_DIAL}
                ),
            )
        )

    # -- the channel's side (channel.manager.PathHooks) ------------------------------------

    def channel_opened(self, peer: NodeId, address: str, no_direct: bool) -> None:
        channel = self.channels.get(address)
        if channel is None:
            return
        state = self._peers.setdefault(peer, _PeerState())
        state.channel = address
        now = self.now()
        self.paths.add_peer(
            peer,
            now,
            no_direct=True if no_direct or self.no_direct else None,
            initiates=channel.initiator,
        )
        first = channel.route[0] if channel.route else None
        if channel.initiator:
            hop = channel.listener_route[0] if channel.listener_route else None
            direct = isinstance(hop, TransportAddress) and hop.node_id == peer
            describe = format_route(channel.listener_route[:-1])
        else:
            direct = isinstance(first, ServiceAddress) and self.is_direct_link(first.name, peer)
            describe = "the way the peer came"
        if direct:
            return  # the channel itself is a direct hop: nothing to look for
        key = PathKey(PathKind.RELAY, describe)
        if state.relay_key is None:
            state.relay_key = key
            self.paths.add_path(peer, key, now, validated=True)
        self.wake()

    def direct_route(self, peer: NodeId) -> Route | None:
        key = self.paths.current_path(peer)
        if key is None or not key.kind.is_direct:
            return None
        link = self._links.get((peer, key))
        if link is None or link.closed:
            return None
        return (ServiceAddress(link.name),)

    def is_direct_link(self, worker: str, peer: NodeId) -> bool:
        for transport in (self.udp, self.tcp):
            for link in transport.links:
                if link.name == worker:
                    return link.core.peer == peer
        return False

    def resolve_peer(self, peer: NodeId) -> Route | None:
        """``/peer/NODEID``: a direct hop when there is one, else a channel's relay route."""
        direct = self.direct_route(peer)
        if direct is not None:
            return direct
        for transport in (self.udp, self.tcp):
            for link in transport.links:
                if link.core.peer == peer and link.core.is_open:
                    return (ServiceAddress(link.name),)
        return None

    def path_info(self, peer: NodeId) -> dict[str, Any] | None:
        report = self.paths.report(peer)
        if report is None:
            return None
        state = self._peers.get(peer, _PeerState())
        return {
            "now": report.description,
            "direct": bool(report.current and report.current.kind.is_direct),
            "rtt_ms": round(report.rtt * 1000, 2) if report.rtt is not None else None,
            "switched_at": self._wall(report.switched_at),
            "switch_reason": report.switch_reason.value if report.switch_reason else None,
            "previous": report.previous.describe() if report.previous else None,
            "relay": state.relay_key.describe() if state.relay_key else None,
            "upgrade": report.punch,
            "no_direct": report.no_direct,
            "paths": [
                {
                    "path": p.description,
                    "state": p.state.value,
                    "rtt_ms": round(p.rtt * 1000, 2) if p.rtt is not None else None,
                    "bytes_sent": p.bytes_sent,
                    "bytes_received": p.bytes_received,
                    "failure": p.failure or None,
                }
                for p in report.paths
            ],
        }

    # -- signals inside the channel --------------------------------------------------------

    async def _on_signal_message(self, message: Message) -> None:
        peer = message.local.channel_peer
        if peer is None or message.is_error:
            return  # only ever accepted from a secure channel's authenticated peer
        if message.local.channel_address:
            self._peers.setdefault(peer, _PeerState()).channel = message.local.channel_address
        try:
            signal = decode_path_signal(message.payload)
        except WireError as exc:
            log.warning("paths.bad_signal", peer=peer, reason=str(exc))
            return
        now = self.now()
        state = self._peers.get(peer, _PeerState())
        if isinstance(signal, PunchSignal):
            self.paths.add_peer(peer, now, initiates=False)
            self.puncher.on_signal(
                peer,
                signal.data,
                now,
                direct_allowed=self.paths.direct_allowed(peer),
                signalling_rtt=self.signalling_rtt(peer, message.local.channel_address),
            )
        elif isinstance(signal, PathPing):
            await self._signal(peer, PathPong(signal.token))
            if state.relay_key is not None:
                self.paths.on_received(peer, state.relay_key, len(message.payload), now)
        elif isinstance(signal, PathPong) and state.relay_key is not None:
            self.paths.on_pong(peer, state.relay_key, signal.token, now)
        self.wake()

    def signalling_rtt(self, peer: NodeId, channel_address: str | None) -> float | None:
        """The round trip of the relay path the punch signals take, for a timed start: the
        relay path's pings if it has been pinged, else the channel's handshake (which went
        the same way: a channel whose path is the relay was opened over it). None when the
        channel's own route is a direct hop (then there is nothing to punch for) or nothing
        was measured: the punch falls back to SYNC."""
        state = self._peers.get(peer)
        if state is None or state.relay_key is None:
            return None
        relay = next((p for p in self.paths.paths(peer) if p.key == state.relay_key), None)
        if relay is not None and relay.srtt is not None:
            return relay.srtt
        channel = self.channels.get(channel_address) if channel_address else None
        if channel is None or channel.peer != peer:
            return None
        return channel.handshake_rtt

    async def _signal(self, peer: NodeId, signal: PunchSignal | PathPing | PathPong) -> None:
        state = self._peers.get(peer)
        channel = self.channels.get(state.channel) if state and state.channel else None
        if channel is None or channel.state != "open":
            log.debug("paths.no_channel", peer=peer)
            return
        route = (ServiceAddress(channel.address), ServiceAddress(PATHS_SERVICE))
        await self.router.route(Message(route, (), encode_path_signal(signal)))

    # -- packets and hops ------------------------------------------------------------------

    def _on_punch_packet(self, data: bytes, source: Endpoint, socket_id: int) -> None:
        self.puncher.on_control_packet(socket_id, source, data, self.now())
        self.wake()

    def on_transport_event(self, event: object) -> None:
        """The node's event bus: hops to a peer we have a channel with are direct paths."""
        if isinstance(event, HopAuthenticated):
            self._hop_up(event)
        elif isinstance(event, HopClosed) and event.node_id is not None:
            now = self.now()
            for (peer, key), link in list(self._links.items()):
                if link.closed and peer == event.node_id:
                    del self._links[(peer, key)]
                    self.paths.remove_path(peer, key, event.reason, now)
            self.wake()

    def _hop_up(self, event: HopAuthenticated) -> None:
        peer = event.node_id
        if event.direction == "outbound":
            self._maybe_reclassify(event)
        state = self._peers.get(peer)
        if state is None or state.relay_key is None:
            return  # not a peer we reach through a relay: nothing to steer
        link = self._find_link(event)
        if link is None:
            return
        punched = self.puncher.session(peer) is not None or (
            state.punch_started is not None and self.now() - state.punch_started < PUNCH_HOP_WINDOW
        )
        kind = PathKind.PUNCHED if punched else PathKind.DIRECT
        transport = "udp" if event.transport == "udp" else "tcp"
        key = PathKey(kind, link.remote, self.udp.socket_of(link), transport)
        self._links[(peer, key)] = link
        link.monitor = _Monitor(self, peer, key)
        self.paths.add_path(peer, key, self.now(), validated=True)
        log.info("paths.direct_hop", peer=peer, path=key.describe())
        self.wake()

    def _maybe_reclassify(self, event: HopAuthenticated) -> None:
        """A new observer (a QUIC hop to a new IP), or the first TCP hop after a round that
        got no UDP answer (the evidence that tells UDP-blocked from offline): ask again."""
        found = self.classification
        if found is not None and found.nat_class is not NatClass.UNKNOWN:
            return
        new_ip = event.transport == "udp" and event.remote[0] not in {
            address[0] for address in self.observers
        }
        no_answers = found is not None and not any(o.reflexive for o in found.observations)
        if new_ip or (event.transport == "tcp" and no_answers):
            self.recheck.on_network_change(self.now())
            self.wake()

    def _find_link(self, event: HopAuthenticated) -> HopLink | None:
        transport = self.udp if event.transport == "udp" else self.tcp
        for link in transport.links:
            if (
                link.core.peer == event.node_id
                and link.remote == event.remote
                and link.direction == event.direction
                and not link.closed
            ):
                return link
        return None

    # -- the one timer, and the commands ------------------------------------------------------

    def wake(self) -> None:
        """Drains the cores soon (once per loop turn, however many inputs came)."""
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        self._wake_scheduled = False
        if not self.puncher.local.local and self.udp.address is not None:
            self._update_local()  # the socket listens now
        for _ in range(100):
            busy = False
            if self._round is not None:
                for whoami in self._round.commands():
                    busy = True
                    self.udp.send_control(whoami.packet, whoami.observer)
                for classified in self._round.events():
                    busy = True
                    self._classified(classified.classification)
            for command in self.puncher.commands():
                busy = True
                self._punch_command(command)
            now = self.now()
            for event in self.puncher.events():
                busy = True
                self._punch_event(event, now)
            for path_command in self.paths.commands():
                busy = True
                self._path_command(path_command)
            for path_event in self.paths.events():
                busy = True
                if isinstance(path_event, PathSwitched):
                    self._switched(path_event)
            if not busy:
                break
        self._arm()

    def _punch_event(self, event: object, now: float) -> None:
        if isinstance(event, PunchSucceeded):
            log.info("punch.succeeded", peer=event.peer, stats=str(event.stats))
            public = self.classification.public_address if self.classification else None
            if public is not None and event.seen_as and event.seen_as != public:
                self.recheck.on_contradiction(now)
        elif isinstance(event, PunchFailed):
            log.info(
                "punch.failed", peer=event.peer, reason=str(event.reason), stats=str(event.stats)
            )
        self.paths.on_punch_event(event, now)  # type: ignore[arg-type]

    def _switched(self, event: PathSwitched) -> None:
        state = self._peers.setdefault(event.peer, _PeerState())
        state.switched_at_wall = self._wall(event.at)
        log.info(
            "path.switched",
            peer=event.peer,
            to=event.new.describe() if event.new else "none",
            reason=event.reason.value,
        )
        self.channels.path_switched(event.peer)

    def _spawn(self, coroutine: Any) -> None:
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _punch_command(self, command: object) -> None:
        now = self.now()
        if isinstance(command, SendSignal):
            self._spawn(self._signal(command.peer, PunchSignal(command.data)))
        elif isinstance(command, SendDatagram):
            self.udp.send_control(
                command.data, command.destination, socket_id=command.socket, ttl=command.ttl
            )
        elif isinstance(command, OpenBirthdaySockets):
            for socket_id in command.sockets:
                try:
                    self.udp.open_socket(socket_id)
                except OSError:
                    self.puncher.on_socket_error(socket_id, now)
        elif isinstance(command, CloseBirthdaySockets):
            for socket_id in command.sockets:
                self.udp.close_socket(socket_id)
        elif isinstance(command, DialHop):
            self._dial(command)

    def _dial(self, command: DialHop) -> None:
        host, port = command.remote
        transport = "udp" if command.transport == "udp" else "tcp"
        address = TransportAddress.from_socket(transport, host, port, command.peer)
        try:
            if transport == "udp":
                link = self.udp.dial(address, command.socket)
            else:
                link = self.tcp.outbound(address)
        except (ValueError, OSError) as exc:
            self.paths.on_dial_failed(command.peer, str(exc), self.now())
            return
        log.info("punch.dial", peer=command.peer, address=str(address), socket=command.socket)
        self._spawn(self._watch_dial(command.peer, link))

    async def _watch_dial(self, peer: NodeId, link: HopLink) -> None:
        await link.settled.wait()
        if not link.core.is_open:
            self.paths.on_dial_failed(peer, "the hop over the punched address failed", self.now())
            self.wake()

    def _path_command(self, command: object) -> None:
        now = self.now()
        if isinstance(command, SendPing):
            if command.path.kind is PathKind.RELAY:
                self._spawn(self._signal(command.peer, PathPing(command.token)))
            else:
                link = self._links.get((command.peer, command.path))
                if link is not None:
                    link.ping(command.token)
        elif isinstance(command, StartPunch):
            if self._classifying():
                # The punch strategy depends on both sides' NAT classes: wait for ours (a
                # round is running), rather than punch as "unknown" and retry in 40 s.
                self._deferred_punches.add(command.peer)
                return
            self._start_punch(command.peer, now)
        elif isinstance(command, CancelPunch):
            self.puncher.cancel(command.peer, now)
        elif isinstance(command, CloseSocket):
            self.udp.close_socket(command.socket)
        elif isinstance(command, ClosePath):
            link = self._links.pop((command.peer, command.path), None)
            if link is not None and not link.closed:
                link.spawn(link.close(_normal(), "the path failed"), "close")
            if command.path.local_socket:
                self.udp.close_socket(command.path.local_socket)

    def _classifying(self) -> bool:
        found = self.classification
        running = self._round is not None and self._round.result is None
        due = self.recheck.next_deadline()
        soon = due is not None and due <= self.now() + 1.0 and bool(self.known_observers())
        return (found is None or found.nat_class is NatClass.UNKNOWN) and (running or soon)

    def _start_punch(self, peer: NodeId, now: float) -> None:
        state = self._peers.setdefault(peer, _PeerState())
        state.punch_started = now
        self.puncher.start(peer, now, direct_allowed=self.paths.direct_allowed(peer))

    def _start_deferred_punches(self) -> None:
        waiting, self._deferred_punches = self._deferred_punches, set()
        for peer in waiting:
            self._start_punch(peer, self.now())

    def _arm(self) -> None:
        deadlines = [
            d
            for d in (
                self._round.next_deadline() if self._round else None,
                self.recheck.next_deadline() if self.known_observers() else None,
                self.puncher.next_deadline(),
                self.paths.next_deadline(),
            )
            if d is not None
        ]
        deadline = min(deadlines, default=None)
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = None if deadline is None else self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        deadline, self._timer, self._timer_at = self._timer_at, None, None
        now = max(deadline or 0.0, self.now())  # uvloop wakes early
        if self._round is not None and self._round.result is None:
            self._round.on_timer(now)
        idle = self._round is None or self._round.result is not None
        if self.recheck.due(now) and idle and self.known_observers():
            self._start_round()
        self.puncher.on_timer(now)
        self.paths.on_timer(now)
        self._pump()


def _normal() -> Any:
    from meshkey.wire.hop import CloseCode

    return CloseCode.NORMAL
