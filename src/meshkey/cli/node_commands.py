"""``meshkey node``: node daemons."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import click

from meshkey.cli.common import (
    DEFAULT_NODE,
    CommandGroup,
    call,
    get_home,
    node_name,
    pick_node,
    read_route,
    timeout_option,
)
from meshkey.cli.errors import CliError, ExitCode, exit_code_for
from meshkey.cli.output import emit, emit_table, fields, output_option
from meshkey.node.state import Home, NodeStateError


@click.group(cls=CommandGroup)
def node() -> None:
    """Node daemons: create, list, show, start, stop, delete, logs, whoami."""


@node.command("create")
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
            _run_foreground(home, name, wanted, ctx)
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
        _print_node(output, verb, launcher.node_summary(home, name, live=True), changes, wanted)
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
        _run_foreground(home, name, wanted, ctx, undo_create=not had_identity)
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
    _print_node(output, "created", launcher.node_summary(home, name, live=True), changes, wanted)


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


def _run_foreground(
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


def _print_node(
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


@node.command("default")
@click.argument("name", required=False)
@output_option
@click.pass_context
def node_default(ctx: click.Context, name: str | None, output: str) -> None:
    """Print the default node (what commands act on when not told, with several nodes: the
    first created), or make NAME the default."""
    home = get_home(ctx)
    if name:
        home.set_default_node(node_name(name))
    current = home.default_node()
    if current is None:
        raise CliError(
            "there is no node yet (create one: `meshkey node create`)", ExitCode.NOT_FOUND
        )
    emit(output, {"default": current}, current)


@node.command("start")
@click.argument("name", required=False)
@click.option("--foreground", "-f", is_flag=True, help="Run in this process until interrupted.")
@output_option
@click.pass_context
def node_start(ctx: click.Context, name: str | None, foreground: bool, output: str) -> None:
    """Start node NAME again: same identity and, where free, the same ports. Of several
    starts at once exactly one starts it; the others fail with exit code 4."""
    from meshkey.node import launcher

    name = pick_node(ctx, name, "NAME")
    if foreground:
        _run_foreground(get_home(ctx), name)
        return
    launcher.start_node(get_home(ctx), name)
    _print_node(output, "started", launcher.node_summary(get_home(ctx), name, live=True))


@node.command("stop")
@click.argument("name", required=False)
@click.pass_context
def node_stop(ctx: click.Context, name: str | None) -> None:
    """Stop node NAME."""
    from meshkey.node import launcher

    name = pick_node(ctx, name, "NAME")
    launcher.stop_node(get_home(ctx), name)
    click.echo(f"Node {name} stopped")


@node.command("delete")
@click.argument("name", required=False)
@click.option("--all", "all_nodes", is_flag=True, help="Delete every node.")
@click.option(
    "--force", "--yes", "-y", is_flag=True, help="Stop running nodes first instead of refusing."
)
@click.pass_context
def node_delete(ctx: click.Context, name: str | None, all_nodes: bool, force: bool) -> None:
    """Delete node NAME (or --all). A running node is refused unless --force.

    The node's identity is kept (see `meshkey identity`)."""
    from meshkey.node import launcher

    home = get_home(ctx)
    if bool(name) == all_nodes:
        raise CliError("give a node NAME or --all (not both)", ExitCode.USAGE)
    names = home.node_names() if all_nodes else [node_name(name or "")]
    failures = []
    for each in names:
        try:
            launcher.delete_node(home, each, force=force)
            click.echo(f"Node {each} deleted")
        except NodeStateError as exc:
            if not all_nodes:
                raise
            failures.append(exc)
            click.echo(f"error: {exc}", err=True)
    if failures:
        sys.exit(int(exit_code_for(failures[0].code)))


