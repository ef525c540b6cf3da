"""A node configuration: what a node should be and have, so it can be set up, and set up again
to the same end, with ``meshkey node create --configuration FILE``.

TOML (``.toml``) or YAML (``.yaml``/``.yml``) files, or inline YAML (Ockam's
``--configuration '{name: n, tcp-outlets: {db: {to: 5432}}}'``), with the same keys; ``-``
and ``_`` are the same in keys::

    [node]                      # all optional; the command line's NAME wins over "name"
    name = "blue"               # (these keys may also stand at the top level, as in Ockam)
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
    authorized = ["yellow", "${PARTNER}"]     # node names, identity names or NodeIds

    [[relays]]
    name = "blue"
    at = "/node/green"

    [[policies]]
    resource = "echo"
    allow = ["yellow"]

    [[tcp_outlets]]
    to = "127.0.0.1:5432"       # or a bare port
    alias = "db"                # optional: name (default "outlet"), allow, insecure

    [[tcp_inlets]]
    from = "127.0.0.1:15432"
    to = "/node/green/service/forward_to_blue/secure/api/service/outlet"
    alias = "db"                # optional: authorized, insecure

A section is a list of tables, a single table, or (as in Ockam) a table of tables keyed by
name (``tcp-outlets: {db: {to: 5432}}``: the key is the relay's name, the policy's resource,
the listener's address, the portal's alias).

``${NAME}`` is replaced by ``--variable NAME=VALUE``, else by the environment variable NAME;
an unknown or empty variable, an unknown key or a value of the wrong type is an error that
names the place.

What a configuration asks of a node is checked and compared with the node in
:mod:`meshkey.node.convergence`.
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
    """A configuration as written (names not resolved yet); ``source`` names it in errors."""

    source: str = "configuration"
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
    tcp_outlets: list[dict[str, Any]] = field(default_factory=list)
    tcp_inlets: list[dict[str, Any]] = field(default_factory=list)

    @property
    def declares_anything(self) -> bool:
        return bool(
            self.tcp_listeners
            or self.listeners
            or self.relays
            or self.policies
            or self.tcp_outlets
            or self.tcp_inlets
        )


_SECTIONS = {
    "node",
    "tcp_listeners",
    "listeners",
    "relays",
    "policies",
    "tcp_outlets",
    "tcp_inlets",
}
_NODE_KEYS = {"name", "identity", "udp", "tcp", "seeds", "dht_mode", "auto_relay"}
_DHT_MODES = ("auto", "server", "client")
#: Each section's keys, and which key a table-of-tables' key fills in.
_ENTRY_KEYS: dict[str, tuple[set[str], str]] = {
    "tcp_listeners": ({"address"}, "address"),
    "listeners": ({"address", "authorized"}, "address"),
    "relays": ({"name", "at"}, "name"),
    "policies": ({"resource", "allow"}, "resource"),
    "tcp_outlets": ({"to", "alias", "name", "from", "at", "allow", "insecure"}, "alias"),
    "tcp_inlets": ({"from", "to", "alias", "at", "authorized", "insecure"}, "alias"),
}


def check_variables(pairs: dict[str, str]) -> dict[str, str]:
    for key, value in pairs.items():
        if value == "":
            raise ConfigurationError(
                f"empty value for variable {key!r} (give --variable {key}=VALUE)"
            )
    return pairs


def is_inline(source: str) -> bool:
    """Whether ``source`` is a configuration itself rather than a file's path."""
    return source.lstrip().startswith("{") or "\n" in source


def load_configuration(source: str | Path, variables: dict[str, str]) -> NodeConfiguration:
    """Reads a configuration file, or inline YAML (see :func:`is_inline`)."""
    check_variables(variables)
    text_source = str(source)
    if is_inline(text_source):
        name, suffix, text = "the inline configuration", ".yaml", text_source
    else:
        path = Path(source)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigurationError(f"cannot read {path}: {exc.strerror or exc}") from exc
        name, suffix = str(path), path.suffix
    text = _substitute(text, variables, name)
    document = _parse(text, suffix, name)
    return _build(document, name)


