"""Ed25519 identities: keys, NodeIds, signatures, attestations and key storage.

Names are loaded lazily: ``meshkey.identity.node_id`` must not pull in ``cryptography``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshkey.identity.errors import IdentityError
    from meshkey.identity.keys import Identity, verify_signature
    from meshkey.identity.node_id import NodeId

__all__ = ["Identity", "IdentityError", "NodeId", "verify_signature"]

_HOMES = {
    "Identity": "meshkey.identity.keys",
    "verify_signature": "meshkey.identity.keys",
    "IdentityError": "meshkey.identity.errors",
    "NodeId": "meshkey.identity.node_id",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'meshkey.identity' has no attribute {name!r}")