@node.command("list")
@output_option
@click.pass_context
def node_list(ctx: click.Context, output: str) -> None:
    """List nodes, their NodeIds, status and addresses (a node whose state cannot be read is
    listed as broken, with why; the others are listed all the same)."""
    from meshkey.node.launcher import node_summary

    home = get_home(ctx)
    summaries = [node_summary(home, n) for n in home.node_names()]
    nats = _nat_classes(home, [s["name"] for s in summaries if s["status"] == "running"])
    for summary in summaries:
        summary["nat"] = nats.get(summary["name"])
    emit_table(
        output,
        summaries,
        [
            ("NAME", "name"),
            ("STATUS", _status_cell),
            ("NODE ID", "node_id"),
            ("NAT", lambda n: (n["nat"] or {}).get("class")),
            ("ADDRESS", lambda n: _without_id((n["addresses"] or [""])[0])),
        ],
        "No nodes (create one with `meshkey node create NAME`).",
    )


def _nat_classes(home: Home, names: list[str]) -> dict[str, dict[str, Any]]:
    """Each running node's NAT classification, asked of all at once (one that does not
    answer within a second is left out: `node show` says why)."""
    import concurrent.futures

    from meshkey.node.control_client import ControlClient, ControlError

    def nat_of(name: str) -> dict[str, Any] | None:
        try:
            status = ControlClient(home.node(name).socket_path, timeout=1.0).call("status")
        except ControlError:
            return None
        nat: dict[str, Any] | None = status.get("nat")
        return nat

    if not names:
        return {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(names))) as pool:
        found = dict(zip(names, pool.map(nat_of, names), strict=True))
    return {name: nat for name, nat in found.items() if nat is not None}


def _status_cell(summary: dict[str, Any]) -> str:
    status: str = summary["status"]
    if summary.get("error"):
        return f"{status}: {summary['error']}"
    return status


def _without_id(address: str) -> str:
    """The address without its /id/NODEID suffix (the table shows the NodeId already)."""
    return address.split("/id/", maxsplit=1)[0] or "-"


@node.command("show")
@click.argument("name", required=False)
@output_option
@click.pass_context
def node_show(ctx: click.Context, name: str | None, output: str) -> None:
    """Show node NAME: NodeId, status, addresses, services and connections."""
    from meshkey.node.launcher import node_summary

    home = get_home(ctx)
    summary = node_summary(home, pick_node(ctx, name, "NAME"), live=True)

    def text() -> str:
        connections = [
            f"{c['direction']:<8} {c['transport']} {c['remote']:<21} {c['peer'] or '-'}"
            for c in summary.get("connections", [])
        ]
        rows = [
            ("name", summary["name"]),
            ("node id", summary["node_id"]),
            ("identity", summary["identity"]),
            ("status", summary["status"]),
        ]
        if summary.get("control", "ok") != "ok":
            rows.append(("control", summary["control"]))
        if summary.get("error"):
            rows.append(("error", summary["error"]))
        nat = summary.get("nat")
        if nat:
            rows.append(("nat", _nat_line(nat)))
        graph = summary.get("graph")
        if graph:
            rows.append(("graph", f"{graph['mode']}, {graph['peers']} peers"))
        rows += [
            ("pid", summary["pid"]),
            ("addresses", summary["addresses"]),
            ("services", ", ".join(summary.get("services", [])) or None),
            ("connections", connections),
            ("created", summary["created_at"]),
        ]
        return fields(rows)

    emit(output, summary, text)


def _nat_line(nat: dict[str, Any]) -> str:
    text = str(nat.get("class", "unknown"))
    if nat.get("public"):
        text += f", seen as {nat['public']}"
    if nat.get("reason"):
        text += f" ({nat['reason']})"
    if nat.get("direct") is False:
        text += "; direct paths off"
    return text