def _substitute(text: str, variables: dict[str, str], where: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        value = variables.get(name, os.environ.get(name))
        line = text.count("\n", 0, match.start()) + 1
        if value is None:
            raise ConfigurationError(
                f"{where}:{line}: ${{{name}}} is not set (give --variable {name}=VALUE)"
            )
        if value == "":
            raise ConfigurationError(f"{where}:{line}: empty value for variable {name!r}")
        return value

    return _VARIABLE.sub(replace, text)


def _parse(text: str, suffix: str, where: str) -> dict[str, Any]:
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigurationError(f"{where}: not valid YAML: {exc}") from exc
    elif suffix == ".toml":
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{where}: not valid TOML: {exc}") from exc
    else:
        raise ConfigurationError(f"{where}: a configuration is .toml, .yaml or .yml")
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigurationError(f"{where}: the configuration must be a table of sections")
    return {_key(key): value for key, value in document.items()}


def _key(key: object) -> str:
    return str(key).replace("-", "_")


def _text(value: Any, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # a bare port
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{where} must be a non-empty string")
    return value


def _texts(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ConfigurationError(f"{where} must be a list of strings")
    return [_text(item, f"{where}[{index}]") for index, item in enumerate(value)]


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{where} is true or false")
    return value


def _entries(
    document: dict[str, Any], section: str, where: str
) -> list[tuple[str, dict[str, Any]]]:
    """A section's entries as (place, table), whichever of its three forms it is written in."""
    keys, named_by = _ENTRY_KEYS[section]
    value = document.get(section, [])
    if isinstance(value, dict):
        tables = list(value.values())
        if tables and all(isinstance(t, dict) for t in tables):  # {name: {...}, ...}
            entries = [
                (f"{section}.{name}", {named_by: str(name), **{_key(k): v for k, v in t.items()}})
                for name, t in value.items()
            ]
        else:  # one table
            entries = [(section, {_key(k): v for k, v in value.items()})]
    elif isinstance(value, list):
        entries = []
        for index, entry in enumerate(value):
            if not isinstance(entry, dict):
                raise ConfigurationError(f"{where}: {section}[{index}] must be a table")
            entries.append((f"{section}[{index}]", {_key(k): v for k, v in entry.items()}))
    else:
        raise ConfigurationError(f"{where}: {section} must be a list of tables")
    for place, entry in entries:
        unknown = set(entry) - keys
        if unknown:
            raise ConfigurationError(
                f"{where}: {place}: unknown key(s) {', '.join(sorted(unknown))} "
                f"(known: {', '.join(sorted(keys))})"
            )
    return entries


def _build(document: dict[str, Any], where: str) -> NodeConfiguration:
    flat = {key: document.pop(key) for key in list(document) if key in _NODE_KEYS}
    unknown = set(document) - _SECTIONS
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown section(s) {', '.join(sorted(unknown))} "
            f"(known: {', '.join(sorted(_SECTIONS | _NODE_KEYS))})"
        )
    node = document.get("node", {})
    if not isinstance(node, dict):
        raise ConfigurationError(f"{where}: [node] must be a table")
    node = {_key(k): v for k, v in node.items()}
    if set(node) - _NODE_KEYS:
        raise ConfigurationError(f"{where}: [node] takes only {', '.join(sorted(_NODE_KEYS))}")
    twice = set(node) & set(flat)
    if twice:
        raise ConfigurationError(f"{where}: {', '.join(sorted(twice))} given twice")
    node.update(flat)
    texts = _NODE_KEYS - {"seeds", "auto_relay"}
    auto_relay = node.get("auto_relay")
    if auto_relay is not None:
        auto_relay = _flag(auto_relay, f"{where}: node.auto_relay")
    given = {key: _text(node[key], f"{where}: node.{key}") for key in texts if key in node}
    if given.get("dht_mode", "auto") not in _DHT_MODES:
        raise ConfigurationError(f"{where}: node.dht_mode is one of {', '.join(_DHT_MODES)}")
    config = NodeConfiguration(
        source=where,
        name=given.get("name"),
        identity=given.get("identity"),
        udp=given.get("udp"),
        tcp=given.get("tcp"),
        seeds=_texts(node.get("seeds", []), f"{where}: node.seeds"),
        dht_mode=given.get("dht_mode"),
        auto_relay=auto_relay,
    )
    for place, entry in _entries(document, "tcp_listeners", where):
        config.tcp_listeners.append(_text(entry.get("address"), f"{where}: {place}.address"))
    for place, entry in _entries(document, "listeners", where):
        at = f"{where}: {place}"
        config.listeners.append(
            (
                _text(entry.get("address"), f"{at}.address"),
                _texts(entry.get("authorized", []), f"{at}.authorized"),
            )
        )
    for place, entry in _entries(document, "relays", where):
        at = f"{where}: {place}"
        config.relays.append(
            (_text(entry.get("name"), f"{at}.name"), _text(entry.get("at"), f"{at}.at"))
        )
    for place, entry in _entries(document, "policies", where):
        at = f"{where}: {place}"
        config.policies.append(
            (
                _text(entry.get("resource"), f"{at}.resource"),
                _texts(entry.get("allow"), f"{at}.allow"),
            )
        )
    for place, entry in _entries(document, "tcp_outlets", where):
        at = f"{where}: {place}"
        outlet = {
            "place": at,
            "to": _text(entry.get("to"), f"{at}.to"),
            "alias": _text(entry["alias"], f"{at}.alias") if "alias" in entry else None,
            "name": _text(entry.get("name") or entry.get("from"), f"{at}.name")
            if entry.get("name") or entry.get("from")
            else None,
            "at": _text(entry["at"], f"{at}.at") if "at" in entry else None,
            "allow": _texts(entry.get("allow", []), f"{at}.allow"),
            "insecure": _flag(entry.get("insecure", False), f"{at}.insecure"),
        }
        config.tcp_outlets.append(outlet)
    for place, entry in _entries(document, "tcp_inlets", where):
        at = f"{where}: {place}"
        config.tcp_inlets.append(
            {
                "place": at,
                "from": _text(entry.get("from", "127.0.0.1:0"), f"{at}.from"),
                "to": _text(entry.get("to"), f"{at}.to"),
                "alias": _text(entry["alias"], f"{at}.alias") if "alias" in entry else None,
                "at": _text(entry["at"], f"{at}.at") if "at" in entry else None,
                "authorized": _texts(entry.get("authorized", []), f"{at}.authorized"),
                "insecure": _flag(entry.get("insecure", False), f"{at}.insecure"),
            }
        )
    return config
