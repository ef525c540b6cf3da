"""``meshkey tcp-outlet`` and ``tcp-inlet``: TCP portals (Ockam's spellings).

An outlet sits on the node next to a TCP server; an inlet is a local TCP listener whose every
connection becomes a portal session to an outlet, end to end encrypted across the nodes in
between (``/secure/api`` in its route opens the secure channel). Both are kept by their node
and come back after a restart. Every record has one JSON schema, whichever command prints it
(create, list and show).
"""

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
    prefer_default,
    read_route,
    resolve_identities,
    timeout_option,
    yes_option,
)
from meshkey.cli.errors import CliError, ExitCode
from meshkey.cli.output import emit, emit_table, fields, output_option


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"  # pragma: no cover - the loop always returns


def _warn_last_error(record: dict[str, Any]) -> None:
    if record.get("last_error"):
        click.echo(f"warning: {record['last_error']}", err=True)


def _find(
    ctx: click.Context, at: str | None, op: str, wanted: str, matches: Any, what: str
) -> dict[str, Any]:
    """The one record ``wanted`` names, on node ``at`` or on any running node."""
    found = [item for item in across_nodes(ctx, at, "--at", op) if matches(item, wanted)]
    if not found:
        where = f" on {pick_node(ctx, at, '--at')}" if at else " on any running node"
        raise CliError(f"{what} {wanted!r} not found{where}", ExitCode.NOT_FOUND)
    nodes = sorted({item["node"] for item in found})
    default = prefer_default(ctx, nodes) if len(nodes) > 1 else None
    if default is not None:
        return next(item for item in found if item["node"] == default)
    if len(nodes) > 1:
        raise CliError(
            f"{what} {wanted!r} is on several nodes ({', '.join(nodes)}): give --at NODE",
            ExitCode.USAGE,
        )
    return found[0]


def _show(output: str, record: dict[str, Any]) -> None:
    emit(output, record, lambda: fields([(k.replace("_", " "), v) for k, v in record.items()]))


# -- tcp-outlet ---------------------------------------------------------------------------


@click.group("tcp-outlet", cls=CommandGroup)
def tcp_outlet() -> None:
    """TCP outlets: a worker on the node next to a TCP server that connects to it for each
    portal session.

    \b
    meshkey tcp-outlet create --at /node/blue --to 127.0.0.1:5432
    meshkey tcp-inlet create --at /node/yellow --from 127.0.0.1:15432 \\
        --to /node/green/service/forward_to_blue/secure/api/service/outlet
    psql -h 127.0.0.1 -p 15432
    """


@tcp_outlet.command("create")
@click.option(
    "--to",
    "to",
    required=True,
    metavar="HOST:PORT",
    help="The TCP server to connect to (a bare PORT means 127.0.0.1:PORT).",
)
@at_option
@click.option(
    "--from",
    "from_name",
    default="outlet",
    show_default=True,
    metavar="NAME",
    help="The outlet's address on the node, /service/NAME (what inlets' routes end at).",
)
@click.option(
    "--allow",
    multiple=True,
    metavar="IDENTITY",
    help="Only these identities may use it: NodeIds or names of local nodes or identities "
    "(repeatable) [default: anyone authenticated end to end].",
)
@click.option("--alias", metavar="NAME", help="Its name here [default: the --from NAME].")
@click.option(
    "--insecure",
    is_flag=True,
    help="Also serve sessions that crossed other nodes without a secure channel (they saw "
    "the bytes, and the client's identity is unknown).",
)
@output_option
@click.pass_context
def outlet_create(
    ctx: click.Context,
    to: str,
    at: str | None,
    from_name: str,
    allow: tuple[str, ...],
    alias: str | None,
    insecure: bool,
    output: str,
) -> None:
    """Create a TCP outlet to HOST:PORT at /service/NAME on NODE; prints its address.

    Without --from, the first outlet on a node is /service/outlet and the next ones get a
    name of their own (as in Ockam); an address given with --from that is taken is refused."""
    node = pick_node(ctx, at, "--at", create=True)
    if ctx.get_parameter_source("from_name") is click.core.ParameterSource.DEFAULT:
        taken = {o["address"] for o in call(ctx, node, "tcp_outlet.list")}
        taken |= {f"/service/{o['alias']}" for o in call(ctx, node, "tcp_outlet.list")}
        if f"/service/{from_name}" in taken:
            import secrets

            from_name = f"tcp-outlet-{secrets.token_hex(3)}"
    args = {
        "to": to,
        "name": from_name,
        "alias": alias,
        "allow": resolve_identities(ctx, allow),
        "insecure": insecure,
    }
    record = {**call(ctx, node, "tcp_outlet.create", args, timeout=15), "node": node}
    emit(output, record, record["address"])


