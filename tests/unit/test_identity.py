from __future__ import annotations

import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkey.identity import Identity, IdentityError, NodeId, verify_signature
from meshkey.identity.certificate import certificate_pem, node_id_from_certificate
from meshkey.identity.errors import InvalidNodeIdError
from meshkey.identity.store import IdentityStore


@given(st.binary(min_size=32, max_size=32))
def test_node_id_text_round_trip_is_fixed_length_and_canonical(raw: bytes) -> None:
    node_id = NodeId(raw)
    text = str(node_id)
    assert len(text) == 54
    assert text.startswith("mk")
    assert text.isalnum()
    assert NodeId.parse(text) == node_id
    assert NodeId.parse(text.upper()) == node_id  # forgiving of case when pasted


@pytest.mark.parametrize(
    "text",
    [
        "",
        "mk",
        "mk" + "a" * 51,
        "mk" + "a" * 53,
        "xx" + "a" * 52,
        "mk" + "1" * 52,
        "mk" + "a" * 51 + "b",
    ],
)
def test_node_id_rejects_bad_text(text: str) -> None:
    with pytest.raises(InvalidNodeIdError):
        NodeId.parse(text)


def test_node_id_rejects_wrong_size() -> None:
    with pytest.raises(InvalidNodeIdError):
        NodeId(b"\x00" * 31)


def test_signatures_verify_only_for_the_signer_and_data() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    signature = alice.sign(b"data")
    assert verify_signature(alice.node_id, b"data", signature)
    assert not verify_signature(bob.node_id, b"data", signature)
    assert not verify_signature(alice.node_id, b"datb", signature)
    assert not verify_signature(alice.node_id, b"data", b"\x00" * 64)


def test_certificate_carries_the_node_id() -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    identity = Identity.generate()
    certificate = x509.load_pem_x509_certificate(certificate_pem(identity))
    der = certificate.public_bytes(serialization.Encoding.DER)
    assert node_id_from_certificate(der) == identity.node_id
    with pytest.raises(IdentityError):
        node_id_from_certificate(b"not a certificate")


def test_store_creates_private_key_files_and_lists(tmp_path: Path) -> None:
    store = IdentityStore(tmp_path / "ids")
    info = store.create("alice")
    assert store.list() == [info]
    key = tmp_path / "ids" / "alice.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ids").stat().st_mode) == 0o700
    assert str(store.load("alice").node_id) == info.node_id
    with pytest.raises(IdentityError, match="already exists"):
        store.create("alice")
    with pytest.raises(IdentityError, match="no identity named"):
        store.load("bob")
    with pytest.raises(ValueError, match="invalid identity name"):
        store.create("../evil")


def test_store_detects_corrupted_or_swapped_keys(tmp_path: Path) -> None:
    store = IdentityStore(tmp_path)
    store.create("alice")
    store.create("bob")
    (tmp_path / "alice.pem").write_bytes(b"garbage")
    with pytest.raises(IdentityError, match="corrupted"):
        store.load("alice")
    (tmp_path / "alice.pem").write_bytes((tmp_path / "bob.pem").read_bytes())
    with pytest.raises(IdentityError, match="does not match its recorded NodeId"):
        store.load("alice")
    (tmp_path / "bob.json").write_text("{")
    with pytest.raises(IdentityError, match="metadata"):
        store.info("bob")
    (tmp_path / "alice.pem").unlink()
    with pytest.raises(IdentityError, match=r"key file .* is missing"):
        store.load("alice")
    # A listing shows broken identities, with why, and does not fail because of them.
    listed = {info.name: info.error for info in store.list()}
    assert set(listed) == {"alice", "bob"}
    assert "is missing" in (listed["alice"] or "")
    assert "metadata" in (listed["bob"] or "")


def test_store_passphrase_encryption(tmp_path: Path) -> None:
    store = IdentityStore(tmp_path)
    info = store.create("secret", passphrase=b"correct horse")
    assert info.encrypted
    assert b"ENCRYPTED" in (tmp_path / "secret.pem").read_bytes()
    assert str(store.load("secret", b"correct horse").node_id) == info.node_id
    with pytest.raises(IdentityError, match="MESHKEY_PASSPHRASE"):
        store.load("secret")
    with pytest.raises(IdentityError, match="passphrase is wrong"):
        store.load("secret", b"wrong")
