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

**Whole or not at all.** :func:`resolve` checks everything a node could refuse before
anything is done (every identity named, every route, address and port), and :func:`plan`
compares the wanted state with what a running node has, pure: it returns the changes to
make, each with the control calls that make it and those that undo it, so the caller can
roll back what it did when a later step fails. Node settings (identity, listen addresses,
seeds, DHT mode, automatic relays) are fixed at creation: :func:`node_differences` says
which ones a running node has otherwise, and the caller refuses rather than half-apply.
What a node has beyond its configuration is left alone.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshkey.errors import MeshkeyError

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SERVICE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


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


# -- resolving: every name, route and address checked before anything is done ----------------


@dataclass(frozen=True)
class Wanted:
    """What a configuration asks a node to have, each thing checked and in the form the
    control API lists it (NodeIds sorted, addresses ``HOST:PORT``, routes as text)."""

    tcp_listeners: tuple[tuple[str, int], ...] = ()
    listeners: dict[str, tuple[str, ...]] = field(default_factory=dict)
    relays: dict[str, str] = field(default_factory=dict)
    policies: dict[str, tuple[str, ...]] = field(default_factory=dict)
    tcp_outlets: dict[str, dict[str, Any]] = field(default_factory=dict)
    tcp_inlets: dict[str, dict[str, Any]] = field(default_factory=dict)


#: Turns names (NodeIds, local node or identity names) into NodeIds; ValueError if it cannot.
IdentityResolver = Callable[[list[str]], list[str]]
#: Checks a route's text (ValueError/RouteError with why) and returns it as it will be used.
RouteChecker = Callable[[str], str]


def endpoint(text: str, *, any_port: bool) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or a bare port (127.0.0.1:PORT); ValueError otherwise."""
    value = str(text).strip()
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    host = host.strip("[]")
    lowest = 0 if any_port else 1
    if not host or not port.isdigit() or not lowest <= int(port) <= 65535:
        raise ValueError(
            f"invalid address {text!r}: expected HOST:PORT or a port ({lowest}-65535), "
            "e.g. 127.0.0.1:5432 or 5432"
        )
    return host, int(port)


def resolve(
    config: NodeConfiguration,
    node: str,
    identities: IdentityResolver,
    check_route: RouteChecker,
) -> Wanted:
    """Checks everything in ``config`` for node ``node``; ConfigurationError naming the place
    of the first thing that is wrong."""
    where = config.source

    def ids(values: list[str], place: str) -> tuple[str, ...]:
        try:
            return tuple(sorted(set(identities(values))))
        except ValueError as exc:
            raise ConfigurationError(f"{place}: {exc}") from exc

    def service(name: str, place: str) -> str:
        bare = name.removeprefix("/service/")
        if not _SERVICE.fullmatch(bare):
            raise ConfigurationError(f"{place}: invalid service name {name!r}")
        return bare

    def place_of(section: str, index: int) -> str:
        return f"{where}: {section}[{index}]"

    listeners = []
    for index, text in enumerate(config.tcp_listeners):
        try:
            listeners.append(endpoint(text, any_port=True))
        except ValueError as exc:
            raise ConfigurationError(f"{place_of('tcp_listeners', index)}: {exc}") from exc
    channel_listeners: dict[str, tuple[str, ...]] = {}
    for index, (address, authorized) in enumerate(config.listeners):
        place = place_of("listeners", index)
        channel_listeners[service(address, place)] = ids(authorized, f"{place}.authorized")
    relays: dict[str, str] = {}
    for index, (name, at) in enumerate(config.relays):
        place = place_of("relays", index)
        if not _SERVICE.fullmatch(name):
            raise ConfigurationError(f"{place}: invalid relay name {name!r}")
        try:
            relays[name] = check_route(at)
        except ValueError as exc:
            raise ConfigurationError(f"{place}.at: {exc}") from exc
    policies: dict[str, tuple[str, ...]] = {}
    for index, (resource, allow) in enumerate(config.policies):
        place = place_of("policies", index)
        allowed = ids(allow, f"{place}.allow")
        if not allowed:
            raise ConfigurationError(f"{place}.allow: a policy needs at least one identity")
        policies[service(resource, place)] = allowed
    outlets: dict[str, dict[str, Any]] = {}
    for outlet in config.tcp_outlets:
        place = outlet["place"]
        if outlet["at"] is not None and outlet["at"].removeprefix("/node/") != node:
            raise ConfigurationError(f"{place}.at: {outlet['at']} is not this node ({node})")
        try:
            host, port = endpoint(outlet["to"], any_port=False)
        except ValueError as exc:
            raise ConfigurationError(f"{place}.to: {exc}") from exc
        name = service(outlet["name"] or "outlet", place)
        alias = outlet["alias"] or name
        if alias in outlets:
            raise ConfigurationError(f"{place}: a second outlet named {alias!r}")
        outlets[alias] = {
            "to": f"{host}:{port}",
            "name": name,
            "allow": ids(outlet["allow"], f"{place}.allow"),
            "insecure": outlet["insecure"],
        }
    inlets: dict[str, dict[str, Any]] = {}
    for inlet in config.tcp_inlets:
        place = inlet["place"]
        if inlet["at"] is not None and inlet["at"].removeprefix("/node/") != node:
            raise ConfigurationError(f"{place}.at: {inlet['at']} is not this node ({node})")
        try:
            host, port = endpoint(inlet["from"], any_port=True)
        except ValueError as exc:
            raise ConfigurationError(f"{place}.from: {exc}") from exc
        alias = inlet["alias"] or (f"inlet-{port}" if port else None)
        if alias is None:
            raise ConfigurationError(f"{place}: give the inlet a port (from) or an alias")
        try:
            route = check_route(inlet["to"])
        except ValueError as exc:
            raise ConfigurationError(f"{place}.to: {exc}") from exc
        if alias in inlets:
            raise ConfigurationError(f"{place}: a second inlet named {alias!r}")
        inlets[alias] = {
            "from": f"{host}:{port}",
            "to": route,
            "authorized": ids(inlet["authorized"], f"{place}.authorized"),
            "insecure": inlet["insecure"],
        }
    return Wanted(tuple(listeners), channel_listeners, relays, policies, outlets, inlets)


# -- planning: what a running node lacks, as control calls (and how to undo each) -------------

Call = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class Change:
    verb: str  # "create" or "replace"
    kind: str  # "relay", "policy", "listener", "tcp-listener", "tcp-outlet", "tcp-inlet"
    key: str
    do: tuple[Call, ...]
    undo: tuple[Call, ...]
    #: what the node had before (a replacement), as the control API lists it
    before: Any = None
    timeout: float = 15.0
    #: an undo call's argument that is the first call's answer (the port the OS chose)
    undo_from_answer: str | None = None

    def describe(self) -> str:
        return f"{self.verb} {self.kind} {self.key}"


@dataclass
class Current:
    """What a running node has, from its control API's lists."""

    tcp_listeners: list[dict[str, Any]] = field(default_factory=list)
    listeners: list[dict[str, Any]] = field(default_factory=list)
    relays: list[dict[str, Any]] = field(default_factory=list)
    policies: list[dict[str, Any]] = field(default_factory=list)
    tcp_outlets: list[dict[str, Any]] = field(default_factory=list)
    tcp_inlets: list[dict[str, Any]] = field(default_factory=list)


