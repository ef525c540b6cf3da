"""Noise IK beside XX: against an independent implementation (noiseprotocol) byte for byte,
and both patterns against the published cacophony and snow test vectors
(tests/unit/noise_vectors.json, copied unchanged; its "about" says from where)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from meshkey.channel.noise import (
    Cipher,
    NoiseError,
    NoiseHandshake,
    NoiseIK,
    NoiseXX,
    aead,
    nonce_bytes,
)

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "noise_vectors.json").read_text()
)["vectors"]

keys = st.binary(min_size=32, max_size=32)


def _private(raw: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(raw)


def _public(raw: bytes) -> bytes:
    return _private(raw).public_key().public_bytes_raw()


def oracle(
    cipher: Cipher,
    initiator: bool,
    static: bytes,
    ephemeral: bytes,
    prologue: bytes,
    remote_static: bytes | None,
) -> NoiseConnection:
    connection = NoiseConnection.from_name(f"Noise_IK_25519_{cipher}_SHA256".encode())
    if initiator:
        connection.set_as_initiator()
        assert remote_static is not None
        connection.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote_static)
    else:
        connection.set_as_responder()
    connection.set_keypair_from_private_bytes(Keypair.STATIC, static)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns that fixed ephemerals are for tests only
        connection.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
    connection.set_prologue(prologue)
    connection.start_handshake()
    return connection


@pytest.mark.parametrize("cipher", ["AESGCM", "ChaChaPoly"])
@pytest.mark.parametrize("we_initiate", [True, False])
@settings(max_examples=15, deadline=None)
@given(
    k=st.tuples(keys, keys, keys, keys),
    prologue=st.binary(max_size=40),
    payloads=st.tuples(*(st.binary(max_size=64) for _ in range(4))),
)
def test_ik_writes_the_same_bytes_as_noiseprotocol(
    cipher: Cipher,
    we_initiate: bool,
    k: tuple[bytes, ...],
    prologue: bytes,
    payloads: tuple[bytes, ...],
) -> None:
    initiator_static, initiator_e, responder_static, responder_e = k
    if we_initiate:
        mine: NoiseHandshake = NoiseIK(
            True,
            _private(initiator_static),
            remote_static=_public(responder_static),
            prologue=prologue,
            cipher=cipher,
            ephemeral=_private(initiator_e),
        )
        theirs = oracle(cipher, False, responder_static, responder_e, prologue, None)
        twin = oracle(
            cipher, True, initiator_static, initiator_e, prologue, _public(responder_static)
        )
    else:
        mine = NoiseIK(
            False,
            _private(responder_static),
            prologue=prologue,
            cipher=cipher,
            ephemeral=_private(responder_e),
        )
        theirs = oracle(
            cipher, True, initiator_static, initiator_e, prologue, _public(responder_static)
        )
        twin = oracle(cipher, False, responder_static, responder_e, prologue, None)
    for index in range(2):
        if (index == 0) == we_initiate:
            written = mine.write_message(payloads[index])
            assert written == twin.write_message(payloads[index])  # every byte we write
            assert theirs.read_message(written) == payloads[index]
        else:
            written = theirs.write_message(payloads[index])
            assert mine.read_message(written) == payloads[index]
            twin.read_message(written)
    assert mine.complete and theirs.handshake_finished
    assert mine.handshake_hash == theirs.get_handshake_hash()
    peer_static = _public(responder_static if we_initiate else initiator_static)
    assert mine.remote_static == peer_static
    send, receive = mine.split()
    ciphertext = aead(cipher, send).encrypt(nonce_bytes(cipher, 0), payloads[2], b"")
    assert theirs.decrypt(ciphertext) == payloads[2]
    reply = theirs.encrypt(payloads[3])
    assert aead(cipher, receive).decrypt(nonce_bytes(cipher, 0), reply, b"") == payloads[3]


def _sides(vector: dict[str, Any]) -> tuple[NoiseHandshake, NoiseHandshake]:
    name: str = vector["protocol_name"]
    cipher: Cipher = "AESGCM" if "_AESGCM_" in name else "ChaChaPoly"
    common: dict[str, Any] = {"cipher": cipher}
    initiator_args = {
        **common,
        "prologue": bytes.fromhex(vector["init_prologue"]),
        "ephemeral": _private(bytes.fromhex(vector["init_ephemeral"])),
    }
    responder_args = {
        **common,
        "prologue": bytes.fromhex(vector["resp_prologue"]),
        "ephemeral": _private(bytes.fromhex(vector["resp_ephemeral"])),
    }
    initiator_static = _private(bytes.fromhex(vector["init_static"]))
    responder_static = _private(bytes.fromhex(vector["resp_static"]))
    if name.startswith("Noise_IK_"):
        remote = bytes.fromhex(vector["init_remote_static"])
        return (
            NoiseIK(True, initiator_static, remote_static=remote, **initiator_args),
            NoiseIK(False, responder_static, **responder_args),
        )
    return (
        NoiseXX(True, initiator_static, **initiator_args),
        NoiseXX(False, responder_static, **responder_args),
    )


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"{v['source']}:{v['protocol_name']}")
def test_the_published_vectors(vector: dict[str, Any]) -> None:
    initiator, responder = _sides(vector)
    cipher: Cipher = initiator._state.cipher
    messages = vector["messages"]
    sessions = (initiator, responder)
    index = 0
    while not initiator.complete:
        writer, reader = sessions[index % 2], sessions[(index + 1) % 2]
        payload = bytes.fromhex(messages[index]["payload"])
        written = writer.write_message(payload)
        assert written.hex() == messages[index]["ciphertext"], f"message {index}"
        assert reader.read_message(written) == payload
        index += 1
    assert responder.complete
    if "handshake_hash" in vector:
        assert initiator.handshake_hash.hex() == vector["handshake_hash"]
    assert initiator.handshake_hash == responder.handshake_hash
    # Transport messages go on alternating, each direction counting its own nonces from 0.
    keys = {0: initiator.split()[0], 1: responder.split()[0]}
    nonces = {0: 0, 1: 0}
    for later in range(index, len(messages)):
        side = later % 2
        payload = bytes.fromhex(messages[later]["payload"])
        sealed = aead(cipher, keys[side]).encrypt(nonce_bytes(cipher, nonces[side]), payload, b"")
        assert sealed.hex() == messages[later]["ciphertext"], f"message {later}"
        nonces[side] += 1


def test_the_vectors_cover_both_patterns_and_ciphers_from_two_sources() -> None:
    covered = {(v["source"], v["protocol_name"]) for v in VECTORS}
    for source in ("cacophony", "snow"):
        for pattern in ("XX", "IK"):
            for cipher in ("AESGCM", "ChaChaPoly"):
                assert (source, f"Noise_{pattern}_25519_{cipher}_SHA256") in covered


def test_a_responder_without_the_key_the_initiator_used_fails_the_first_message() -> None:
    """The record was stale: the initiator encrypted to a key the responder no longer holds.
    The responder cannot read the initiator's static key, and says so as a NoiseError."""
    old, new = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    initiator = NoiseIK(
        True, X25519PrivateKey.generate(), remote_static=old.public_key().public_bytes_raw()
    )
    responder = NoiseIK(False, new)
    hello = initiator.write_message(b"who I am")
    with pytest.raises(NoiseError, match="failed authentication"):
        responder.read_message(hello)
    assert responder.remote_static is None  # nothing about the initiator was learnt
    with pytest.raises(NoiseError, match="already failed"):
        responder.write_message()


