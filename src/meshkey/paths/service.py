"""The asyncio glue of a node's paths: :class:`~meshkey.paths.engine.PathEngine` (the sans-IO
core that decides) wired to the node's sockets, hops and secure channels.

:class:`PathService` maps the engine's commands to operations — control datagrams on the
UDP transport's sockets (the main one and a birthday punch's extra ones), hop dials, hop
pings and closes, path signals through secure channels — and feeds it what happens: WHOAMI
answers, punch packets, hop authentications and closes, traffic and pongs on each hop, path
signals from peers. It decides nothing.

Secure channels ask it for the path to their peer (:meth:`direct_route`, through the
:class:`~meshkey.channel.manager.PathHooks` interface: channel/ cannot import this layer):
the relay route they were opened over until a direct hop to the peer is authenticated, that
hop from then on, the relay again within ~2 s when the hop stops answering. Punch signals
and the relay path's pings travel inside the channel, to the peer's ``/service/_paths``
(:mod:`meshkey.wire.paths`), and are accepted only from a channel's authenticated peer.
"""

from __future__ import annotations

import asyncio
import datetime
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from meshkey.channel.manager import ChannelState, SecureChannels
from meshkey.dht.service import DhtService
from meshkey.identity.node_id import NodeId
from meshkey.log import EventLogger
from meshkey.nat.classify import Classification, SendWhoami
from meshkey.nat.punch import (
    CloseBirthdaySockets,
    DialHop,
    OpenBirthdaySockets,
    PunchFailed,
    PunchSucceeded,
    SendDatagram,
)
from meshkey.nat.reflexive import ReflexiveAddressService
from meshkey.nat.strategy import MESHKEY, PunchConfig
from meshkey.paths.classifier import NatClassified, NetworkChanged
from meshkey.paths.engine import (
    CloseHop,
    DirectHopAdded,
    PathEngine,
    PingHop,
    SendPathSignal,
)
from meshkey.paths.manager import CloseSocket, PathConfig, PathSwitched
from meshkey.paths.path import PathKind
from meshkey.paths.resolution import PeerResolution
from meshkey.paths.resolver import PeerResolver
from meshkey.routing.address import (
    Route,
    ServiceAddress,
    TransportAddress,
    format_route,
)
from meshkey.routing.message import Message
from meshkey.routing.router import Router
from meshkey.timing import DeadlineTimer
from meshkey.transport.events import HopAuthenticated, HopClosed
from meshkey.transport.interfaces import (
    concrete_endpoints,
    interface_networks,
    is_loopback,
    reachable_endpoints,
)
from meshkey.transport.link import HopLink
from meshkey.transport.tcp import TcpTransport
from meshkey.transport.udp import QuicTransport
from meshkey.wire.errors import WireError
from meshkey.wire.hop import CloseCode
from meshkey.wire.net import Endpoint
from meshkey.wire.udp import ControlKind, WhoamiResponse

log = EventLogger("paths")

PATHS_SERVICE = "_paths"


@dataclass
class _Monitor:
    """Reports one hop's traffic and pongs to the engine."""

    service: PathService
    link: str

    def received(self, size: int) -> None:
        self.service.engine.on_hop_traffic(self.link, received=size, now=self.service.now())
        self.service.wake()

    def sent(self, size: int) -> None:
        self.service.engine.on_hop_traffic(self.link, sent=size, now=self.service.now())
        self.service.wake()

    def pong(self, token: int) -> None:
        self.service.engine.on_hop_pong(self.link, token, self.service.now())
        self.service.wake()


