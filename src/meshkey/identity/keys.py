"""An identity: an Ed25519 private key, and the NodeId that is its public key."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from meshkey.identity.errors import IdentityError
from meshkey.identity.node_id import NodeId


class Identity:
    __slots__ = ("_key", "node_id")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.node_id = NodeId(key.public_key().public_bytes_raw())

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes, passphrase: bytes | None = None) -> Identity:
        # Imported here: serialization costs ~10 ms, and only key files need it.
        from cryptography.hazmat.primitives import serialization

        try:
            key = serialization.load_pem_private_key(pem, password=passphrase)
        except TypeError as exc:  # encrypted without passphrase, or passphrase for plain key
            raise IdentityError(str(exc)) from exc
        except ValueError as exc:
            raise IdentityError(f"not a readable private key ({exc})") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError("the key is not an Ed25519 key")
        return cls(key)

    def to_pem(self, passphrase: bytes | None = None) -> bytes:
        from cryptography.hazmat.primitives import serialization

        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    @property
    def private_key(self) -> Ed25519PrivateKey:
        return self._key

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def __repr__(self) -> str:
        return f"Identity({self.node_id})"


def verify_signature(node_id: NodeId, data: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``node_id``'s Ed25519 signature of ``data``."""
    try:
        Ed25519PublicKey.from_public_bytes(node_id.raw).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True
