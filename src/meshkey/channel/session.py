"""One end of a secure channel, sans-IO: handshake with identity proofs, then sealed messages.

(Over 600 lines on purpose: one machine, the session's handshakes (XX, IK and the fallback
between them) and its data; the key schedules are :mod:`~meshkey.channel.keys`, the Noise
patterns :mod:`~meshkey.channel.noise`; a ninth of it is this theory of operation.)

Bytes in (channel payloads, :mod:`meshkey.wire.channel`), results out; no sockets, no clock.

After the handshake each side knows the other's NodeId: it checked that the NodeId's
signature attests the X25519 static key Noise authenticated, and (if given) that the NodeId is
in its ``authorized`` set. Two handshakes (:mod:`meshkey.channel.noise`):

* **XX** (three messages), when nothing is known of the responder. The responder then sends
  CONFIRM (or REFUSE), so an initiator that is not wanted hears so instead of talking into the
  void: open after two round trips.
* **IK** (two messages), when the initiator knows the responder's X25519 static key
  (``responder_key``, from its signed peer record). IK_HELLO carries the initiator's identity
  proof, IK_REPLY the responder's: the initiator is open after one round trip, and sends a
  sealed CONFIRM (then its data, in the same breath). The responder is open at the first sealed
  message from the initiator, not at IK_HELLO: that one can be replayed by anyone who saw it,
  and a replay must not open a channel (its freshness is also checked:
  :mod:`meshkey.channel.freshness`). A responder that cannot use the IK_HELLO (it does not hold
  the key the initiator encrypted to: the record was stale, the node has a new key; or the
  hello is a replay) raises :class:`UseXX`, and its glue answers USE_XX; the initiator's session
  then starts over as XX by itself (:attr:`Received.restarted`), over the same route.

What each side learns, and when (identity hiding, Noise spec section 7). With XX, a passive
observer of the route (the relay) learns neither identity, and the initiator's travels with
forward secrecy; the responder shows its identity before the initiator proves one, so an active
attacker posing as an initiator learns whom it reached. With IK, the initiator's identity
travels in IK_HELLO encrypted to the responder's static key: a passive observer and the relay
still learn neither identity (the responder's NodeId travels in IK_REPLY, with forward secrecy;
its key was public in its record anyway). What IK gives up: a party that later obtains the
responder's static private key can decrypt recorded IK_HELLOs and learn who dialled (no forward
secrecy for the initiator's identity), and one that holds it now can forge an IK_HELLO from any
initiator whose attestation it has (key-compromise impersonation). Neither opens a channel:
the responder opens only when the initiator proves the final keys, which need the initiator's
static private key; what such a forgery reaches is the early data hook (see below). Everything
after IK_HELLO has forward secrecy, as with XX.

Early data: each side may have the handshake carry an opaque payload (at most
:data:`~meshkey.wire.channel.MAX_EARLY_DATA` bytes, encrypted under the handshake keys) for the
layer above, e.g. a punch's candidates: the initiator's in IK_HELLO (XX: FINISH), the
responder's in IK_REPLY (XX: HELLO_REPLY, when the responder does not yet know who dials, so it
is asked with ``peer=None``). The session asks its :class:`HandshakeHooks` for this side's as it
writes the message, and hands them the peer's once its sender is authenticated, before it
writes its answer.

One encryption layer on a direct hop (DESIGN decision 19): on a hop between the channel's two
NodeIds (mutually authenticated and encrypted already), DATA may go PLAIN, not sealed again
(:meth:`SecureSession.plain`), once the peer was heard open (:attr:`peer_open`). A PLAIN
message takes its nonce from the same sequence, and passes the same replay window and key
schedule, as a sealed one; it names its session by a tag from the handshake hash. The glue
decides where it may go and tells :meth:`SecureSession.receive` whether a payload came over
such a hop (``direct``): a PLAIN one from anywhere else is a tampering (:class:`ChannelError`).
When the path moves to a relay, what went plain and is sent again goes sealed under its own
nonce (:meth:`SecureSession.reseal`), so the peer takes it once, and the relay never sees it.

Transport messages carry explicit 64-bit nonces. Every :data:`REKEY_INTERVAL` nonces the key
moves on (Noise REKEY); a receiver accepts each nonce once, within :data:`REPLAY_WINDOW` of the
newest, keeping the previous key for late arrivals. A message that fails authentication means
someone on the route tampered with it: :class:`ChannelError`, and the channel closes. A
replayed or too-old one is only dropped (:class:`ReplayedMessage`).

What may happen when is one table, :data:`TRANSITIONS` (h11's ``_state.py`` is the model):
for each :class:`Phase` (the handshake's steps per role, then OPEN and CLOSED), the inputs it
allows and the phase each leads to. The inputs are the kinds of payload the peer sends and
what the owner does (:class:`Local`: start, seal, close). Anything else is refused with a
typed error: :class:`UnexpectedMessage` (a :class:`ChannelError`) for the peer,
:class:`ChannelUseError` for the owner. A handshake message is checked before Noise reads it;
a sealed payload is opened first, so that a replayed CONFIRM is dropped as a replay rather
than refused (which would close the channel).
An allowed input can still fail on its content (authentication, identity, authorization).
Errors are split as in STYLE.md: :class:`ChannelError` is what the peer (or the route) did,
:class:`ChannelUseError` what the owner did; a failed handshake is terminal and says why.

    initiator  START -start-> SENT_HELLO -HELLO_REPLY-> SENT_FINISH -CONFIRM, DATA, PING-> OPEN
               START -start_ik-> SENT_IK_HELLO -IK_REPLY-> OPEN
                                 SENT_IK_HELLO -USE_XX-> SENT_HELLO (and on as XX)
    responder  AWAIT_HELLO -HELLO-> SENT_REPLY -FINISH-> OPEN
               AWAIT_HELLO -IK_HELLO-> SENT_IK_REPLY -CONFIRM, DATA, PING-> OPEN
    OPEN       DATA, PLAIN (direct hop only), PING, PONG, CONFIRM, seal: OPEN;  CLOSE: CLOSED
    any phase  close: CLOSED;  REFUSE (initiator, handshaking) and any failed handshake: CLOSED
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshkey.channel.freshness import ReplayGuard
from meshkey.channel.keys import ChannelError, ReceiveKeys, ReplayedMessage, SendKeys
from meshkey.channel.noise import (
    Cipher,
    NoiseError,
    NoiseHandshake,
    NoiseIK,
    NoiseXX,
)
from meshkey.identity.attestation import attest_static_key, verify_static_key
from meshkey.identity.keys import Identity
from meshkey.identity.node_id import NodeId
from meshkey.wire.channel import (
    MAX_EARLY_DATA,
    PLAIN_TAG_SIZE,
    ChannelKind,
    Handshake,
    HandshakePayload,
    IdentityProof,
    Plain,
    Refuse,
    Sealed,
    UseXX,
    decode_channel,
    decode_handshake_payload,
    encode_channel,
    encode_handshake_payload,
)
from meshkey.wire.errors import WireError

PROLOGUE = b"meshkey/secure-channel/v1"
PLAIN_TAG_LABEL = b"meshkey/secure-channel/plain-session-tag"


class UseXXInstead(ChannelError):
    """A responder cannot use this IK_HELLO (it does not hold the static key the initiator
    encrypted to, or the hello is a replay): the glue answers USE_XX, and the initiator starts
    again with XX."""


class UnexpectedMessage(ChannelError):
    """The peer sent a kind of message its session's phase does not allow (not in
    :data:`TRANSITIONS`): a broken or hostile peer, or a route that replays or reorders
    handshakes."""


class ChannelUseError(RuntimeError):
    """Local misuse (sealing on a channel that is not open): a bug or a race in the caller,
    not something the peer did, so it is not a :class:`ChannelError`."""


class StaticKey:
    """A node's X25519 static key and its identity's attestation of it: a new key per process
    unless ``private`` is given (a key kept in the node's state, so that the one its signed
    peer record names outlives a restart)."""

    def __init__(self, identity: Identity, private: X25519PrivateKey | None = None) -> None:
        self.identity = identity
        self.private = private if private is not None else X25519PrivateKey.generate()
        self.public = self.private.public_key().public_bytes_raw()
        self.proof = IdentityProof(identity.node_id.raw, attest_static_key(identity, self.public))


@runtime_checkable
class HandshakeHooks(Protocol):
    """Early data: what the path manager may have secure-channel handshakes carry, each way
    (issue 20: a punch's candidates and timed start negotiated inside the handshake).
    Optional: the channels ask their :class:`~meshkey.channel.record.PathHooks` object when it
    also has these two methods; an object without them, or returning b"", costs nothing (the
    handshake messages stay as they were). Both are called synchronously on the event loop,
    in the handshake's path: no I/O, no waiting. The data is opaque to channels, at most
    :data:`~meshkey.wire.channel.MAX_EARLY_DATA` bytes each way, and encrypted under the
    handshake keys (never visible to the relay).

    Where it travels: IK (the initiator knew the responder's key): the initiator's in IK_HELLO,
    the responder's in IK_REPLY, so both sides have the other's after one round trip (the
    responder after half of one). XX: the responder's in HELLO_REPLY, the initiator's in FINISH
    (the first messages encrypted at all). The peer's data is always delivered before this
    side writes its answer, so the answer can depend on it."""

    def handshake_payload(self, peer: NodeId | None, initiator: bool) -> bytes:
        """The early data for the handshake message this side is writing; ``initiator`` is this
        side's role. ``peer``: for an initiator, the identity it dials (IK_HELLO: the one
        ``authorized`` NodeId, if it names exactly one, else None; FINISH: the responder, now
        authenticated); for a responder, the authenticated initiator (IK_REPLY), or None when it
        does not know yet who dials (XX's HELLO_REPLY: whatever it gives goes to anyone who
        sends a HELLO). An exception or more than MAX_EARLY_DATA bytes is logged and sends
        nothing."""

    def on_handshake_payload(self, peer: NodeId, data: bytes, initiator: bool) -> None:
        """``peer``'s early data arrived (never empty), its sender authenticated as ``peer``;
        ``initiator`` is this side's role. Called before the channel opens on this side (the
        initiator: as its channel opens, before the path manager hears ``channel_opened``; the
        XX initiator may still be refused after). For an IK responder it comes from IK_HELLO,
        which is authenticated as ``peer``'s only as far as this node's static key is secret,
        and is fresh by its timestamp (:mod:`meshkey.channel.freshness`) but not yet proven
        live: act on it as on a hint (probe addresses seen, within a budget), not as on an open
        channel. An exception is logged and ignored."""


class State(enum.Enum):
    HANDSHAKING = "handshaking"
    OPEN = "open"
    CLOSED = "closed"


class Phase(enum.Enum):
    """Where a session is: :class:`State`, with the handshake's steps for each role."""

    START = "start"  # initiator, before start()
    SENT_HELLO = "sent HELLO"  # initiator, awaiting HELLO_REPLY
    SENT_FINISH = "sent FINISH"  # initiator, awaiting CONFIRM (it has the keys already)
    SENT_IK_HELLO = "sent IK_HELLO"  # initiator, awaiting IK_REPLY (or USE_XX)
    AWAIT_HELLO = "awaiting HELLO"  # responder, new
    SENT_REPLY = "sent HELLO_REPLY"  # responder, awaiting FINISH
    #: responder, awaiting the initiator's first sealed message (it has the keys already)
    SENT_IK_REPLY = "sent IK_REPLY"
    OPEN = "open"
    CLOSED = "closed"

    @property
    def state(self) -> State:
        if self is Phase.OPEN:
            return State.OPEN
        if self is Phase.CLOSED:
            return State.CLOSED
        return State.HANDSHAKING


