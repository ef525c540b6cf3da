"""Attestations: an identity vouches, by signature, that a key belongs to it.

A secure channel's X25519 static key is attested by the node's Ed25519 identity; the peer
checks the attestation against the NodeId it was sent with, and that the attested key is the
one the Noise handshake authenticated.
"""

from __future__ import annotations

from meshkey.identity.keys import Identity, verify_signature
from meshkey.identity.node_id import NodeId

_STATIC_KEY_CONTEXT = b"meshkey/attest/noise-static-x25519/v1"


def attest_static_key(identity: Identity, static_public: bytes) -> bytes:
    return identity.sign(_STATIC_KEY_CONTEXT + static_public)


def verify_static_key(node_id: NodeId, static_public: bytes, signature: bytes) -> bool:
    return verify_signature(node_id, _STATIC_KEY_CONTEXT + static_public, signature)
