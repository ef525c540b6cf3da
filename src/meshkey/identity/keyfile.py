"""Whether an identity's files can be used, told from their structure alone: ``node list``
must say what is wrong with a node without loading cryptography (tens of milliseconds)."""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

#: PKCS#8 for Ed25519 (RFC 8410): SEQUENCE { version 0, AlgorithmIdentifier id-Ed25519,
#: OCTET STRING { OCTET STRING (32-byte seed) } }, 48 bytes in all.
_ED25519_PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
_PLAIN = "PRIVATE KEY"
_ENCRYPTED = "ENCRYPTED PRIVATE KEY"


def key_file_problem(key_path: Path, meta_path: Path) -> str | None:
    """Why the identity stored in these files cannot be used, or None if it looks whole."""
    try:
        text = key_path.read_text()
    except FileNotFoundError:
        return f"its key file {key_path} is missing"
    except (OSError, UnicodeDecodeError) as exc:
        return f"its key file {key_path} cannot be read ({exc})"
    label, body = _pem(text)
    if label is None or body is None:
        return f"its key file {key_path} is corrupted (not a PEM private key)"
    if label == _PLAIN and not (len(body) == 48 and body.startswith(_ED25519_PKCS8_PREFIX)):
        return f"its key file {key_path} is corrupted (not an Ed25519 key)"
    if label == _ENCRYPTED and not body.startswith(b"\x30"):
        return f"its key file {key_path} is corrupted"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        return f"its metadata file {meta_path} is missing or corrupted ({exc})"
    if not isinstance(meta, dict) or not isinstance(meta.get("node_id"), str):
        return f"its metadata file {meta_path} is corrupted (no node_id)"
    return None


def _pem(text: str) -> tuple[str | None, bytes | None]:
    lines = [line.strip() for line in text.strip().splitlines()]
    if (
        len(lines) < 3
        or not lines[0].startswith("-----BEGIN ")
        or not lines[-1].startswith("-----END ")
    ):
        return None, None
    label = lines[0].removeprefix("-----BEGIN ").removesuffix("-----")
    if label not in (_PLAIN, _ENCRYPTED) or lines[-1] != f"-----END {label}-----":
        return None, None
    try:
        return label, base64.b64decode("".join(lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        return label, None
