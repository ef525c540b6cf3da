"""The hop protocol core, sans-IO: framing, two-step hop authentication, and liveness.

It takes the bytes the encrypted transport (TLS or a QUIC stream) delivered and returns
events; bytes to write are collected in :meth:`HopConnection.chunks_to_send`. It never touches
a socket, and it reads no clock: every input that depends on time takes ``now``, and
:meth:`HopConnection.next_deadline` says when to call :meth:`HopConnection.on_timer`.

Authentication (DESIGN.md decision 4): the client first learns the server's NodeId from the
key in its TLS certificate (:meth:`certificate_verified`), which must match the NodeId the route
named, if any, and the one in SERVER_HELLO. It then signs a proof bound to the transport, the
server's NodeId and the server's fresh nonce. The hop is open when the server has verified the
proof and said AUTH_OK; only then does either side report :class:`PeerAuthenticated`. Until
then only frames of at most :data:`MAX_AUTH_FRAME` bytes are accepted (a stranger cannot make
the node buffer a 2 MiB frame), and the whole authentication must finish within
``Liveness.auth_timeout``.

States (:class:`Phase`; :class:`State` is the coarse view the glue reads): a client starts in
AWAIT_HELLO, sends its proof on SERVER_HELLO (AWAIT_AUTH_OK) and opens on AUTH_OK; a server
starts in AWAIT_PROOF and opens on a proof that verifies. :data:`TRANSITIONS` lists, as h11's
``_state.py`` does, every frame each phase accepts from the peer and the phase it leads to; any
other frame is a protocol violation, and CLOSE leads to CLOSED from every phase. CLOSED is
terminal: nothing is read any more, and sending raises :class:`HopLocalError`.

A peer's protocol violation never raises out of :meth:`receive_data`: everything decoded
before it is returned, followed by :class:`HopFailed` (and the CLOSE frame is queued), as
aioquic turns a violation into an event after the output it already produced.

Liveness, once open (:class:`Liveness` holds the periods):

* idle: without keepalive, a hop on which nothing was sent or received for ``idle_timeout``
  reports :class:`HopIdle` (the glue closes it, unless it still has queued messages);
* keepalive: with it, a PING goes out whenever nothing was received for
  ``keepalive_interval`` (keeping NAT mappings and the peer's idle timer fresh), and a hop
  that heard nothing for ``dead_after`` is :class:`HopUnresponsive`;
* unanswered traffic: a message sent after ``probe_quiet`` of silence from the peer is
  followed by a PING, and the peer must say something within ``answer_timeout`` (at least
  4 x the smoothed ping RTT): a far end that died is noticed within seconds of the next
  send, not at the next idle timeout;
* suspicion: an ICMP error (:meth:`suspect`) asks the same question with ``suspect_grace``;
  ICMP can be forged, so it never closes a hop that still answers.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from meshkey.identity.keys import Identity, verify_signature
from meshkey.identity.node_id import NodeId
from meshkey.timing import RttEstimate
from meshkey.wire.errors import WireError
from meshkey.wire.frames import MAX_FRAME, FrameDecoder, encode_frame, frame_header
from meshkey.wire.hop import (
    MAX_CLOSE_REASON,
    NONCE_SIZE,
    AuthOk,
    ClientProof,
    Close,
    CloseCode,
    HopFrame,
    HopFrameType,
    MessageFrame,
    Ping,
    Pong,
    ServerHello,
    decode_hop_frame,
    encode_hop_frame,
    proof_payload,
)

_MESSAGE = bytes([HopFrameType.MESSAGE])
#: The largest frame authentication needs (a CLOSE with its longest reason), rounded up.
MAX_AUTH_FRAME = 512
assert MAX_AUTH_FRAME > 2 + MAX_CLOSE_REASON
#: Pings whose send time is remembered for RTT measurement.
_MAX_PINGS_TIMED = 8


class HopError(Exception):
    """The hop must be closed; a CLOSE frame with ``code`` has been queued for the peer."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class HopLocalError(RuntimeError):
    """This side misused the hop (sent on a hop that is not open); nothing was queued."""


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    AUTHENTICATING = "authenticating"
    OPEN = "open"
    CLOSED = "closed"


class Phase(enum.Enum):
    """Where a hop is in the protocol; see :data:`TRANSITIONS`."""

    AWAIT_HELLO = "awaiting SERVER_HELLO"  # client, before its proof
    AWAIT_AUTH_OK = "awaiting AUTH_OK"  # client, its proof sent
    AWAIT_PROOF = "awaiting CLIENT_PROOF"  # server, its SERVER_HELLO sent
    OPEN = "open"
    CLOSED = "closed"

    @property
    def state(self) -> State:
        return _STATE_OF[self]


