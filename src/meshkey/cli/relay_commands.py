"""``meshkey relay``: relays (Ockam's forwarders)."""

from __future__ import annotations

from typing import Any

import click

from meshkey.cli.common import (
    CommandGroup,
    call,
    call_waiting,
    get_home,
    local_names,
    per_node,
    pick_node,
    read_route,
    yes_option,
)
from meshkey.cli.errors import CliError, ExitCode
from meshkey.cli.output import emit, emit_table, fields, output_option


@click.group(cls=CommandGroup)
def relay() -> None:
    """Relays: let nodes that cannot be reached directly be reached through another node.

    \b
    meshkey relay create blue --at /node/green --to /node/blue
    meshkey message send hi --to /node/green/service/forward_to_blue/service/echo
    """


@relay.command("create")
@click.argument("name", default="default")
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
    """Create relay NAME [default: default] on the node at ROUTE, forwarding to NODE.

    Prints the relay's address on the hosting node, /service/forward_to_NAME. NODE keeps the
    relay registered, re-registering whenever its connection to the host comes back.
    """
    node = pick_node(ctx, to, "--to", hint=name)
    route = read_route(at)
    what = f"registering relay {name} at {route}"
    result = call_waiting(ctx, node, "relay.create", {"name": name, "at": route}, 20, what)
    emit(output, {**result, "node": node}, result["address"])


def _relays_of(ctx: click.Context, at: str | None, *, hosted: bool) -> list[dict[str, Any]]:
    """The relays ``at`` (or every running node) created, and with ``hosted`` those it
    hosts for others (kind ``hosted``, ``to`` the owner: a local node's name if it is one);
    across every node, a relay whose owner is a node here is listed once, as its own."""
    names = local_names(ctx) if hosted else {}
    relays: list[dict[str, Any]] = []
    for node, result in per_node(ctx, at, "--at", "relay.list"):
        relays += [{**r, "node": node, "to": node} for r in result["relays"]]
        if not hosted:
            continue
        for item in result.get("hosted", []):
            if at is None and item["owner"] in names:
                continue  # listed once: as the relay its owner, a node here, created
            relays.append(
                {
                    "node": node,
                    "name": item["name"],
                    "kind": "hosted",
                    "status": "active"
                    if item["online"]
                    else "offline (its owner is not connected)",
                    "at": f"/node/{node}",
                    "address": item["address"],
                    "to": names.get(item["owner"], item["owner"]),
                    "owner": item["owner"],
                }
            )
    return relays


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
@click.option(
    "--at",
    "at",
    metavar="NODE",
    help="This node's relays: those it created and those it hosts [default: every running node].",
)
@click.option(
    "--to", "to", metavar="NODE", help="Only the relays NODE created (that forward to it)."
)
@output_option
@click.pass_context
def relay_list(ctx: click.Context, at: str | None, to: str | None, output: str) -> None:
    """List relays: those running nodes created (kind manual or automatic, AT the node that
    hosts it) and those they host for others (kind hosted, TO the node it forwards to; without
    --at, only for nodes not here), with their status (active only while the relay node holds
    the registration)."""
    if at and to:
        raise CliError("give --at NODE or --to NODE, not both", ExitCode.USAGE)
    emit_table(
        output,
        _relays_of(ctx, at or to, hosted=not to),
        [
            ("NODE", "node"),
            ("NAME", "name"),
            ("KIND", "kind"),
            ("STATUS", "status"),
            ("AT", "at"),
            ("TO", "to"),
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
    """Show relay NAME (one a node created): where it is, its status and its last error."""
    relay = _find_relay(ctx, name, at)
    emit(output, relay, lambda: fields([(k.replace("_", " "), v) for k, v in relay.items()]))


def _find_relay(ctx: click.Context, name: str, at: str | None) -> dict[str, Any]:
    """Relay NAME of node ``at``; without it, of a node named NAME, else of whichever running
    node has it (none: exit 3; several: they are named)."""
    home = get_home(ctx)
    places: list[str | None] = [at]
    if not at:
        places = [name, None] if _valid(name) and home.node(name).exists() else [None]
    found: list[dict[str, Any]] = []
    for place in places:
        found = [r for r in _relays_of(ctx, place, hosted=False) if r["name"] == name]
        if found:
            break
    if not found:
        where = f"on node {pick_node(ctx, at, '--at')!r}" if at else "on any running node"
        raise CliError(f"relay {name!r} not found {where}", ExitCode.NOT_FOUND)
    nodes = sorted({r["node"] for r in found})
    if len(nodes) > 1:
        raise CliError(
            f"relay {name!r} is on several nodes ({', '.join(nodes)}): give --at NODE",
            ExitCode.USAGE,
        )
    return found[0]


def _valid(name: str) -> bool:
    from meshkey.identity.names import check_name

    try:
        check_name("node", name)
    except ValueError:
        return False
    return True


@relay.command("delete")
@click.argument("name")
@relay_node_option
@yes_option
@click.pass_context
def relay_delete(ctx: click.Context, name: str, at: str | None) -> None:
    """Delete relay NAME: unregister it from its host and stop keeping it alive."""
    node = _find_relay(ctx, name, at)["node"]
    call(ctx, node, "relay.delete", {"name": name}, timeout=20)
    click.echo(f"Relay {name} on {node} deleted")