def test_the_initiators_identity_is_hidden_from_anyone_without_the_responders_key() -> None:
    """A passive observer (or the relay) sees the ephemeral key and ciphertext: the
    initiator's static key appears nowhere in the first message."""
    initiator_static = X25519PrivateKey.generate()
    responder = X25519PrivateKey.generate()
    initiator = NoiseIK(
        True, initiator_static, remote_static=responder.public_key().public_bytes_raw()
    )
    hello = initiator.write_message(b"")
    assert initiator_static.public_key().public_bytes_raw() not in hello
    assert len(hello) == 32 + 32 + 16 + 16  # e, encrypted s, the empty payload's tag


def test_ik_needs_the_responders_key_on_the_initiator_only() -> None:
    key = X25519PrivateKey.generate()
    with pytest.raises(ValueError, match="needs the responder"):
        NoiseIK(True, key)
    with pytest.raises(ValueError, match="needs the responder"):
        NoiseIK(True, key, remote_static=b"\x01" * 31)
    with pytest.raises(ValueError, match="learns the initiator"):
        NoiseIK(False, key, remote_static=b"\x01" * 32)


def test_ik_is_done_after_two_messages_and_turns_are_kept() -> None:
    responder_key = X25519PrivateKey.generate()
    initiator = NoiseIK(
        True,
        X25519PrivateKey.generate(),
        remote_static=responder_key.public_key().public_bytes_raw(),
    )
    responder = NoiseIK(False, responder_key)
    with pytest.raises(NoiseError, match="turn"):
        responder.write_message()
    responder.read_message(initiator.write_message(b"one"))
    with pytest.raises(NoiseError):
        initiator.split()
    assert initiator.read_message(responder.write_message(b"two")) == b"two"
    assert initiator.complete and responder.complete
    with pytest.raises(NoiseError, match="turn"):
        initiator.write_message()
    send, receive = initiator.split()
    assert responder.split() == (receive, send)


def test_a_low_order_ephemeral_in_the_first_ik_message_is_rejected() -> None:
    responder = NoiseIK(False, X25519PrivateKey.generate())
    with pytest.raises(NoiseError, match="Diffie-Hellman"):
        responder.read_message(b"\x00" * 32 + b"\x00" * 48 + b"\x00" * 16)
