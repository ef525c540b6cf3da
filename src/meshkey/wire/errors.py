"""Typed errors for every wire parser: bad bytes never escape as IndexError or struct.error."""

from __future__ import annotations

from meshkey.errors import MeshkeyError


class WireError(MeshkeyError, ValueError):
    """Bytes that are not a valid instance of a meshkey wire format."""

    default_kind = "malformed"


class TruncatedError(WireError):
    """The input ended before the format said it would."""


class OversizeError(WireError):
    """A length field or the input itself is over the format's size limit."""


class UnsupportedVersionError(WireError):
    """The version byte names a version this implementation does not speak."""


class MalformedError(WireError):
    """The bytes are the right size but do not make sense (bad tag, bad value, trailing data)."""
