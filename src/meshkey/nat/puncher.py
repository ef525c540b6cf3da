"""A node's punches: one :class:`~meshkey.nat.punch.PunchSession` per peer, demultiplexed.

The glue owns one :class:`Puncher` per node. It feeds it the punch messages that arrive on
secure channels (:meth:`Puncher.on_signal`, raw bytes: decoding happens here) and the punch
control packets that arrive on any socket (:meth:`Puncher.on_control_packet`, also raw), and
executes what comes out of :meth:`Puncher.commands`. Unknown punch ids, undecodable bytes
and packets for finished sessions are dropped silently (counted in :attr:`Puncher.dropped`):
a probe from a third party costs one MAC check and nothing else.

Glare: when both sides start a punch with each other at once, each receives the other's
CONNECT while its own is unanswered. The punch started by the lower NodeId survives: the
higher side drops its own session (without an ABORT: the peer ignores it anyway) and answers.
A CONNECT that replaces a running punch cancels it first, so a birthday punch gives the gate
back (it used to be forgotten with the gate held, refusing every later birthday punch).

No amplifier (:mod:`meshkey.nat.allowance`): each punch probes only where its peer plausibly
is — the addresses the glue observed for it (``observed``, to :meth:`Puncher.start` and
:meth:`Puncher.on_signal`), else those earlier punches with it saw its valid probes come
from (remembered here, a few per peer, as a hint) — and sends at most three times what the
peer sent for it;
:class:`~meshkey.nat.allowance.PeerLimits` caps the datagrams per peer per minute and per node
per second across all punches.

:class:`UpgradeRetry` is the pace of attempts *between* punches, on the one
:class:`~meshkey.retry.RetrySchedule`: 40 s after a retryable failure, then every 60 s (the
re-probe period while relayed, as Tailscale and iroh); after a refusal that no retry can
change soon (both endpoint-dependent, UDP blocked) straight to 60 s — classes change when
networks do, and the next CONNECT exchange costs two small messages. A peer's
``retry_after`` (its birthday gate) is honoured.

Why not retry at once: in NATs built on Linux conntrack, the usual reason a punch between two
easy NATs fails is a *clash* (NATLAB.md): a probe reached a NAT before that side's own first
packet left, conntrack recorded it as an unreplied inbound flow, and the NAT moved that
side's flow to another port. The peer's probes keep that entry alive; it dies 30 s after they
stop (``nf_conntrack_udp_timeout``). A retry sooner than that fails the same way — as does a
punch right after a direct path died, when the peer's last packets to the lost mapping left
the same kind of entry behind. 40 s (36-44 s with jitter) clears it with margin.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from meshkey.identity.node_id import NodeId
from meshkey.nat.allowance import PeerLimits
from meshkey.nat.birthday import BirthdayGate
from meshkey.nat.punch import (
    LocalCandidates,
    PunchCommand,
    PunchEvent,
    PunchSession,
    counting_allocator,
)
from meshkey.nat.strategy import MESHKEY, PunchConfig
from meshkey.retry import RetrySchedule
from meshkey.wire.errors import WireError
from meshkey.wire.net import Endpoint, NatClass
from meshkey.wire.punch import (
    PUNCH_ID_SIZE,
    AbortReason,
    Connect,
    PunchMessage,
    decode_punch_message,
)
from meshkey.wire.udp import (
    PunchProbe,
    PunchRole,
    decode_punch_packet,
)

MAX_SESSIONS = 1024  # punches running at once; more are refused (a peer cannot fill memory)
MAX_SEEN_PER_PEER = 4  # addresses remembered per peer, where its valid probes came from
MAX_PEERS_SEEN = 4096


class Puncher:
    def __init__(
        self,
        node_id: NodeId,
        *,
        config: PunchConfig = MESHKEY,
        rng: random.Random | None = None,
        local: LocalCandidates | None = None,
    ) -> None:
        self.node_id = node_id
        self.config = config
        self.local = local or LocalCandidates(NatClass.UNKNOWN)
        self.gate = BirthdayGate(config.birthday_spacing)
        self.dropped = 0
        self._rng = rng or random.Random()
        self._by_peer: dict[NodeId, PunchSession] = {}
        self._by_id: dict[bytes, PunchSession] = {}
        self._allocate = counting_allocator()  # one id space for every punch's sockets
        self.limits = PeerLimits()
        self._seen: OrderedDict[NodeId, tuple[Endpoint, ...]] = OrderedDict()
        self._commands: list[PunchCommand] = []
        self._events: list[PunchEvent] = []

    # -- inputs ---------------------------------------------------------------------

    def update_local(self, local: LocalCandidates) -> None:
        """A new classification or new addresses; used by punches that start from now on."""
        self.local = local

    def seen(self, peer: NodeId) -> tuple[Endpoint, ...]:
        """Where earlier punches saw ``peer``'s valid probes and ACKs come from (a hint)."""
        return self._seen.get(peer, ())

    def start(
        self,
        peer: NodeId,
        now: float,
        *,
        direct_allowed: bool = True,
        binding: bytes = b"",
        observed: Iterable[Endpoint] = (),
    ) -> bytes:
        """Starts a punch with ``peer`` (replacing a running one); returns its punch id.

        ``binding``: channel-binding bytes both ends can compute (e.g. the secure channel's
        handshake hash), mixed into the probe key; the glue passes the same on both sides.
        ``observed``: addresses this node observed ``peer`` at (where its hops or its relay
        registration came from): its public candidates are probed only at those IPs; without
        any, only its first one, as a claim (:mod:`meshkey.nat.allowance`)."""
        self._end(peer, AbortReason.SUPERSEDED, now)
        session = PunchSession(
            role=PunchRole.INITIATOR,
            local_id=self.node_id,
            peer=peer,
            me=self.local,
            punch_id=self._rng.randbytes(PUNCH_ID_SIZE),
            now=now,
            config=self.config,
            rng=self._rng,
            gate=self.gate,
            sockets=self._allocate,
            direct_allowed=direct_allowed,
            binding=binding,
            observed=tuple(observed),
            seen=self.seen(peer),
            limits=self.limits,
        )
        session.start()
        self._add(session)
        return session.punch_id

    def on_signal(
        self,
        peer: NodeId,
        data: bytes,
        now: float,
        *,
        direct_allowed: bool = True,
        binding: bytes = b"",
        signalling_rtt: float | None = None,
        observed: Iterable[Endpoint] = (),
    ) -> None:
        """A punch message from ``peer`` arrived over the secure channel with it.
        ``direct_allowed`` False (``--no-direct`` for that peer) refuses its punches.
        ``signalling_rtt``: the round trip of that channel's path, if the glue knows it (the
        relay path's pings, else the channel's handshake): a CONNECT is then answered with a
        timed start instead of waiting for SYNC. ``observed``: as for :meth:`start`."""
        try:
            message = decode_punch_message(data)
        except WireError:
            self.dropped += 1
            return
        self.on_message(
            peer,
            message,
            now,
            direct_allowed=direct_allowed,
            binding=binding,
            signalling_rtt=signalling_rtt,
            observed=observed,
            size=len(data),
        )

    def on_message(
        self,
        peer: NodeId,
        message: PunchMessage,
        now: float,
        *,
        direct_allowed: bool = True,
        binding: bytes = b"",
        signalling_rtt: float | None = None,
        observed: Iterable[Endpoint] = (),
        size: int | None = None,
    ) -> None:
        """A decoded punch message from ``peer`` (:meth:`on_signal` decodes); ``size``: its
        bytes as they came (default: encoded again), what the peer paid."""
        current = self._by_peer.get(peer)
        if isinstance(message, Connect) and not message.reply:
            if current is not None and current.live and current.punch_id != message.punch_id:
                if current.role is PunchRole.INITIATOR and self.node_id < peer:
                    return  # glare: our punch wins, the peer will answer it
                # Superseded by the peer's new punch (or glare, which its punch wins): ended,
                # so a birthday punch gives the gate back; the peer needs no ABORT for it.
                current.cancel(AbortReason.SUPERSEDED, now, tell_peer=False)
                self._collect(current)
                self._forget(current)
            elif current is not None and current.punch_id == message.punch_id:
                return  # a duplicate CONNECT
            if len(self._by_id) >= MAX_SESSIONS:
                self.dropped += 1
                return
            responder = PunchSession(
                role=PunchRole.RESPONDER,
                local_id=self.node_id,
                peer=peer,
                me=self.local,
                punch_id=message.punch_id,
                now=now,
                config=self.config,
                rng=self._rng,
                gate=self.gate,
                sockets=self._allocate,
                direct_allowed=direct_allowed,
                binding=binding,
                observed=tuple(observed),
                seen=self.seen(peer),
                limits=self.limits,
            )
            responder.accept(message, now, signalling_rtt=signalling_rtt, size=size)
            self._add(responder)
            return
        session = self._by_id.get(message.punch_id)
        if session is None or session.peer != peer:
            self.dropped += 1  # another peer's punch id: a channel cannot speak for another
            return
        session.on_signal(message, now, size=size)
        self._collect(session)

    def on_control_packet(self, socket: int, source: Endpoint, data: bytes, now: float) -> None:
        """A PUNCH_PROBE or PUNCH_ACK arrived on ``socket`` (0: the main one) from ``source``."""
        try:
            packet = decode_punch_packet(data)
        except WireError:
            self.dropped += 1
            return
        session = self._by_id.get(packet.punch_id)
        if session is None:
            self.dropped += 1
            return
        if isinstance(packet, PunchProbe):
            session.on_probe(source, packet, now, socket=socket)
        else:
            session.on_ack(source, packet, now, socket=socket)
        self._remember(session)
        self._collect(session)

    def on_socket_error(self, socket: int, now: float) -> None:
        for session in list(self._by_id.values()):
            session.on_socket_error(socket, now)

    def cancel(self, peer: NodeId, now: float, reason: AbortReason = AbortReason.CANCELLED) -> None:
        self._end(peer, reason, now)

    def on_timer(self, now: float) -> None:
        for session in list(self._by_id.values()):
            deadline = session.next_deadline()
            if deadline is not None and deadline <= now:
                session.on_timer(now)
            self._collect(session)

    def next_deadline(self) -> float | None:
        deadlines = [d for s in self._by_id.values() if (d := s.next_deadline()) is not None]
        return min(deadlines, default=None)

    # -- output ---------------------------------------------------------------------

    def commands(self) -> list[PunchCommand]:
        out, self._commands = self._commands, []
        return out

    def events(self) -> list[PunchEvent]:
        out, self._events = self._events, []
        return out

    def session(self, peer: NodeId) -> PunchSession | None:
        """The punch with ``peer`` running or lingering now, for status displays."""
        return self._by_peer.get(peer)

    # -- internals ------------------------------------------------------------------

    def _add(self, session: PunchSession) -> None:
        self._by_peer[session.peer] = session
        self._by_id[session.punch_id] = session
        self._collect(session)

    def _end(self, peer: NodeId, reason: AbortReason, now: float) -> None:
        current = self._by_peer.get(peer)
        if current is not None:
            current.cancel(reason, now)
            self._collect(current)
            self._forget(current)

    def _remember(self, session: PunchSession) -> None:
        """Where the peer's valid probes came from is observed: the next punch may use it."""
        seen = session.seen
        if not seen:
            return
        known = self._seen.pop(session.peer, ())
        self._seen[session.peer] = tuple(dict.fromkeys((*seen, *known)))[:MAX_SEEN_PER_PEER]
        while len(self._seen) > MAX_PEERS_SEEN:
            self._seen.popitem(last=False)

    def _forget(self, session: PunchSession) -> None:
        self._commands.extend(session.commands())
        self._events.extend(session.events())
        self._by_id.pop(session.punch_id, None)
        if self._by_peer.get(session.peer) is session:
            del self._by_peer[session.peer]

    def _collect(self, session: PunchSession) -> None:
        self._commands.extend(session.commands())
        self._events.extend(session.events())
        if session.finished:
            self._forget(session)


@dataclass
class UpgradeRetry:
    """When to attempt the next punch with a peer we reach only through a relay."""

    first: float = 40.0
    reprobe: float = 60.0
    rng: random.Random = field(default_factory=random.Random, repr=False)
    _schedule: RetrySchedule = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._schedule = RetrySchedule(self.first, self.reprobe, jitter=0.1, rng=self.rng)

    def after_failure(self, now: float, *, retryable: bool, retry_after: float = 0.0) -> float:
        delay = self._schedule.next_delay() if retryable else self.reprobe
        return now + max(delay or self.reprobe, retry_after)

    def after_success(self) -> None:
        self._schedule.reset()

    def after_path_lost(self, now: float) -> float:
        """The direct path died: try again soon, the backoff having been reset by its success."""
        return now + (self._schedule.next_delay() or self.reprobe)
