"""DESIGN.md's layering, enforced: a package never imports one above it."""

from __future__ import annotations

import ast
from pathlib import Path

# Lowest first, as in DESIGN.md. Modules directly under meshkey/ (log, __init__) are shared.
LAYERS = [
    "wire",
    "identity",
    "routing",
    "transport",
    "dht",
    "nat",
    "relay",
    "channel",
    "paths",
    "portal",
    "node",
    "cli",
]
SOURCE = Path(__file__).resolve().parents[2] / "src" / "meshkey"


def imported_meshkey_packages(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "meshkey" and len(parts) > 1 and parts[1] in LAYERS:
                found.add(parts[1])
    return found


def test_every_layer_exists_only_once_and_imports_only_lower_layers() -> None:
    violations = []
    for package in SOURCE.iterdir():
        if not package.is_dir() or package.name.startswith("__"):
            continue
        assert package.name in LAYERS, f"{package.name} is not a layer named in DESIGN.md"
        rank = LAYERS.index(package.name)
        for path in package.rglob("*.py"):
            for imported in imported_meshkey_packages(path):
                if LAYERS.index(imported) > rank:
                    violations.append(f"{path.relative_to(SOURCE)} imports meshkey.{imported}")
    assert violations == []


def test_shared_modules_import_no_layer() -> None:
    for shared in ("log.py", "retry.py", "ratelimit.py", "errors.py", "timing.py"):
        assert imported_meshkey_packages(SOURCE / shared) == set(), shared
