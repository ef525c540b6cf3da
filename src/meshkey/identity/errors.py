from __future__ import annotations

from meshkey.errors import MeshkeyError


class IdentityError(MeshkeyError):
    """An identity cannot be created, found, read or used; the message says which and why."""


class InvalidNodeIdError(IdentityError, ValueError):
    """Text or bytes that are not a NodeId."""

    default_kind = "invalid"


class IdentityNotFound(IdentityError):
    """No identity of that name."""

    default_kind = "not_found"


class IdentityExists(IdentityError):
    """An identity of that name already exists (creating one is exclusive)."""

    default_kind = "conflict"
