"""``meshkey node``: node daemons."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from meshkey.cli.common import call, get_home, node_name, parse_duration, read_route
from meshkey.cli.errors import CliError, ExitCode, exit_code_for
from meshkey.cli.output import emit, emit_table, fields, output_option
from meshkey.node.control_client import ControlClient, ControlError
from meshkey.node.state import Home, NodeStateError


@click.group()
def node() -> None:
    """Node daemons: create, list, show, start, stop, delete, logs."""


@node.command("create")
@click.argument("name")
@click.option(
    "--udp",
    metavar="HOST:PORT",
    help="The node's one UDP socket: QUIC hops and reflexive-address requests, in and out "
    "[default: 127.0.0.1:0].",
)
@click.option("--tcp", metavar="HOST:PORT", help="TCP listen address [default: 127.0.0.1:0].")
@click.option(
    "--identity",
    "identity_name",
    metavar="NAME",
    help="Use this identity [default: one named after the node, created if missing].",
)
@click.option("--foreground", "-f", is_flag=True, help="Run in this process until interrupted.")
@output_option
@click.pass_context
def node_create(
    ctx: click.Context,
    name: str,
    udp: str | None,
    tcp: str | None,
    identity_name: str | None,
    foreground: bool,
    output: str,
) -> None:
    """Create node NAME and start it (in the background unless --foreground).

    The node listens on UDP (QUIC) and TCP; /node/NAME in a route means its UDP address.
    """
    from meshkey.node import launcher

    home = get_home(ctx)
    launcher.create_node(home, name, udp=udp, tcp=tcp, identity=identity_name)
    if foreground:
        _run_foreground(home, name)
        return
    try:
        status = launcher.start_node(home, name)
    except NodeStateError:
        home.node(name).delete()  # a node that never ran is not left half-made
        raise
    _print_started(output, "created", status)


def _run_foreground(home: Home, name: str) -> None:
    from meshkey.node.daemon import run

    code = run(home, name)
    if code:
        sys.exit(code)


def _print_started(output: str, verb: str, status: dict[str, Any]) -> None:
    emit(
        output,
        status,
        lambda: (
            f"Node {status['name']} {verb}\n"
            + fields(
                [
                    ("node id", status["node_id"]),
                    ("addresses", status["addresses"]),
                    ("services", ", ".join(status["services"])),
                ]
            )
        ),
    )


@node.command("start")
@click.argument("name")
@click.option("--foreground", "-f", is_flag=True, help="Run in this process until interrupted.")
@output_option
@click.pass_context
def node_start(ctx: click.Context, name: str, foreground: bool, output: str) -> None:
    """Start node NAME again: same identity and, where free, the same port."""
    from meshkey.node import launcher

    name = node_name(name)
    if foreground:
        _run_foreground(get_home(ctx), name)
        return
    _print_started(output, "started", launcher.start_node(get_home(ctx), name))


@node.command("stop")
@click.argument("name")
@click.pass_context
def node_stop(ctx: click.Context, name: str) -> None:
    """Stop node NAME."""
    from meshkey.node import launcher

    name = node_name(name)
    launcher.stop_node(get_home(ctx), name)
    click.echo(f"Node {name} stopped")


@node.command("delete")
@click.argument("name", required=False)
@click.option("--all", "all_nodes", is_flag=True, help="Delete every node.")
@click.option("--force", is_flag=True, help="Stop running nodes first instead of refusing.")
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
    """List nodes, their NodeIds, status and addresses."""
    from meshkey.node.launcher import node_summary

    home = get_home(ctx)
    emit_table(
        output,
        [node_summary(home, n) for n in home.node_names()],
        [
            ("NAME", "name"),
            ("STATUS", "status"),
            ("NODE ID", "node_id"),
            ("ADDRESS", lambda n: _without_id((n["addresses"] or [""])[0])),
        ],
        "No nodes (create one with `meshkey node create NAME`).",
    )


def _without_id(address: str) -> str:
    """The address without its /id/NODEID suffix (the table shows the NodeId already)."""
    return address.split("/id/", maxsplit=1)[0] or "-"


@node.command("show")
@click.argument("name")
@output_option
@click.pass_context
def node_show(ctx: click.Context, name: str, output: str) -> None:
    """Show node NAME: NodeId, status, addresses, services and connections."""
    from meshkey.node.launcher import node_summary

    home = get_home(ctx)
    name = node_name(name)
    summary = node_summary(home, name)
    if summary["status"] == "running":
        try:
            live = ControlClient(home.node(name).socket_path).call("status")
            for key in (
                "addresses",
                "services",
                "connections",
                "started_at",
                "udp_stats",
                "unauthenticated",
            ):
                if key in live:
                    summary[key] = live[key]
        except ControlError as exc:
            summary["status"] = f"not answering ({exc.message})"

    def text() -> str:
        connections = [
            f"{c['direction']:<8} {c['transport']} {c['remote']:<21} {c['peer'] or '-'}"
            for c in summary.get("connections", [])
        ]
        return fields(
            [
                ("name", summary["name"]),
                ("node id", summary["node_id"]),
                ("identity", summary["identity"]),
                ("status", summary["status"]),
                ("pid", summary["pid"]),
                ("addresses", summary["addresses"]),
                ("services", ", ".join(summary.get("services", [])) or None),
                ("connections", connections),
                ("created", summary["created_at"]),
            ]
        )

    emit(output, summary, text)


@node.command("logs")
@click.argument("name")
@click.option("--lines", "-n", default=50, show_default=True, help="How many lines to show.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines (Ctrl-C to stop).")
@click.pass_context
def node_logs(ctx: click.Context, name: str, lines: int, follow: bool) -> None:
    """Show the log of node NAME."""
    node_dir = get_home(ctx).node(node_name(name))
    if not node_dir.exists():
        raise CliError(f"no node named {name!r} (see `meshkey node list`)", ExitCode.NOT_FOUND)
    if not node_dir.log_path.exists():
        return
    with open(node_dir.log_path, errors="replace") as handle:
        for line in handle.readlines()[-lines:] if lines > 0 else []:
            click.echo(line, nl=False)
        while follow:
            line = handle.readline()
            if line:
                click.echo(line, nl=False)
            else:
                time.sleep(0.2)


@node.command("whoami")
@click.argument("name")
@click.option(
    "--via",
    required=True,
    metavar="ROUTE",
    help="The node to ask: /node/NAME or /ip4/A/udp/P (one UDP hop).",
)
@click.option("--timeout", default="3s", show_default=True, help="How long to wait.")
@output_option
@click.pass_context
def node_whoami(ctx: click.Context, name: str, via: str, timeout: str, output: str) -> None:
    """Ask another node which address it sees NAME's UDP socket as (its reflexive address).

    Answered by a control packet on the same UDP socket as NAME's QUIC traffic, so behind a
    NAT it prints the public address and port that peers must punch to.
    """
    seconds = parse_duration(timeout)
    result = call(
        ctx,
        node_name(name),
        "udp.whoami",
        {"via": read_route(via), "timeout": seconds},
        timeout=seconds + 5,
    )
    emit(output, result, result["observed"])
