"""Relay registration: a node asks another's ``relay`` service for ``forward_to_NAME``.

msgpack maps, version 2::

    request  {"v": 2, "op": "challenge", "name": str, "token": bytes(16)}
             {"v": 2, "op": "create" | "delete", "name": str, "token": bytes(16),
              "owner": bytes(32), "challenge": bytes(32), "sig": bytes(64)}
    response {"v": 2, "token": bytes, "ok": true, "address": "/service/forward_to_NAME"}
             {"v": 2, "token": bytes, "ok": true, "challenge": bytes(32), "host": bytes(32)}
             {"v": 2, "token": bytes, "ok": false, "code": "conflict", "error": "..."}

``op`` is one of :class:`RelayOp`; a refusal's ``code`` one of :class:`RelayErrorCode` (the
dataclasses keep the wire's text, so a code a later version adds still decodes:
:attr:`RelayResponse.error_code` is then None).

The owner of a relay is proven end to end, never inferred from whoever forwarded the request
(version 1 took the last hop's identity, so any node could register a name *through* its owner,
a confused deputy). A registration is signed by the owner's Ed25519 identity over
:func:`registration_payload`, which binds the relay node's NodeId, the operation, the name and
a fresh challenge that the relay node issued and accepts once: it can be neither replayed nor
taken to another relay node.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

from meshkey.wire.errors import MalformedError
from meshkey.wire.maps import decode_map, encode_map

RELAY_VERSION = 2
MAX_RELAY_MESSAGE = 4096
TOKEN_SIZE = 16
CHALLENGE_SIZE = 32
NODE_ID_SIZE = 32
SIGNATURE_SIZE = 64
RELAY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,52}")  # forward_to_ + name <= 64


class RelayOp(enum.StrEnum):
    CHALLENGE = "challenge"  # ask the relay node for a fresh challenge to sign
    CREATE = "create"
    DELETE = "delete"


class RelayErrorCode(enum.StrEnum):
    CONFLICT = "conflict"  # the name belongs to another node (or is reserved): final
    REFUSED = "refused"  # not allowed (policy, bad signature): final
    LIMIT = "limit"  # over a limit of the relay node (per owner, in all): retried, slowly
    STALE = "stale"  # the challenge expired, was used, is from before a restart, or was
    #                  issued for another route: retry


OPERATIONS = tuple(RelayOp)

_REGISTRATION_CONTEXT = b"meshkey/relay-registration/v1"


@dataclass(frozen=True, slots=True)
class RelayRequest:
    op: str  # a RelayOp (its text on the wire)
    name: str
    token: bytes
    owner: bytes = b""  # the registering identity's NodeId (create, delete)
    challenge: bytes = b""  # issued by the relay node (create, delete)
    signature: bytes = b""  # owner's signature over registration_payload(...)


@dataclass(frozen=True, slots=True)
class RelayResponse:
    token: bytes
    ok: bool
    address: str = ""
    code: str = ""
    error: str = ""
    challenge: bytes = b""
    host: bytes = b""  # the relay node's NodeId, with a challenge

    @property
    def error_code(self) -> RelayErrorCode | None:
        """A refusal's code, None if this version does not know it (or it is a success)."""
        try:
            return RelayErrorCode(self.code)
        except ValueError:
            return None


def check_relay_name(name: str) -> str:
    if not RELAY_NAME.fullmatch(name):
        raise ValueError(
            f"invalid relay name {name!r}: 1-53 letters, digits, '_', '.', '-' "
            "(starting with a letter or digit)"
        )
    return name


def registration_payload(host: bytes, owner: bytes, op: str, name: str, challenge: bytes) -> bytes:
    """The bytes an owner signs to create or delete relay ``name`` on relay node ``host``."""
    return (
        _REGISTRATION_CONTEXT
        + host
        + owner
        + op.encode("ascii")
        + b"\x00"
        + name.encode("ascii")
        + b"\x00"
        + challenge
    )


def encode_relay_request(request: RelayRequest) -> bytes:
    body: dict[str, Any] = {"op": str(request.op), "name": request.name, "token": request.token}
    if request.op != RelayOp.CHALLENGE:
        body["owner"], body["challenge"], body["sig"] = (
            request.owner,
            request.challenge,
            request.signature,
        )
    return encode_map(body, RELAY_VERSION, MAX_RELAY_MESSAGE, "relay request")


def encode_relay_response(response: RelayResponse) -> bytes:
    body: dict[str, Any] = {"token": response.token, "ok": response.ok}
    if response.ok and response.challenge:
        body["challenge"], body["host"] = response.challenge, response.host
    elif response.ok:
        body["address"] = response.address
    else:
        body["code"], body["error"] = str(response.code), response.error
    return encode_map(body, RELAY_VERSION, MAX_RELAY_MESSAGE, "relay response")


def _unpack(data: bytes) -> dict[str, Any]:
    body = decode_map(data, RELAY_VERSION, MAX_RELAY_MESSAGE, "relay message")
    token = body.get("token")
    if not isinstance(token, bytes) or len(token) != TOKEN_SIZE:
        raise MalformedError("relay message without a valid token")
    return body


def _sized(body: dict[str, Any], key: str, size: int) -> bytes:
    value = body.get(key)
    if not isinstance(value, bytes) or len(value) != size:
        raise MalformedError(f"relay message: {key!r} must be {size} bytes")
    return value


def decode_relay_request(data: bytes) -> RelayRequest:
    body = _unpack(data)
    op, name = body.get("op"), body.get("name")
    if op not in OPERATIONS or not isinstance(name, str):
        raise MalformedError("relay request needs op challenge|create|delete and a name")
    try:
        check_relay_name(name)
    except ValueError as exc:
        raise MalformedError(str(exc)) from exc
    operation = RelayOp(op)
    if operation is RelayOp.CHALLENGE:
        return RelayRequest(operation, name, body["token"])
    return RelayRequest(
        operation,
        name,
        body["token"],
        owner=_sized(body, "owner", NODE_ID_SIZE),
        challenge=_sized(body, "challenge", CHALLENGE_SIZE),
        signature=_sized(body, "sig", SIGNATURE_SIZE),
    )


def decode_relay_response(data: bytes) -> RelayResponse:
    body = _unpack(data)
    ok = body.get("ok")
    if ok is True and "challenge" in body:
        return RelayResponse(
            body["token"],
            True,
            challenge=_sized(body, "challenge", CHALLENGE_SIZE),
            host=_sized(body, "host", NODE_ID_SIZE),
        )
    if ok is True and isinstance(body.get("address"), str):
        return RelayResponse(body["token"], True, address=body["address"])
    if ok is False and isinstance(body.get("code"), str) and isinstance(body.get("error"), str):
        return RelayResponse(body["token"], False, code=body["code"], error=body["error"])
    raise MalformedError("relay response is neither a success nor an error")
