"""Identities on disk: ``<dir>/<name>.pem`` (PKCS#8, mode 0600) and ``<name>.json`` metadata."""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from meshkey.identity.errors import IdentityError
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


def write_private_file(path: Path, data: bytes) -> None:
    """Writes ``data`` atomically to a file that is never readable by others, even briefly."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class IdentityStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _paths(self, name: str) -> tuple[Path, Path]:
        check_name("identity", name)
        return self.directory / f"{name}.pem", self.directory / f"{name}.json"

    def exists(self, name: str) -> bool:
        return self._paths(name)[0].exists()

    def create(self, name: str, passphrase: bytes | None = None) -> IdentityInfo:
        key_path, meta_path = self._paths(name)
        if key_path.exists():
            raise IdentityError(f"identity {name!r} already exists")
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        identity = Identity.generate()
        info = IdentityInfo(
            name=name,
            node_id=str(identity.node_id),
            created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            encrypted=passphrase is not None,
        )
        write_private_file(key_path, identity.to_pem(passphrase))
        write_private_file(meta_path, json.dumps(info.as_dict(), indent=2).encode())
        return info

    def info(self, name: str) -> IdentityInfo:
        key_path, meta_path = self._paths(name)
        if not key_path.exists():
            if meta_path.exists():
                raise IdentityError(f"identity {name!r}: its key file {key_path} is missing")
            raise IdentityError(f"no identity named {name!r} (see `meshkey identity list`)")
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
            raise IdentityError(f"no identity named {name!r}")
        key_path.unlink()
        meta_path.unlink(missing_ok=True)