_STATE_OF = {
    Phase.AWAIT_HELLO: State.AUTHENTICATING,
    Phase.AWAIT_AUTH_OK: State.AUTHENTICATING,
    Phase.AWAIT_PROOF: State.AUTHENTICATING,
    Phase.OPEN: State.OPEN,
    Phase.CLOSED: State.CLOSED,
}

#: The frames a hop accepts from its peer in each phase, and the phase each leads to. Any
#: other frame closes the hop with PROTOCOL_ERROR; an allowed one can still fail its own
#: checks (a proof that does not verify: AUTH_FAILED). Nothing is read in CLOSED.
TRANSITIONS: dict[Phase, dict[type[HopFrame], Phase]] = {
    Phase.AWAIT_HELLO: {ServerHello: Phase.AWAIT_AUTH_OK, Close: Phase.CLOSED},
    Phase.AWAIT_AUTH_OK: {AuthOk: Phase.OPEN, Close: Phase.CLOSED},
    Phase.AWAIT_PROOF: {ClientProof: Phase.OPEN, Close: Phase.CLOSED},
    Phase.OPEN: {
        MessageFrame: Phase.OPEN,
        Ping: Phase.OPEN,
        Pong: Phase.OPEN,
        Close: Phase.CLOSED,
    },
    Phase.CLOSED: {},
}


@dataclass(frozen=True, slots=True)
class Liveness:
    """How a hop decides it is idle or its peer is gone; see the module docstring."""

    auth_timeout: float = 10.0
    idle_timeout: float = 300.0
    keepalive_interval: float = 20.0
    dead_after: float = 60.0
    probe_quiet: float = 1.0
    answer_timeout: float = 2.0
    suspect_grace: float = 1.0


@dataclass(frozen=True, slots=True)
class PeerAuthenticated:
    node_id: NodeId


@dataclass(frozen=True, slots=True)
class MessageReceived:
    body: bytes | memoryview  # a view into the frame: parsed without another copy


@dataclass(frozen=True, slots=True)
class PongReceived:
    token: int


@dataclass(frozen=True, slots=True)
class PeerClosed:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class HopFailed:
    """The peer broke the protocol or authentication, or (``timed_out``) never finished
    authenticating in time; the hop is closed (CLOSE queued)."""

    code: CloseCode
    reason: str
    timed_out: bool = False


@dataclass(frozen=True, slots=True)
class HopIdle:
    """Nothing was sent or received for the idle timeout (and no keepalive is wanted)."""


@dataclass(frozen=True, slots=True)
class HopUnresponsive:
    """The peer stopped answering: the hop should be closed; ``reason`` says how it showed."""

    reason: str


HopEvent = (
    PeerAuthenticated
    | MessageReceived
    | PongReceived
    | PeerClosed
    | HopFailed
    | HopIdle
    | HopUnresponsive
)


