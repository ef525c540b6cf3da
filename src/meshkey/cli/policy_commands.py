"""``meshkey policy``: which identities may use which service."""

from __future__ import annotations

import click

from meshkey.cli.common import call, pick_node
from meshkey.cli.output import emit, emit_table, output_option


@click.group()
def policy() -> None:
    """Policies: a service with a policy only accepts messages that come through a secure
    channel from an allowed identity (the resource `relay` controls who may create relays,
    by their authenticated hop identity)."""


@policy.command("create")
@click.option("--at", "at", metavar="NODE", help="The node [default: the only node].")
@click.option("--resource", required=True, metavar="SERVICE", help="e.g. uppercase, relay.")
@click.option(
    "--allow",
    required=True,
    multiple=True,
    metavar="NODEID",
    help="An identity that may use it (repeatable).",
)
@output_option
@click.pass_context
def policy_create(
    ctx: click.Context, at: str | None, resource: str, allow: tuple[str, ...], output: str
) -> None:
    """Create (or replace) the policy for SERVICE on NODE."""
    node = pick_node(ctx, at, "--at")
    result = call(ctx, node, "policy.create", {"resource": resource, "allow": list(allow)})
    emit(
        output,
        result,
        f"Policy for {result['resource']} on {node}: allow " + ", ".join(result["allow"]),
    )


@policy.command("list")
@click.option("--at", "at", metavar="NODE", help="The node [default: the only node].")
@output_option
@click.pass_context
def policy_list(ctx: click.Context, at: str | None, output: str) -> None:
    """List a node's policies."""
    node = pick_node(ctx, at, "--at")
    emit_table(
        output,
        call(ctx, node, "policy.list"),
        [("RESOURCE", "resource"), ("ALLOW", lambda p: ", ".join(p["allow"]))],
        "No policies: every service is open to whoever can reach it.",
    )


@policy.command("delete")
@click.option("--at", "at", metavar="NODE", help="The node [default: the only node].")
@click.option("--resource", required=True, metavar="SERVICE")
@click.pass_context
def policy_delete(ctx: click.Context, at: str | None, resource: str) -> None:
    """Delete the policy for SERVICE (it becomes open again)."""
    node = pick_node(ctx, at, "--at")
    call(ctx, node, "policy.delete", {"resource": resource})
    click.echo(f"Policy for {resource} on {node} deleted")
