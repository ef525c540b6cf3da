"""``meshkey policy``: which identities may use which service."""

from __future__ import annotations

from typing import Any

import click

from meshkey.cli.common import (
    CommandGroup,
    at_option,
    call,
    pick_node,
    resolve_identities,
    yes_option,
)
from meshkey.cli.errors import CliError, ExitCode
from meshkey.cli.output import emit, emit_table, fields, output_option


@click.group(cls=CommandGroup)
def policy() -> None:
    """Policies: a service with a policy only accepts messages that come through a secure
    channel from an allowed identity.

    \b
    Two resources are not services:
      relay    who may create relays on this node (checked against the relay's owner)
      forward  who may use this node as a hop to other nodes (open to all until set)
    """


def _warn(result: dict[str, Any]) -> None:
    if result.get("warning"):
        click.echo(f"warning: {result['warning']}", err=True)


@policy.command("create")
@at_option
@click.option("--resource", required=True, metavar="SERVICE", help="e.g. uppercase, relay.")
@click.option(
    "--allow",
    required=True,
    multiple=True,
    metavar="IDENTITY",
    help="A NodeId, or the name of a local node or identity, that may use it (repeatable).",
)
@output_option
@click.pass_context
def policy_create(
    ctx: click.Context, at: str | None, resource: str, allow: tuple[str, ...], output: str
) -> None:
    """Create (or replace) the policy for SERVICE on NODE."""
    node = pick_node(ctx, at, "--at", create=True)
    args = {"resource": resource, "allow": resolve_identities(ctx, allow)}
    result = call(ctx, node, "policy.create", args)
    _warn(result)
    emit(
        output,
        {**result, "node": node},
        f"Policy for {result['resource']} on {node}: allow " + ", ".join(result["allow"]),
    )


def _policies(ctx: click.Context, node: str) -> list[dict[str, Any]]:
    return [{**p, "node": node} for p in call(ctx, node, "policy.list")]


@policy.command("list")
@at_option
@output_option
@click.pass_context
def policy_list(ctx: click.Context, at: str | None, output: str) -> None:
    """List a node's policies."""
    node = pick_node(ctx, at, "--at")
    emit_table(
        output,
        _policies(ctx, node),
        [("RESOURCE", "resource"), ("ALLOW", lambda p: ", ".join(p["allow"]))],
        "No policies: every service is open to whoever can reach it.",
    )


def _resource(positional: str | None, option: str | None) -> str:
    """SERVICE given as an argument, as every other show and delete takes its name, or as
    --resource, as create takes it."""
    if positional and option and positional != option:
        raise CliError(f"two resources given: {positional} and {option}", ExitCode.USAGE)
    resource = positional or option
    if not resource:
        raise CliError("give the SERVICE (or --resource SERVICE)", ExitCode.USAGE)
    return resource.removeprefix("/service/")


def resource_arguments(function: Any) -> Any:
    function = click.option("--resource", "resource_option", metavar="SERVICE", hidden=True)(
        function
    )
    return click.argument("resource", metavar="SERVICE", required=False)(function)


@policy.command("show")
@resource_arguments
@at_option
@output_option
@click.pass_context
def policy_show(
    ctx: click.Context,
    resource: str | None,
    resource_option: str | None,
    at: str | None,
    output: str,
) -> None:
    """Show the policy for SERVICE on NODE."""
    node = pick_node(ctx, at, "--at")
    wanted = _resource(resource, resource_option)
    found = [p for p in _policies(ctx, node) if p["resource"] == wanted]
    if not found:
        raise CliError(f"node {node!r} has no policy for {wanted!r}", ExitCode.NOT_FOUND)
    [shown] = found
    _warn(shown)
    emit(
        output,
        shown,
        lambda: fields(
            [("node", node), ("resource", shown["resource"]), ("allow", shown["allow"])]
        ),
    )


@policy.command("delete")
@resource_arguments
@at_option
@yes_option
@click.pass_context
def policy_delete(
    ctx: click.Context, resource: str | None, resource_option: str | None, at: str | None
) -> None:
    """Delete the policy for SERVICE (it becomes open again)."""
    node = pick_node(ctx, at, "--at")
    resource = _resource(resource, resource_option)
    call(ctx, node, "policy.delete", {"resource": resource})
    click.echo(f"Policy for {resource} on {node} deleted")