@dataclass
class PathService(PeerResolution):
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
    graph: DhtService | None = None  # set by the node once its graph exists

    def __post_init__(self) -> None:
        self.resolver = PeerResolver()
        self._loop = asyncio.get_running_loop()
        self.engine = PathEngine(
            self.router.node_id,
            observers=self.observers,
            no_direct=self.no_direct,
            config=self.config,
            punch=self.punch,
            rng=self.rng,
        )
        self.classified_at: str | None = None
        self._round_waiters: list[asyncio.Future[Classification]] = []
        self._links: dict[str, HopLink] = {}
        self._bound: tuple[Endpoint | None, Endpoint | None] = (None, None)
        self._told: tuple[tuple[Endpoint, ...], ...] = ((), (), ())
        self._timer = DeadlineTimer(self._fire, self._loop)
        self._wake_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        #: Called when a new classification differs from the last (the node republishes
        #: its record; its relays follow the new mapping).
        self.network_listeners: list[Callable[[], None]] = []
        self.router.register(PATHS_SERVICE, self._on_signal_message, inline=True, admit=False)
        self.channels.paths = self
        self.reflexive.on_unmatched = self._on_whoami_response
        for kind in (ControlKind.PUNCH_PROBE, ControlKind.PUNCH_ACK):
            self.udp.register_control(kind, self._on_punch_packet)
        self._clock_offset = time.time() - self._loop.time()

    # -- what others read ---------------------------------------------------------------

    @property
    def classification(self) -> Classification | None:
        return self.engine.classification

    def now(self) -> float:
        return self._loop.time()

    def _wall(self, at: float | None) -> str | None:
        if at is None:
            return None
        stamp = datetime.datetime.fromtimestamp(at + self._clock_offset, datetime.UTC)
        return stamp.isoformat(timespec="milliseconds")

    async def close(self) -> None:
        self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        for socket_id in list(self.udp.sockets):
            if socket_id:
                self.udp.close_socket(socket_id)

    # -- classification -----------------------------------------------------------------

    def known_observers(self) -> list[Endpoint]:
        """Configured observers, then the remotes of outbound QUIC hops, one per IP."""
        return self.engine.known_observers()

    def classify(self, observers: list[Endpoint] | None = None) -> asyncio.Future[Classification]:
        """Starts a classification round (now, unless one runs); the future resolves with
        its result."""
        future: asyncio.Future[Classification] = self._loop.create_future()
        self._round_waiters.append(future)
        self._listening()
        self.engine.classify(self.now(), observers)
        self.wake()
        return future

    def describe_nat(self, *, direct: bool) -> dict[str, Any]:
        """The NAT class of the node's UDP socket and what each observer saw (``node show``,
        ``node nat``)."""
        found = self.classification
        observers = [f"{host}:{port}" for host, port in self.known_observers()]
        if found is None:
            return {"class": "unknown", "reason": "not classified yet", "observers": observers}
        return {
            "class": found.nat_class.value,
            "reason": found.reason,
            "confidence": round(found.confidence, 2),
            "classified_at": self.classified_at,
            "observations": [
                {
                    "observer": f"{o.observer[0]}:{o.observer[1]}",
                    "saw": f"{o.reflexive[0]}:{o.reflexive[1]}" if o.reflexive else None,
                }
                for o in found.observations
            ],
            "public": "{}:{}".format(*found.public_address) if found.public_address else None,
            "observers": observers,
            "direct": direct,
            "alternate_port": self.reflexive.alternate_port or None,
        }

    def _on_whoami_response(self, response: WhoamiResponse, source: Endpoint) -> None:
        self.engine.on_whoami_response(source, response, self.now())
        self.wake()

    def _classified(self, classification: Classification) -> None:
        self.classified_at = self._wall(classification.at)
        log.info(
            "nat.classified",
            nat=classification.nat_class.value,
            reason=classification.reason,
            confidence=f"{classification.confidence:.2f}",
        )
        for waiter in self._round_waiters:
            if not waiter.done():
                waiter.set_result(classification)
        self._round_waiters.clear()

    def _listening(self, *, recheck: bool = False) -> None:
        """Tells the engine where the sockets listen, once they do (a wildcard socket as one
        address per interface); ``recheck`` looks at the host's addresses again (they change
        when a laptop moves, a DHCP lease renews, a router renumbers)."""
        bound = (
            self.udp.address.endpoint if self.udp.address is not None else None,
            self.tcp.address.endpoint if self.tcp.address is not None else None,
        )
        if bound == self._bound and not recheck:
            return
        self._bound = bound
        udp, tcp = bound
        if udp is not None and not is_loopback(udp[0]):
            # Others may use this node as their one rendezvous: answer on a second port too.
            self.reflexive.open_alternate()
        told = (
            tuple(concrete_endpoints(udp)) if udp else (),
            tuple(reachable_endpoints(tcp)) if tcp else (),
            tuple(reachable_endpoints(udp)) if udp else (),
        )
        if told == self._told:
            return
        self._told = told
        self.engine.set_listening(
            told[0],
            told[1],
            udp_candidates=told[2],
            networks=tuple(interface_networks()),
            now=self.now(),
        )

    # -- the channel's side (channel.manager.PathHooks) ------------------------------------

    def channel_opened(self, peer: NodeId, address: str, no_direct: bool) -> None:
        channel = self.channels.get(address)
        if channel is None:
            return
        relay: str | None
        if channel.initiator:
            hop = channel.listener_route[0] if channel.listener_route else None
            direct = isinstance(hop, TransportAddress) and hop.node_id == peer
            relay = None if direct else format_route(channel.listener_route[:-1])
        else:
            first = channel.route[0] if channel.route else None
            direct = isinstance(first, ServiceAddress) and self.is_direct_link(first.name, peer)
            relay = None if direct else "the way the peer came"
        self.engine.channel_opened(
            peer,
            address,
            self.now(),
            initiator=channel.initiator,
            relay=relay,
            no_direct=no_direct,
            handshake_rtt=channel.handshake_rtt,
        )
        self.wake()

    # -- early data in channel handshakes (channel.session.HandshakeHooks) ---------------------

    def handshake_payload(self, peer: NodeId | None, initiator: bool) -> bytes:
        self._listening()
        data = self.engine.handshake_payload(peer, initiator, self.now())
        self.wake()
        return data

    def on_handshake_payload(self, peer: NodeId, data: bytes, initiator: bool) -> None:
        try:
            self.engine.on_handshake_payload(peer, data, initiator, self.now())
        except WireError as exc:
            log.warning("paths.bad_early_data", peer=peer, reason=str(exc))
        self.wake()

    def channel_closed(self, peer: NodeId, address: str) -> None:
        self.engine.channel_closed(peer, address, self.now())
        self.wake()

    def heard_from(self, peer: NodeId, worker: str | None) -> None:
        """A channel message from ``peer`` arrived over the hop link ``worker`` (its return
        route's first hop; None if it came some other way): if that is not our current
        direct hop to it, the engine suspects the hop (see ``on_heard_elsewhere``)."""
        if self.engine.on_heard_elsewhere(peer, worker, self.now()):
            self.wake()

    def direct_route(self, peer: NodeId) -> Route | None:
        name = self.engine.hop_link(peer, self.now())
        link = self._links.get(name) if name is not None else None
        if link is None or link.closed:
            return None
        return (ServiceAddress(link.name),)

    def is_direct_link(self, worker: str, peer: NodeId) -> bool:
        for transport in (self.udp, self.tcp):
            for link in transport.links:
                if link.name == worker:
                    return link.core.peer == peer
        return False

    def path_info(self, peer: NodeId) -> dict[str, Any] | None:
        report = self.engine.paths.report(peer)
        if report is None:
            return None
        return {
            "now": report.description,
            "direct": bool(report.current and report.current.kind.is_direct),
            "punched": bool(report.current and report.current.kind is PathKind.PUNCHED),
            "punching": report.punching,
            "rtt_ms": round(report.rtt * 1000, 2) if report.rtt is not None else None,
            "switched_at": self._wall(report.switched_at),
            "switch_reason": report.switch_reason.value if report.switch_reason else None,
            "previous": report.previous.describe() if report.previous else None,
            "relay": self.engine.relay_description(peer),
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

    def signalling_rtt(self, peer: NodeId) -> float | None:
        return self.engine.signalling_rtt(peer)

    # -- inputs from the network ---------------------------------------------------------

    async def _on_signal_message(self, message: Message) -> None:
        peer = message.local.channel_peer
        if peer is None or message.is_error:
            return  # only ever accepted from a secure channel's authenticated peer
        try:
            self.engine.on_signal(peer, message.local.channel_address, message.payload, self.now())
        except WireError as exc:
            log.warning("paths.bad_signal", peer=peer, reason=str(exc))
            return
        self.wake()

    def _on_punch_packet(self, data: bytes, source: Endpoint, socket_id: int) -> None:
        self.engine.on_control_packet(socket_id, source, data, self.now())
        self.wake()

    def on_transport_event(self, event: object) -> None:
        """The node's event bus: every authenticated hop (an observer, evidence that TCP
        works, perhaps a direct path of a peer), and every closed one."""
        if isinstance(event, HopAuthenticated):
            link = self._find_link(event)
            if link is None:
                return
            self._links[link.name] = link
            link.monitor = _Monitor(self, link.name)
            self.engine.on_hop_up(
                link.name,
                event.node_id,
                transport="udp" if event.transport == "udp" else "tcp",
                remote=link.remote,
                outbound=event.direction == "outbound",
                socket=self.udp.socket_of(link),
                now=self.now(),
            )
            self.wake()
        elif isinstance(event, HopClosed) and event.node_id is not None:
            for name, link in list(self._links.items()):
                if link.closed:
                    del self._links[name]
                    self.engine.on_hop_closed(name, event.reason, self.now())
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
        """Drains the engine soon (once per loop turn, however many inputs came)."""
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self._loop.call_soon(self._pump)

    def _fire(self, now: float) -> None:
        self._listening(recheck=True)
        self.engine.on_timer(now)
        self._pump()

    def _pump(self) -> None:
        self._wake_scheduled = False
        self._listening()
        for _ in range(100):
            commands, events = self.engine.commands(), self.engine.events()
            if not commands and not events:
                break
            for command in commands:
                self._execute(command)
            for event in events:
                self._report(event)
        self._timer.follow(self.engine.next_deadline())

    def _report(self, event: object) -> None:
        if isinstance(event, NatClassified):
            self._classified(event.classification)
            if event.changed:
                for callback in list(self.network_listeners):
                    callback()
        elif isinstance(event, NetworkChanged):
            log.info("network.changed", reason=event.reason)  # the engine pings the hops
        elif isinstance(event, PathSwitched):
            log.info(
                "path.switched",
                peer=event.peer,
                to=event.new.describe() if event.new else "none",
                reason=event.reason.value,
            )
            self.channels.path_switched(event.peer)
        elif isinstance(event, PunchSucceeded):
            log.info("punch.succeeded", peer=event.peer, stats=str(event.stats))
        elif isinstance(event, PunchFailed):
            log.info(
                "punch.failed", peer=event.peer, reason=str(event.reason), stats=str(event.stats)
            )
        elif isinstance(event, DirectHopAdded):
            log.info("paths.direct_hop", peer=event.peer, path=event.path.describe())

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _execute(self, command: object) -> None:
        if isinstance(command, SendWhoami):
            self.udp.send_control(command.packet, command.observer)
        elif isinstance(command, SendDatagram):
            self.udp.send_control(
                command.data, command.destination, socket_id=command.socket, ttl=command.ttl
            )
        elif isinstance(command, SendPathSignal):
            self._spawn(self._signal(command))
        elif isinstance(command, PingHop):
            link = self._links.get(command.link)
            if link is not None:
                link.ping(command.token)
        elif isinstance(command, CloseHop):
            link = self._links.pop(command.link, None)
            if link is not None and not link.closed:
                link.spawn(link.close(CloseCode.NORMAL, command.reason), "close")
        elif isinstance(command, OpenBirthdaySockets):
            for socket_id in command.sockets:
                try:
                    self.udp.open_socket(socket_id)
                except OSError:
                    self.engine.on_socket_error(socket_id, self.now())
        elif isinstance(command, CloseBirthdaySockets):
            for socket_id in command.sockets:
                self.udp.close_socket(socket_id)
        elif isinstance(command, CloseSocket):
            self.udp.close_socket(command.socket)
        elif isinstance(command, DialHop):
            self._dial(command)

    async def _signal(self, command: SendPathSignal) -> None:
        channel = self.channels.get(command.channel)
        if channel is None or channel.state is not ChannelState.OPEN:
            log.debug("paths.no_channel", peer=command.peer)
            return
        route = (ServiceAddress(channel.address), ServiceAddress(PATHS_SERVICE))
        await self.router.route(Message(route, (), command.payload))

    def _dial(self, command: DialHop) -> None:
        host, port = command.remote
        transport = "udp" if command.transport == "udp" else "tcp"
        address = TransportAddress.from_socket(transport, host, port, command.peer)
        try:
            if transport == "udp":
                link = self.udp.dial(address, command.socket, punched=True)
            else:
                link = self.tcp.outbound(address)
                link.punched = True
        except (ValueError, OSError) as exc:
            self.engine.on_dial_failed(command.peer, str(exc), self.now())
            self.wake()
            return
        log.info("punch.dial", peer=command.peer, address=str(address), socket=command.socket)
        self._spawn(self._watch_dial(command.peer, link))

    async def _watch_dial(self, peer: NodeId, link: HopLink) -> None:
        await link.settled.wait()
        if not link.core.is_open:
            self.engine.on_dial_failed(peer, "the hop over the punched address failed", self.now())
            self.wake()
