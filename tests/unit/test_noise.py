"""Noise XX against an independent implementation (noiseprotocol), byte for byte.

With the same static and ephemeral keys both must produce the same bytes. The published
cacophony and snow vectors for Noise_XX (and Noise_IK) are checked in test_noise_ik.py.
"""

from __future__ import annotations

import warnings

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from meshkey.channel.noise import Cipher, NoiseError, NoiseXX, aead, nonce_bytes

keys = st.binary(min_size=32, max_size=32)


def oracle(cipher: Cipher, initiator: bool, static: bytes, ephemeral: bytes, prologue: bytes):
    connection = NoiseConnection.from_name(f"Noise_XX_25519_{cipher}_SHA256".encode())
    if initiator:
        connection.set_as_initiator()
    else:
        connection.set_as_responder()
    connection.set_keypair_from_private_bytes(Keypair.STATIC, static)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns that fixed ephemerals are for tests only
        connection.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
    connection.set_prologue(prologue)
    connection.start_handshake()
    return connection


def ours(initiator: bool, static: bytes, ephemeral: bytes, prologue: bytes, cipher: Cipher):
    return NoiseXX(
        initiator,
        X25519PrivateKey.from_private_bytes(static),
        prologue=prologue,
        cipher=cipher,
        ephemeral=X25519PrivateKey.from_private_bytes(ephemeral),
    )


@pytest.mark.parametrize("cipher", ["AESGCM", "ChaChaPoly"])
@pytest.mark.parametrize("we_initiate", [True, False])
@settings(max_examples=15, deadline=None)
@given(
    k=st.tuples(keys, keys, keys, keys),
    prologue=st.binary(max_size=40),
    payloads=st.tuples(*(st.binary(max_size=64) for _ in range(5))),
)
def test_same_bytes_as_noiseprotocol(
    cipher: Cipher,
    we_initiate: bool,
    k: tuple[bytes, ...],
    prologue: bytes,
    payloads: tuple[bytes, ...],
) -> None:
    mine = ours(we_initiate, k[0], k[1], prologue, cipher)
    theirs = oracle(cipher, not we_initiate, k[2], k[3], prologue)
    # A twin of our side in the oracle, to compare every byte we write.
    twin = oracle(cipher, we_initiate, k[0], k[1], prologue)
    for index in range(3):
        if (index % 2 == 0) == we_initiate:
            written = mine.write_message(payloads[index])
            assert written == twin.write_message(payloads[index])
            assert theirs.read_message(written) == payloads[index]
        else:
            written = theirs.write_message(payloads[index])
            assert mine.read_message(written) == payloads[index]
            twin.read_message(written)
    assert mine.complete and theirs.handshake_finished
    assert mine.handshake_hash == theirs.get_handshake_hash()
    send, receive = mine.split()
    # Transport messages with nonce 0, as Noise's CipherState sends them.
    ciphertext = aead(cipher, send).encrypt(nonce_bytes(cipher, 0), payloads[3], b"")
    assert theirs.decrypt(ciphertext) == payloads[3]
    reply = theirs.encrypt(payloads[4])
    assert aead(cipher, receive).decrypt(nonce_bytes(cipher, 0), reply, b"") == payloads[4]


def pair() -> tuple[NoiseXX, NoiseXX]:
    return (NoiseXX(True, X25519PrivateKey.generate()), NoiseXX(False, X25519PrivateKey.generate()))


def test_tampered_handshake_messages_fail() -> None:
    initiator, responder = pair()
    responder.read_message(initiator.write_message())
    second = bytearray(responder.write_message(b"proof"))
    second[40] ^= 1
    with pytest.raises(NoiseError, match="authentication"):
        initiator.read_message(bytes(second))


def test_turns_and_short_messages() -> None:
    initiator, responder = pair()
    with pytest.raises(NoiseError):
        responder.write_message()
    with pytest.raises(NoiseError, match="too short"):
        responder.read_message(b"\x00" * 31)
    with pytest.raises(NoiseError):
        initiator.split()


def test_low_order_ephemeral_is_rejected() -> None:
    _initiator, responder = pair()
    responder.read_message(b"\x00" * 32)  # the all-zero point
    with pytest.raises(NoiseError, match="Diffie-Hellman"):
        responder.write_message()


def test_a_failed_read_is_terminal() -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from meshkey.channel.noise import NoiseError, NoiseXX

    initiator = NoiseXX(True, X25519PrivateKey.generate())
    responder = NoiseXX(False, X25519PrivateKey.generate())
    responder.read_message(initiator.write_message())
    reply = responder.write_message()
    with pytest.raises(NoiseError, match="failed authentication"):
        initiator.read_message(reply[:-1] + bytes([reply[-1] ^ 1]))
    # The hash already absorbed the bad bytes: it must not look retryable.
    with pytest.raises(NoiseError, match="already failed"):
        initiator.read_message(reply)
    with pytest.raises(NoiseError, match="already failed"):
        initiator.write_message()


def test_a_failed_write_is_terminal_too() -> None:
    from meshkey.channel.noise import NoiseError

    _initiator, responder = pair()
    responder.read_message(b"\x00" * 32)  # a low-order ephemeral: the DH will fail
    with pytest.raises(NoiseError, match="Diffie-Hellman"):
        responder.write_message()
    # The hash already absorbed this side's ephemeral: a retry must not produce a message.
    with pytest.raises(NoiseError, match="already failed"):
        responder.write_message()
