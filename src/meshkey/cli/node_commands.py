"""``meshkey node``: node daemons."""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any

import click

from meshkey.cli.common import (
    CommandGroup,
    call,
    get_home,
    node_name,
    pick_node,
    read_route,
    timeout_option,
)
from meshkey.cli.errors import CliError, ExitCode, exit_code_for
from meshkey.cli.node_create import node_create, print_node, run_foreground
from meshkey.cli.output import emit, emit_table, fields, output_option
from meshkey.node.state import Home, NodeStateError


@click.group(cls=CommandGroup)
def node() -> None:
    """Node daemons: create, list, show, default, start, stop, delete, logs, nat, whoami."""


node.add_command(node_create)


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
        run_foreground(get_home(ctx), name)
        return
    launcher.start_node(get_home(ctx), name)
    print_node(output, "started", launcher.node_summary(get_home(ctx), name, live=True))


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
