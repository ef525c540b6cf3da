"""One end of a secure channel, sans-IO: handshake with identity proofs, then sealed messages.

Bytes in (channel payloads, :mod:`meshkey.wire.channel`), results out; no sockets, no clock.

After the Noise XX handshake each side knows the other's NodeId: it checked that the NodeId's
signature attests the X25519 static key Noise authenticated, and (if given) that the NodeId is
in its ``authorized`` set. The responder then sends CONFIRM (or REFUSE), so an initiator that
is not wanted hears so instead of talking into the void.

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

    initiator  START -start-> SENT_HELLO -HELLO_REPLY-> SENT_FINISH -CONFIRM-> OPEN
    responder  AWAIT_HELLO -HELLO-> SENT_REPLY -FINISH-> OPEN
    OPEN       DATA, PING, PONG, seal: OPEN;  CLOSE: CLOSED
    any phase  close: CLOSED;  REFUSE (initiator, handshaking) and any failed handshake: CLOSED
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshkey.channel.noise import Cipher, NoiseError, NoiseXX, aead, nonce_bytes, rekey
from meshkey.identity.attestation import attest_static_key, verify_static_key
from meshkey.identity.keys import Identity
from meshkey.identity.node_id import NodeId
from meshkey.wire.channel import (
    CHANNEL_VERSION,
    ChannelKind,
    Handshake,
    IdentityProof,
    Refuse,
    Sealed,
    decode_channel,
    decode_identity_proof,
    encode_channel,
    encode_identity_proof,
)
from meshkey.wire.errors import WireError

PROLOGUE = b"meshkey/secure-channel/v1"
REKEY_INTERVAL = 32
REPLAY_WINDOW = 32
#: How many keys ahead a nonce may jump (messages lost in a row / REKEY_INTERVAL); bounds the
#: work a forged nonce can cost before its tag is checked.
MAX_EPOCH_JUMP = 1024


class ChannelError(Exception):
    """The channel cannot continue. ``refuse`` asks the glue to tell the peer why."""

    def __init__(self, reason: str, *, refuse: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.refuse = refuse


class ReplayedMessage(Exception):
    """A duplicate or too-old message: dropped, the channel goes on."""


class UnexpectedMessage(ChannelError):
    """The peer sent a kind of message its session's phase does not allow (not in
    :data:`TRANSITIONS`): a broken or hostile peer, or a route that replays or reorders
    handshakes."""


class ChannelUseError(RuntimeError):
    """Local misuse (sealing on a channel that is not open): a bug or a race in the caller,
    not something the peer did, so it is not a :class:`ChannelError`."""


class StaticKey:
    """A node's X25519 static key and its identity's attestation of it (per process)."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.private = X25519PrivateKey.generate()
        self.public = self.private.public_key().public_bytes_raw()
        self.proof = encode_identity_proof(
            IdentityProof(identity.node_id.raw, attest_static_key(identity, self.public))
        )


class _Sender:
    def __init__(self, cipher: Cipher, key: bytes) -> None:
        self._cipher = cipher
        self._key = key
        self._epoch = 0
        self._next = 0

    def seal(self, kind: ChannelKind, plaintext: bytes) -> Sealed:
        nonce = self._next
        self._next += 1
        epoch = nonce // REKEY_INTERVAL
        while self._epoch < epoch:
            self._key = rekey(self._cipher, self._key)
            self._epoch += 1
        ciphertext = aead(self._cipher, self._key).encrypt(
            nonce_bytes(self._cipher, nonce), plaintext, bytes([CHANNEL_VERSION, kind])
        )
        return Sealed(kind, nonce, ciphertext)


