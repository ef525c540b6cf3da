"""Noise XX (Noise_XX_25519_{AESGCM,ChaChaPoly}_SHA256), sans-IO, on ``cryptography``'s primitives.

Written here because no maintained Python Noise library exists (noiseprotocol's last release
was 2020) and meshkey's channels need explicit-nonce transport keys, which the standard
CipherState does not offer. The handshake follows revision 34 of the Noise specification and
is tested byte for byte against the published cacophony vectors' behaviour (see
tests/unit/test_noise.py).

    -> e
    <- e, ee, s, es
    -> s, se
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


class NoiseXX:
    """One side of a Noise XX handshake.

    Call :meth:`write_message` and :meth:`read_message` alternately (the initiator writes
    first); after the third message :attr:`complete` is true and :meth:`split` gives the
    transport keys. ``ephemeral`` is for test vectors only.
    """

    def __init__(
        self,
        initiator: bool,
        static: X25519PrivateKey,
        *,
        prologue: bytes = b"",
        cipher: Cipher = "AESGCM",
        ephemeral: X25519PrivateKey | None = None,
    ) -> None:
        self.initiator = initiator
        self._s = static
        self._e = ephemeral
        self._re: bytes | None = None
        self.remote_static: bytes | None = None
        name = f"Noise_XX_25519_{cipher}_SHA256".encode()
        self._state = _SymmetricState(name, cipher)
        self._state.mix_hash(prologue)
        self._step = 0  # messages processed so far
        self.failed: str | None = None  # once a message failed, the handshake is over

    @property
    def complete(self) -> bool:
        return self._step == 3

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
        if self._step == 0:  # -> e
            out += self._write_ephemeral()
        elif self._step == 1:  # <- e, ee, s, es
            out += self._write_ephemeral()
            state.mix_key(self._dh(self._e, self._re))
            out += state.encrypt_and_hash(_public(self._s))
            state.mix_key(self._dh(self._s, self._re))
        else:  # -> s, se
            out += state.encrypt_and_hash(_public(self._s))
            state.mix_key(self._dh(self._s, self._re))
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
        if self._step == 0:  # -> e
            data = self._read_ephemeral(data)
        elif self._step == 1:  # <- e, ee, s, es
            data = self._read_ephemeral(data)
            state.mix_key(self._dh(self._e, self._re))
            data = self._read_static(data)
            state.mix_key(self._dh(self._e, self.remote_static))
        else:  # -> s, se
            data = self._read_static(data)
            state.mix_key(self._dh(self._e, self.remote_static))
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
