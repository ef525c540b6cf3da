"""Structured (msgpack) messages: one decoder for every versioned map format."""

from __future__ import annotations

from typing import Any

import msgpack

from meshkey.wire.errors import MalformedError, OversizeError, UnsupportedVersionError


def encode_map(body: dict[str, Any], version: int, limit: int, what: str) -> bytes:
    packed: bytes = msgpack.packb({"v": version, **body}, use_bin_type=True)
    if len(packed) > limit:
        raise OversizeError(f"{what} of {len(packed)} bytes (limit {limit})")
    return packed


def decode_map(data: bytes, version: int, limit: int, what: str) -> dict[str, Any]:
    """A msgpack map with ``"v": version``; typed WireErrors for anything else."""
    if len(data) > limit:
        raise OversizeError(f"{what} of {len(data)} bytes (limit {limit})")
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.FormatError, msgpack.StackError) as exc:
        raise MalformedError(f"{what} is not valid msgpack: {exc}") from exc
    if not isinstance(body, dict):
        raise MalformedError(f"{what} is not a map")
    if body.get("v") != version:
        raise UnsupportedVersionError(f"{what} version {body.get('v')!r} (expected {version})")
    return body