class _Receiver:
    def __init__(self, cipher: Cipher, key: bytes) -> None:
        self._cipher = cipher
        self._epoch = 0
        self._key = key
        self._previous: bytes | None = None
        self._highest = -1
        self._seen = 0  # bit i: nonce (highest - i) was accepted

    def open(self, sealed: Sealed) -> bytes:
        nonce = sealed.nonce
        if nonce <= self._highest:
            age = self._highest - nonce
            if age >= REPLAY_WINDOW or self._seen >> age & 1:
                raise ReplayedMessage(f"nonce {nonce} replayed or older than the window")
        epoch = nonce // REKEY_INTERVAL
        key, previous, new_epoch = self._key_for(epoch)
        try:
            plaintext = aead(self._cipher, key).decrypt(
                nonce_bytes(self._cipher, nonce),
                sealed.ciphertext,
                bytes([CHANNEL_VERSION, sealed.kind]),
            )
        except InvalidTag:
            raise ChannelError(
                "a message failed authentication (tampered with on the route?)"
            ) from None
        # Only an authentic message moves the key schedule and the window forward.
        if new_epoch > self._epoch:
            self._key, self._previous, self._epoch = key, previous, new_epoch
        if nonce > self._highest:
            shift = nonce - self._highest
            self._seen = ((self._seen << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            self._highest = nonce
        else:
            self._seen |= 1 << (self._highest - nonce)
        return plaintext

    def _key_for(self, epoch: int) -> tuple[bytes, bytes | None, int]:
        if epoch == self._epoch:
            return self._key, self._previous, self._epoch
        if epoch == self._epoch - 1 and self._previous is not None:
            return self._previous, None, self._epoch
        if epoch < self._epoch:
            raise ReplayedMessage(f"nonce from key epoch {epoch}, long gone")
        if epoch - self._epoch > MAX_EPOCH_JUMP:
            raise ChannelError(f"nonce jumps {epoch - self._epoch} keys ahead")
        key, previous = self._key, self._previous
        for _ in range(epoch - self._epoch):
            previous, key = key, rekey(self._cipher, key)
        return key, previous, epoch


class State(enum.Enum):
    HANDSHAKING = "handshaking"
    OPEN = "open"
    CLOSED = "closed"


class Phase(enum.Enum):
    """Where a session is: :class:`State`, with the handshake's steps for each role."""

    START = "start"  # initiator, before start()
    SENT_HELLO = "sent HELLO"  # initiator, awaiting HELLO_REPLY
    SENT_FINISH = "sent FINISH"  # initiator, awaiting CONFIRM (it has the keys already)
    AWAIT_HELLO = "awaiting HELLO"  # responder, new
    SENT_REPLY = "sent HELLO_REPLY"  # responder, awaiting FINISH
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

    START = "start"
    SEAL = "seal"  # a DATA or PING payload
    CLOSE = "close"


Input = ChannelKind | Local

#: Every input each phase allows, and the phase it leads to; anything else is refused.
TRANSITIONS: dict[Phase, dict[Input, Phase]] = {
    Phase.START: {Local.START: Phase.SENT_HELLO, Local.CLOSE: Phase.CLOSED},
    Phase.SENT_HELLO: {
        ChannelKind.HELLO_REPLY: Phase.SENT_FINISH,
        ChannelKind.REFUSE: Phase.CLOSED,  # the listener's answer (or a forgery: see wire)
        Local.CLOSE: Phase.CLOSED,
    },
    Phase.SENT_FINISH: {
        ChannelKind.CONFIRM: Phase.OPEN,
        ChannelKind.REFUSE: Phase.CLOSED,  # the listener does not want this identity
        Local.CLOSE: Phase.CLOSED,
    },
    Phase.AWAIT_HELLO: {ChannelKind.HELLO: Phase.SENT_REPLY, Local.CLOSE: Phase.CLOSED},
    Phase.SENT_REPLY: {ChannelKind.FINISH: Phase.OPEN, Local.CLOSE: Phase.CLOSED},
    Phase.OPEN: {
        ChannelKind.DATA: Phase.OPEN,
        ChannelKind.PING: Phase.OPEN,
        ChannelKind.PONG: Phase.OPEN,
        ChannelKind.CLOSE: Phase.CLOSED,
        Local.SEAL: Phase.OPEN,
        Local.CLOSE: Phase.CLOSED,
    },
    Phase.CLOSED: {Local.CLOSE: Phase.CLOSED},
}

_HANDSHAKE_KINDS = frozenset({ChannelKind.HELLO, ChannelKind.HELLO_REPLY, ChannelKind.FINISH})


@dataclass
class Received:
    """What one incoming payload produced."""

    reply: bytes | None = None  # a channel payload to send back to the peer
    opened: bool = False  # the channel just became usable
    plaintext: bytes | None = None  # a DATA message's contents
    closed: str | None = None  # the peer closed the channel, with this reason
    pong: bool = False  # an answer to our PING
    nonce: int | None = None  # the sealed message's nonce (its place in the peer's order)


class SecureSession:
    def __init__(
        self,
        initiator: bool,
        static: StaticKey,
        *,
        authorized: frozenset[NodeId] | None = None,
        cipher: Cipher = "AESGCM",
    ) -> None:
        self.initiator = initiator
        self._phase = Phase.START if initiator else Phase.AWAIT_HELLO
        self.failure: str | None = None
        self.peer: NodeId | None = None
        self._static = static
        self._authorized = authorized
        self._cipher: Cipher = cipher
        self._noise = NoiseXX(initiator, static.private, prologue=PROLOGUE, cipher=cipher)
        self._sender: _Sender | None = None
        self._receiver: _Receiver | None = None

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def state(self) -> State:
        return self._phase.state

    def start(self) -> bytes:
        """Initiator: the first handshake message; ChannelUseError if not in START."""
        after = self._allowed_locally(Local.START)
        hello = encode_channel(Handshake(ChannelKind.HELLO, self._noise.write_message()))
        self._phase = after
        return hello

    def seal(self, plaintext: bytes, kind: ChannelKind = ChannelKind.DATA) -> bytes:
        """A sealed DATA (or PING) payload; ChannelUseError unless the channel is open."""
        self._allowed_locally(Local.SEAL)
        assert self._sender is not None  # OPEN has keys
        return encode_channel(self._sender.seal(kind, plaintext))

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

    def receive(self, data: bytes) -> Received:
        """What ``data`` (a channel payload from the peer) produced. ChannelError means the
        channel cannot go on: during the handshake it is then CLOSED (a failed handshake is
        terminal, and says why); ReplayedMessage only drops the message."""
        if self._phase is Phase.CLOSED:
            raise UnexpectedMessage(self.failure or "the channel is closed")
        try:
            return self._receive(data)
        except ChannelError as exc:
            if self.state is State.HANDSHAKING:
                self._phase = Phase.CLOSED
                self.failure = f"the handshake failed: {exc.reason}"
            raise

    def _receive(self, data: bytes) -> Received:
        try:
            payload = decode_channel(data)
        except WireError as exc:
            raise ChannelError(f"malformed channel message: {exc}") from exc
        if isinstance(payload, Refuse):
            self._allowed(ChannelKind.REFUSE)  # to CLOSED, by the failed handshake's rule
            raise ChannelError(f"refused by the listener: {payload.reason}")
        if isinstance(payload, Handshake):
            return self._handshake(payload)
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
        after = self._allowed(message.kind)
        try:
            payload = self._noise.read_message(message.noise)
            if message.kind == ChannelKind.HELLO:
                reply = self._noise.write_message(self._static.proof)
                self._phase = after
                return Received(reply=encode_channel(Handshake(ChannelKind.HELLO_REPLY, reply)))
            self._check_peer(payload)
            if message.kind == ChannelKind.HELLO_REPLY:
                finish = self._noise.write_message(self._static.proof)
                self._keys()
                self._phase = after
                return Received(reply=encode_channel(Handshake(ChannelKind.FINISH, finish)))
        except NoiseError as exc:
            raise ChannelError(f"handshake failed: {exc}") from exc
        # FINISH: the responder is done; CONFIRM tells the initiator it was accepted.
        self._keys()
        self._phase = after
        assert self._sender is not None
        confirm = encode_channel(self._sender.seal(ChannelKind.CONFIRM, b""))
        return Received(reply=confirm, opened=True)

    def _check_peer(self, payload: bytes) -> None:
        try:
            proof = decode_identity_proof(payload)
        except WireError as exc:
            raise ChannelError(f"malformed identity proof: {exc}") from exc
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

    def _keys(self) -> None:
        send, receive = self._noise.split()
        self._sender = _Sender(self._cipher, send)
        self._receiver = _Receiver(self._cipher, receive)

    # -- transport --------------------------------------------------------------------

    def _sealed(self, sealed: Sealed) -> Received:
        if self._receiver is None:  # no keys yet, and no phase without keys allows one
            raise UnexpectedMessage(self._unexpected(sealed.kind))
        # Opened before the table is asked: a replay is dropped (ReplayedMessage), a forgery
        # fails authentication, and the kind is authenticated (it is in the associated data).
        plaintext = self._receiver.open(sealed)
        self._phase = self._allowed(sealed.kind)
        nonce = sealed.nonce
        if sealed.kind == ChannelKind.CONFIRM:
            return Received(opened=True, nonce=nonce)
        if sealed.kind == ChannelKind.CLOSE:
            reason = plaintext.decode("utf-8", errors="replace") or "closed"
            return Received(closed=reason, nonce=nonce)
        if sealed.kind == ChannelKind.PING:
            assert self._sender is not None
            pong = encode_channel(self._sender.seal(ChannelKind.PONG, b""))
            return Received(reply=pong, nonce=nonce)
        if sealed.kind == ChannelKind.PONG:
            return Received(pong=True, nonce=nonce)
        return Received(plaintext=plaintext, nonce=nonce)
