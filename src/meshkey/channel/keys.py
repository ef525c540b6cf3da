"""A secure channel's two directions after its handshake, sans-IO: the nonce sequence, the
key schedule (a rekey every :data:`REKEY_INTERVAL` messages, as Noise's ``REKEY``), the
replay window and the errors they raise. :class:`~meshkey.channel.session.SecureSession`
holds one :class:`SendKeys` and one :class:`ReceiveKeys` once its handshake is done."""

from __future__ import annotations

from cryptography.exceptions import InvalidTag

from meshkey.channel.noise import Cipher, aead, nonce_bytes, rekey
from meshkey.wire.channel import CHANNEL_VERSION, ChannelKind, Sealed

REKEY_INTERVAL = 32
REPLAY_WINDOW = 32
#: Earlier sending keys kept, to seal a plain message again for a relay under its own nonce.
RESEAL_KEYS = 8
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


class SendKeys:
    """This side's sending direction: the nonce sequence and its key schedule (a rekey
    every :data:`REKEY_INTERVAL` nonces), with the last :data:`RESEAL_KEYS` keys kept."""

    def __init__(self, cipher: Cipher, key: bytes) -> None:
        self._cipher = cipher
        self._key = key
        #: The last few keys before this one: a plain message resealed for a relay (the
        #: glue keeps 128 messages to resend, four keys' worth) is sealed under its own.
        self._earlier: dict[int, bytes] = {}
        self._epoch = 0
        self._next = 0

    def take_nonce(self) -> int:
        """The next nonce, the key schedule moved on to it (a plain message takes one too,
        so that sealed and plain messages share one sequence and one schedule)."""
        nonce = self._next
        self._next += 1
        epoch = nonce // REKEY_INTERVAL
        while self._epoch < epoch:
            self._earlier[self._epoch] = self._key
            self._earlier.pop(self._epoch - RESEAL_KEYS, None)
            self._key = rekey(self._cipher, self._key)
            self._epoch += 1
        return nonce

    def seal(self, kind: ChannelKind, plaintext: bytes) -> Sealed:
        return self.seal_at(self.take_nonce(), kind, plaintext)

    def seal_at(self, nonce: int, kind: ChannelKind, plaintext: bytes) -> Sealed:
        """Seals under ``nonce``, taken already (now, or by a plain message being sealed
        for a relay: never sealed before, so no nonce is sealed twice with two contents);
        LookupError if its key is gone (more than :data:`RESEAL_KEYS` keys back)."""
        epoch = nonce // REKEY_INTERVAL
        key = self._key if epoch == self._epoch else self._earlier.get(epoch)
        if key is None or epoch > self._epoch:
            raise LookupError(f"nonce {nonce}: its key is gone")
        ciphertext = aead(self._cipher, key).encrypt(
            nonce_bytes(self._cipher, nonce), plaintext, bytes([CHANNEL_VERSION, kind])
        )
        return Sealed(kind, nonce, ciphertext)


class ReceiveKeys:
    """The peer's sending direction as this side reads it: the key schedule, the previous
    key (for messages overtaken by a rekey) and the replay window."""

    def __init__(self, cipher: Cipher, key: bytes) -> None:
        self._cipher = cipher
        self._epoch = 0
        self._key = key
        self._previous: bytes | None = None
        self._highest = -1
        self._seen = 0  # bit i: nonce (highest - i) was accepted

    def open(self, sealed: Sealed) -> bytes:
        nonce = sealed.nonce
        self._check_fresh(nonce)
        key, previous, new_epoch = self._key_for(nonce // REKEY_INTERVAL)
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
        self._advance(nonce, key, previous, new_epoch)
        return plaintext

    def accept_plain(self, nonce: int) -> None:
        """A plain message's ``nonce`` (authentic: it came over a direct hop from the peer):
        checked and counted as a sealed one's, so a copy of it sealed later (resent through a
        relay) is a replay."""
        self._check_fresh(nonce)
        key, previous, new_epoch = self._key_for(nonce // REKEY_INTERVAL)
        self._advance(nonce, key, previous, new_epoch)

    def _check_fresh(self, nonce: int) -> None:
        if nonce <= self._highest:
            age = self._highest - nonce
            if age >= REPLAY_WINDOW or self._seen >> age & 1:
                raise ReplayedMessage(f"nonce {nonce} replayed or older than the window")

    def _advance(self, nonce: int, key: bytes, previous: bytes | None, new_epoch: int) -> None:
        # Only an authentic message moves the key schedule and the window forward.
        if new_epoch > self._epoch:
            self._key, self._previous, self._epoch = key, previous, new_epoch
        if nonce > self._highest:
            shift = nonce - self._highest
            self._seen = ((self._seen << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            self._highest = nonce
        else:
            self._seen |= 1 << (self._highest - nonce)

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
