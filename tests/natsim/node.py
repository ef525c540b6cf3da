"""A meshkey node in the simulator: the real sans-IO cores (classification, the puncher, the
path manager) driven by a small glue — the same mapping of commands to socket operations and
of events to inputs that the daemon's asyncio glue must do — over simulated sockets.

What is *not* real here: the QUIC hop is a 1.5-RTT toy handshake (INIT, INIT_ACK, FINISH
with the NodeIds in clear) carrying PING/PONG/DATA, and the secure channel through the relay
is a pair of delayed pipes. Everything above them is the production code.

Sim hop packets (first byte >= 0x40, like QUIC's): ``kind | 8-byte connection id | body``::

    0xC0 INIT      dialer NodeId (32), padded to 1200 bytes (a QUIC Initial's size)
    0xC1 INIT_ACK  acceptor NodeId
    0xC2 FINISH    dialer NodeId
    0x41 PING / 0x42 PONG  u64 token;  0x43 DATA  payload
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

from meshkey.identity.node_id import NodeId
from meshkey.nat.classify import (
    Classification,
    ClassificationRound,
)
from meshkey.nat.punch import (
    MAIN_SOCKET,
    CloseBirthdaySockets,
    DialHop,
    LocalInfo,
    OpenBirthdaySockets,
    PunchEvent,
    PunchFailed,
    PunchSucceeded,
    SendDatagram,
    SendSignal,
)
from meshkey.nat.puncher import Puncher
from meshkey.nat.strategy import MESHKEY, PunchConfig
from meshkey.paths.manager import (
    CancelPunch,
    ClosePath,
    CloseSocket,
    PathConfig,
    PathEvent,
    PathManager,
    PathSwitched,
    SendPing,
    StartPunch,
)
from meshkey.paths.path import PathKey, PathKind
from meshkey.wire.errors import WireError
from meshkey.wire.net import Endpoint, NatClass
from meshkey.wire.punch import Capability
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
        self.puncher = Puncher(self.node_id, config=config, rng=self.rng)
        self.paths = PathManager(path_config, rng=self.rng)
        self.classification: Classification | None = None
        self.relay: Relay | None = None
        self.peer: NodeId | None = None  # the peer of the channel through the relay
        self.channel_rtt: float | None = None  # what the channel's handshake measured
        self.hops: dict[bytes, Hop] = {}
        self.timeline = Timeline()
        self.birthday_opened = 0
        self.birthday_closed = 0
        self.received_data: list[bytes] = []
        self._round: ClassificationRound | None = None
        self._timer_at: float | None = None
        self._timer_generation = 0
        self._tcp_sockets = 0

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
        elif data[0] == ControlKind.WHOAMI_RESPONSE and self._round is not None:
            try:
                response = decode_control_packet(data)
            except WireError:
                return
            if isinstance(response, WhoamiResponse):
                self._round.on_response(packet.src, response, now)
        elif data[0] in (ControlKind.PUNCH_PROBE, ControlKind.PUNCH_ACK):
            self.puncher.on_control_packet(socket_id, packet.src, data, now)
        self.pump()

    # -- classification -------------------------------------------------------------

    def classify(self, observers: list[Endpoint], *, tcp_works: bool = True) -> None:
        self._round = ClassificationRound(
            observers, [self.local_address], tcp_works=tcp_works, rng=self.rng
        )
        self._round.start(self.net.now)
        self.pump()

    def _on_classified(self, classification: Classification) -> None:
        self.classification = classification
        reflexive = classification.mappings[:1]
        tcp = (
            ((self.host.ip, TCP_PORT),)
            if self.tcp_listener is not None and classification.nat_class is NatClass.PUBLIC
            else ()
        )
        self.puncher.update_local(
            LocalInfo(
                classification.nat_class,
                local=(self.local_address,),
                reflexive=tuple(reflexive),
                tcp=tcp,
                capabilities=frozenset(
                    {Capability.BIRTHDAY, Capability.LOW_TTL, Capability.TCP_DIAL}
                ),
            )
        )

    # -- the secure channel through the relay ---------------------------------------

    def connect_via_relay(self, peer: NodeId, *, handshake_rtt: float | None = None) -> None:
        """The channel through the relay is open: it is the peer's first path.
        ``handshake_rtt``: the round trip its handshake measured (as the daemon's channel
        does), or None (then a punch this node answers waits for SYNC)."""
        self.peer = peer
        self.channel_rtt = handshake_rtt
        self.paths.add_path(
            peer, PathKey(PathKind.RELAY, RELAY_ROUTE), self.net.now, validated=True
        )
        self.pump()

    def on_channel(self, sender: NodeId, payload: bytes) -> None:
        now = self.net.now
        kind, body = payload[:1], payload[1:]
        key = PathKey(PathKind.RELAY, RELAY_ROUTE)
        if kind == b"P":
            allowed = self.paths.direct_allowed(sender)
            self.puncher.on_signal(
                sender, body, now, direct_allowed=allowed, signalling_rtt=self._relay_rtt(sender)
            )
        elif kind == b"I":
            self._channel_send(sender, b"O" + body)
            self.paths.on_received(sender, key, len(payload), now)
        elif kind == b"O":
            self.paths.on_pong(sender, key, int.from_bytes(body, "big"), now)
        elif kind == b"D":
            self.received_data.append(body)
            self.paths.on_received(sender, key, len(payload), now)
        self.pump()

    def _relay_rtt(self, peer: NodeId) -> float | None:
        """The relay path's RTT from its pings, else the channel's handshake (the glue's rule)."""
        relay = next((p for p in self.paths.paths(peer) if p.key.kind is PathKind.RELAY), None)
        if relay is not None and relay.srtt is not None:
            return relay.srtt
        return self.channel_rtt

    def _channel_send(self, peer: NodeId, payload: bytes) -> None:
        if self.relay is not None:
            self.relay.send(self.node_id, peer, payload)

    # -- application traffic --------------------------------------------------------

    def send_data(self, peer: NodeId, payload: bytes) -> PathKey | None:
        """Sends ``payload`` to ``peer`` on its current path; returns the path used."""
        key = self.paths.current_path(peer)
        if key is None:
            return None
        if key.kind is PathKind.RELAY:
            self._channel_send(peer, b"D" + payload)
        else:
            hop = self._hop_for(peer, key)
            if hop is None:
                return None
            self._hop_send(hop, DATA, payload, key.remote)  # type: ignore[arg-type]
        self.paths.on_sent(peer, key, len(payload), self.net.now)
        self.pump()
        return key

    # -- the toy hop ----------------------------------------------------------------

    def _hop_for(self, peer: NodeId, key: PathKey) -> Hop | None:
        for hop in self.hops.values():
            if (
                hop.peer == peer
                and hop.up
                and not hop.closed
                and hop.transport == key.transport
                and (hop.transport == "tcp" or hop.socket_id == key.local_socket)
            ):
                return hop
        return None

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
            self.paths.on_dial_failed(hop.peer, "no handshake answer", self.net.now)
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

    def _path_key(self, hop: Hop, source: Endpoint) -> PathKey:
        socket_id = hop.socket_id if hop.transport == "udp" else MAIN_SOCKET
        return PathKey(PathKind.PUNCHED, source, socket_id, hop.transport)

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
        key = self._path_key(hop, packet.src)
        if kind == INIT_ACK and hop.dialer and hop.up:
            self._hop_send(hop, FINISH, self.node_id.raw)  # our FINISH was lost
        elif kind == INIT_ACK and hop.dialer:
            if NodeId(body[:32]) != hop.peer:  # pinned to the expected NodeId
                hop.closed = True
                return
            hop.up = True
            self._hop_send(hop, FINISH, self.node_id.raw)
            self.paths.add_path(hop.peer, key, now, validated=True)
        elif kind == FINISH and not hop.dialer and not hop.up:
            hop.up = True
            self.paths.add_path(hop.peer, key, now, validated=True)
        elif hop.up and kind == PING:
            self._hop_send(hop, PONG, body, packet.src)
            self.paths.on_received(hop.peer, key, len(data), now)
        elif hop.up and kind == PONG:
            (token,) = struct.unpack("!Q", body[:8])
            self.paths.on_pong(hop.peer, key, token, now)
        elif hop.up and kind == DATA:
            self.received_data.append(body)
            self.paths.on_received(hop.peer, key, len(data), now)
        self.pump()

    # -- the glue: commands to operations, events to inputs --------------------------

    def pump(self) -> None:
        now = self.net.now
        for _ in range(1000):
            busy = False
            if self._round is not None:
                for whoami in self._round.commands():
                    busy = True
                    self.main.sendto(whoami.packet, whoami.observer)
                for classified in self._round.events():
                    busy = True
                    self._on_classified(classified.classification)
            for command in self.puncher.commands():
                busy = True
                self._punch_command(command)
            for event in self.puncher.events():
                busy = True
                self.timeline.punches.append(event)
                self.paths.on_punch_event(event, now)
            for path_command in self.paths.commands():
                busy = True
                self._path_command(path_command)
            for path_event in self.paths.events():
                busy = True
                self._path_event(path_event)
            if not busy:
                break
        self._arm()

    def _punch_command(self, command: object) -> None:
        if isinstance(command, SendSignal):
            self._channel_send(command.peer, b"P" + command.data)
        elif isinstance(command, SendDatagram):
            sock = self.sockets.get(command.socket)
            if sock is not None and not sock.closed:
                sock.sendto(command.data, command.destination, command.ttl)
        elif isinstance(command, OpenBirthdaySockets):
            for socket_id in command.sockets:
                self._adopt(socket_id, self.host.open_socket())
                self.birthday_opened += 1
        elif isinstance(command, CloseBirthdaySockets):
            for socket_id in command.sockets:
                sock = self.sockets.pop(socket_id, None)
                if sock is not None:
                    sock.close()
                    self.birthday_closed += 1
        elif isinstance(command, DialHop):
            self._dial(command)

    def _path_command(self, command: object) -> None:
        now = self.net.now
        if isinstance(command, SendPing):
            token = struct.pack("!Q", command.token)
            if command.path.kind is PathKind.RELAY:
                self._channel_send(command.peer, b"I" + token)
            else:
                hop = self._hop_for(command.peer, command.path)
                if hop is not None:
                    self._hop_send(hop, PING, token, command.path.remote)  # type: ignore[arg-type]
        elif isinstance(command, StartPunch):
            self.puncher.start(command.peer, now)
        elif isinstance(command, CancelPunch):
            self.puncher.cancel(command.peer, now)
        elif isinstance(command, CloseSocket):
            sock = self.sockets.pop(command.socket, None)
            if sock is not None:
                sock.close()
                self.birthday_closed += 1
        elif isinstance(command, ClosePath):
            hop = self._hop_for(command.peer, command.path)
            if hop is not None:
                hop.closed = True
            socket_id = command.path.local_socket
            if socket_id != MAIN_SOCKET and socket_id in self.sockets:
                self.sockets.pop(socket_id).close()
                self.birthday_closed += 1

    def _path_event(self, event: PathEvent) -> None:
        self.timeline.path_events.append(event)
        if isinstance(event, PathSwitched):
            self.timeline.switches.append(event)
            if event.new is not None and event.new.kind.is_direct:
                if self.timeline.direct_at is None:
                    self.timeline.direct_at = event.at
            elif event.new is not None:
                self.timeline.relay_at = self.timeline.relay_at or event.at

    # -- one timer for every core -----------------------------------------------------

    def _arm(self) -> None:
        deadlines = [
            d
            for d in (
                self._round.next_deadline() if self._round else None,
                self.puncher.next_deadline(),
                self.paths.next_deadline(),
            )
            if d is not None
        ]
        deadline = min(deadlines, default=None)
        if deadline == self._timer_at:
            return
        self._timer_at = deadline
        self._timer_generation += 1
        if deadline is not None:
            generation = self._timer_generation
            self.net.call_at(deadline, lambda: self._fire(generation))

    def _fire(self, generation: int) -> None:
        if generation != self._timer_generation:
            return
        self._timer_at = None
        now = self.net.now
        if self._round is not None:
            self._round.on_timer(now)
        self.puncher.on_timer(now)
        self.paths.on_timer(now)
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
