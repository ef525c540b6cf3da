"""Bringing a node to what its configuration declares, whole or not at all.

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

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshkey.node.configuration import ConfigurationError, NodeConfiguration

_SERVICE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


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