def _outlet_matches(item: dict[str, Any], wanted: str) -> bool:
    address = "/service/" + wanted.removeprefix("/service/")
    return bool(item["alias"] == wanted or item["address"] == address)


@tcp_outlet.command("list")
@click.option(
    "--at", "at", metavar="NODE", help="Only this node's outlets [default: every running node]."
)
@output_option
@click.pass_context
def outlet_list(ctx: click.Context, at: str | None, output: str) -> None:
    """List TCP outlets with their sessions, bytes and last error."""
    emit_table(
        output,
        across_nodes(ctx, at, "--at", "tcp_outlet.list"),
        [
            ("NODE", "node"),
            ("ALIAS", "alias"),
            ("ADDRESS", "address"),
            ("TO", "to"),
            ("ALLOW", lambda item: len(item["allow"]) if item["allow"] else "anyone"),
            ("SESSIONS", lambda item: f"{item['sessions_open']}/{item['sessions_total']}"),
            ("TO SERVER", lambda item: _size(item["bytes_to_server"])),
            ("FROM SERVER", lambda item: _size(item["bytes_from_server"])),
            ("LAST ERROR", "last_error"),
        ],
        "No TCP outlets.",
    )


@tcp_outlet.command("show")
@click.argument("name", metavar="ALIAS")
@click.option("--at", "at", metavar="NODE", help="The node that has it [default: any].")
@output_option
@click.pass_context
def outlet_show(ctx: click.Context, name: str, at: str | None, output: str) -> None:
    """Show a TCP outlet (by alias or /service/NAME): target, who may use it, sessions open
    and in all, bytes each way, refusals, last error."""
    _show(output, _find(ctx, at, "tcp_outlet.list", name, _outlet_matches, "TCP outlet"))


@tcp_outlet.command("delete")
@click.argument("name", metavar="ALIAS")
@click.option("--at", "at", metavar="NODE", help="The node that has it [default: any].")
@yes_option
@click.pass_context
def outlet_delete(ctx: click.Context, name: str, at: str | None) -> None:
    """Delete a TCP outlet: its sessions are reset and it is forgotten."""
    record = _find(ctx, at, "tcp_outlet.list", name, _outlet_matches, "TCP outlet")
    call(ctx, record["node"], "tcp_outlet.delete", {"alias": record["alias"]}, timeout=15)
    click.echo(f"TCP outlet {record['alias']} on {record['node']} deleted")


# -- tcp-inlet ----------------------------------------------------------------------------


@click.group("tcp-inlet", cls=CommandGroup)
def tcp_inlet() -> None:
    """TCP inlets: a local TCP listener whose every connection is carried to a TCP outlet.

    \b
    The route must not show the bytes to the nodes in between: a single hop
    (/node/blue/service/outlet) is end to end already; through other nodes, put /secure/api
    before the outlet's service, which opens (or reuses) a secure channel to that node:
      meshkey tcp-inlet create --at /node/yellow --from 127.0.0.1:15432 \\
          --to /node/green/service/forward_to_blue/secure/api/service/outlet
    """


