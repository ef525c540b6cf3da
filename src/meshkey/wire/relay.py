"""Relay registration: a node asks another's ``relay`` service for ``forward_to_NAME``.

msgpack maps::

    request  {"v": 1, "op": "create" | "delete", "name": str, "token": bytes(16)}
    response {"v": 1, "token": bytes, "ok": true, "address": "/service/forward_to_NAME"}
             {"v": 1, "token": bytes, "ok": false, "code": "conflict", "error": "..."}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgpack

from meshkey.wire.errors import MalformedError, OversizeError, UnsupportedVersionError

RELAY_VERSION = 1
MAX_RELAY_MESSAGE = 4096
TOKEN_SIZE = 16
RELAY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,52}")  # forward_to_ + name <= 64


@dataclass(frozen=True, slots=True)
class RelayRequest:
    op: str
    name: str
    token: bytes


@dataclass(frozen=True, slots=True)
class RelayResponse:
    token: bytes
    ok: bool
    address: str = ""
    code: str = ""
    error: str = ""


def check_relay_name(name: str) -> str:
    if not RELAY_NAME.fullmatch(name):
        raise ValueError(
            f"invalid relay name {name!r}: 1-53 letters, digits, '_', '.', '-' "
            "(starting with a letter or digit)"
        )
    return name


def encode_relay_request(request: RelayRequest) -> bytes:
    packed: bytes = msgpack.packb(
        {"v": RELAY_VERSION, "op": request.op, "name": request.name, "token": request.token}
    )
    return packed


def encode_relay_response(response: RelayResponse) -> bytes:
    body: dict[str, Any] = {"v": RELAY_VERSION, "token": response.token, "ok": response.ok}
    if response.ok:
        body["address"] = response.address
    else:
        body["code"], body["error"] = response.code, response.error
    packed: bytes = msgpack.packb(body)
    return packed


def _unpack(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_RELAY_MESSAGE:
        raise OversizeError(f"relay message of {len(data)} bytes")
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.FormatError, msgpack.StackError) as exc:
        raise MalformedError(f"relay message is not valid msgpack: {exc}") from exc
    if not isinstance(body, dict):
        raise MalformedError("relay message is not a map")
    if body.get("v") != RELAY_VERSION:
        raise UnsupportedVersionError(f"relay protocol version {body.get('v')!r}")
    token = body.get("token")
    if not isinstance(token, bytes) or len(token) != TOKEN_SIZE:
        raise MalformedError("relay message without a valid token")
    return body


def decode_relay_request(data: bytes) -> RelayRequest:
    body = _unpack(data)
    op, name = body.get("op"), body.get("name")
    if op not in ("create", "delete") or not isinstance(name, str):
        raise MalformedError("relay request needs op create|delete and a name")
    try:
        check_relay_name(name)
    except ValueError as exc:
        raise MalformedError(str(exc)) from exc
    return RelayRequest(op, name, body["token"])


def decode_relay_response(data: bytes) -> RelayResponse:
    body = _unpack(data)
    ok = body.get("ok")
    if ok is True and isinstance(body.get("address"), str):
        return RelayResponse(body["token"], True, address=body["address"])
    if ok is False and isinstance(body.get("code"), str) and isinstance(body.get("error"), str):
        return RelayResponse(body["token"], False, code=body["code"], error=body["error"])
    raise MalformedError("relay response is neither a success nor an error")
