"""``meshkey tcp-listener`` and ``tcp-connection``: a node's TCP listeners and live TCP hops."""

from __future__ import annotations

import click

from meshkey.cli.common import CommandGroup, at_option, call, pick_node
from meshkey.cli.output import emit, emit_table, output_option


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
