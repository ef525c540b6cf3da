"""``meshkey relay``: relays (Ockam's forwarders)."""

from __future__ import annotations

from typing import Any

import click

from meshkey.cli.common import across_nodes, call, pick_node, read_route
from meshkey.cli.errors import CliError, ExitCode
from meshkey.cli.output import emit, emit_table, fields, output_option


@click.group()
def relay() -> None:
    """Relays: let nodes that cannot be reached directly be reached through another node.

    \b
    meshkey relay create blue --at /node/green --to /node/blue
    meshkey message send hi --to /node/green/service/forward_to_blue/service/echo
    """


@relay.command("create")
@click.argument("name")
@click.option(
    "--at",
    "at",
    required=True,
    metavar="ROUTE",
    help="The node that hosts the relay, e.g. /node/green or /ip4/A/tcp/P.",
)
@click.option(
    "--to",
    "to",
    metavar="NODE",
    help="The node messages are relayed to [default: the node named NAME, or the only node].",
)
@output_option
@click.pass_context
def relay_create(ctx: click.Context, name: str, at: str, to: str | None, output: str) -> None:
    """Create relay NAME on the node at ROUTE, forwarding to NODE.

    Prints the relay's address on the hosting node, /service/forward_to_NAME. NODE keeps the
    relay registered, re-registering whenever its connection to the host comes back.
    """
    node = pick_node(ctx, to, "--to", hint=name)
    result = call(ctx, node, "relay.create", {"name": name, "at": read_route(at)}, timeout=20)
    emit(output, {**result, "node": node}, result["address"])


def _relays_of(ctx: click.Context, at: str | None) -> list[dict[str, Any]]:
    return across_nodes(ctx, at, "--at", "relay.list", "relays")


def relay_node_option(function: Any) -> Any:
    """``--at NODE`` (as everywhere), also spelled ``--to NODE`` (as in relay create)."""
    return click.option(
        "--at",
        "--to",
        "at",
        metavar="NODE",
        help="The node that created the relay (also --to) [default: every running node].",
    )(function)


@relay.command("list")
@relay_node_option
@output_option
@click.pass_context
def relay_list(ctx: click.Context, at: str | None, output: str) -> None:
    """List relays that running nodes created, with their status (active only while the
    relay node holds the registration)."""
    emit_table(
        output,
        _relays_of(ctx, at),
        [
            ("NODE", "node"),
            ("NAME", "name"),
            ("KIND", "kind"),
            ("STATUS", "status"),
            ("AT", "at"),
            ("ADDRESS", "address"),
        ],
        "No relays.",
    )


@relay.command("show")
@click.argument("name")
@relay_node_option
@output_option
@click.pass_context
def relay_show(ctx: click.Context, name: str, at: str | None, output: str) -> None:
    """Show relay NAME: where it is, its status and its last error."""
    node = pick_node(ctx, at, "--at", hint=name)
    found = [r for r in _relays_of(ctx, node) if r["name"] == name]
    if not found:
        raise CliError(f"node {node!r} has no relay named {name!r}", ExitCode.NOT_FOUND)
    relay = found[0]
    emit(output, relay, lambda: fields([(k.replace("_", " "), v) for k, v in relay.items()]))


@relay.command("delete")
@click.argument("name")
@relay_node_option
@click.pass_context
def relay_delete(ctx: click.Context, name: str, at: str | None) -> None:
    """Delete relay NAME: unregister it from its host and stop keeping it alive."""
    node = pick_node(ctx, at, "--at", hint=name)
    call(ctx, node, "relay.delete", {"name": name}, timeout=20)
    click.echo(f"Relay {name} deleted")
