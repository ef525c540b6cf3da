"""Noise XX and IK (Noise_{XX,IK}_25519_{AESGCM,ChaChaPoly}_SHA256), sans-IO, on
``cryptography``'s primitives.

Written here because no maintained Python Noise library exists (noiseprotocol's last release
was 2020) and meshkey's channels need explicit-nonce transport keys, which the standard
CipherState does not offer. The handshakes follow revision 34 of the Noise specification; both
patterns share one symmetric state and one token interpreter (:class:`NoiseHandshake`), and are
tested byte for byte against noiseprotocol and against the published cacophony and snow test
vectors (tests/unit/test_noise.py, tests/unit/test_noise_ik.py).

XX, when nothing is known of the responder (three messages; each side learns the other's
static key inside the handshake)::

    -> e
    <- e, ee, s, es
    -> s, se

IK, when the initiator already knows the responder's static key (its signed peer record):
one round trip. The responder's key is a pre-message, so it is in the hash from the start::

    <- s
    ...
    -> e, es, s, ss
    <- e, ee, se

What each message's payload gets (Noise spec, section 7.7): IK's first payload is encrypted
to the responder's static key and authenticates the initiator, but can be replayed and has no
forward secrecy (a later theft of the responder's static private key decrypts it); its second,
and everything after, has full forward secrecy.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

Cipher = Literal["AESGCM", "ChaChaPoly"]
DH_LEN = 32
HASH_LEN = 32
TAG_LEN = 16
MAX_NONCE = 2**64 - 1


class NoiseError(Exception):
    """The handshake cannot go on: a message is malformed or fails authentication."""


def aead(cipher: Cipher, key: bytes) -> AESGCM | ChaCha20Poly1305:
    return AESGCM(key) if cipher == "AESGCM" else ChaCha20Poly1305(key)


def nonce_bytes(cipher: Cipher, nonce: int) -> bytes:
    # The spec's encodings: AESGCM big-endian, ChaChaPoly little-endian, after 4 zero bytes.
    order: Literal["big", "little"] = "big" if cipher == "AESGCM" else "little"
    return b"\x00" * 4 + nonce.to_bytes(8, order)


def rekey(cipher: Cipher, key: bytes) -> bytes:
    """REKEY(k) of the Noise spec: the first 32 bytes of ENCRYPT(k, maxnonce, "", zeros)."""
    return aead(cipher, key).encrypt(nonce_bytes(cipher, MAX_NONCE), b"\x00" * 32, b"")[:32]


def _hkdf(chaining_key: bytes, material: bytes, outputs: int) -> list[bytes]:
    temp = hmac.digest(chaining_key, material, "sha256")
    out: list[bytes] = []
    previous = b""
    for index in range(1, outputs + 1):
        previous = hmac.digest(temp, previous + bytes([index]), "sha256")
        out.append(previous)
    return out


def _public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


class _SymmetricState:
    def __init__(self, protocol_name: bytes, cipher: Cipher) -> None:
        self.cipher = cipher
        if len(protocol_name) <= HASH_LEN:
            self.h = protocol_name.ljust(HASH_LEN, b"\x00")
        else:
            self.h = hashlib.sha256(protocol_name).digest()
        self.ck = self.h
        self.k: bytes | None = None
        self.n = 0

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, material: bytes) -> None:
        self.ck, self.k = _hkdf(self.ck, material, 2)
        self.n = 0

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        if self.k is None:
            ciphertext = plaintext
        else:
            ciphertext = aead(self.cipher, self.k).encrypt(
                nonce_bytes(self.cipher, self.n), plaintext, self.h
            )
            self.n += 1
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        if self.k is None:
            plaintext = ciphertext
        else:
            try:
                plaintext = aead(self.cipher, self.k).decrypt(
                    nonce_bytes(self.cipher, self.n), ciphertext, self.h
                )
            except InvalidTag:
                raise NoiseError("handshake message failed authentication") from None
            self.n += 1
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        first, second = _hkdf(self.ck, b"", 2)
        return first, second


class NoiseHandshake:
    """One side of a Noise handshake, interpreting its pattern's tokens.

    Call :meth:`write_message` and :meth:`read_message` alternately (the initiator writes
    first); once every message of the pattern is through, :attr:`complete` is true and
    :meth:`split` gives the transport keys. A subclass names the pattern (:attr:`NAME`,
    :attr:`MESSAGES`) and its pre-messages. ``ephemeral`` is for test vectors only.
    """

    NAME = ""
    #: The tokens of each message, the initiator's first.
    MESSAGES: tuple[tuple[str, ...], ...] = ()

    def __init__(
        self,
        initiator: bool,
        static: X25519PrivateKey,
        *,
        prologue: bytes = b"",
        cipher: Cipher = "AESGCM",
        ephemeral: X25519PrivateKey | None = None,
        remote_static: bytes | None = None,
    ) -> None:
        self.initiator = initiator
        self._s = static
        self._e = ephemeral
        self._re: bytes | None = None
        self.remote_static: bytes | None = remote_static
        self._state = _SymmetricState(f"Noise_{self.NAME}_25519_{cipher}_SHA256".encode(), cipher)
        self._state.mix_hash(prologue)
        self._pre_messages()
        self._step = 0  # messages processed so far
        self.failed: str | None = None  # once a message failed, the handshake is over

    def _pre_messages(self) -> None:
        """Mixes the pattern's pre-messages into the hash (none by default)."""

    @property
    def complete(self) -> bool:
        return self._step == len(self.MESSAGES)

    @property
    def handshake_hash(self) -> bytes:
        return self._state.h

    def _writes(self) -> bool:
        return (self._step % 2 == 0) == self.initiator

    def write_message(self, payload: bytes = b"") -> bytes:
        """This side's next handshake message. A NoiseError (an invalid key from the peer) is
        terminal, as in :meth:`read_message`; calling out of turn is not (nothing changed)."""
        if self.failed is not None:
            raise NoiseError(f"the handshake already failed ({self.failed})")
        if self.complete or not self._writes():
            raise NoiseError("not this side's turn to write")
        try:
            return self._write(payload)
        except NoiseError as exc:
            self.failed = str(exc)
            raise

    def _write(self, payload: bytes) -> bytes:
        state = self._state
        out = b""
        for token in self.MESSAGES[self._step]:
            if token == "e":
                out += self._write_ephemeral()
            elif token == "s":
                out += state.encrypt_and_hash(_public(self._s))
            else:
                state.mix_key(self._dh_token(token))
        out += state.encrypt_and_hash(payload)
        self._step += 1
        return out

    def read_message(self, message: bytes) -> bytes:
        """The payload of the peer's next handshake message. A NoiseError is terminal: the
        hash and keys have absorbed part of the bad message, so every later call fails too,
        saying why (the handshake must start over)."""
        if self.failed is not None:
            raise NoiseError(f"the handshake already failed ({self.failed})")
        if self.complete or self._writes():
            raise NoiseError("not this side's turn to read")
        try:
            return self._read(message)
        except NoiseError as exc:
            self.failed = str(exc)
            raise

    def _read(self, message: bytes) -> bytes:
        state = self._state
        data = memoryview(message)
        for token in self.MESSAGES[self._step]:
            if token == "e":
                data = self._read_ephemeral(data)
            elif token == "s":
                data = self._read_static(data)
            else:
                state.mix_key(self._dh_token(token))
        payload = state.decrypt_and_hash(bytes(data))
        self._step += 1
        return payload

    def split(self) -> tuple[bytes, bytes]:
        """(key this side sends with, key this side receives with)."""
        if not self.complete:
            raise NoiseError("handshake is not complete")
        initiator_to_responder, responder_to_initiator = self._state.split()
        if self.initiator:
            return initiator_to_responder, responder_to_initiator
        return responder_to_initiator, initiator_to_responder

    def _dh_token(self, token: str) -> bytes:
        """DH for ``ee``, ``es``, ``se`` or ``ss``: the first letter is the initiator's key,
        the second the responder's, so each side uses its own private key for its letter."""
        mine, theirs = (token[0], token[1]) if self.initiator else (token[1], token[0])
        private = self._e if mine == "e" else self._s
        public = self._re if theirs == "e" else self.remote_static
        return self._dh(private, public)

    def _write_ephemeral(self) -> bytes:
        if self._e is None:
            self._e = X25519PrivateKey.generate()
        public = _public(self._e)
        self._state.mix_hash(public)
        return public

    def _read_ephemeral(self, data: memoryview) -> memoryview:
        if len(data) < DH_LEN:
            raise NoiseError("handshake message too short for an ephemeral key")
        self._re = bytes(data[:DH_LEN])
        self._state.mix_hash(self._re)
        return data[DH_LEN:]

    def _read_static(self, data: memoryview) -> memoryview:
        size = DH_LEN + (TAG_LEN if self._state.k is not None else 0)
        if len(data) < size:
            raise NoiseError("handshake message too short for a static key")
        self.remote_static = self._state.decrypt_and_hash(bytes(data[:size]))
        return data[size:]

    @staticmethod
    def _dh(private: X25519PrivateKey | None, public: bytes | None) -> bytes:
        assert private is not None
        assert public is not None
        try:
            return private.exchange(X25519PublicKey.from_public_bytes(public))
        except ValueError as exc:  # e.g. a low-order point: all-zero shared secret
            raise NoiseError(f"invalid Diffie-Hellman public key: {exc}") from None


