"""The control API between the CLI and a node daemon: msgpack maps in length-prefixed frames.

Request:  ``{"v": 1, "op": "message.send", "args": {...}}``
Response: ``{"v": 1, "ok": true, "result": ...}`` or
          ``{"v": 1, "ok": false, "error": {"code": "unreachable", "message": "..."}}``
"""

from __future__ import annotations

from typing import Any

import msgpack

from meshkey.wire.errors import MalformedError, OversizeError, UnsupportedVersionError
from meshkey.wire.frames import MAX_FRAME

CONTROL_VERSION = 1


def encode_control(body: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb({"v": CONTROL_VERSION, **body}, use_bin_type=True)
    if len(packed) > MAX_FRAME:
        raise OversizeError(f"control message of {len(packed)} bytes")
    return packed


def decode_control(data: bytes) -> dict[str, Any]:
    try:
        if len(data) > MAX_FRAME:
            raise OversizeError(f"control message of {len(data)} bytes")
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.FormatError, msgpack.StackError) as exc:
        raise MalformedError(f"control message is not valid msgpack: {exc}") from exc
    if not isinstance(body, dict):
        raise MalformedError("control message is not a map")
    if body.get("v") != CONTROL_VERSION:
        raise UnsupportedVersionError(f"control API version {body.get('v')!r}")
    return body
