"""``meshkey node create``: a node, its daemon, and what its configuration declares."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import click

from meshkey.cli.common import DEFAULT_NODE, get_home, node_name
from meshkey.cli.errors import CliError, ExitCode
from meshkey.cli.output import emit, fields, output_option
from meshkey.node.state import Home, NodeStateError


@click.command("create")
@click.argument("name", required=False)
@click.option(
    "--udp",
    metavar="HOST:PORT",
    help="The node's one UDP socket: QUIC hops and reflexive-address requests, in and out "
    "[default: 0.0.0.0:0, all interfaces, when a seed is on another machine; else 127.0.0.1:0].",
)
@click.option(
    "--tcp",
    metavar="HOST:PORT",
    help="TCP listen address [default: as --udp: all interfaces when a seed is on another "
    "machine, else 127.0.0.1:0].",
)
@click.option(
    "--identity",
    "identity_name",
    metavar="NAME",
    help="Use this identity [default: one named after the node, created if missing].",
)
@click.option(
    "--observer",
    "observers",
    multiple=True,
    metavar="ADDRESS",
    help="A public node that tells this node how its NAT maps its socket (/ip4/A/udp/P or "
    "HOST:PORT; repeatable). Relay nodes in use count too; two with different IPs classify.",
)
@click.option(
    "--no-direct",
    is_flag=True,
    help="Never punch direct paths: traffic to peers stays on relays.",
)
@click.option(
    "--seed",
    "seeds",
    multiple=True,
    metavar="NODEID@HOST:PORT",
    help="A node to join the node graph through (repeatable; MESHKEY_SEEDS adds more). "
    "Once joined, a restarted node re-joins from its saved graph without its seeds.",
)
@click.option(
    "--no-auto-relay",
    is_flag=True,
    help="Never keep a relay automatically: by default a node nobody outside can reach (behind "
    "a NAT) keeps one on a reachable node (its seeds first) and names it in its peer record.",
)
@click.option(
    "--dht-mode",
    type=click.Choice(["auto", "server", "client"]),
    help="Whether the node answers DHT queries: auto finds out whether other nodes can "
    "reach it [default: auto].",
)
@click.option(
    "--configuration",
    "configuration",
    metavar="FILE|YAML",
    help="A node configuration: a .toml or .yaml file, or inline YAML ('{name: n, "
    "tcp-outlets: {db: {to: 5432}}}'): identity, listeners, relays, policies, portals. "
    "Applied whole or not at all; again on a running node, it adds what the node lacks.",
)
@click.option(
    "--variable",
    "variables",
    multiple=True,
    metavar="KEY=VALUE",
    help="A value for ${KEY} in the configuration (repeatable; an empty value is refused).",
)
@click.option(
    "--http-server",
    is_flag=True,
    help="Serve HTTP status endpoints (GET / and /show) on 127.0.0.1 and a port the system "
    "chooses (`node show` says where).",
)
@click.option(
    "--http-server-port",
    type=click.IntRange(1, 65535),
    help="Serve the HTTP status endpoints on 127.0.0.1:PORT.",
)
@click.option("--foreground", "-f", is_flag=True, help="Run in this process until interrupted.")
@output_option
@click.pass_context
def node_create(
    ctx: click.Context,
    name: str | None,
    udp: str | None,
    tcp: str | None,
    identity_name: str | None,
    observers: tuple[str, ...],
    no_direct: bool,
    seeds: tuple[str, ...],
    no_auto_relay: bool,
    dht_mode: str | None,
    configuration: str | None,
    variables: tuple[str, ...],
    http_server: bool,
    http_server_port: int | None,
    foreground: bool,
    output: str,
) -> None:
    """Create node NAME [default: default] and start it (in the background unless
    --foreground).

    The node listens on UDP (QUIC) and TCP; /node/NAME in a route means its UDP address. A
    node that exists and is stopped is started; one that runs is refused (exit code 4),
    unless a --configuration is given: then the node gets what the configuration declares
    and it lacks, or, if its settings differ, the command says which and changes nothing.
    """
    from meshkey.cli.configure import apply, prepare
    from meshkey.node import launcher
    from meshkey.node.configuration import NodeConfiguration, load_configuration

    home = get_home(ctx)
    if name is not None and configuration is None and _is_configuration_file(name):
        configuration, name = name, None  # `node create node.yaml`, as in Ockam
    config = (
        load_configuration(configuration, _variables(variables))
        if configuration is not None
        else NodeConfiguration()
    )
    name = node_name(name or config.name or DEFAULT_NODE)
    udp, tcp = udp or config.udp, tcp or config.tcp
    identity_name = identity_name or config.identity
    seed_list = [_seed(text) for text in seeds or config.seeds]
    dht_mode = dht_mode or config.dht_mode
    settings = {
        "identity": identity_name,
        "udp": udp,
        "tcp": tcp,
        "seeds": json.dumps(seed_list) if seed_list else None,
        "dht_mode": dht_mode,
        "auto_relay": None if config.auto_relay is None else "on" if config.auto_relay else "off",
    }
    existing = home.node(name)
    if existing.exists():
        _check_same(home, name, settings, configuration)
        wanted = prepare(ctx, config, name) if configuration is not None else None
        if foreground:
            run_foreground(home, name, wanted, ctx)
            return
        running = existing.is_running()
        if running and wanted is None:
            raise CliError(
                f"node {name!r} is already running (to change what it has, give it a "
                f"--configuration; to restart it, `meshkey node stop {name}` first)",
                ExitCode.CONFLICT,
            )
        if not running:
            launcher.start_node(home, name)
        try:
            changes = apply(ctx, name, wanted) if wanted is not None else []
        except CliError:
            if not running:  # left as it was found: stopped
                launcher.stop_node(home, name)
            raise
        verb = "started" if not running else "is running"
        print_node(output, verb, launcher.node_summary(home, name, live=True), changes, wanted)
        return
    _check_new_name(name)
    wanted = prepare(ctx, config, name) if configuration is not None else None
    had_identity = home.identities.exists(identity_name or name)
    launcher.create_node(
        home,
        name,
        udp=udp,
        tcp=tcp,
        identity=identity_name,
        observers=[_observer(text) for text in (*observers, *_rendezvous())],
        direct=not no_direct,
        seeds=seed_list,
        dht_mode=dht_mode or "auto",
        auto_relay=not no_auto_relay and config.auto_relay is not False,
        http_server=f"127.0.0.1:{http_server_port or 0}"
        if http_server or http_server_port
        else None,
    )
    if foreground:
        run_foreground(home, name, wanted, ctx, undo_create=not had_identity)
        return
    try:
        launcher.start_node(home, name)
        changes = apply(ctx, name, wanted) if wanted is not None else []
    except NodeStateError as exc:
        if exc.code != "conflict":  # a racing create started it: that one is not ours
            _undo_create(home, name, delete_identity=not had_identity)
        raise
    except CliError:
        _undo_create(home, name, delete_identity=not had_identity)
        raise
    summary = launcher.node_summary(home, name, live=True)
    if seed_list:
        summary = _warn_if_not_joined(home, name, summary)
    print_node(output, "created", summary, changes, wanted)


#: How long `node create` waits to see the first join through the seeds succeed.
JOIN_WAIT = 3.0


def _warn_if_not_joined(home: Any, name: str, summary: dict[str, Any]) -> dict[str, Any]:
    """Waits a moment for the first join attempt; if nobody answered, says so on stderr with
    the reason (issue 18: a join that fails is visible, never retried in silence)."""
    from meshkey.node import launcher

    deadline = time.monotonic() + JOIN_WAIT
    while True:
        state = str((summary.get("graph") or {}).get("state") or "joined")
        if not state.startswith(("joining", "not started")) or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
        summary = launcher.node_summary(home, name, live=True)
    if state.startswith("joining"):
        click.echo(
            f"warning: node {name} has not joined the node graph yet: {state}; it keeps "
            "trying with backoff (see `meshkey node show " + name + "`): check the seed's "
            "address, and that the seed can reach this node",
            err=True,
        )
    return summary


def _is_configuration_file(name: str) -> bool:
    return Path(name).suffix in (".yaml", ".yml", ".toml") and Path(name).is_file()


def _check_new_name(name: str) -> None:
    """A new node's name: what Ockam accepts too (no '.', which also keeps names apart from
    configuration files, `node create node.yaml`)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", name):
        hint = " (nor a configuration file)" if "." in name or "/" in name else ""
        raise CliError(
            f"invalid node name {name!r}: use 1-64 letters, digits, '_' or '-', starting with a "
            f"letter or digit{hint}",
            ExitCode.USAGE,
        )


