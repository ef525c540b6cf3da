"""``meshkey secure-channel`` and ``secure-channel-listener``: end-to-end encrypted channels."""

from __future__ import annotations

from typing import Any

import click

from meshkey.cli.common import (
    CommandGroup,
    across_nodes,
    at_option,
    call,
    call_waiting,
    peer_in,
    pick_node,
    read_route,
    resolve_identities,
    timeout_option,
    yes_option,
)
from meshkey.cli.errors import CliError, ExitCode
from meshkey.cli.output import emit, emit_table, fields, output_option


@click.group("secure-channel", cls=CommandGroup)
def secure_channel() -> None:
    """Secure channels (Noise XX) between node identities, end to end over any route.

    \b
    meshkey secure-channel create --from /node/yellow \\
        --to /node/green/service/forward_to_blue/service/api \\
      | meshkey message send hello --from /node/yellow --to -/service/uppercase
    """


@secure_channel.command("create")
@click.option(
    "--from",
    "from_node",
    metavar="NODE",
    help="The initiating node (name or /node/NAME) [default: the only node].",
)
@click.option(
    "--to",
    "to",
    required=True,
    metavar="ROUTE",
    help="Route to a secure channel listener, e.g. /node/blue/service/api.",
)
@click.option(
    "--authorized",
    multiple=True,
    metavar="IDENTITY",
    help="Accept only these identities at the far end: NodeIds or names of local nodes or "
    "identities (repeatable).",
)
@timeout_option("10s", "How long the handshake may take")
@click.option(
    "--no-direct",
    is_flag=True,
    help="Keep this channel's traffic on the route it is opened over (no direct path).",
)
@output_option
@click.pass_context
def channel_create(
    ctx: click.Context,
    from_node: str | None,
    to: str,
    authorized: tuple[str, ...],
    timeout: float,
    no_direct: bool,
    output: str,
) -> None:
    """Open a secure channel from NODE to the listener at ROUTE and print its address.

    Send to ADDRESS/service/X (with --from NODE) to reach service X on the far node: the
    message is encrypted end to end, and nodes on the route see only ciphertext. The channel
    keeps itself alive and reconnects (same address) when its peer restarts.
    """
    node = pick_node(ctx, from_node, "--from")
    route = read_route(to)
    args = {
        "route": route,
        "authorized": resolve_identities(ctx, authorized),
        "timeout": timeout,
        "no_direct": no_direct,
    }
    what = f"opening a secure channel to {route}"
    result = call_waiting(ctx, node, "channel.create", args, timeout + 5, what, peer_in(route))
    emit(output, {**result, "node": node}, result["address"])


def _path_cell(channel: dict[str, Any]) -> str:
    path = channel.get("path") or {}
    return "direct" if path.get("direct") else "relay" if path else "-"


def _channels(ctx: click.Context, at: str | None) -> list[dict[str, Any]]:
    return across_nodes(ctx, at, "--at", "channel.list")


@secure_channel.command("list")
@click.option(
    "--at", "at", metavar="NODE", help="Only this node's channels [default: every running node]."
)
@click.option(
    "--all",
    "show_all",
    is_flag=True,
    help="Closed channels too (kept a while so `secure-channel show` can say why).",
)
@output_option
@click.pass_context
def channel_list(ctx: click.Context, at: str | None, show_all: bool, output: str) -> None:
    """List the secure channels of running nodes that are not closed (--all: those too)."""
    channels = _channels(ctx, at)
    emit_table(
        output,
        channels if show_all else [c for c in channels if c.get("state") != "closed"],
        [
            ("NODE", "node"),
            ("ADDRESS", "address"),
            ("ROLE", "role"),
            ("STATE", "state"),
            ("PATH", _path_cell),
            ("PEER", "peer"),
        ],
        "No secure channels.",
    )


@secure_channel.command("show")
@click.argument("address")
@click.option("--at", "at", metavar="NODE", help="The node that holds the channel [default: any].")
@output_option
@click.pass_context
def channel_show(ctx: click.Context, address: str, at: str | None, output: str) -> None:
    """Show the secure channel at ADDRESS: peer identity, state, the path it uses now (relay or
    direct, its RTT, when and why it last switched), route, last error."""
    wanted = "/service/" + address.removeprefix("/service/")
    found = [c for c in _channels(ctx, at) if c["address"] == wanted]
    if not found:
        raise CliError(f"no secure channel at {wanted}", ExitCode.NOT_FOUND)
    channel = found[0]

    def text() -> str:
        rows = [(k.replace("_", " "), v) for k, v in channel.items() if k != "path"]
        path = channel.get("path")
        if path:
            rtt = f", rtt {path['rtt_ms']} ms" if path.get("rtt_ms") is not None else ""
            rows.append(("path", f"{path['now']}{rtt}"))
            if path.get("switched_at"):
                rows.append(("switched", f"{path['switched_at']} ({path['switch_reason']})"))
            if not path.get("direct"):
                rows.append(("upgrade", path.get("upgrade")))
        return fields(rows)

    emit(output, channel, text)


@secure_channel.command("delete")
@click.argument("address")
@click.option("--at", "at", metavar="NODE", help="The node that holds the channel [default: any].")
@yes_option
@click.pass_context
def channel_delete(ctx: click.Context, address: str, at: str | None) -> None:
    """Close and delete the secure channel at ADDRESS (the peer is told)."""
    wanted = "/service/" + address.removeprefix("/service/")
    holders = [c["node"] for c in _channels(ctx, at) if c["address"] == wanted]
    if not holders:
        raise CliError(f"no secure channel at {wanted}", ExitCode.NOT_FOUND)
    call(ctx, holders[0], "channel.delete", {"address": wanted})
    click.echo(f"Secure channel {wanted} deleted")


@click.group("secure-channel-listener", cls=CommandGroup)
def secure_channel_listener() -> None:
    """Secure channel listeners: where other nodes open channels to (every node has api)."""


@secure_channel_listener.command("create")
@click.argument("address")
@at_option
@click.option(
    "--authorized",
    multiple=True,
    metavar="IDENTITY",
    help="Accept channels only from these identities: NodeIds or local node or identity names "
    "(repeatable).",
)
@output_option
@click.pass_context
def listener_create(
    ctx: click.Context, address: str, at: str | None, authorized: tuple[str, ...], output: str
) -> None:
    """Create a secure channel listener at ADDRESS (e.g. /service/private, or private)."""
    node = pick_node(ctx, at, "--at", create=True)
    args = {"name": address, "authorized": resolve_identities(ctx, authorized)}
    result = call(ctx, node, "listener.create", args)
    emit(output, {**result, "node": node}, result["address"])


@secure_channel_listener.command("list")
@at_option
@output_option
@click.pass_context
def listener_list(ctx: click.Context, at: str | None, output: str) -> None:
    """List a node's secure channel listeners."""
    node = pick_node(ctx, at, "--at")
    emit_table(
        output,
        call(ctx, node, "listener.list"),
        [
            ("ADDRESS", "address"),
            ("AUTHORIZED", lambda item: ", ".join(item["authorized"] or ["anyone"])),
        ],
        "No listeners.",
    )


@secure_channel_listener.command("delete")
@click.argument("address")
@at_option
@yes_option
@click.pass_context
def listener_delete(ctx: click.Context, address: str, at: str | None) -> None:
    """Delete the secure channel listener at ADDRESS."""
    node = pick_node(ctx, at, "--at")
    result = call(ctx, node, "listener.delete", {"name": address})
    click.echo(f"Secure channel listener {result['deleted']} deleted")