class Local(enum.Enum):
    """What the owner of a session does (the peer's inputs are the ChannelKinds it sends)."""

    START = "start"  # with XX
    START_IK = "start with IK"  # the session was given the responder's key
    SEAL = "seal"  # a DATA or PING payload
    CLOSE = "close"


Input = ChannelKind | Local

#: Every input each phase allows, and the phase it leads to; anything else is refused.
TRANSITIONS: dict[Phase, dict[Input, Phase]] = {
    Phase.START: {
        Local.START: Phase.SENT_HELLO,
        Local.START_IK: Phase.SENT_IK_HELLO,
        Local.CLOSE: Phase.CLOSED,
    },
    Phase.SENT_HELLO: {
        ChannelKind.HELLO_REPLY: Phase.SENT_FINISH,
        ChannelKind.REFUSE: Phase.CLOSED,  # the listener's answer (or a forgery: see wire)
        Local.CLOSE: Phase.CLOSED,
    },
    Phase.SENT_FINISH: {
        ChannelKind.CONFIRM: Phase.OPEN,
        # The responder's first sealed messages may overtake its CONFIRM (they can take a
        # direct path to this node while the CONFIRM crosses the relay): sealed under this
        # session's keys, they confirm it as well.
        ChannelKind.DATA: Phase.OPEN,
        ChannelKind.PING: Phase.OPEN,
        ChannelKind.REFUSE: Phase.CLOSED,  # the listener does not want this identity
        Local.CLOSE: Phase.CLOSED,
    },
    Phase.SENT_IK_HELLO: {
        ChannelKind.IK_REPLY: Phase.OPEN,
        ChannelKind.USE_XX: Phase.SENT_HELLO,  # the session starts again, as XX
        ChannelKind.REFUSE: Phase.CLOSED,
        Local.CLOSE: Phase.CLOSED,
    },
    Phase.AWAIT_HELLO: {
        ChannelKind.HELLO: Phase.SENT_REPLY,
        ChannelKind.IK_HELLO: Phase.SENT_IK_REPLY,
        Local.CLOSE: Phase.CLOSED,
    },
    Phase.SENT_REPLY: {ChannelKind.FINISH: Phase.OPEN, Local.CLOSE: Phase.CLOSED},
    Phase.SENT_IK_REPLY: {
        # The initiator's first sealed message proves it holds the session's keys (a replayed
        # IK_HELLO never gets this far): CONFIRM, or its data or ping if they overtook it.
        ChannelKind.CONFIRM: Phase.OPEN,
        ChannelKind.DATA: Phase.OPEN,
        ChannelKind.PING: Phase.OPEN,
        ChannelKind.CLOSE: Phase.CLOSED,
        Local.CLOSE: Phase.CLOSED,
    },
    Phase.OPEN: {
        ChannelKind.DATA: Phase.OPEN,
        ChannelKind.PING: Phase.OPEN,
        ChannelKind.PONG: Phase.OPEN,
        ChannelKind.CONFIRM: Phase.OPEN,  # an IK initiator's, overtaken by its data
        ChannelKind.PLAIN: Phase.OPEN,  # only from a direct hop to the peer (see receive)
        ChannelKind.CLOSE: Phase.CLOSED,
        Local.SEAL: Phase.OPEN,
        Local.CLOSE: Phase.CLOSED,
    },
    Phase.CLOSED: {Local.CLOSE: Phase.CLOSED},
}

