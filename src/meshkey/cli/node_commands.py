"""``meshkey node``: node daemons."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import click

from meshkey.cli.common import (
    call,
    get_home,
    node_name,
    pick_node,
    read_route,
    resolve_identities,
    timeout_option,
)
from meshkey.cli.errors import CliError, ExitCode, exit_code_for
from meshkey.cli.output import emit, emit_table, fields, output_option
from meshkey.node.state import Home, NodeStateError

DEFAULT_NODE = "default"


@click.group()
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
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A node configuration file (.toml or .yaml): identity, listeners, relays, policies.",
)
@click.option(
    "--variable",
    "variables",
    multiple=True,
    metavar="KEY=VALUE",
    help="A value for ${KEY} in the configuration file (repeatable).",
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
    configuration: Path | None,
    variables: tuple[str, ...],
    foreground: bool,
    output: str,
) -> None:
    """Create node NAME [default: default] and start it (in the background unless
    --foreground).

    The node listens on UDP (QUIC) and TCP; /node/NAME in a route means its UDP address. As in
    Ockam, create is idempotent: a node that exists is started if it is stopped, and left as
    it is if it runs (options that disagree with its configuration are refused).
    """
    from meshkey.node import launcher
    from meshkey.node.configuration import NodeConfiguration, load_configuration

    home = get_home(ctx)
    config = (
        load_configuration(configuration, _variables(variables))
        if configuration
        else NodeConfiguration()
    )
    name = node_name(name or config.name or DEFAULT_NODE)
    udp, tcp = udp or config.udp, tcp or config.tcp
    identity_name = identity_name or config.identity
    seed_list = [_seed(text) for text in seeds or config.seeds]
    dht_mode = dht_mode or config.dht_mode
    existing = home.node(name)
    if existing.exists():
        _check_same(
            home,
            name,
            udp=udp,
            tcp=tcp,
            identity=identity_name,
            seeds=json.dumps(seed_list) if seed_list else None,
            dht_mode=dht_mode,
        )
        if foreground:
            _run_foreground(home, name)
            return
        if existing.is_running():
            _print_node(output, "is already running", launcher.node_summary(home, name, live=True))
            return
        launcher.start_node(home, name)
        _apply(ctx, name, config)
        _print_node(output, "started", launcher.node_summary(home, name, live=True))
        return
    launcher.create_node(
        home,
        name,
        udp=udp,
        tcp=tcp,
        identity=identity_name,
        observers=[_observer(text) for text in observers],
        direct=not no_direct,
        seeds=seed_list,
        dht_mode=dht_mode or "auto",
        auto_relay=not no_auto_relay and config.auto_relay is not False,
    )
    if foreground:
        _run_foreground(home, name)
        return
    try:
        launcher.start_node(home, name)
    except NodeStateError as exc:
        if exc.code != "conflict":
            home.node(name).delete()  # a node that never ran is not left half-made
        raise
    _apply(ctx, name, config)
    _print_node(output, "created", launcher.node_summary(home, name, live=True))


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


def _check_same(home: Home, name: str, **wanted: str | None) -> None:
    """Creating an existing node again is fine, unless it is asked to be different."""
    config = home.node(name).config()
    for key, value in wanted.items():
        if value is not None and config.get(key) != value:
            raise CliError(
                f"node {name!r} already exists with {key} {config.get(key)}, not {value} "
                f"(delete it first to change that: `meshkey node delete {name}`)",
                ExitCode.CONFLICT,
            )


def _apply(ctx: click.Context, name: str, config: Any) -> None:
    """Sets up what a configuration file declares on the running node (what already exists,
    from an earlier run of the same file, is left as it is)."""
    for address in config.tcp_listeners:
        _ignore_conflict(lambda a=address: call(ctx, name, "tcp_listener.create", {"address": a}))
    for address, authorized in config.listeners:
        args = {"name": address, "authorized": resolve_identities(ctx, authorized)}
        _ignore_conflict(lambda a=args: call(ctx, name, "listener.create", a))
    for relay, at in config.relays:
        args = {"name": relay, "at": read_route(at)}
        _ignore_conflict(lambda a=args: call(ctx, name, "relay.create", a, timeout=20))
    for resource, allow in config.policies:
        args = {"resource": resource, "allow": resolve_identities(ctx, allow)}
        call(ctx, name, "policy.create", args)


def _ignore_conflict(step: Any) -> None:
    from meshkey.node.control_client import ControlError

    try:
        step()
    except ControlError as exc:
        if exc.code != "conflict":
            raise


def _run_foreground(home: Home, name: str) -> None:
    from meshkey.node.daemon import run

    code = run(home, name)
    if code:
        sys.exit(code)


def _print_node(output: str, verb: str, summary: dict[str, Any]) -> None:
    emit(
        output,
        summary,
        lambda: (
            f"Node {summary['name']} {verb}\n"
            + fields(
                [
                    ("node id", summary["node_id"]),
                    ("addresses", summary["addresses"]),
                    ("services", ", ".join(summary.get("services", [])) or None),
                ]
            )
        ),
    )


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
@click.option("--force", "-y", is_flag=True, help="Stop running nodes first instead of refusing.")
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
    emit_table(
        output,
        [node_summary(home, n) for n in home.node_names()],
        [
            ("NAME", "name"),
            ("STATUS", _status_cell),
            ("NODE ID", "node_id"),
            ("ADDRESS", lambda n: _without_id((n["addresses"] or [""])[0])),
        ],
        "No nodes (create one with `meshkey node create NAME`).",
    )


def _status_cell(summary: dict[str, Any]) -> str:
    status: str = summary["status"]
    return f"broken: {summary['error']}" if status == "broken" else status


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
            state = graph.get("state") or "joined"
            rows.append(("graph", f"{state}; {graph['mode']}, {graph['peers']} peers"))
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
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="How many of the last lines to show (0: all).",
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
    ctx: click.Context, name: str | None, lines: int, follow: bool, level: str, output: str
) -> None:
    """Show the log of node NAME (with --output json, one JSON object per line)."""
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
        for line in handle.readlines()[-lines:] if lines else handle.readlines():
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
