"""meshkey: peer-to-peer secure connectivity between cryptographic identities.

``meshkey.Node`` is the embedding API (see the README). Names are imported lazily so that
the lower layers (and the CLI's fast paths) do not pay for the whole stack.

Every error meshkey raises on purpose is a :class:`MeshkeyError`; ``Node.send`` raises
:class:`RouteError` for a malformed route, :class:`NodeStateError` for a ``/node/NAME`` that
does not exist or does not run, and :class:`RemoteError` (with an :class:`ErrorCode`) when
the message could not be delivered or answered.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from meshkey.errors import MeshkeyError
    from meshkey.identity.errors import IdentityError, InvalidNodeIdError
    from meshkey.identity.keys import Identity
    from meshkey.identity.node_id import NodeId
    from meshkey.node.core import Node
    from meshkey.node.state import NodeStateError
    from meshkey.routing.address import RouteError
    from meshkey.routing.errors import RemoteError
    from meshkey.wire.message import ErrorCode

_HOMES = {
    "Node": "meshkey.node.core",
    "NodeId": "meshkey.identity.node_id",
    "Identity": "meshkey.identity.keys",
    "MeshkeyError": "meshkey.errors",
    "RemoteError": "meshkey.routing.errors",
    "RouteError": "meshkey.routing.address",
    "NodeStateError": "meshkey.node.state",
    "IdentityError": "meshkey.identity.errors",
    "InvalidNodeIdError": "meshkey.identity.errors",
    "ErrorCode": "meshkey.wire.message",
}

__all__ = [
    "ErrorCode",
    "Identity",
    "IdentityError",
    "InvalidNodeIdError",
    "MeshkeyError",
    "Node",
    "NodeId",
    "NodeStateError",
    "RemoteError",
    "RouteError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'meshkey' has no attribute {name!r}")
