"""A meshkey node in the simulator: the daemon's own sans-IO core for paths
(:class:`~meshkey.paths.engine.PathEngine`: classification, the puncher, the path manager and
the decisions between them) driven by a small glue — the same mapping of commands to socket
operations and of events to inputs that :class:`~meshkey.paths.service.PathService` does —
over simulated sockets, with the daemon's :class:`~meshkey.timing.DeadlineTimer` following the
engine's deadline on the simulator's clock.

As in the daemon, only the channel's initiator starts punches (:meth:`SimNode.connect_via_relay`
with ``initiator=False`` answers them), and a message takes the direct hop that
``engine.hop_link(peer, now)`` names, else the relay (``PathService.direct_route``).
What ``PathService`` decides itself and this glue cannot share (it is not in a core): whether
a channel is relayed and how its relay is described (``channel_opened``, from the channel's
route; here the relay is given), pinging every outbound hop on a network change, when to tell
the engine where the sockets listen (here once), and dropping a signal for a channel that is
not open.

What is *not* real here: the QUIC hop is a 1.5-RTT toy handshake (INIT, INIT_ACK, FINISH
with the NodeIds in clear) carrying PING/PONG/DATA, and the secure channel through the relay
is a pair of delayed pipes. Everything above them is the production code.

Sim hop packets (first byte >= 0x40, like QUIC's): ``kind | 8-byte connection id | body``::

    0xC0 INIT      dialer NodeId (32), padded to 1200 bytes (a QUIC Initial's size)
    0xC1 INIT_ACK  acceptor NodeId
    0xC2 FINISH    dialer NodeId
    0x41 PING / 0x42 PONG  u64 token;  0x43 DATA  payload

Channel messages through the relay: ``S`` + a path signal (:mod:`meshkey.wire.paths`), or
``D`` + application data.
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import struct
from dataclasses import dataclass, field

from meshkey.identity.node_id import NodeId
from meshkey.nat.classify import Classification, SendWhoami
from meshkey.nat.punch import (
    MAIN_SOCKET,
    CloseBirthdaySockets,
    DialHop,
    OpenBirthdaySockets,
    PunchEvent,
    PunchFailed,
    PunchSucceeded,
    SendDatagram,
)
from meshkey.nat.puncher import Puncher
from meshkey.nat.strategy import MESHKEY, PunchConfig
from meshkey.paths.classifier import NatClassified
from meshkey.paths.engine import (
    CloseHop,
    PathEngine,
    PingHop,
    SendPathSignal,
)
from meshkey.paths.manager import (
    CloseSocket,
    PathConfig,
    PathEvent,
    PathManager,
    PathSwitched,
)
from meshkey.paths.path import PathKey, PathKind
from meshkey.wire.errors import WireError
from meshkey.wire.net import Endpoint
from meshkey.wire.udp import (
    QUIC_BIT,
    ControlKind,
    WhoamiRequest,
    WhoamiResponse,
    decode_control_packet,
    encode_control_packet,
)
from tests.natsim.net import (
    Host,
    Packet,
    SimNet,
    SimSocket,
)

MAIN_PORT = 5000
TCP_PORT = 6000
OBSERVER_PORT = 3478
RELAY_ROUTE = "/node/green/service/forward_to_blue"
RESPONDER_RELAY = "the way the peer came"  # how the daemon's responder names the relay path

INIT, INIT_ACK, FINISH, PING, PONG, DATA = 0xC0, 0xC1, 0xC2, 0x41, 0x42, 0x43
HOP_RETRANSMIT = 0.3
HOP_TIMEOUT = 5.0


class Observer:
    """A public node answering WHOAMI on its socket (the reflexive-address service)."""

    def __init__(self, host: Host, port: int = OBSERVER_PORT) -> None:
        self.socket = host.open_socket(port)
        self.socket.receiver = self._receive

    @property
    def address(self) -> Endpoint:
        return self.socket.address

    def _receive(self, packet: Packet) -> None:
        try:
            request = decode_control_packet(packet.data)
        except WireError:
            return
        if isinstance(request, WhoamiRequest):
            answer = WhoamiResponse(request.txid, packet.src[0], packet.src[1])
            self.socket.sendto(encode_control_packet(answer), packet.src)


class Relay:
    """The secure channel between two nodes through a relay: two delayed, ordered pipes."""

    def __init__(self, net: SimNet, one_way: float) -> None:
        self.net = net
        self.one_way = one_way
        self.up = True
        self.carried = 0  # messages the relay forwarded (signalling and relay-path traffic)
        self.carried_bytes = 0
        self.carried_data = 0  # application messages (the channel's DATA) among them
        self._nodes: dict[NodeId, SimNode] = {}

    def join(self, node: SimNode) -> None:
        self._nodes[node.node_id] = node
        node.relay = self

    def send(self, sender: NodeId, receiver: NodeId, payload: bytes) -> None:
        target = self._nodes.get(receiver)
        if not self.up or target is None:
            return
        self.carried += 1
        self.carried_bytes += len(payload)
        self.carried_data += payload[:1] == b"D"
        self.net.call_later(self.one_way, lambda: target.on_channel(sender, payload))


@dataclass
class Hop:
    """The toy authenticated hop (QUIC's stand-in): one connection id, one local socket."""

    cid: bytes
    socket_id: int
    remote: Endpoint
    dialer: bool
    peer: NodeId | None
    transport: str = "udp"
    up: bool = False
    started_at: float = 0.0
    closed: bool = False


@dataclass
class Timeline:
    direct_at: float | None = None
    relay_at: float | None = None
    switches: list[PathSwitched] = field(default_factory=list)
    punches: list[PunchEvent] = field(default_factory=list)
    path_events: list[PathEvent] = field(default_factory=list)


class SimNode:
    def __init__(
        self,
        net: SimNet,
        host: Host,
        name: str,
        *,
        config: PunchConfig = MESHKEY,
        path_config: PathConfig | None = None,
        seed: int = 0,
        node_id: NodeId | None = None,
        tcp_listener: bool = False,
    ) -> None:
        self.net = net
        self.host = host
        self.name = name
        self.rng = random.Random(seed)
        self.node_id = node_id or NodeId(self.rng.randbytes(32))
        self.sockets: dict[int, SimSocket] = {}
        self.main = self._adopt(MAIN_SOCKET, host.open_socket(MAIN_PORT))
        self.tcp_listener: SimSocket | None = None
        if tcp_listener:
            self.tcp_listener = host.open_socket(TCP_PORT, proto="tcp")
            self.tcp_listener.receiver = lambda packet: self._on_hop_packet(-1, packet)
        self.engine = PathEngine(self.node_id, config=path_config, punch=config, rng=self.rng)
        # As PathService._listening tells it: the sockets' addresses, the punch candidates
        # (no loopback here), and the host's networks (its /24, and loopback's, which every
        # host has).
        self.engine.set_listening(
            (self.main.address,),
            ((host.ip, TCP_PORT),) if tcp_listener else (),
            networks=("127.0.0.0/8", f"{ipaddress.ip_network(f'{host.ip}/24', strict=False)}"),
            now=net.now,
        )
        self.relay: Relay | None = None
        self.peer: NodeId | None = None  # the peer of the channel through the relay
        self.hops: dict[bytes, Hop] = {}
        self.timeline = Timeline()
        self.birthday_opened = 0
        self.birthday_closed = 0
        self.received_data: list[bytes] = []
        self._timer = net.timer(self._fire)  # the daemon's DeadlineTimer, on the sim's clock
        self._tcp_sockets = 0

    @property
    def puncher(self) -> Puncher:
        return self.engine.puncher

    @property
    def paths(self) -> PathManager:
        return self.engine.paths

    @property
    def classification(self) -> Classification | None:
        return self.engine.classification

    # -- sockets --------------------------------------------------------------------

    def _adopt(self, socket_id: int, sock: SimSocket) -> SimSocket:
        self.sockets[socket_id] = sock
        sock.receiver = lambda packet: self._on_datagram(socket_id, packet)
        return sock

    @property
    def local_address(self) -> Endpoint:
        return self.main.address

    def _on_datagram(self, socket_id: int, packet: Packet) -> None:
        data = packet.data
        if not data:
            return
        now = self.net.now
        if data[0] & QUIC_BIT:
            self._on_hop_packet(socket_id, packet)
        elif data[0] == ControlKind.WHOAMI_RESPONSE:
            try:
                response = decode_control_packet(data)
            except WireError:
                return
            if isinstance(response, WhoamiResponse):
                self.engine.on_whoami_response(packet.src, response, now)
        elif data[0] in (ControlKind.PUNCH_PROBE, ControlKind.PUNCH_ACK):
            self.engine.on_control_packet(socket_id, packet.src, data, now)
        self.pump()

    # -- classification -------------------------------------------------------------

    def classify(self, observers: list[Endpoint], *, tcp_works: bool = True) -> None:
        self.engine.classify(self.net.now, observers, tcp_works=tcp_works)
        self.pump()

    # -- the secure channel through the relay ---------------------------------------

    def connect_via_relay(
        self, peer: NodeId, *, handshake_rtt: float | None = None, initiator: bool = True
    ) -> None:
        """The channel through the relay is open: it is the peer's first path.
        ``handshake_rtt``: the round trip its handshake measured (as the daemon's channel
        does), or None (then a punch this node answers waits for SYNC). ``initiator``: this
        node opened the channel (its paths start the punches; the responder's answer them,
        as in the daemon, whose responder describes the relay as the way the peer came)."""
        self.peer = peer
        self.engine.channel_opened(
            peer,
            "relayed-channel",
            self.net.now,
            initiator=initiator,
            relay=RELAY_ROUTE if initiator else RESPONDER_RELAY,
            handshake_rtt=handshake_rtt,
        )
        self.pump()

    def on_channel(self, sender: NodeId, payload: bytes) -> None:
        now = self.net.now
        kind, body = payload[:1], payload[1:]
        if kind == b"S":
            with contextlib.suppress(WireError):  # the daemon logs it and goes on
                self.engine.on_signal(sender, "relayed-channel", body, now)
        elif kind == b"D":
            self.received_data.append(body)  # a channel's message: the paths hear nothing
        self.pump()

    def _channel_send(self, peer: NodeId, payload: bytes) -> None:
        if self.relay is not None:
            self.relay.send(self.node_id, peer, payload)

    # -- application traffic --------------------------------------------------------

    def send_data(self, peer: NodeId, payload: bytes) -> PathKey | None:
        """Sends ``payload`` to ``peer`` as the daemon's secure channel does: over the
        direct hop the engine names (``PathService.direct_route``: ``hop_link(peer, now)``,
        None while that path is under suspicion), else through the relay. Returns the path
        used (None: no path)."""
        now = self.net.now
        link = self.engine.hop_link(peer, now)
        hop = self.hops.get(bytes.fromhex(link)) if link is not None else None
        if link is not None and hop is not None and not hop.closed:
            self._hop_send(hop, DATA, payload)
            self.engine.on_hop_traffic(link, sent=len(payload), now=now)
            self.pump()
            return self.paths.current_path(peer)
        if self.peer != peer or self.relay is None:
            return None
        self._channel_send(peer, b"D" + payload)
        return next((p.key for p in self.paths.paths(peer) if p.key.kind is PathKind.RELAY), None)

    # -- the toy hop ----------------------------------------------------------------

    def _hop_socket(self, hop: Hop) -> SimSocket | None:
        if hop.transport == "tcp":
            return self.sockets.get(hop.socket_id) if hop.socket_id >= 0 else self.tcp_listener
        return self.sockets.get(hop.socket_id)

    def _hop_send(self, hop: Hop, kind: int, body: bytes, to: Endpoint | None = None) -> None:
        sock = self._hop_socket(hop)
        if sock is None or sock.closed:
            return
        data = bytes([kind]) + hop.cid + body
        if kind == INIT:
            data = data.ljust(1200, b"\x00")
        sock.sendto(data, to or hop.remote)

    def _dial(self, command: DialHop) -> None:
        socket_id = command.socket
        if command.transport == "tcp":
            self._tcp_sockets += 1
            socket_id = 1_000_000 + self._tcp_sockets
            sock = self.host.open_socket(proto="tcp")
            self.sockets[socket_id] = sock
            sock.receiver = lambda packet: self._on_hop_packet(socket_id, packet)
        hop = Hop(
            self.rng.randbytes(8),
            socket_id,
            command.remote,
            True,
            command.peer,
            command.transport,
            started_at=self.net.now,
        )
        self.hops[hop.cid] = hop
        self._send_init(hop)

    def _send_init(self, hop: Hop) -> None:
        if hop.up or hop.closed:
            return
        if self.net.now - hop.started_at > HOP_TIMEOUT:
            hop.closed = True
            assert hop.peer is not None
            self.engine.on_dial_failed(hop.peer, "no handshake answer", self.net.now)
            self.pump()
            return
        self._hop_send(hop, INIT, self.node_id.raw)
        self.net.call_later(HOP_RETRANSMIT, lambda: self._send_init(hop))

    def _send_init_ack(self, hop: Hop) -> None:
        """The acceptor repeats INIT_ACK until FINISH comes (QUIC retransmits its flight)."""
        if hop.up or hop.closed:
            return
        if self.net.now - hop.started_at > HOP_TIMEOUT:
            hop.closed = True
            return
        self._hop_send(hop, INIT_ACK, self.node_id.raw)
        self.net.call_later(HOP_RETRANSMIT, lambda: self._send_init_ack(hop))

    def _hop_up(self, hop: Hop, source: Endpoint) -> None:
        assert hop.peer is not None
        hop.up = True
        self.engine.on_hop_up(
            hop.cid.hex(),
            hop.peer,
            transport=hop.transport,
            remote=source,
            outbound=hop.dialer,
            socket=hop.socket_id if hop.transport == "udp" else MAIN_SOCKET,
            now=self.net.now,
        )

    def _on_hop_packet(self, socket_id: int, packet: Packet) -> None:
        data, now = packet.data, self.net.now
        if len(data) < 9:
            return
        kind, cid, body = data[0], data[1:9], data[9:]
        hop = self.hops.get(cid)
        transport = packet.proto
        if kind == INIT:
            if hop is None:
                hop = Hop(
                    cid, socket_id, packet.src, False, NodeId(body[:32]), transport, started_at=now
                )
                self.hops[cid] = hop
                self._send_init_ack(hop)
            elif not hop.up:
                self._hop_send(hop, INIT_ACK, self.node_id.raw)
            return
        if hop is None or hop.closed or hop.peer is None:
            return
        link = cid.hex()
        if kind == INIT_ACK and hop.dialer and hop.up:
            self._hop_send(hop, FINISH, self.node_id.raw)  # our FINISH was lost
        elif kind == INIT_ACK and hop.dialer:
            if NodeId(body[:32]) != hop.peer:  # pinned to the expected NodeId
                hop.closed = True
                return
            self._hop_send(hop, FINISH, self.node_id.raw)
            self._hop_up(hop, packet.src)
        elif kind == FINISH and not hop.dialer and not hop.up:
            self._hop_up(hop, packet.src)
        elif hop.up and kind == PING:
            self._hop_send(hop, PONG, body, packet.src)
            self.engine.on_hop_traffic(link, received=len(data), now=now)
        elif hop.up and kind == PONG:
            (token,) = struct.unpack("!Q", body[:8])
            self.engine.on_hop_pong(link, token, now)
        elif hop.up and kind == DATA:
            self.received_data.append(body)
            self.engine.on_hop_traffic(link, received=len(data), now=now)
        self.pump()

    # -- the glue: commands to operations, events to inputs --------------------------

    def pump(self) -> None:
        for _ in range(1000):
            commands, events = self.engine.commands(), self.engine.events()
            if not commands and not events:
                break
            for command in commands:
                self._execute(command)
            for event in events:
                self._report(event)
        self._timer.follow(self.engine.next_deadline())

    def _execute(self, command: object) -> None:
        if isinstance(command, SendWhoami):
            self.main.sendto(command.packet, command.observer)
        elif isinstance(command, SendPathSignal):
            self._channel_send(command.peer, b"S" + command.payload)
        elif isinstance(command, SendDatagram):
            sock = self.sockets.get(command.socket)
            if sock is not None and not sock.closed:
                sock.sendto(command.data, command.destination, command.ttl)
        elif isinstance(command, OpenBirthdaySockets):
            for socket_id in command.sockets:
                self._adopt(socket_id, self.host.open_socket())
                self.birthday_opened += 1
        elif isinstance(command, CloseBirthdaySockets | CloseSocket):
            ids = (
                command.sockets if isinstance(command, CloseBirthdaySockets) else (command.socket,)
            )
            for socket_id in ids:
                sock = self.sockets.pop(socket_id, None)
                if sock is not None:
                    sock.close()
                    self.birthday_closed += 1
        elif isinstance(command, DialHop):
            self._dial(command)
        elif isinstance(command, PingHop):
            hop = self.hops.get(bytes.fromhex(command.link))
            if hop is not None and hop.up and not hop.closed:
                key_remote = hop.remote
                self._hop_send(hop, PING, struct.pack("!Q", command.token), key_remote)
        elif isinstance(command, CloseHop):
            hop = self.hops.get(bytes.fromhex(command.link))
            if hop is not None:
                hop.closed = True

    def _report(self, event: object) -> None:
        if isinstance(event, PunchEvent):
            self.timeline.punches.append(event)
        elif isinstance(event, NatClassified):
            return
        if isinstance(event, PathEvent):
            self.timeline.path_events.append(event)
        if isinstance(event, PathSwitched):
            self.timeline.switches.append(event)
            if event.new is not None and event.new.kind.is_direct:
                if self.timeline.direct_at is None:
                    self.timeline.direct_at = event.at
            elif event.new is not None:
                self.timeline.relay_at = self.timeline.relay_at or event.at

    def _fire(self, now: float) -> None:
        self.engine.on_timer(now)
        self.pump()

    # -- summaries ------------------------------------------------------------------

    def punch_stats(self) -> tuple[int, int, int]:
        """(probes, openers, sprayed) over every punch this node took part in."""
        probes = openers = sprayed = 0
        for event in self.timeline.punches:
            if isinstance(event, PunchSucceeded | PunchFailed):
                probes += event.stats.probes_sent
                openers += event.stats.openers_sent
                sprayed += event.stats.sprayed
        return probes, openers, sprayed