_HANDSHAKE_KINDS = frozenset(
    {
        ChannelKind.HELLO,
        ChannelKind.HELLO_REPLY,
        ChannelKind.FINISH,
        ChannelKind.IK_HELLO,
        ChannelKind.IK_REPLY,
    }
)


@dataclass
class Received:
    """What one incoming payload produced."""

    reply: bytes | None = None  # a channel payload to send back to the peer
    opened: bool = False  # the channel just became usable
    #: A DATA message's contents (from a PLAIN one: a view into the received payload).
    plaintext: bytes | memoryview | None = None
    closed: str | None = None  # the peer closed the channel, with this reason
    pong: bool = False  # an answer to our PING
    nonce: int | None = None  # the sealed message's nonce (its place in the peer's order)
    #: The IK handshake was refused with USE_XX, saying why: ``reply`` is a new XX HELLO, to
    #: go over the route the IK_HELLO went.
    restarted: str | None = None


class SecureSession:
    """One end of a channel. ``responder_key`` (initiator only): the responder's X25519 static
    key, known beforehand: the handshake is IK, falling back to XX if the responder cannot use
    it. ``hooks``: what the layer above has the handshake carry (:class:`HandshakeHooks`).
    ``replay_guard`` (responder only): remembers IK_HELLO timestamps across sessions; without
    one, replays are not detected (they still cannot open a channel)."""

    def __init__(
        self,
        initiator: bool,
        static: StaticKey,
        *,
        authorized: frozenset[NodeId] | None = None,
        cipher: Cipher = "AESGCM",
        responder_key: bytes | None = None,
        hooks: HandshakeHooks | None = None,
        replay_guard: ReplayGuard | None = None,
    ) -> None:
        if responder_key is not None and not initiator:
            raise ValueError("only an initiator is given the responder's key")
        self.initiator = initiator
        self._phase = Phase.START if initiator else Phase.AWAIT_HELLO
        self.failure: str | None = None
        self.peer: NodeId | None = None
        self._static = static
        self._authorized = authorized
        self._cipher: Cipher = cipher
        self._responder_key = responder_key
        self._hooks = hooks
        self._replay_guard = replay_guard
        self._noise: NoiseHandshake
        if responder_key is not None:
            self._noise = NoiseIK(
                True, static.private, remote_static=responder_key, prologue=PROLOGUE, cipher=cipher
            )
        else:
            self._noise = NoiseXX(initiator, static.private, prologue=PROLOGUE, cipher=cipher)
        self._sender: SendKeys | None = None
        self._receiver: ReceiveKeys | None = None
        self._plain_tag = b""  # names this session in PLAIN payloads, once it has keys
        #: Why an IK handshake fell back to XX (the responder's USE_XX), if it did.
        self.fell_back: str | None = None
        #: A sealed (or plain) message of this session came from the peer: it is open there,
        #: so it takes plain messages (:meth:`plain`); before that, everything is sealed.
        self.peer_open = False

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def state(self) -> State:
        return self._phase.state

    @property
    def pattern(self) -> str:
        """The handshake in use: "IK" or "XX"."""
        return "IK" if isinstance(self._noise, NoiseIK) else "XX"

    @property
    def peer_static(self) -> bytes | None:
        """The peer's X25519 static key, once the handshake authenticated it."""
        return self._noise.remote_static if self.peer is not None else None

    def start(self, *, timestamp: int = 0) -> bytes:
        """Initiator: the first handshake message (IK_HELLO when the session was given the
        responder's key, else HELLO, as when that key is not a usable X25519 public key);
        ChannelUseError if not in START. ``timestamp`` (IK only):
        the initiator's strictly increasing clock, in nanoseconds, that the responder checks
        freshness with (:class:`~meshkey.channel.freshness.Timestamps`)."""
        if self._responder_key is not None:
            after = self._allowed_locally(Local.START_IK)
            payload = self._payload(self._expected_peer(), timestamp=timestamp)
            try:
                noise = self._noise.write_message(payload)
            except NoiseError as exc:  # e.g. a low-order point in a (hostile) record
                self._use_xx(f"the responder's key is not usable ({exc})")
            else:
                self._phase = after
                return encode_channel(Handshake(ChannelKind.IK_HELLO, noise))
        after = self._allowed_locally(Local.START)
        hello = encode_channel(Handshake(ChannelKind.HELLO, self._noise.write_message()))
        self._phase = after
        return hello

    def seal(self, plaintext: bytes, kind: ChannelKind = ChannelKind.DATA) -> bytes:
        """A sealed DATA (or PING) payload; ChannelUseError unless the channel is open."""
        self._allowed_locally(Local.SEAL)
        assert self._sender is not None  # OPEN has keys
        return encode_channel(self._sender.seal(kind, plaintext))

    def plain(self, data: bytes) -> tuple[int, bytes]:
        """A PLAIN payload carrying ``data`` unsealed, and its nonce: only for a direct hop
        to the peer (the glue decides; the kind tells the peer). ChannelUseError unless the
        channel is open at both ends (:attr:`peer_open`)."""
        self._allowed_locally(Local.SEAL)
        if not self.peer_open:
            raise ChannelUseError("plain messages wait until the peer is heard open")
        assert self._sender is not None  # OPEN has keys
        nonce = self._sender.take_nonce()
        return nonce, self.plain_at(nonce, data)

    def plain_at(self, nonce: int, data: bytes) -> bytes:
        """The PLAIN payload of a nonce :meth:`plain` took already (to send it again)."""
        return encode_channel(Plain(nonce, self._plain_tag, data))

    def reseal(self, nonce: int, data: bytes) -> bytes | None:
        """The DATA payload a plain message of ``nonce`` would have been, sealed (it is resent
        on a path that is not a direct hop: a relay must never see it plain); None when that
        nonce's key is gone (the peer's replay window is past it anyway) or the session is
        not open."""
        if self._phase is not Phase.OPEN or self._sender is None:
            return None
        try:
            return encode_channel(self._sender.seal_at(nonce, ChannelKind.DATA, data))
        except LookupError:
            return None

    def ping(self) -> bytes:
        """A sealed PING: the peer answers with a sealed PONG, proving it holds the session."""
        return self.seal(b"", ChannelKind.PING)

    def close(self, reason: str) -> bytes | None:
        """Closes this end (allowed in every phase); returns a sealed CLOSE for the peer when
        the channel was open."""
        was_open = self._phase is Phase.OPEN
        self._phase = self._allowed_locally(Local.CLOSE)
        if was_open and self._sender is not None:
            return encode_channel(self._sender.seal(ChannelKind.CLOSE, reason.encode()[:256]))
        return None

    def receive(self, data: bytes, *, direct: bool = False) -> Received:
        """What ``data`` (a channel payload from the peer) produced. ChannelError means the
        channel cannot go on: during the handshake it is then CLOSED (a failed handshake is
        terminal, and says why); ReplayedMessage only drops the message. ``direct``: it came
        over a hop to the peer itself (the glue knows the hop's authenticated NodeId), the
        one place a PLAIN payload is taken from; from anywhere else one is a tampering."""
        if self._phase is Phase.CLOSED:
            raise UnexpectedMessage(self.failure or "the channel is closed")
        try:
            return self._receive(data, direct)
        except ChannelError as exc:
            if self.state is State.HANDSHAKING:
                self._phase = Phase.CLOSED
                self.failure = f"the handshake failed: {exc.reason}"
            raise

    def _receive(self, data: bytes, direct: bool) -> Received:
        try:
            payload = decode_channel(data)
        except WireError as exc:
            raise ChannelError(f"malformed channel message: {exc}") from exc
        if isinstance(payload, Refuse):
            self._allowed(ChannelKind.REFUSE)  # to CLOSED, by the failed handshake's rule
            raise ChannelError(f"refused by the listener: {payload.reason}")
        if isinstance(payload, UseXX):
            return self._fall_back(payload.reason)
        if isinstance(payload, Handshake):
            return self._handshake(payload)
        if isinstance(payload, Plain):
            return self._plain(payload, direct)
        return self._sealed(payload)

    # -- handshake --------------------------------------------------------------------

    def _allowed(self, kind: ChannelKind) -> Phase:
        """The phase the peer's ``kind`` leads to; UnexpectedMessage if it is not allowed."""
        after = TRANSITIONS[self._phase].get(kind)
        if after is None:
            raise UnexpectedMessage(self._unexpected(kind))
        return after

    def _unexpected(self, kind: ChannelKind) -> str:
        state = self.state
        if kind is ChannelKind.REFUSE:
            return "unexpected refusal"
        if kind is ChannelKind.USE_XX:
            return "unexpected USE_XX (only an IK handshake in progress can fall back to XX)"
        if kind in _HANDSHAKE_KINDS:
            if state is State.HANDSHAKING:
                return f"unexpected {kind.name} during the handshake"
            return f"handshake message on an {state.value} channel"
        if self._receiver is None:
            return f"{kind.name} before the handshake finished"
        if kind is ChannelKind.CONFIRM:
            return "unexpected CONFIRM"
        return f"{kind.name} before the channel was confirmed"

    def _allowed_locally(self, action: Local) -> Phase:
        """The phase the owner's ``action`` leads to; ChannelUseError if it is not allowed."""
        after = TRANSITIONS[self._phase].get(action)
        if after is not None:
            return after
        if action is Local.START:
            if not self.initiator:
                raise ChannelUseError("only the initiator starts")
            raise ChannelUseError(f"cannot start a channel that is {self._phase.value}")
        raise ChannelUseError(f"cannot send on a channel that is {self.state.value}")

    def _handshake(self, message: Handshake) -> Received:
        kind = message.kind
        if kind is ChannelKind.IK_REPLY and self.fell_back is not None:
            # The responder's IK_REPLY came after a USE_XX (forged, or a replay's answer) had
            # made us start again as XX: the XX handshake goes on; this one is dropped.
            raise ReplayedMessage("an IK_REPLY after the handshake fell back to XX: dropped")
        after = self._allowed(kind)
        if kind is ChannelKind.IK_HELLO:
            return self._ik_hello(message.noise, after)
        try:
            payload = self._noise.read_message(message.noise)
            if kind is ChannelKind.HELLO:
                # The responder does not know yet who dials: the layer above is asked so.
                reply = self._noise.write_message(self._payload(None))
                self._phase = after
                return Received(reply=encode_channel(Handshake(ChannelKind.HELLO_REPLY, reply)))
            self._arrived(self._check_peer(payload))
            if kind is ChannelKind.HELLO_REPLY:
                finish = self._noise.write_message(self._payload(self.peer))
                self._keys()
                self._phase = after
                return Received(reply=encode_channel(Handshake(ChannelKind.FINISH, finish)))
        except NoiseError as exc:
            raise ChannelError(f"handshake failed: {exc}") from exc
        # FINISH (XX responder) or IK_REPLY (IK initiator): done, and a sealed CONFIRM says so
        # (the XX initiator hears it was accepted; the IK responder, that this is no replay).
        self._keys()
        self._phase = after
        assert self._sender is not None
        confirm = encode_channel(self._sender.seal(ChannelKind.CONFIRM, b""))
        return Received(reply=confirm, opened=True)

    def _ik_hello(self, noise_message: bytes, after: Phase) -> Received:
        """Responder: an IK_HELLO. What cannot be read with this node's static key, or is not
        fresh, raises UseXXInstead (the glue answers USE_XX); an identity that is not wanted
        is refused, as with XX."""
        noise = NoiseIK(False, self._static.private, prologue=PROLOGUE, cipher=self._cipher)
        self._noise = noise
        try:
            payload = noise.read_message(noise_message)
        except NoiseError as exc:
            raise UseXXInstead(
                f"this IK handshake cannot be read with this node's static key ({exc}): "
                "the key it was encrypted to is stale, or it was tampered with"
            ) from exc
        hello = self._check_peer(payload)
        assert self.peer is not None
        guard = self._replay_guard
        if guard is not None and not guard.accept(self.peer.raw, hello.timestamp):
            raise UseXXInstead("a replayed or stale IK handshake (its timestamp was seen)")
        self._arrived(hello)
        try:
            reply = noise.write_message(self._payload(self.peer))
        except NoiseError as exc:
            raise ChannelError(f"handshake failed: {exc}") from exc
        self._keys()
        self._phase = after
        return Received(reply=encode_channel(Handshake(ChannelKind.IK_REPLY, reply)))

    def _fall_back(self, reason: str) -> Received:
        """Initiator: the responder cannot use our IK_HELLO; start again with XX. A USE_XX
        that no IK handshake waits for (the answer to a replay of our IK_HELLO, or one that
        came after the IK_REPLY) is dropped, never fatal: it is unauthenticated,
        and closing on it would let a replay close channels."""
        if self.initiator and ChannelKind.USE_XX not in TRANSITIONS[self._phase]:
            raise ReplayedMessage("a USE_XX no IK handshake waits for: dropped")
        after = self._allowed(ChannelKind.USE_XX)
        self._use_xx(reason)
        hello = encode_channel(Handshake(ChannelKind.HELLO, self._noise.write_message()))
        self._phase = after
        return Received(reply=hello, restarted=reason)

    def _use_xx(self, reason: str) -> None:
        """Initiator: IK is given up (``reason``); the handshake is XX from here."""
        self.fell_back = reason
        self._responder_key = None
        self._noise = NoiseXX(True, self._static.private, prologue=PROLOGUE, cipher=self._cipher)

    def _expected_peer(self) -> NodeId | None:
        authorized = self._authorized
        if authorized is not None and len(authorized) == 1:
            return next(iter(authorized))
        return None

    def _payload(self, peer: NodeId | None, *, timestamp: int = 0) -> bytes:
        """This side's identity proof, with the early data the layer above gives for ``peer``
        (and an IK_HELLO's timestamp)."""
        early = self._hooks.handshake_payload(peer, self.initiator) if self._hooks else b""
        if len(early) > MAX_EARLY_DATA:
            raise ChannelUseError(
                f"early data of {len(early)} bytes (a handshake carries {MAX_EARLY_DATA})"
            )
        return encode_handshake_payload(HandshakePayload(self._static.proof, timestamp, early))

    def _arrived(self, hello: HandshakePayload) -> None:
        """The authenticated peer's early data goes to the layer above (if it sent any)."""
        if hello.early_data and self._hooks is not None:
            assert self.peer is not None
            self._hooks.on_handshake_payload(self.peer, hello.early_data, self.initiator)

    def _check_peer(self, payload: bytes) -> HandshakePayload:
        try:
            hello = decode_handshake_payload(payload)
        except WireError as exc:
            raise ChannelError(f"malformed identity proof: {exc}") from exc
        proof = hello.proof
        peer = NodeId(proof.node_id)
        static = self._noise.remote_static
        assert static is not None
        if not verify_static_key(peer, static, proof.signature):
            raise ChannelError(f"NodeId {peer} did not attest the channel's static key")
        if self._authorized is not None and peer not in self._authorized:
            role = "responder" if self.initiator else "initiator"
            raise ChannelError(
                f"{role} {peer} is not among the authorized identities", refuse=not self.initiator
            )
        self.peer = peer
        return hello

    def _keys(self) -> None:
        # Both ends hold the same handshake hash, and no other session does.
        tag = hashlib.sha256(PLAIN_TAG_LABEL + self._noise.handshake_hash).digest()
        self._plain_tag = tag[:PLAIN_TAG_SIZE]
        send, receive = self._noise.split()
        self._sender = SendKeys(self._cipher, send)
        self._receiver = ReceiveKeys(self._cipher, receive)

    # -- transport --------------------------------------------------------------------

    def _plain(self, plain: Plain, direct: bool) -> Received:
        if not direct:
            raise ChannelError(
                "a plain message came over a route that is not a direct hop to the peer "
                "(tampered with on the route?)"
            )
        self._allowed(ChannelKind.PLAIN)  # OPEN only: a plain message opens nothing
        assert self._receiver is not None  # OPEN has keys
        if plain.session != self._plain_tag:  # late, from a session before a re-handshake
            raise ReplayedMessage("a plain message of another session")
        self._receiver.accept_plain(plain.nonce)
        self.peer_open = True
        return Received(plaintext=plain.data, nonce=plain.nonce)

    def _sealed(self, sealed: Sealed) -> Received:
        if self._receiver is None:  # no keys yet, and no phase without keys allows one
            raise UnexpectedMessage(self._unexpected(sealed.kind))
        # Opened before the table is asked: a replay is dropped (ReplayedMessage), a forgery
        # fails authentication, and the kind is authenticated (it is in the associated data).
        plaintext = self._receiver.open(sealed)
        before = self._phase
        self._phase = self._allowed(sealed.kind)
        self.peer_open = True
        # Opened: an XX initiator by the CONFIRM (or a sealed message that overtook it), an IK
        # responder by any first sealed message.
        opened = self._phase is Phase.OPEN and before is not Phase.OPEN
        nonce = sealed.nonce
        if sealed.kind == ChannelKind.CONFIRM:
            return Received(opened=opened, nonce=nonce)
        if sealed.kind == ChannelKind.CLOSE:
            reason = plaintext.decode("utf-8", errors="replace") or "closed"
            return Received(closed=reason, nonce=nonce)
        if sealed.kind == ChannelKind.PING:
            assert self._sender is not None
            pong = encode_channel(self._sender.seal(ChannelKind.PONG, b""))
            return Received(reply=pong, opened=opened, nonce=nonce)
        if sealed.kind == ChannelKind.PONG:
            return Received(pong=True, nonce=nonce)
        return Received(plaintext=plaintext, opened=opened, nonce=nonce)
