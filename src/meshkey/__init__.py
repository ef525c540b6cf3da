"""meshkey: peer-to-peer secure connectivity between cryptographic identities.

``meshkey.Node`` is the embedding API (see the README). It is imported lazily so that the
lower layers (and the CLI's fast paths) do not pay for the whole stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from meshkey.node.core import Node
    from meshkey.routing.errors import RemoteError

__all__ = ["Node", "RemoteError", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Node":
        from meshkey.node.core import Node

        return Node
    if name == "RemoteError":
        from meshkey.routing.errors import RemoteError

        return RemoteError
    raise AttributeError(f"module 'meshkey' has no attribute {name!r}")