class HopConnection:
    def __init__(
        self,
        role: Role,
        identity: Identity,
        transport: str,
        *,
        expected_peer: NodeId | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        liveness: Liveness = Liveness(),
        now: float = 0.0,
    ) -> None:
        self.role = role
        self.phase = Phase.AWAIT_PROOF if role is Role.SERVER else Phase.AWAIT_HELLO
        self.peer: NodeId | None = None
        self.liveness = liveness
        self.keepalive = False
        #: A watched hop (it carries a relay registration): keepalives this often, each
        #: expecting its answer, so a peer that died is noticed in seconds, not a minute.
        self.watch_interval: float | None = None
        self.ping_rtt = RttEstimate()  # PING -> PONG round trips (RFC 6298 smoothing)
        self._identity = identity
        self._transport = transport
        self._expected = expected_peer
        self._decoder = FrameDecoder(MAX_AUTH_FRAME)
        self._outgoing: list[bytes] = []
        self._nonce = b""
        self._certificate_peer: NodeId | None = None
        self._auth_deadline = now + liveness.auth_timeout
        self.last_received = now
        self._last_activity = now
        self._answer_by: float | None = None  # the peer must say something before this
        self.suspected = False  # asked by suspect() to prove itself, and silent since
        self._answer_why = ""
        self._pings_sent = 0
        self._ping_times: dict[int, float] = {}
        if role is Role.SERVER:
            self._nonce = random_bytes(NONCE_SIZE)
            self._queue(ServerHello(identity.node_id.raw, self._nonce))

    @property
    def state(self) -> State:
        return self.phase.state

    @property
    def is_open(self) -> bool:
        return self.phase is Phase.OPEN

    @property
    def rtt(self) -> float | None:
        """The smoothed ping round trip, once measured."""
        return self.ping_rtt.srtt

    def chunks_to_send(self) -> list[bytes]:
        """The bytes to write, as chunks (message bodies are never copied into one buffer)."""
        chunks, self._outgoing = self._outgoing, []
        return chunks

    def data_to_send(self) -> bytes:
        return b"".join(self.chunks_to_send())

    # -- inputs -----------------------------------------------------------------------

    def certificate_verified(self, node_id: NodeId) -> None:
        """Client: the NodeId whose key the server's certificate holds (proven by TLS).

        Raises HopError (CLOSE queued) when it is not the NodeId the route expected."""
        if self._expected is not None and node_id != self._expected:
            self._fail(
                CloseCode.AUTH_FAILED,
                f"peer presented NodeId {node_id}, expected {self._expected}",
            )
        self._certificate_peer = node_id

    def receive_data(self, data: bytes, now: float | None = None) -> list[HopEvent]:
        """Events for ``data``; a violation ends the list with HopFailed. Then drain
        :meth:`chunks_to_send` and re-read :meth:`next_deadline`."""
        if self.phase is Phase.CLOSED:
            return []
        if now is not None:
            self.last_received = self._last_activity = now
            self._answer_by = None
            self.suspected = False
        events: list[HopEvent] = []
        try:
            bodies = self._decoder.feed(data)
            for body in bodies:
                if body[:1] == _MESSAGE and self.phase is Phase.OPEN:  # the hot path: no copy
                    events.append(MessageReceived(memoryview(body)[1:]))
                    continue
                event = self._handle(decode_hop_frame(body), now)
                if event is not None:
                    events.append(event)
                if self._is_closed():  # a CLOSE frame: what follows it is not read
                    break
        except WireError as exc:
            events.append(self._failed(CloseCode.PROTOCOL_ERROR, str(exc)))
        except HopError as exc:
            events.append(HopFailed(exc.code, exc.reason))
        return events

    def send_message(self, *parts: bytes, now: float | None = None) -> None:
        """Queues a MESSAGE frame whose body is the concatenation of ``parts`` (not copied).

        Raises HopLocalError (local misuse) unless the hop is open."""
        if self.phase is not Phase.OPEN:
            raise HopLocalError(f"cannot send on a hop that is {self.state.value}")
        self._outgoing.append(frame_header(sum(map(len, parts)) + 1) + _MESSAGE)
        self._outgoing.extend(part for part in parts if part)
        if now is not None:
            self._last_activity = now
            if self._answer_by is None and now - self.last_received >= self.liveness.probe_quiet:
                self._expect_answer(now, self._answer_timeout(), "no answer to traffic")

    def ping(self, now: float | None = None, token: int | None = None) -> None:
        """Queues a PING (its PONG comes back as PongReceived(token)); ``token`` defaults to
        the next of this hop's own."""
        if self.phase is Phase.OPEN:
            self._pings_sent += 1
            if token is None:
                token = self._pings_sent
            if now is not None:
                self._ping_times[token] = now
                while len(self._ping_times) > _MAX_PINGS_TIMED:
                    del self._ping_times[min(self._ping_times)]
            self._queue(Ping(token))

    def suspect(self, now: float, why: str = "the peer is gone (ICMP)") -> None:
        """An ICMP error came back for this peer (or another hint that it is gone): ask it
        to prove it is still there."""
        if self.phase is Phase.OPEN:
            self.suspected = True
            self._expect_answer(now, self.liveness.suspect_grace, why)

    def on_timer(self, now: float) -> list[HopEvent]:
        """Events due at ``now``; then drain :meth:`chunks_to_send`, re-read the deadline."""
        if self.state is State.AUTHENTICATING:
            if now >= self._auth_deadline:
                self.close(CloseCode.AUTH_FAILED, "authentication timed out")
                return [HopFailed(CloseCode.AUTH_FAILED, "authentication timed out", True)]
            return []
        if self.phase is not Phase.OPEN:
            return []
        live = self.liveness
        # Deadlines are compared as the sums next_deadline() returns (not as differences),
        # so a timer fired exactly at its deadline always finds it due.
        if self._answer_by is not None and now >= self._answer_by:
            quiet = now - self.last_received
            return [HopUnresponsive(f"{self._answer_why} for {quiet:.1f}s")]
        if self.keepalive:
            if now >= self.last_received + live.dead_after:
                quiet = now - self.last_received
                return [HopUnresponsive(f"no answer to keepalives for {quiet:.0f}s")]
            if now >= self._next_ping():
                if self.watch_interval is not None:
                    self._expect_answer(now, self._answer_timeout(), "no answer to a keepalive")
                else:
                    self.ping(now)
        elif now >= self._last_activity + live.idle_timeout:
            return [HopIdle()]
        return []

    def note_activity(self, now: float) -> None:
        """Counts as traffic for the idle timer (the glue still had messages to send)."""
        self._last_activity = now

    def next_deadline(self) -> float | None:
        if self.state is State.AUTHENTICATING:
            return self._auth_deadline
        if self.phase is not Phase.OPEN:
            return None
        live = self.liveness
        deadlines = [] if self._answer_by is None else [self._answer_by]
        if self.keepalive:
            deadlines += [self._next_ping(), self.last_received + live.dead_after]
        else:
            deadlines.append(self._last_activity + live.idle_timeout)
        return min(deadlines)

    def close(self, code: CloseCode = CloseCode.NORMAL, reason: str = "") -> None:
        if self.phase is not Phase.CLOSED:
            self._queue(Close(code, reason))
            self.phase = Phase.CLOSED

    # -- internals --------------------------------------------------------------------

    def _is_closed(self) -> bool:
        return self.phase is Phase.CLOSED

    def _answer_timeout(self) -> float:
        measured = 4 * self.rtt if self.rtt is not None else 0.0
        return max(self.liveness.answer_timeout, measured)

    def _expect_answer(self, now: float, within: float, why: str) -> None:
        deadline = now + within
        if self._answer_by is None or deadline < self._answer_by:
            self._answer_by, self._answer_why = deadline, why
        self.ping(now)

    def _next_ping(self) -> float:
        """Keepalive: when nothing was received for an interval, and at most one ping per
        interval (a third of dead_after, if shorter, so a dead peer gets three chances)."""
        live = self.liveness
        interval = live.keepalive_interval
        if self.watch_interval is not None:
            interval = min(interval, self.watch_interval)
        last_ping = max(self._ping_times.values(), default=float("-inf"))
        return max(
            self.last_received + interval,
            last_ping + min(interval, live.dead_after / 3),
        )

    def _queue(self, frame: HopFrame) -> None:
        self._outgoing.append(encode_frame(encode_hop_frame(frame)))

    def _failed(self, code: CloseCode, reason: str) -> HopFailed:
        self.close(code, reason)
        return HopFailed(code, reason)

    def _fail(self, code: CloseCode, reason: str) -> NoReturn:
        self.close(code, reason)
        raise HopError(code, reason)

    def _handle(self, frame: HopFrame, now: float | None) -> HopEvent | None:
        """One frame from the peer, as :data:`TRANSITIONS` allows (HopError otherwise)."""
        after = TRANSITIONS[self.phase].get(type(frame))
        if after is None:
            self._fail(
                CloseCode.PROTOCOL_ERROR,
                f"unexpected {type(frame).__name__} ({self.phase.value})",
            )
        event: HopEvent | None = None
        if isinstance(frame, Close):
            event = PeerClosed(frame.code, frame.reason)
        elif isinstance(frame, MessageFrame):
            event = MessageReceived(frame.body)
        elif isinstance(frame, Ping):
            self._queue(Pong(frame.token))
        elif isinstance(frame, Pong):
            sent = self._ping_times.pop(frame.token, None)
            if sent is not None and now is not None:
                self.ping_rtt.add(now - sent)
            event = PongReceived(frame.token)
        elif isinstance(frame, ServerHello):
            self._prove(frame)
        elif isinstance(frame, ClientProof):
            event = self._open(self._verify(frame))
        else:
            assert isinstance(frame, AuthOk)
            assert self._certificate_peer is not None  # AWAIT_AUTH_OK: the proof checked it
            event = self._open(self._certificate_peer)
        self.phase = after
        return event

    def _prove(self, hello: ServerHello) -> None:
        """Client: the server named itself; sign the proof bound to it and its nonce."""
        server = NodeId(hello.node_id)
        if self._certificate_peer is None:
            self._fail(CloseCode.AUTH_FAILED, "server hello before the certificate check")
        if server != self._certificate_peer:
            self._fail(
                CloseCode.AUTH_FAILED,
                f"server hello names {server}, its certificate {self._certificate_peer}",
            )
        payload = proof_payload(
            self._transport, server.raw, self._identity.node_id.raw, hello.nonce
        )
        self._queue(ClientProof(self._identity.node_id.raw, self._identity.sign(payload)))

    def _verify(self, proof: ClientProof) -> NodeId:
        """Server: the client's proof must be signed by the NodeId it claims, for this hop."""
        client = NodeId(proof.node_id)
        payload = proof_payload(
            self._transport, self._identity.node_id.raw, client.raw, self._nonce
        )
        if not verify_signature(client, payload, proof.signature):
            self._fail(CloseCode.AUTH_FAILED, f"proof of NodeId {client} does not verify")
        self._queue(AuthOk())
        return client

    def _open(self, peer: NodeId) -> PeerAuthenticated:
        self.peer = peer
        self._decoder.max_frame = MAX_FRAME  # authenticated: full-size messages from now on
        return PeerAuthenticated(peer)
