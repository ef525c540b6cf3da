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

from meshkey.wire.errors import MalformedError
from meshkey.wire.maps import decode_map, encode_map

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
    body = {"op": request.op, "name": request.name, "token": request.token}
    return encode_map(body, RELAY_VERSION, MAX_RELAY_MESSAGE, "relay request")


def encode_relay_response(response: RelayResponse) -> bytes:
    body: dict[str, Any] = {"token": response.token, "ok": response.ok}
    if response.ok:
        body["address"] = response.address
    else:
        body["code"], body["error"] = response.code, response.error
    return encode_map(body, RELAY_VERSION, MAX_RELAY_MESSAGE, "relay response")


def _unpack(data: bytes) -> dict[str, Any]:
    body = decode_map(data, RELAY_VERSION, MAX_RELAY_MESSAGE, "relay message")
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