@tcp_inlet.command("create")
@click.option(
    "--from",
    "listen",
    default="127.0.0.1:0",
    show_default=True,
    metavar="HOST:PORT",
    help="Where to listen (a bare PORT means 127.0.0.1:PORT; port 0: the system chooses).",
)
@click.option(
    "--to",
    "to",
    required=True,
    metavar="ROUTE",
    help="The route to the outlet, e.g. /node/blue/service/outlet or "
    "/node/green/service/forward_to_blue/secure/api/service/outlet; '-' reads stdin.",
)
@at_option
@click.option(
    "--authorized",
    multiple=True,
    metavar="IDENTITY",
    help="Only these identities may be at the far end (the outlet's node): NodeIds or names "
    "of local nodes or identities (repeatable).",
)
@click.option(
    "--alias", metavar="NAME", help="Its name here [default: inlet-PORT, after its port]."
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Allow a route through other nodes without a secure channel: they see the bytes.",
)
@click.option(
    "--udp",
    "udp",
    is_flag=True,
    help="Reach the outlet over UDP (QUIC, punched where a NAT is in the way): refuse a route "
    "whose first hop is TCP (/node/NAME and /peer/NODEID hops are UDP already).",
)
@click.option(
    "--no-tcp-fallback",
    is_flag=True,
    help="Refuse a route with any TCP hop: over UDP, or not at all.",
)
@timeout_option("10s", "How long to wait for the route (its secure channels) to answer")
@output_option
@click.pass_context
def inlet_create(
    ctx: click.Context,
    listen: str,
    to: str,
    at: str | None,
    authorized: tuple[str, ...],
    alias: str | None,
    insecure: bool,
    udp: bool,
    no_tcp_fallback: bool,
    timeout: float,
    output: str,
) -> None:
    """Create a TCP inlet on NODE listening on HOST:PORT, to the outlet at ROUTE; prints the
    address it listens on. A route that does not answer yet is not an error (its clients
    try again when they connect): the warning says why."""
    node = pick_node(ctx, at, "--at", create=True)
    route = read_route(to)
    if udp or no_tcp_fallback:
        _only_udp(route, first_only=not no_tcp_fallback)
    args = {
        "from": listen,
        "to": route,
        "alias": alias,
        "authorized": resolve_identities(ctx, authorized),
        "insecure": insecure,
        "timeout": timeout,
    }
    what = f"reaching {args['to']}"
    peer = peer_in(str(args["to"]))
    inlet = call_waiting(ctx, node, "tcp_inlet.create", args, timeout + 5, what, peer)
    record = {**inlet, "node": node}
    if output != "json":
        _warn_last_error(record)
    emit(output, record, record["address"])


def _only_udp(route: str, *, first_only: bool) -> None:
    """Refuses a route whose first hop (or, not ``first_only``, any hop) is a TCP one."""
    from meshkey.routing.address import TransportAddress, parse_route

    hops = [a for a in parse_route(route) if isinstance(a, TransportAddress)]
    for hop in hops[:1] if first_only else hops:
        if hop.protocol == "tcp":
            option = "--udp" if first_only else "--no-tcp-fallback"
            raise CliError(
                f"{option}: {route} goes over TCP ({hop}); give a UDP route (e.g. /node/NAME, "
                "/peer/NODEID or /ip4/A/udp/P)",
                ExitCode.USAGE,
            )


def _inlet_matches(item: dict[str, Any], wanted: str) -> bool:
    if item["alias"] == wanted or item["address"] == wanted:
        return True
    return wanted.isdigit() and item["address"] == f"127.0.0.1:{wanted}"


@tcp_inlet.command("list")
@click.option(
    "--at", "at", metavar="NODE", help="Only this node's inlets [default: every running node]."
)
@output_option
@click.pass_context
def inlet_list(ctx: click.Context, at: str | None, output: str) -> None:
    """List TCP inlets with their sessions, bytes and last error."""
    emit_table(
        output,
        across_nodes(ctx, at, "--at", "tcp_inlet.list"),
        [
            ("NODE", "node"),
            ("ALIAS", "alias"),
            ("ADDRESS", "address"),
            ("TO", "to"),
            ("STATUS", "status"),
            ("SESSIONS", lambda item: f"{item['sessions_open']}/{item['sessions_total']}"),
            ("TO OUTLET", lambda item: _size(item["bytes_to_outlet"])),
            ("FROM OUTLET", lambda item: _size(item["bytes_from_outlet"])),
            ("LAST ERROR", "last_error"),
        ],
        "No TCP inlets.",
    )


@tcp_inlet.command("show")
@click.argument("name", metavar="ALIAS")
@click.option("--at", "at", metavar="NODE", help="The node that has it [default: any].")
@output_option
@click.pass_context
def inlet_show(ctx: click.Context, name: str, at: str | None, output: str) -> None:
    """Show a TCP inlet (by alias or HOST:PORT): its route as given and as resolved now,
    sessions open and in all, bytes each way, last error."""
    _show(output, _find(ctx, at, "tcp_inlet.list", name, _inlet_matches, "TCP inlet"))


@tcp_inlet.command("delete")
@click.argument("name", metavar="ALIAS")
@click.option("--at", "at", metavar="NODE", help="The node that has it [default: any].")
@yes_option
@click.pass_context
def inlet_delete(ctx: click.Context, name: str, at: str | None) -> None:
    """Delete a TCP inlet: it stops listening, its sessions are reset, it is forgotten."""
    record = _find(ctx, at, "tcp_inlet.list", name, _inlet_matches, "TCP inlet")
    call(ctx, record["node"], "tcp_inlet.delete", {"alias": record["alias"]}, timeout=15)
    click.echo(f"TCP inlet {record['alias']} on {record['node']} deleted")
