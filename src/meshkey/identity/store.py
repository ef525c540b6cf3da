"""Identities on disk: ``<dir>/<name>.pem`` (PKCS#8, mode 0600) and ``<name>.json`` metadata."""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from meshkey.identity.errors import IdentityError, IdentityExists, IdentityNotFound
from meshkey.identity.keys import Identity
from meshkey.identity.names import check_name
from meshkey.identity.node_id import NodeId


@dataclass(frozen=True)
class IdentityInfo:
    name: str
    node_id: str
    created_at: str
    encrypted: bool
    error: str | None = None  # set, in listings, for an identity whose files are unusable

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def write_private_file(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Writes ``data`` atomically to a file that is never readable by others, even briefly.

    With ``exclusive`` it fails with FileExistsError if ``path`` exists, and of two writers
    racing for it exactly one wins (a hard link, unlike a rename, never replaces a file)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            os.link(temporary, path)
        else:
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


#: The version of ``identity export`` bundles.
EXPORT_VERSION = 1


class IdentityStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _paths(self, name: str) -> tuple[Path, Path]:
        check_name("identity", name)
        return self.directory / f"{name}.pem", self.directory / f"{name}.json"

    def exists(self, name: str) -> bool:
        return self._paths(name)[0].exists()

    def create(self, name: str, passphrase: bytes | None = None) -> IdentityInfo:
        """Creates identity ``name``; of several racing to create it, exactly one succeeds and
        the others get IdentityExists."""
        return self.save(name, Identity.generate(), passphrase)

    def save(self, name: str, identity: Identity, passphrase: bytes | None = None) -> IdentityInfo:
        """Stores ``identity`` as ``name``, exclusively (encrypted with ``passphrase``)."""
        return self._store(name, identity.to_pem(passphrase), identity.node_id, passphrase)

    def _store(
        self, name: str, pem: bytes, node_id: NodeId, passphrase: bytes | bool | None
    ) -> IdentityInfo:
        key_path, meta_path = self._paths(name)
        if key_path.exists():
            raise IdentityExists(f"identity {name!r} already exists")
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = IdentityInfo(
            name=name,
            node_id=str(node_id),
            created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            encrypted=bool(passphrase),
        )
        # The key decides who won; its metadata follows (a listing in between shows the
        # identity as unreadable for that instant, never a key without an owner).
        try:
            write_private_file(key_path, pem, exclusive=True)
        except FileExistsError:
            raise IdentityExists(f"identity {name!r} already exists") from None
        write_private_file(meta_path, json.dumps(info.as_dict(), indent=2).encode())
        if self.default() is None:
            self.set_default(name)
        return info

    # -- the default identity, export and import ----------------------------------------

    @property
    def _default_path(self) -> Path:
        return self.directory / "default"

    def default(self) -> str | None:
        """The default identity's name (the first one created, unless set), or None."""
        try:
            name = self._default_path.read_text().strip()
        except OSError:
            return None
        return name if name and self.exists(name) else None

    def set_default(self, name: str) -> None:
        self.info(name)  # it must exist (IdentityNotFound otherwise)
        write_private_file(self._default_path, f"{name}\n".encode())

    def export(self, name: str) -> dict[str, object]:
        """A portable bundle of identity ``name``: its key exactly as stored (so an encrypted
        key stays encrypted), its NodeId and whether it is encrypted."""
        info = self.info(name)
        key_path, _ = self._paths(name)
        return {
            "meshkey_identity": EXPORT_VERSION,
            "name": name,
            "node_id": info.node_id,
            "encrypted": info.encrypted,
            "key": key_path.read_text(),
        }

    def import_bundle(
        self, bundle: object, name: str | None = None, passphrase: bytes | None = None
    ) -> IdentityInfo:
        """Stores an exported bundle as ``name`` (default: the name it was exported under).

        A plain key is checked against the NodeId it claims; an encrypted one too when
        ``passphrase`` is given, otherwise when it is first used."""
        if not isinstance(bundle, dict) or bundle.get("meshkey_identity") != EXPORT_VERSION:
            raise IdentityError("not a meshkey identity export (see `meshkey identity export`)")
        try:
            claimed = NodeId.parse(str(bundle["node_id"]))
            pem = str(bundle["key"]).encode()
            encrypted = bool(bundle["encrypted"])
            target = name or str(bundle["name"])
        except (KeyError, ValueError) as exc:
            raise IdentityError(f"the identity export is incomplete or corrupted ({exc})") from exc
        check_name("identity", target)
        if not encrypted or passphrase is not None:
            identity = Identity.from_pem(pem, passphrase if encrypted else None)
            if identity.node_id != claimed:
                raise IdentityError(
                    f"the exported key is not the key of {claimed} (corrupted export?)"
                )
        return self._store(target, pem, claimed, encrypted)

    def info(self, name: str) -> IdentityInfo:
        key_path, meta_path = self._paths(name)
        if not key_path.exists():
            if meta_path.exists():
                raise IdentityError(f"identity {name!r}: its key file {key_path} is missing")
            raise IdentityNotFound(f"no identity named {name!r} (see `meshkey identity list`)")
        try:
            raw = json.loads(meta_path.read_text())
            info = IdentityInfo(
                name=name,
                node_id=str(NodeId.parse(raw["node_id"])),
                created_at=str(raw["created_at"]),
                encrypted=bool(raw["encrypted"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IdentityError(
                f"identity {name!r}: metadata file {meta_path} is missing or corrupted ({exc})"
            ) from exc
        return info

    def list(self) -> list[IdentityInfo]:
        if not self.directory.is_dir():
            return []
        names = {path.stem for path in self.directory.glob("*.pem")}
        names |= {path.stem for path in self.directory.glob("*.json")}
        names = {name for name in names if not name.startswith(".")}
        infos = []
        for name in sorted(names):
            try:
                infos.append(self.info(name))
            except (IdentityError, ValueError) as exc:  # listed, not hidden, and not fatal
                infos.append(IdentityInfo(name, "-", "-", encrypted=False, error=str(exc)))
        return infos

    def load(self, name: str, passphrase: bytes | None = None) -> Identity:
        info = self.info(name)
        key_path, _ = self._paths(name)
        if info.encrypted and passphrase is None:
            raise IdentityError(
                f"identity {name!r} is passphrase-encrypted: set MESHKEY_PASSPHRASE"
            )
        try:
            pem = key_path.read_bytes()
        except OSError as exc:
            raise IdentityError(f"identity {name!r}: cannot read {key_path}: {exc}") from exc
        try:
            identity = Identity.from_pem(pem, passphrase if info.encrypted else None)
        except IdentityError as exc:
            raise IdentityError(
                f"identity {name!r}: key file {key_path} is corrupted or the passphrase is "
                f"wrong ({exc})"
            ) from exc
        if str(identity.node_id) != info.node_id:
            raise IdentityError(
                f"identity {name!r}: key file {key_path} does not match its recorded NodeId "
                f"{info.node_id}"
            )
        return identity

    def delete(self, name: str) -> None:
        key_path, meta_path = self._paths(name)
        if not key_path.exists():
            raise IdentityNotFound(f"no identity named {name!r}")
        key_path.unlink()
        meta_path.unlink(missing_ok=True)