class NoiseXX(NoiseHandshake):
    """One side of a Noise XX handshake: three messages, nothing known beforehand."""

    NAME = "XX"
    MESSAGES = (("e",), ("e", "ee", "s", "es"), ("s", "se"))

    def __init__(
        self,
        initiator: bool,
        static: X25519PrivateKey,
        *,
        prologue: bytes = b"",
        cipher: Cipher = "AESGCM",
        ephemeral: X25519PrivateKey | None = None,
    ) -> None:
        super().__init__(initiator, static, prologue=prologue, cipher=cipher, ephemeral=ephemeral)


class NoiseIK(NoiseHandshake):
    """One side of a Noise IK handshake: two messages; the initiator must pass the
    responder's static public key as ``remote_static`` (the responder learns the initiator's
    from the first message). A responder that does not hold the private key the initiator
    used fails the first message's static key with a NoiseError ("failed authentication")."""

    NAME = "IK"
    MESSAGES = (("e", "es", "s", "ss"), ("e", "ee", "se"))

    def __init__(
        self,
        initiator: bool,
        static: X25519PrivateKey,
        *,
        remote_static: bytes | None = None,
        prologue: bytes = b"",
        cipher: Cipher = "AESGCM",
        ephemeral: X25519PrivateKey | None = None,
    ) -> None:
        if initiator and (remote_static is None or len(remote_static) != DH_LEN):
            raise ValueError("an IK initiator needs the responder's 32-byte static key")
        if not initiator and remote_static is not None:
            raise ValueError("an IK responder learns the initiator's static key from it")
        super().__init__(
            initiator,
            static,
            prologue=prologue,
            cipher=cipher,
            ephemeral=ephemeral,
            remote_static=remote_static,
        )

    def _pre_messages(self) -> None:
        # <- s: the responder's static key is in the hash before the first message.
        responder = self.remote_static if self.initiator else _public(self._s)
        assert responder is not None
        self._state.mix_hash(responder)
