"""Names users give to identities and nodes."""

from __future__ import annotations

import re

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_name(kind: str, name: str) -> str:
    """Validates a user-chosen name (identity, node): letters, digits, ``_ . -``; 1-64 chars."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid {kind} name {name!r}: use 1-64 letters, digits, '_', '.', '-' "
            "(starting with a letter or digit)"
        )
    return name