@node.command("nat")
@click.argument("name", required=False)
@click.option(
    "--via",
    "via",
    multiple=True,
    metavar="ADDRESS",
    help="Ask this observer too: /node/NAME, /ip4/A/udp/P or HOST:PORT (repeatable).",
)
@timeout_option("10s", "How long the classification may take")
@output_option
@click.pass_context
def node_nat(
    ctx: click.Context, name: str | None, via: tuple[str, ...], timeout: float, output: str
) -> None:
    """Classify NAME's NAT now: ask the observers (relay nodes in use, --observer ones given
    at creation, and --via) which address they see its UDP socket as, and print what each
    saw and what that makes the NAT: public, endpoint-independent, endpoint-dependent, UDP
    blocked or unknown."""
    node = pick_node(ctx, name, "NAME")
    result = call(
        ctx, node, "nat.classify", {"via": list(via), "timeout": timeout}, timeout=timeout + 5
    )

    def text() -> str:
        rows: list[tuple[str, Any]] = [("nat", _nat_line(result))]
        rows += [
            (f"observer {o['observer']}", f"saw {o['saw']}" if o["saw"] else "no answer")
            for o in result.get("observations", [])
        ]
        return fields(rows)

    emit(output, {**result, "node": node}, text)


_LEVELS = ("debug", "info", "warning", "error")


def _log_record(line: str) -> dict[str, str]:
    """A logfmt line as a dict (``time`` first); continuation lines become ``text``."""
    stamp, _, rest = line.partition(" ")
    if not stamp[:4].isdigit():
        return {"text": line}
    record = {"time": stamp}
    for match in re.finditer(r'(\w[\w.]*)=("(?:[^"\\]|\\.)*"|\S*)', rest):
        value = match.group(2)
        if value.startswith('"'):
            value = value[1:-1].replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
        record[match.group(1)] = value
    return record


@node.command("logs")
@click.argument("name", required=False)
@click.option(
    "--lines",
    "-n",
    default="50",
    show_default=True,
    metavar="N|all",
    help="How many of the last lines to show (0: none, as in tail -n 0 --follow; all: all).",
)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines (Ctrl-C to stop).")
@click.option(
    "--level",
    type=click.Choice(_LEVELS),
    default="debug",
    show_default=True,
    help="Only lines at this level or above.",
)
@output_option
@click.pass_context
def node_logs(
    ctx: click.Context, name: str | None, lines: str, follow: bool, level: str, output: str
) -> None:
    """Show the log of node NAME (with --output json, one JSON object per line)."""
    if lines != "all" and not lines.isdigit():
        raise CliError(f"--lines {lines}: a number of lines, or all", ExitCode.USAGE)
    node_dir = get_home(ctx).node(pick_node(ctx, name, "NAME"))
    minimum = _LEVELS.index(level)

    def show(line: str) -> None:
        record = _log_record(line.rstrip("\n"))
        line_level = record.get("level")
        if line_level in _LEVELS and _LEVELS.index(line_level) < minimum:
            return
        if output == "json":
            click.echo(json.dumps(record))
        else:
            click.echo(line, nl=not line.endswith("\n"))

    if not node_dir.log_path.exists():
        return
    with open(node_dir.log_path, errors="replace") as handle:
        last = handle.readlines()
        for line in last if lines == "all" else last[len(last) - int(lines) :]:
            show(line)
        while follow:
            line = handle.readline()
            if line:
                show(line)
            else:
                time.sleep(0.2)


@node.command("whoami")
@click.argument("name", required=False)
@click.option(
    "--via",
    required=True,
    metavar="ROUTE",
    help="The node to ask: /node/NAME or /ip4/A/udp/P (one UDP hop).",
)
@timeout_option("3s", "How long to wait")
@output_option
@click.pass_context
def node_whoami(
    ctx: click.Context, name: str | None, via: str, timeout: float, output: str
) -> None:
    """Ask another node which address it sees NAME's UDP socket as (its reflexive address).

    Answered by a control packet on the same UDP socket as NAME's QUIC traffic, so behind a
    NAT it prints the public address and port that peers must punch to.
    """
    result = call(
        ctx,
        pick_node(ctx, name, "NAME"),
        "udp.whoami",
        {"via": read_route(via), "timeout": timeout},
        timeout=timeout + 5,
    )
    emit(output, result, result["observed"])
