"""A node's paths as one sans-IO core: NAT classification, hole punching and path choice
(DESIGN.md decisions 10-12), and the decisions that join them.

(Over 600 lines on purpose: the composite that joins classification, punching and path
choice; each of those is its own module, and what is left here is the decisions between
them, which a split would scatter again.)

Theory of operation
-------------------
:class:`PathEngine` composes three cores and owns what used to be decided in the asyncio glue:

- the :class:`~meshkey.paths.classifier.NatClassifier` (classification rounds, when to run
  them, whether the mapping moved), told which hops are up (observers, TCP evidence) and
  what punches saw;
- the :class:`~meshkey.nat.puncher.Puncher`, told what to offer peers (its candidates follow
  the classification and the sockets' addresses);
- the :class:`~meshkey.paths.manager.PathManager`, told about relayed channels (their first
  path), authenticated hops to the peers of those channels (direct or punched paths: a hop
  that comes up while, or shortly after, a punch with that peer ran is the punched path),
  the traffic and pongs on each, and the punches' outcomes;
- the punch signals and the relay path's pings, which travel inside the peer's secure
  channel as :mod:`meshkey.wire.paths` messages; a punch waits for this node's own class
  when a classification round is running or due within a second (the strategy depends on
  both classes), rather than punch as "unknown" and retry in 40 s.

Inputs return nothing; drain :meth:`PathEngine.commands` (what the glue must do: datagrams,
sockets, hop dials, pings, signals) and :meth:`PathEngine.events` (what happened:
classifications, path switches, punch outcomes), then re-read :meth:`next_deadline`.

A network change (the classifier's :class:`NetworkChanged`) is passed on, with a PING on
every UDP hop this node dialled, and a new classification re-sets what punches offer.

Hops are named by the glue's link name (a string, unique per hop), so the engine never holds
a connection; the glue keeps the one map from names to links.

Bounds: state is kept only for peers a channel was opened with (and released when the last
one closes); hops only while they are paths of such a peer; the path manager and the puncher
bound the rest (paths per peer, punches at once, probe tokens).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from meshkey.identity.node_id import NodeId
from meshkey.nat.classify import Classification, SendWhoami
from meshkey.nat.punch import (
    CloseBirthdaySockets,
    DialHop,
    LocalCandidates,
    OpenBirthdaySockets,
    PunchEvent,
    PunchSucceeded,
    SendDatagram,
    SendSignal,
)
from meshkey.nat.puncher import Puncher
from meshkey.nat.strategy import MESHKEY, PunchConfig
from meshkey.paths.classifier import NatClassified, NatClassifier, NetworkChanged
from meshkey.paths.manager import (
    CancelPunch,
    ClosePath,
    CloseSocket,
    PathConfig,
    PathEvent,
    PathManager,
    SendPathPing,
    StartPunch,
)
from meshkey.paths.path import PathKey, PathKind
from meshkey.wire.errors import WireError
from meshkey.wire.net import Endpoint, NatClass
from meshkey.wire.paths import (
    PathPing,
    PathPong,
    PathSignal,
    PunchSignal,
    decode_path_signal,
    encode_path_signal,
)
from meshkey.wire.punch import Capability
from meshkey.wire.udp import WhoamiResponse

#: A punch's hop may be accepted this long after the punch started (an inbound hop from the
#: peer then is the punched path, not a stranger's).
PUNCH_HOP_WINDOW = 30.0
#: A direct path silent this long after traffic went out on it is passed over for new
#: traffic (it is declared dead a little later: PathConfig.dead_after).
SUSPECT_AFTER = 0.5
#: Punch messages kept for a peer whose channel is not open yet (this node's own: a birthday
#: punch's CREDIT alone is 12 of them, and with 4 the rest were dropped, so the peer's spray
#: stopped at ~560 of its 2,048 probes and about one birthday punch in a hundred missed).
MAX_EARLY_SIGNALS = 32
#: A punch waits for this node's own classification when a round is due this soon.
CLASSIFY_SOON = 1.0
CAPABILITIES = frozenset({Capability.BIRTHDAY, Capability.LOW_TTL, Capability.TCP_DIAL})


# -- commands (besides the cores' own: SendWhoami, SendDatagram, Open/CloseBirthdaySockets,
# DialHop, CloseSocket, which pass through unchanged) --------------------------------------


@dataclass(frozen=True, slots=True)
class SendPathSignal:
    """Send ``payload`` (an encoded :mod:`meshkey.wire.paths` message) to ``peer``'s
    ``/service/_paths`` through the secure channel ``channel``."""

    peer: NodeId
    channel: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class PingHop:
    """Send a hop PING with ``token`` on link ``link``; report the PONG with
    :meth:`PathEngine.on_hop_pong`."""

    link: str
    token: int


@dataclass(frozen=True, slots=True)
class CloseHop:
    """Close link ``link``: its path failed."""

    link: str
    reason: str


EngineCommand = (
    SendWhoami
    | SendDatagram
    | OpenBirthdaySockets
    | CloseBirthdaySockets
    | DialHop
    | CloseSocket
    | SendPathSignal
    | PingHop
    | CloseHop
)


# -- events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DirectHopAdded:
    peer: NodeId
    path: PathKey


EngineEvent = NatClassified | NetworkChanged | PathEvent | PunchEvent | DirectHopAdded


# -- what the engine keeps -----------------------------------------------------------------


@dataclass
class _Peer:
    channels: set[str] = field(default_factory=set)
    channel: str | None = None  # the channel signals go through (the newest)
    channel_rtt: float | None = None  # that channel's handshake round trip
    relay_key: PathKey | None = None
    punch_started: float | None = None
    #: Punch messages for the peer while no channel carries them yet: those made while a
    #: handshake is being written ride it as early data; the rest go once the channel opens.
    early: list[bytes] = field(default_factory=list)
    offered: bytes = b""  # the early data the last handshake carried (again if it failed)


@dataclass(slots=True)
class _Hop:
    peer: NodeId
    transport: str  # "udp" or "tcp"
    remote: Endpoint
    outbound: bool
    key: PathKey | None  # the path it is, if it is a path of a relayed peer
    socket: int = 0  # the local socket it lives on (a birthday punch's, or the main one)
    up_at: float = 0.0


def _suspect_allowance(srtt: float | None) -> float:
    """How long a direct path may go unanswered before new traffic passes it over."""
    return max(SUSPECT_AFTER, 2 * (srtt or 0.0) + 0.3)


class PathEngine:
    """All of a node's paths. Inputs return nothing; drain :meth:`commands` and
    :meth:`events` after each, and re-read :meth:`next_deadline`."""

    def __init__(
        self,
        node_id: NodeId,
        *,
        observers: list[Endpoint] | None = None,
        no_direct: bool = False,
        config: PathConfig | None = None,
        punch: PunchConfig = MESHKEY,
        rng: random.Random | None = None,
    ) -> None:
        self.rng = rng or random.Random()
        self.no_direct = no_direct
        self.nat = NatClassifier(observers=observers, rng=self.rng)
        self.puncher = Puncher(node_id, config=punch, rng=self.rng)
        self.paths = PathManager(config, rng=self.rng, no_direct=no_direct)
        self.udp_local: tuple[Endpoint, ...] = ()  # every address the UDP socket has
        self.udp_candidates: tuple[Endpoint, ...] = ()  # those a peer elsewhere may use
        self.tcp_local: tuple[Endpoint, ...] = ()
        self.networks: tuple[str, ...] = ()  # this host's networks: the LAN a punch may probe
        #: Where this node observed a peer other than over its own hops (it hosts the peer's
        #: relay, say): the glue answers it. Punches probe only where the peer was observed.
        self.observed_elsewhere: Callable[[NodeId], tuple[Endpoint, ...]] = lambda _: ()
        self._peers: dict[NodeId, _Peer] = {}
        self._hops: dict[str, _Hop] = {}
        self._deferred_punches: set[NodeId] = set()
        self._commands: list[EngineCommand] = []
        self._events: list[EngineEvent] = []

    # -- the node's sockets and observers ---------------------------------------------

    def set_listening(
        self,
        udp: tuple[Endpoint, ...],
        tcp: tuple[Endpoint, ...],
        *,
        udp_candidates: tuple[Endpoint, ...] | None = None,
        networks: tuple[str, ...] = (),
        now: float = 0.0,
    ) -> None:
        """Where the node's sockets listen, as concrete addresses (a wildcard socket has one
        per host address): the classification compares reflexive addresses with ``udp``;
        a punch offers ``udp_candidates`` (default ``udp``: the glue leaves out loopback)
        and, when public, ``tcp``."""
        self.udp_local, self.tcp_local = udp, tcp
        self.udp_candidates = udp if udp_candidates is None else udp_candidates
        self.networks = networks
        self._update_local()
        self.nat.set_local(udp, now)
        self._drain_nat(now)

    def on_network_change(self, reason: str, now: float) -> None:
        """The glue saw the network change: classify again at once."""
        self.nat.on_network_change(reason, now)
        self._drain_nat(now)

    @property
    def classification(self) -> Classification | None:
        return self.nat.classification

    @property
    def observers(self) -> list[Endpoint]:
        return self.nat.observers

    def known_observers(self) -> list[Endpoint]:
        """Configured observers, then the remotes of open outbound QUIC hops, one per IP."""
        return self.nat.known_observers()

    @property
    def classifying(self) -> bool:
        return self.nat.classifying

    def classify(
        self, now: float, observers: list[Endpoint] | None = None, *, tcp_works: bool | None = None
    ) -> None:
        """Starts a classification round now, unless one runs (its result answers both).
        ``tcp_works``: what is known of TCP (default: whether a TCP hop is up)."""
        self.nat.classify(now, observers, tcp_works=tcp_works)
        self._drain_nat(now)

    def on_whoami_response(self, source: Endpoint, response: WhoamiResponse, now: float) -> None:
        self.nat.on_whoami_response(source, response, now)
        self._drain_nat(now)

    # -- hops ---------------------------------------------------------------------------

    def on_hop_up(
        self,
        link: str,
        peer: NodeId,
        *,
        transport: str,
        remote: Endpoint,
        outbound: bool,
        socket: int,
        now: float,
    ) -> None:
        """A hop authenticated ``peer``: an observer, evidence that TCP works, and, if this
        node reaches ``peer`` through a relay, a direct (or punched) path to it."""
        if outbound:
            self.nat.on_hop_up(transport, remote, now)
        key: PathKey | None = None
        state = self._peers.get(peer)
        if state is not None and state.relay_key is not None:
            punched = self.puncher.session(peer) is not None or (
                state.punch_started is not None and now - state.punch_started < PUNCH_HOP_WINDOW
            )
            kind = PathKind.PUNCHED if punched else PathKind.DIRECT
            key = PathKey(kind, remote, socket, transport)
        self._hops[link] = _Hop(peer, transport, remote, outbound, key, socket, now)
        self._hops_changed()
        if key is not None:
            self.paths.add_path(peer, key, now, validated=True)
            self._events.append(DirectHopAdded(peer, key))
        self._drain_cores(now)

    def on_hop_closed(self, link: str, reason: str, now: float) -> None:
        hop = self._hops.pop(link, None)
        self._hops_changed()
        if hop is not None and hop.key is not None:
            self.paths.remove_path(hop.peer, hop.key, reason, now)
            self._drain_cores(now)

    def on_hop_traffic(self, link: str, *, sent: int = 0, received: int = 0, now: float) -> None:
        hop = self._hops.get(link)
        if hop is None or hop.key is None:
            return
        if received:
            self.paths.on_received(hop.peer, hop.key, received, now)
        if sent:
            self.paths.on_sent(hop.peer, hop.key, sent, now)
        self._drain_cores(now)

    def on_hop_pong(self, link: str, token: int, now: float) -> None:
        hop = self._hops.get(link)
        if hop is not None and hop.key is not None:
            self.paths.on_pong(hop.peer, hop.key, token, now)
            self._drain_cores(now)

    def on_dial_failed(self, peer: NodeId, reason: str, now: float) -> None:
        self.paths.on_dial_failed(peer, reason, now)
        self._drain_cores(now)

    def is_path(self, link: str) -> bool:
        """Whether ``link`` is a direct or punched path of a relayed peer."""
        hop = self._hops.get(link)
        return hop is not None and hop.key is not None

    def hop_link(self, peer: NodeId, now: float | None = None) -> str | None:
        """The link of ``peer``'s current path, when that path is a direct hop, unless (given
        ``now``) it is under suspicion: nothing came back for :data:`SUSPECT_AFTER` (and two
        round trips) since traffic went out on it. The path manager declares it dead only
        later; meanwhile new traffic takes the next rung (the relay), so a message sent as the
        path dies is the only one that waits (issue 18: answered within 2 s of a block)."""
        key = self.paths.current_path(peer)
        if key is None or not key.kind.is_direct:
            return None
        if now is not None:
            path = next((p for p in self.paths.paths(peer) if p.key == key), None)
            if (
                path is not None
                and path.waiting_since is not None
                and now - path.waiting_since > _suspect_allowance(path.srtt)
            ):
                return None
        for name, hop in self._hops.items():
            if hop.peer == peer and hop.key == key:
                return name
        return None

    def on_heard_elsewhere(self, peer: NodeId, link: str | None, now: float) -> bool:
        """Channel traffic from ``peer`` arrived over ``link`` (None: not over a hop of ours
        to it, e.g. through its relay) while its current path is a direct hop: when that is
        not the hop it came over, the peer is not reaching us on it, so the path is suspected
        at once (new traffic takes the relay, and a ping asks whether it is alive) instead of
        after our own sends go unanswered (issue 18: a path broken toward us). True when it
        did: the glue has commands to drain (called per message, so cheap when it did not)."""
        current = self.hop_link(peer)
        if current is None or link == current:
            return False
        key = self.paths.current_path(peer)
        path = next((p for p in self.paths.paths(peer) if p.key == key), None)
        if path is None:
            return False
        # Just past the allowance, so hop_link passes the path over from this instant.
        unanswered = _suspect_allowance(path.srtt) + 0.001
        self.paths.suspect_current(peer, now, unanswered_for=unanswered)
        self._drain_cores(now)
        return True

    # -- punch packets ------------------------------------------------------------------

    def on_control_packet(self, socket: int, source: Endpoint, data: bytes, now: float) -> None:
        self.puncher.on_control_packet(socket, source, data, now)
        self._drain_cores(now)

    def on_socket_error(self, socket: int, now: float) -> None:
        self.puncher.on_socket_error(socket, now)
        self._drain_cores(now)

    # -- channels and their signals -------------------------------------------------------

    def channel_opened(
        self,
        peer: NodeId,
        channel: str,
        now: float,
        *,
        initiator: bool,
        relay: str | None,
        no_direct: bool = False,
        handshake_rtt: float | None = None,
    ) -> None:
        """A secure channel to ``peer`` opened. ``relay``: how its route is described when it
        goes through other nodes, None when the channel itself is a direct hop (then there is
        nothing to look for)."""
        state = self._peers.setdefault(peer, _Peer())
        state.channels.add(channel)
        state.channel = channel
        state.channel_rtt = handshake_rtt
        self.paths.add_peer(
            peer, now, no_direct=True if no_direct or self.no_direct else None, initiates=initiator
        )
        if relay is not None and state.relay_key is None:
            state.relay_key = PathKey(PathKind.RELAY, relay)
            self.paths.add_path(peer, state.relay_key, now, validated=True)
            self._adopt_hops(peer, state, now)
        for data in state.early:  # what the handshake could not carry goes now
            self._signal(peer, PunchSignal(data))
        state.early.clear()
        self._drain_cores(now)

    # -- the punch inside the handshake (issue 20) ------------------------------------------

    def handshake_payload(self, peer: NodeId | None, initiator: bool, now: float) -> bytes:
        """Early data for the channel handshake being written to ``peer``: an initiator starts
        the punch now and its CONNECT rides the first message; a responder's reply to the
        CONNECT it just read rides its answer. Empty when there is nothing to say (an
        unknown peer, direct paths turned off, a punch under way)."""
        if peer is None or self.no_direct or not self.paths.direct_allowed(peer):
            return b""
        if initiator and self._must_wait_for_class(now):
            return b""  # the strategy needs this node's class: the punch comes after opening
        if initiator and any(hop.peer == peer for hop in self._hops.values()):
            return b""  # a hop to the peer is up already: there is nothing to punch
        state = self._peers.setdefault(peer, _Peer())
        if initiator and self.puncher.session(peer) is None:
            self.paths.add_peer(peer, now, initiates=True)
            self.paths.on_punch_requested(peer, now)
            self._start_punch(peer, now)
        elif initiator and not state.early and state.offered and state.channel is None:
            return state.offered  # the handshake starts again (IK fell back to XX)
        self._drain_cores(now)
        out, state.early = state.early, []
        if len(out) > 1:  # one message rides the handshake; the rest waits for the channel
            state.early = out[1:]
        state.offered = encode_path_signal(PunchSignal(out[0])) if out else b""
        return state.offered

    def on_handshake_payload(self, peer: NodeId, data: bytes, initiator: bool, now: float) -> None:
        """Early data from ``peer``'s handshake (only ever a path signal; WireError if not)."""
        signal = decode_path_signal(data)
        if not isinstance(signal, PunchSignal):
            return
        self._peers.setdefault(peer, _Peer())
        self.paths.add_peer(peer, now, initiates=initiator)
        self.puncher.on_signal(
            peer,
            signal.data,
            now,
            direct_allowed=self.paths.direct_allowed(peer) and not self.no_direct,
            signalling_rtt=None,
            observed=self._observed(peer),
        )
        self._drain_cores(now)

    def _adopt_hops(self, peer: NodeId, state: _Peer, now: float) -> None:
        """The hops already up to a peer now reached through a relay are its direct paths: a
        punched one (a punch negotiated in the handshake is that fast) if it came up after
        the punch started, a plain direct one if it was there before (a dialled server)."""
        punching = self.puncher.session(peer) is not None or (
            state.punch_started is not None and now - state.punch_started < PUNCH_HOP_WINDOW
        )
        for hop in self._hops.values():
            if hop.peer != peer or hop.key is not None:
                continue
            punched = (
                punching and state.punch_started is not None and hop.up_at >= state.punch_started
            )
            kind = PathKind.PUNCHED if punched else PathKind.DIRECT
            hop.key = PathKey(kind, hop.remote, hop.socket, hop.transport)
            self.paths.add_path(peer, hop.key, now, validated=True)
            self._events.append(DirectHopAdded(peer, hop.key))

    def channel_closed(self, peer: NodeId, channel: str, now: float) -> None:
        """A channel to ``peer`` closed for good; with its last one, its state goes."""
        state = self._peers.get(peer)
        if state is None:
            return
        state.channels.discard(channel)
        if state.channel == channel:
            state.channel = next(iter(state.channels), None)
        if state.channels:
            return
        del self._peers[peer]
        self._deferred_punches.discard(peer)
        self.puncher.cancel(peer, now)
        self.paths.remove_peer(peer)
        for hop in self._hops.values():
            if hop.peer == peer:
                hop.key = None  # still a hop (an observer, say), no longer a path
        self._drain_cores(now)

    def on_signal(self, peer: NodeId, channel: str | None, payload: bytes, now: float) -> None:
        """A :mod:`meshkey.wire.paths` message from ``peer`` through a secure channel (only
        ever accepted from a channel's authenticated peer). WireError if it is malformed."""
        signal = decode_path_signal(payload)
        state = self._peers.get(peer)
        if channel:
            state = self._peers.setdefault(peer, _Peer())
            state.channels.add(channel)
            state.channel = channel
        if isinstance(signal, PunchSignal):
            self.paths.add_peer(peer, now, initiates=False)
            self.puncher.on_signal(
                peer,
                signal.data,
                now,
                direct_allowed=self.paths.direct_allowed(peer),
                signalling_rtt=self.signalling_rtt(peer),
                observed=self._observed(peer),
            )
        elif isinstance(signal, PathPing):
            self._signal(peer, PathPong(signal.token))
            if state is not None and state.relay_key is not None:
                self.paths.on_received(peer, state.relay_key, len(payload), now)
        elif isinstance(signal, PathPong) and state is not None and state.relay_key is not None:
            self.paths.on_pong(peer, state.relay_key, signal.token, now)
        self._drain_cores(now)

    def signalling_rtt(self, peer: NodeId) -> float | None:
        """The round trip of the relay path the punch signals take, for a timed start: the
        relay path's pings if it has been pinged, else the channel's handshake (which went the
        same way). None when the channel is a direct hop or nothing was measured: the punch
        falls back to SYNC."""
        state = self._peers.get(peer)
        if state is None or state.relay_key is None:
            return None
        relay = next((p for p in self.paths.paths(peer) if p.key == state.relay_key), None)
        if relay is not None and relay.srtt is not None:
            return relay.srtt
        return state.channel_rtt

    def relay_description(self, peer: NodeId) -> str | None:
        state = self._peers.get(peer)
        return state.relay_key.describe() if state and state.relay_key else None

    # -- time and drains ------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        deadlines = [
            d
            for d in (
                self.nat.next_deadline(),
                self.puncher.next_deadline(),
                self.paths.next_deadline(),
            )
            if d is not None
        ]
        return min(deadlines, default=None)

    def on_timer(self, now: float) -> None:
        self.nat.on_timer(now)
        self._drain_nat(now)
        self.puncher.on_timer(now)
        self.paths.on_timer(now)
        self._drain_cores(now)

    def commands(self) -> list[EngineCommand]:
        out, self._commands = self._commands, []
        return out

    def events(self) -> list[EngineEvent]:
        out, self._events = self._events, []
        return out

    # -- internals ------------------------------------------------------------------------

    def _hops_changed(self) -> None:
        """What the classifier learns from the hops: observers and TCP evidence."""
        self.nat.hop_observers = [
            h.remote for h in self._hops.values() if h.outbound and h.transport == "udp"
        ]
        self.nat.tcp_works = any(h.transport == "tcp" for h in self._hops.values()) or None

    def _drain_nat(self, now: float) -> None:
        self._commands.extend(self.nat.commands())
        for event in self.nat.events():
            self._events.append(event)
            if isinstance(event, NetworkChanged):
                # Every UDP hop this node dialled: a PING from the new address lets its peer
                # move the connection there (QUIC migration) or shows at once it is gone.
                for name, hop in self._hops.items():
                    if hop.outbound and hop.transport == "udp":
                        self._commands.append(PingHop(name, self.rng.getrandbits(64)))
            if isinstance(event, NatClassified):
                self._update_local()
                waiting, self._deferred_punches = self._deferred_punches, set()
                for peer in waiting:
                    self._start_punch(peer, event.classification.at)
        self._drain_cores(now)

    def _update_local(self) -> None:
        """What this node tells a peer in a punch: its socket's local address, and what the
        classification found (before one, the class is unknown: a plain punch is tried)."""
        found = self.classification
        nat_class = found.nat_class if found is not None else NatClass.UNKNOWN
        tcp = self.tcp_local[:1] if nat_class is NatClass.PUBLIC else ()
        self.puncher.update_local(
            LocalCandidates(
                nat_class,
                local=self.udp_candidates,
                reflexive=tuple(found.mappings[:1]) if found is not None else (),
                tcp=tcp,
                capabilities=CAPABILITIES,
                networks=self.networks,
            )
        )

    def _signal(self, peer: NodeId, signal: PathSignal) -> None:
        state = self._peers.get(peer)
        if state is not None and state.channel is not None:
            self._commands.append(SendPathSignal(peer, state.channel, encode_path_signal(signal)))
        elif (
            state is not None
            and isinstance(signal, PunchSignal)
            and len(state.early) < MAX_EARLY_SIGNALS
        ):
            # No channel yet: a handshake with the peer is under way (a punch negotiated in
            # it): the message rides the handshake, or goes once the channel opens.
            state.early.append(signal.data)

    def _drain_cores(self, now: float) -> None:
        for _ in range(100):
            busy = False
            for command in self.puncher.commands():
                busy = True
                if isinstance(command, SendSignal):
                    self._signal(command.peer, PunchSignal(command.data))
                else:
                    self._commands.append(command)
            for event in self.puncher.events():
                busy = True
                self._punch_event(event, now)
            for path_command in self.paths.commands():
                busy = True
                self._path_command(path_command, now)
            for path_event in self.paths.events():
                busy = True
                self._events.append(path_event)
            if not busy:
                return

    def _punch_event(self, event: PunchEvent, now: float) -> None:
        self._events.append(event)
        if isinstance(event, PunchSucceeded):
            public = self.classification.public_address if self.classification else None
            if public is not None and event.seen_as and event.seen_as != public:
                self.nat.on_contradiction(now)
        self.paths.on_punch_event(event, now)

    def _path_command(self, command: object, now: float) -> None:
        if isinstance(command, SendPathPing):
            if command.path.kind is PathKind.RELAY:
                self._signal(command.peer, PathPing(command.token))
            else:
                link = self._link_of(command.peer, command.path)
                if link is not None:
                    self._commands.append(PingHop(link, command.token))
        elif isinstance(command, StartPunch):
            if self._must_wait_for_class(now):
                self._deferred_punches.add(command.peer)
            else:
                self._start_punch(command.peer, now)
        elif isinstance(command, CancelPunch):
            self.puncher.cancel(command.peer, now)
        elif isinstance(command, CloseSocket):
            self._commands.append(command)
        elif isinstance(command, ClosePath):
            link = self._link_of(command.peer, command.path)
            if link is not None:
                self._hops.pop(link, None)
                self._commands.append(CloseHop(link, "the path failed"))
            if command.path.local_socket:
                self._commands.append(CloseSocket(command.path.local_socket))

    def _link_of(self, peer: NodeId, key: PathKey) -> str | None:
        for name, hop in self._hops.items():
            if hop.peer == peer and hop.key == key:
                return name
        return None

    def _must_wait_for_class(self, now: float) -> bool:
        found = self.classification
        due = self.nat.recheck.next_deadline()
        soon = due is not None and due <= now + CLASSIFY_SOON and bool(self.known_observers())
        unknown = found is None or found.nat_class is NatClass.UNKNOWN
        return unknown and (self.classifying or soon)

    def _start_punch(self, peer: NodeId, now: float) -> None:
        state = self._peers.setdefault(peer, _Peer())
        state.punch_started = now
        self.puncher.start(
            peer, now, direct_allowed=self.paths.direct_allowed(peer), observed=self._observed(peer)
        )

    def _observed(self, peer: NodeId) -> tuple[Endpoint, ...]:
        """Where this node itself saw ``peer``: its hops' remotes, and what the glue knows
        (never what a record claims)."""
        seen = [hop.remote for hop in self._hops.values() if hop.peer == peer]
        return tuple(dict.fromkeys([*seen, *self.observed_elsewhere(peer)]))


def decode_signal(payload: bytes) -> PathSignal | None:
    """The signal in ``payload``, or None if it is malformed."""
    try:
        return decode_path_signal(payload)
    except WireError:
        return None
