"""The control API between the CLI and a node daemon: msgpack maps in length-prefixed frames.

Request:  ``{"v": 1, "op": "message.send", "args": {...}}``
Response: ``{"v": 1, "ok": true, "result": ...}`` or
          ``{"v": 1, "ok": false, "error": {"code": "unreachable", "message": "..."}}``
"""

from __future__ import annotations

from typing import Any

from meshkey.wire.frames import MAX_FRAME
from meshkey.wire.maps import decode_map, encode_map

CONTROL_VERSION = 1


def encode_control(body: dict[str, Any]) -> bytes:
    return encode_map(body, CONTROL_VERSION, MAX_FRAME, "control message")


def decode_control(data: bytes) -> dict[str, Any]:
    return decode_map(data, CONTROL_VERSION, MAX_FRAME, "control message")
