"""``meshkey tcp-listener`` and ``tcp-connection``: a node's TCP listeners and live TCP hops."""

from __future__ import annotations

import click

from meshkey.cli.common import CommandGroup, at_option, call, pick_node, timeout_option, yes_option
from meshkey.cli.errors import CliError, ExitCode
from meshkey.cli.output import emit, emit_table, fields, output_option


@click.group("tcp-listener", cls=CommandGroup)
def tcp_listener() -> None:
    """More TCP listeners on a running node (its own is set with `node create --tcp`).
    They are kept and listen again after a restart."""


def listen_address(text: str) -> str:
    """``HOST:PORT``, or a bare ``PORT`` meaning 127.0.0.1:PORT (as inlets take it)."""
    return f"127.0.0.1:{text}" if text.isdigit() else text


@tcp_listener.command("create")
@click.argument("address", metavar="HOST:PORT|PORT")
@at_option
@output_option
@click.pass_context
def tcp_listener_create(ctx: click.Context, address: str, at: str | None, output: str) -> None:
    """Listen on HOST:PORT too (a bare PORT means 127.0.0.1:PORT; port 0: the system
    chooses); prints the route to it."""
    node = pick_node(ctx, at, "--at")
    result = call(ctx, node, "tcp_listener.create", {"address": listen_address(address)})
    emit(output, {**result, "node": node}, result["route"])


@tcp_listener.command("list")
@at_option
@output_option
@click.pass_context
def tcp_listener_list(ctx: click.Context, at: str | None, output: str) -> None:
    """List a node's TCP listeners."""
    node = pick_node(ctx, at, "--at")
    emit_table(
        output,
        [{**item, "node": node} for item in call(ctx, node, "tcp_listener.list")],
        [
            ("ADDRESS", "address"),
            ("PRIMARY", lambda item: "yes" if item["primary"] else "no"),
            ("ROUTE", "route"),
        ],
        "No TCP listeners.",
    )


@tcp_listener.command("delete")
@click.argument("address", metavar="HOST:PORT")
@at_option
@yes_option
@click.pass_context
def tcp_listener_delete(ctx: click.Context, address: str, at: str | None) -> None:
    """Stop listening on HOST:PORT."""
    node = pick_node(ctx, at, "--at")
    address = listen_address(address)
    call(ctx, node, "tcp_listener.delete", {"address": address})
    click.echo(f"TCP listener {address} on {node} deleted")


@click.group("tcp-connection", cls=CommandGroup)
def tcp_connection() -> None:
    """Live TCP hops of a node (`peer connections` lists every transport's)."""


@tcp_connection.command("list")
@at_option
@output_option
@click.pass_context
def tcp_connection_list(ctx: click.Context, at: str | None, output: str) -> None:
    """List a node's live TCP connections: peer, remote address, direction, age."""
    node = pick_node(ctx, at, "--at")
    emit_table(
        output,
        [{**item, "node": node} for item in call(ctx, node, "tcp_connection.list")],
        [
            ("DIRECTION", "direction"),
            ("REMOTE", "remote"),
            ("PEER", "peer"),
            ("STATE", "state"),
            ("AGE", lambda item: f"{item['age']}s"),
        ],
        "No TCP connections.",
    )


@tcp_listener.command("show")
@click.argument("address", metavar="HOST:PORT|PORT")
@at_option
@output_option
@click.pass_context
def tcp_listener_show(ctx: click.Context, address: str, at: str | None, output: str) -> None:
    """Show one of a node's TCP listeners."""
    node = pick_node(ctx, at, "--at")
    wanted = listen_address(address)
    found = [item for item in call(ctx, node, "tcp_listener.list") if item["address"] == wanted]
    if not found:
        raise CliError(f"TCP listener {wanted} not found on node {node!r}", ExitCode.NOT_FOUND)
    record = {**found[0], "node": node}
    emit(output, record, lambda: fields(list(record.items())))


@tcp_connection.command("create")
@click.option("--from", "from_node", metavar="NODE", help="The node that connects.")
@click.option(
    "--to", "to", required=True, metavar="HOST:PORT", help="Where: HOST:PORT or /ip4/A/tcp/P."
)
@timeout_option("10s", "How long connecting may take")
@output_option
@click.pass_context
def tcp_connection_create(
    ctx: click.Context, from_node: str | None, to: str, timeout: float, output: str
) -> None:
    """Open a TCP hop from NODE to HOST:PORT (authenticated, as every hop); routes to that
    address use it."""
    node = pick_node(ctx, from_node, "--from")
    args = {"to": listen_address(to), "timeout": timeout}
    record = {**call(ctx, node, "tcp_connection.create", args, timeout + 5), "node": node}
    emit(output, record, lambda: f"{record['remote']} ({record['address']})")


@tcp_connection.command("show")
@click.argument("address", metavar="HOST:PORT")
@at_option
@output_option
@click.pass_context
def tcp_connection_show(ctx: click.Context, address: str, at: str | None, output: str) -> None:
    """Show a node's TCP connection(s) to or from HOST:PORT."""
    node = pick_node(ctx, at, "--at")
    wanted = listen_address(address)
    found = [c for c in call(ctx, node, "tcp_connection.list") if c["remote"] == wanted]
    if not found:
        raise CliError(f"TCP connection {wanted} not found on node {node!r}", ExitCode.NOT_FOUND)
    emit(
        output,
        [{**c, "node": node} for c in found],
        lambda: "\n\n".join(fields(list(c.items())) for c in found),
    )


@tcp_connection.command("delete")
@click.argument("address", metavar="HOST:PORT")
@at_option
@yes_option
@click.pass_context
def tcp_connection_delete(ctx: click.Context, address: str, at: str | None) -> None:
    """Close a node's TCP connection(s) to or from HOST:PORT."""
    node = pick_node(ctx, at, "--at")
    wanted = listen_address(address)
    call(ctx, node, "tcp_connection.delete", {"address": wanted})
    click.echo(f"TCP connection {wanted} on {node} deleted")