def _undo_create(home: Home, name: str, *, delete_identity: bool) -> None:
    """A node whose creation failed half-way is not left behind (nor the identity made for
    it)."""
    from meshkey.identity.errors import IdentityError
    from meshkey.node import launcher

    node = home.node(name)
    if not node.exists():
        return
    identity = node.config().get("identity")
    with contextlib.suppress(NodeStateError):
        launcher.delete_node(home, name, force=True)
    if delete_identity and identity:
        with contextlib.suppress(IdentityError):
            home.identities.delete(identity)


def _rendezvous() -> list[str]:
    """$MESHKEY_RENDEZVOUS: rendezvous nodes (`meshkey rendezvous create`) every new node
    asks how its NAT maps its socket (as Ockam's $OCKAM_RENDEZVOUS_SERVER)."""
    import os

    return os.environ.get("MESHKEY_RENDEZVOUS", "").replace(",", " ").split()


def _observer(text: str) -> str:
    """An observer as the node stores it (checked now, so a typo fails here, not later)."""
    from meshkey.node.state import parse_listen
    from meshkey.routing.address import TransportAddress, parse_address

    if text.startswith("/"):
        address = parse_address(text)
        if not isinstance(address, TransportAddress) or address.protocol != "udp":
            raise CliError(f"--observer {text}: one UDP address, e.g. /ip4/A/udp/P", ExitCode.USAGE)
        return f"{address.host}:{address.port}"
    host, port = parse_listen(text)
    return f"{host}:{port}"


