"""Self-signed X.509 certificates carrying a node's Ed25519 key, for TLS and QUIC hops.

The certificate is only a vehicle for the key: what a peer checks is that the key in it is the
NodeId it expected (TLS itself proves the peer holds the private key).

``cryptography.x509`` costs ~25 ms to import, so it is imported when first needed: a CLI that
sends one message parses one certificate and never builds any.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from meshkey.identity.errors import IdentityError
from meshkey.identity.keys import Identity
from meshkey.identity.node_id import NodeId

if TYPE_CHECKING:
    from cryptography import x509

_VALIDITY = datetime.timedelta(days=3650)


def self_signed_certificate(identity: Identity) -> x509.Certificate:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(identity.node_id))])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(identity.private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + _VALIDITY)
        .sign(identity.private_key, None)
    )


def certificate_pem(identity: Identity) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return self_signed_certificate(identity).public_bytes(serialization.Encoding.PEM)


def node_id_from_certificate(der: bytes | None) -> NodeId:
    """The NodeId whose key a peer's certificate carries; IdentityError if there is none."""
    from cryptography import x509

    if not der:
        raise IdentityError("peer sent no certificate")
    try:
        certificate = x509.load_der_x509_certificate(der)
        key = certificate.public_key()
    except ValueError as exc:
        raise IdentityError(f"peer certificate is not readable: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise IdentityError("peer certificate does not carry an Ed25519 key")
    return NodeId(key.public_bytes_raw())