def _ids(values: Any) -> tuple[str, ...]:
    return tuple(sorted(values or ()))


def plan(
    wanted: Wanted, current: Current, *, same_route: Callable[[str, str], bool]
) -> list[Change]:
    """The changes that give the node what ``wanted`` says, in an order that works (listeners
    before the relays and portals that may use them); nothing for what is in place already.
    ``same_route(a, b)`` says whether two routes' texts are the same route."""
    changes: list[Change] = []
    create: Call
    delete: Call
    restore: Call
    spare = {
        endpoint(item["address"], any_port=True)
        for item in current.tcp_listeners
        if not item.get("primary")
    }
    for host, port in wanted.tcp_listeners:
        match = next(
            (e for e in sorted(spare) if e[0] == host and (port == 0 or e[1] == port)), None
        )
        if match is not None:
            spare.discard(match)
            continue
        address = f"{host}:{port}"
        changes.append(
            Change(
                "create",
                "tcp-listener",
                address,
                (("tcp_listener.create", {"address": address}),),
                (("tcp_listener.delete", {"address": address}),),
                undo_from_answer="address",
            )
        )
    have_listeners = {
        item["address"].removeprefix("/service/"): _ids(item.get("authorized"))
        for item in current.listeners
    }
    for name, authorized in wanted.listeners.items():
        create = ("listener.create", {"name": name, "authorized": list(authorized)})
        delete = ("listener.delete", {"name": name})
        if name not in have_listeners:
            changes.append(Change("create", "listener", name, (create,), (delete,)))
        elif have_listeners[name] != authorized:
            restore = ("listener.create", {"name": name, "authorized": list(have_listeners[name])})
            changes.append(
                Change(
                    "replace",
                    "listener",
                    name,
                    (delete, create),
                    (delete, restore),
                    before=list(have_listeners[name]),
                )
            )
    have_policies = {item["resource"]: _ids(item.get("allow")) for item in current.policies}
    for resource, allow in wanted.policies.items():
        create = ("policy.create", {"resource": resource, "allow": list(allow)})
        if resource not in have_policies:
            delete = ("policy.delete", {"resource": resource})
            changes.append(Change("create", "policy", resource, (create,), (delete,)))
        elif have_policies[resource] != allow:
            restore = (
                "policy.create",
                {"resource": resource, "allow": list(have_policies[resource])},
            )
            changes.append(
                Change(
                    "replace",
                    "policy",
                    resource,
                    (create,),
                    (restore,),
                    before=list(have_policies[resource]),
                )
            )
    have_relays = {
        item["name"]: item["at"]
        for item in current.relays
        if item.get("kind", "manual") == "manual"
    }
    for name, at in wanted.relays.items():
        create = ("relay.create", {"name": name, "at": at})
        delete = ("relay.delete", {"name": name})
        if name not in have_relays:
            changes.append(Change("create", "relay", name, (create,), (delete,), timeout=25))
        elif not same_route(have_relays[name], at):
            restore = ("relay.create", {"name": name, "at": have_relays[name]})
            changes.append(
                Change(
                    "replace",
                    "relay",
                    name,
                    (delete, create),
                    (delete, restore),
                    before=have_relays[name],
                    timeout=25,
                )
            )
    have_outlets = {item["alias"]: item for item in current.tcp_outlets}
    for alias, outlet in wanted.tcp_outlets.items():
        create = (
            "tcp_outlet.create",
            {
                "to": outlet["to"],
                "name": outlet["name"],
                "alias": alias,
                "allow": list(outlet["allow"]),
                "insecure": outlet["insecure"],
            },
        )
        delete = ("tcp_outlet.delete", {"alias": alias})
        had = have_outlets.get(alias)
        if had is None:
            changes.append(Change("create", "tcp-outlet", alias, (create,), (delete,)))
            continue
        same = (
            had.get("to") == outlet["to"]
            and had.get("address") == f"/service/{outlet['name']}"
            and _ids(had.get("allow")) == outlet["allow"]
            and bool(had.get("insecure")) == outlet["insecure"]
        )
        if not same:
            restore = (
                "tcp_outlet.create",
                {
                    "to": had.get("to"),
                    "name": str(had.get("address", "/service/outlet")).removeprefix("/service/"),
                    "alias": alias,
                    "allow": list(_ids(had.get("allow"))),
                    "insecure": bool(had.get("insecure")),
                },
            )
            changes.append(
                Change(
                    "replace", "tcp-outlet", alias, (delete, create), (delete, restore), before=had
                )
            )
    have_inlets = {item["alias"]: item for item in current.tcp_inlets}
    for alias, inlet in wanted.tcp_inlets.items():
        create = (
            "tcp_inlet.create",
            {
                "from": inlet["from"],
                "to": inlet["to"],
                "alias": alias,
                "authorized": list(inlet["authorized"]),
                "insecure": inlet["insecure"],
            },
        )
        delete = ("tcp_inlet.delete", {"alias": alias})
        had = have_inlets.get(alias)
        if had is None:
            changes.append(Change("create", "tcp-inlet", alias, (create,), (delete,)))
            continue
        wanted_port = endpoint(inlet["from"], any_port=True)[1]
        same = (
            (wanted_port == 0 or had.get("address") == inlet["from"])
            and same_route(str(had.get("to")), inlet["to"])
            and _ids(had.get("authorized")) == inlet["authorized"]
            and bool(had.get("insecure")) == inlet["insecure"]
        )
        if not same:
            restore = (
                "tcp_inlet.create",
                {
                    "from": had.get("address"),
                    "to": had.get("to"),
                    "alias": alias,
                    "authorized": list(_ids(had.get("authorized"))),
                    "insecure": bool(had.get("insecure")),
                },
            )
            changes.append(
                Change(
                    "replace",
                    "tcp-inlet",
                    alias,
                    (delete, create),
                    (delete, restore),
                    before=had,
                )
            )
    return changes


#: The node settings a configuration may give, as the node's stored configuration keys.
NODE_SETTINGS = ("identity", "udp", "tcp", "seeds", "dht_mode", "auto_relay")


def node_differences(stored: Mapping[str, str], wanted: Mapping[str, str | None]) -> list[str]:
    """Each node setting that ``wanted`` gives (not None) and the node has otherwise, as
    ``"udp is 127.0.0.1:5000, not 127.0.0.1:4000"``."""
    differences = []
    for key in NODE_SETTINGS:
        value = wanted.get(key)
        if value is not None and stored.get(key, "") != value:
            have = stored.get(key) or "(not set)"
            differences.append(f"{key.replace('_', '-')} is {have}, not {value}")
    return differences
