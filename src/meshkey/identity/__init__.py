"""Ed25519 identities: keys, NodeIds, signatures, attestations and key storage."""

from meshkey.identity.errors import IdentityError
from meshkey.identity.keys import Identity, verify_signature
from meshkey.identity.node_id import NodeId

__all__ = ["Identity", "IdentityError", "NodeId", "verify_signature"]
