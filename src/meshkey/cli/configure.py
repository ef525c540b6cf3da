"""Applying a node configuration (``node create --configuration``) whole or not at all.

Everything is checked first (:func:`prepare`: identities, routes, addresses, the nodes
named). Then the running node's lists are read, :func:`meshkey.node.convergence.plan` says
what it lacks, and the changes are made one by one; when one fails, those already made are
undone in reverse order and the error says which step failed and why. A configuration
applied again to a node that has everything changes nothing.
"""

from __future__ import annotations

from typing import Any

import click

from meshkey.cli.common import call, get_home, resolve_identities
from meshkey.cli.errors import CliError, exit_code_for
from meshkey.errors import MeshkeyError
from meshkey.node.configuration import NodeConfiguration
from meshkey.node.convergence import Change, Current, Wanted, plan, resolve


def prepare(ctx: click.Context, config: NodeConfiguration, node: str) -> Wanted:
    """The configuration for ``node``, every name in it resolved and every route and address
    checked (ConfigurationError naming the place, before anything is done)."""
    home = get_home(ctx)

    def identities(values: list[str]) -> list[str]:
        try:
            return resolve_identities(ctx, values)
        except CliError as exc:
            raise ValueError(exc.message) from exc

    def check_route(text: str) -> str:
        from meshkey.routing.address import NodeNameAddress, RouteError, format_route, parse_route

        if "-" in text.split("/"):
            raise ValueError(f"{text}: a '-' (standard input) has no place in a configuration")
        try:
            route = parse_route(text)
        except RouteError as exc:
            raise ValueError(str(exc)) from exc
        for address in route:
            if not isinstance(address, NodeNameAddress) or address.name == node:
                continue
            if not home.node(address.name).exists():
                raise ValueError(f"{text}: no node named {address.name!r}")
        return format_route(route)

    return resolve(config, node, identities, check_route)


def current(ctx: click.Context, node: str) -> Current:
    """What the running ``node`` has now."""
    return Current(
        tcp_listeners=call(ctx, node, "tcp_listener.list"),
        listeners=call(ctx, node, "listener.list"),
        relays=call(ctx, node, "relay.list")["relays"],
        policies=call(ctx, node, "policy.list"),
        tcp_outlets=call(ctx, node, "tcp_outlet.list"),
        tcp_inlets=call(ctx, node, "tcp_inlet.list"),
    )


def _same_route(a: str, b: str) -> bool:
    from meshkey.routing.address import RouteError, format_route, parse_route

    try:
        return format_route(parse_route(a)) == format_route(parse_route(b))
    except RouteError:
        return a == b


def apply(ctx: click.Context, node: str, wanted: Wanted) -> list[Change]:
    """Makes the changes ``node`` needs; returns them (none: it was as configured). On a
    failure, undoes what it did and raises a CliError that names the failed step."""
    changes = plan(wanted, current(ctx, node), same_route=_same_route)
    due: list[tuple[Change, list[tuple[str, dict[str, Any]]]]] = []
    for change in changes:
        try:
            for index, (op, args) in enumerate(change.do):
                answer = call(ctx, node, op, args, timeout=change.timeout)
                if index == 0:  # the node has changed: undoing this change is due
                    due.append((change, _undo_calls(change, answer)))
        except MeshkeyError as exc:
            failures = _undo(ctx, node, due)
            reason = exc.message if isinstance(exc, CliError) else str(exc)
            note = (
                "; what was done before was undone"
                if due and not failures
                else f"; could not undo: {'; '.join(failures)}"
                if failures
                else ""
            )
            code = exc.exit_code if isinstance(exc, CliError) else exit_code_for(exc.kind)
            raise CliError(
                f"configuration not applied: {change.describe()} failed: {reason}{note}", code
            ) from exc
    return changes


def _undo_calls(change: Change, answer: Any) -> list[tuple[str, dict[str, Any]]]:
    key = change.undo_from_answer
    if key is None or not isinstance(answer, dict) or key not in answer:
        return list(change.undo)
    return [(op, {**args, key: answer[key]}) for op, args in change.undo]


def _undo(
    ctx: click.Context, node: str, due: list[tuple[Change, list[tuple[str, dict[str, Any]]]]]
) -> list[str]:
    failures = []
    for change, undo in reversed(due):
        for op, args in undo:
            try:
                call(ctx, node, op, args, timeout=change.timeout)
            except MeshkeyError as exc:
                if getattr(exc, "code", None) == "not_found" and op.endswith(".delete"):
                    continue  # not made, or already gone
                failures.append(f"{change.describe()}: {exc}")
    return failures


def describe_changes(changes: list[Change]) -> str:
    if not changes:
        return "nothing to change (it has everything its configuration declares)"
    verbs = {"create": "created", "replace": "replaced"}
    return ", ".join(f"{verbs[c.verb]} {c.kind} {c.key}" for c in changes)
