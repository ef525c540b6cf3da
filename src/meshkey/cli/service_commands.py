"""``meshkey service``: more instances of a node's built-in services (Ockam's spelling)."""

from __future__ import annotations

import click

from meshkey.cli.common import CommandGroup, at_option, call, pick_node
from meshkey.cli.output import emit, output_option


@click.group(cls=CommandGroup)
def service() -> None:
    """A node's services: every node runs api, echo, hop, uppercase (and more); start more
    of echo, hop and uppercase at addresses of your own."""


@service.command("start")
@click.argument("kind", type=click.Choice(["echo", "hop", "uppercase"]))
@click.option(
    "--addr",
    "address",
    required=True,
    metavar="NAME",
    help="Its address on the node, /service/NAME.",
)
@at_option
@output_option
@click.pass_context
def service_start(ctx: click.Context, kind: str, address: str, at: str | None, output: str) -> None:
    """Start a KIND service at /service/NAME on NODE (until the node stops); an address in
    use is refused (exit code 4)."""
    node = pick_node(ctx, at, "--at", create=True)
    result = call(ctx, node, "service.start", {"kind": kind, "address": address})
    emit(output, {**result, "node": node}, result["address"])


@service.command("list")
@at_option
@output_option
@click.pass_context
def service_list(ctx: click.Context, at: str | None, output: str) -> None:
    """List NODE's services."""
    node = pick_node(ctx, at, "--at")
    services = call(ctx, node, "status")["services"]
    emit(
        output, [{"address": f"/service/{s}", "node": node} for s in services], "\n".join(services)
    )