def _seed(text: str) -> str:
    """A seed as the node stores it, checked now (NODEID@HOST:PORT)."""
    from meshkey.dht.peers import parse_seed
    from meshkey.routing.address import RouteError

    try:
        node_id, (host, port) = parse_seed(text)
    except RouteError as exc:
        raise CliError(f"--seed: {exc}", ExitCode.USAGE) from exc
    return f"{node_id}@{host}:{port}"


def _variables(pairs: tuple[str, ...]) -> dict[str, str]:
    variables = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise CliError(f"--variable {pair!r}: expected KEY=VALUE", ExitCode.USAGE)
        variables[key] = value
    return variables


def _check_same(
    home: Home, name: str, settings: dict[str, str | None], configuration: str | None
) -> None:
    """Creating an existing node again is fine, unless it is asked to be different: its
    settings are fixed at creation, so every difference is named and nothing is done."""
    from meshkey.node.convergence import node_differences

    differences = node_differences(home.node(name).config(), settings)
    if differences:
        given = " (by the configuration)" if configuration else ""
        raise CliError(
            f"node {name!r} already exists with other settings{given}: "
            f"{'; '.join(differences)}; nothing was changed (to change these, delete the "
            f"node first: `meshkey node delete {name}`)",
            ExitCode.CONFLICT,
        )


def run_foreground(
    home: Home,
    name: str,
    wanted: Any = None,
    ctx: click.Context | None = None,
    *,
    undo_create: bool = False,
) -> None:
    """Runs the daemon in this process; a configuration is applied from another thread once
    the node answers (and, if it cannot be, the node stops and the command fails)."""
    import threading

    from meshkey.node.daemon import run

    failure: list[str] = []
    if wanted is not None and ctx is not None:
        threading.Thread(
            target=_apply_when_up, args=(ctx, home, name, wanted, failure), daemon=True
        ).start()
    code = run(home, name)
    if failure:
        if undo_create:
            _undo_create(home, name, delete_identity=True)
        click.echo(f"error: {failure[0]}", err=True)
        sys.exit(int(ExitCode.FAILURE))
    if code:
        sys.exit(code)


def _apply_when_up(
    ctx: click.Context, home: Home, name: str, wanted: Any, failure: list[str]
) -> None:
    from meshkey.cli.configure import apply, describe_changes
    from meshkey.node.control_client import ControlClient, ControlError
    from meshkey.node.launcher import START_TIMEOUT

    client = ControlClient(home.node(name).socket_path, timeout=1.0)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            client.call("status")
            break
        except ControlError:
            time.sleep(0.05)
    try:
        changes = apply(ctx, name, wanted)
    except CliError as exc:
        failure.append(exc.message)
        with contextlib.suppress(ControlError):
            client.call("stop")
        return
    click.echo(f"Node {name}: {describe_changes(changes)}", err=True)


def print_node(
    output: str,
    verb: str,
    summary: dict[str, Any],
    changes: list[Any] | None = None,
    wanted: Any = None,
) -> None:
    from meshkey.cli.configure import describe_changes

    configured = f"; configuration: {describe_changes(changes or [])}" if wanted else ""
    if wanted is not None:
        summary = {**summary, "changes": [c.describe() for c in changes or []]}
    emit(
        output,
        summary,
        lambda: (
            f"Node {summary['name']} {verb}{configured}\n"
            + fields(
                [
                    ("node id", summary["node_id"]),
                    ("addresses", summary["addresses"]),
                    ("services", ", ".join(summary.get("services", [])) or None),
                ]
            )
        ),
    )
