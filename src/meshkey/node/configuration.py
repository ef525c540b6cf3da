"""A node configuration file: one file that declares a node, so it can be set up (and set up
again, identically) with ``meshkey node create --configuration FILE``.

TOML (``.toml``) or YAML (``.yaml``/``.yml``), with the same keys::

    [node]                      # all optional; the command line's NAME wins over "name"
    name = "blue"
    identity = "blue"           # created if missing
    udp = "127.0.0.1:4000"
    tcp = "127.0.0.1:4001"
    seeds = ["NODEID@203.0.113.10:4000"]    # the node graph's seeds
    dht_mode = "auto"           # or "server", "client"
    auto_relay = true           # false: no automatic relay when nobody can reach the node

    [[tcp_listeners]]           # more TCP listeners
    address = "127.0.0.1:4002"

    [[listeners]]               # secure channel listeners (every node has /service/api)
    address = "private"
    authorized = ["yellow", "${PARTNER}"]     # node names or NodeIds

    [[relays]]
    name = "blue"
    at = "/node/green"

    [[policies]]
    resource = "echo"
    allow = ["yellow"]

``${NAME}`` is replaced by ``--variable NAME=VALUE``, else by the environment variable NAME;
an unknown variable, an unknown key or a value of the wrong type is an error that names the
place in the file.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshkey.errors import MeshkeyError

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigurationError(MeshkeyError):
    default_kind = "invalid"


@dataclass
class NodeConfiguration:
    name: str | None = None
    identity: str | None = None
    udp: str | None = None
    tcp: str | None = None
    seeds: list[str] = field(default_factory=list)
    dht_mode: str | None = None
    auto_relay: bool | None = None
    tcp_listeners: list[str] = field(default_factory=list)
    listeners: list[tuple[str, list[str]]] = field(default_factory=list)
    relays: list[tuple[str, str]] = field(default_factory=list)
    policies: list[tuple[str, list[str]]] = field(default_factory=list)


_SECTIONS = {"node", "tcp_listeners", "listeners", "relays", "policies"}
_NODE_KEYS = {"name", "identity", "udp", "tcp", "seeds", "dht_mode", "auto_relay"}
_DHT_MODES = ("auto", "server", "client")


def load_configuration(path: Path, variables: dict[str, str]) -> NodeConfiguration:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror or exc}") from exc
    text = _substitute(text, variables, path)
    document = _parse(text, path)
    return _build(document, path)


def _substitute(text: str, variables: dict[str, str], path: Path) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        value = variables.get(name, os.environ.get(name))
        if value is None:
            line = text.count("\n", 0, match.start()) + 1
            raise ConfigurationError(
                f"{path}:{line}: ${{{name}}} is not set (give --variable {name}=VALUE)"
            )
        return value

    return _VARIABLE.sub(replace, text)


def _parse(text: str, path: Path) -> dict[str, Any]:
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigurationError(f"{path}: not valid YAML: {exc}") from exc
    elif path.suffix == ".toml":
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{path}: not valid TOML: {exc}") from exc
    else:
        raise ConfigurationError(f"{path}: a configuration is .toml, .yaml or .yml")
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigurationError(f"{path}: the configuration must be a table of sections")
    return document


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{where} must be a non-empty string")
    return value


def _texts(value: Any, where: str) -> list[str]:
    if not isinstance(value, list):
        raise ConfigurationError(f"{where} must be a list of strings")
    return [_text(item, f"{where}[{index}]") for index, item in enumerate(value)]


def _entries(document: dict[str, Any], section: str, keys: set[str], path: Path) -> list[Any]:
    entries = document.get(section, [])
    if not isinstance(entries, list):
        raise ConfigurationError(f"{path}: [{section}] must be a list of tables")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigurationError(f"{path}: {section}[{index}] must be a table")
        unknown = set(entry) - keys
        if unknown:
            raise ConfigurationError(
                f"{path}: {section}[{index}]: unknown key(s) {', '.join(sorted(unknown))} "
                f"(known: {', '.join(sorted(keys))})"
            )
    return entries


def _build(document: dict[str, Any], path: Path) -> NodeConfiguration:
    unknown = set(document) - _SECTIONS
    if unknown:
        raise ConfigurationError(
            f"{path}: unknown section(s) {', '.join(sorted(unknown))} "
            f"(known: {', '.join(sorted(_SECTIONS))})"
        )
    node = document.get("node", {})
    if not isinstance(node, dict) or set(node) - _NODE_KEYS:
        raise ConfigurationError(f"{path}: [node] takes only {', '.join(sorted(_NODE_KEYS))}")
    texts = _NODE_KEYS - {"seeds", "auto_relay"}
    auto_relay = node.get("auto_relay")
    if auto_relay is not None and not isinstance(auto_relay, bool):
        raise ConfigurationError(f"{path}: node.auto_relay is true or false")
    given = {key: _text(node[key], f"{path}: node.{key}") for key in texts if key in node}
    if given.get("dht_mode", "auto") not in _DHT_MODES:
        raise ConfigurationError(f"{path}: node.dht_mode is one of {', '.join(_DHT_MODES)}")
    config = NodeConfiguration(
        name=given.get("name"),
        identity=given.get("identity"),
        udp=given.get("udp"),
        tcp=given.get("tcp"),
        seeds=_texts(node.get("seeds", []), f"{path}: node.seeds"),
        dht_mode=given.get("dht_mode"),
        auto_relay=auto_relay,
    )
    for index, entry in enumerate(_entries(document, "tcp_listeners", {"address"}, path)):
        config.tcp_listeners.append(_text(entry.get("address"), f"{path}: tcp_listeners[{index}]"))
    for index, entry in enumerate(_entries(document, "listeners", {"address", "authorized"}, path)):
        where = f"{path}: listeners[{index}]"
        config.listeners.append(
            (
                _text(entry.get("address"), f"{where}.address"),
                _texts(entry.get("authorized", []), f"{where}.authorized"),
            )
        )
    for index, entry in enumerate(_entries(document, "relays", {"name", "at"}, path)):
        where = f"{path}: relays[{index}]"
        config.relays.append(
            (_text(entry.get("name"), f"{where}.name"), _text(entry.get("at"), f"{where}.at"))
        )
    for index, entry in enumerate(_entries(document, "policies", {"resource", "allow"}, path)):
        where = f"{path}: policies[{index}]"
        config.policies.append(
            (
                _text(entry.get("resource"), f"{where}.resource"),
                _texts(entry.get("allow"), f"{where}.allow"),
            )
        )
    return config
