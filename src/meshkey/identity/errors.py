from __future__ import annotations


class IdentityError(Exception):
    """An identity cannot be created, found, read or used; the message says which and why."""


class InvalidNodeIdError(IdentityError, ValueError):
    """Text or bytes that are not a NodeId."""
