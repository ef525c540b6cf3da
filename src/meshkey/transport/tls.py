"""TLS 1.3 contexts whose certificates carry the node's Ed25519 key (no CA: keys are pinned)."""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path

from meshkey.identity.certificate import certificate_pem
from meshkey.identity.keys import Identity

#: TLS needs a server name; ours carries no meaning (the peer is checked by NodeId).
SERVER_NAME = "meshkey"


def server_context(identity: Identity) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    # ssl loads keys only from files: write them to a private temporary directory, load, delete.
    with tempfile.TemporaryDirectory(prefix="meshkey-tls-") as directory:
        cert_path = Path(directory) / "cert.pem"
        key_path = Path(directory) / "key.pem"
        cert_path.write_bytes(certificate_pem(identity))
        key_path.touch(mode=0o600)
        key_path.write_bytes(identity.to_pem())
        context.load_cert_chain(cert_path, key_path)
    return context


def client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    # No CA and no host name: the hop protocol checks the certificate's key against the NodeId.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
