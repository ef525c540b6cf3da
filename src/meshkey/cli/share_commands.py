"""``meshkey share`` and ``meshkey connect``: one command on each side, by NodeId, as iroh's
dumbpipe does it.

``share HOST:PORT`` puts an outlet to HOST:PORT on a node (kept, like every outlet) and
prints a signed ticket (:mod:`meshkey.cli.ticket`); ``connect TICKET`` checks the signature,
joins the node graph through the ticket's hints if the connecting node has no seeds, and
opens an inlet to ``/peer/NODEID/secure/api/service/OUTLET``: the peer is found by its NodeId,
reached directly, through a punched path or through its relay, and the bytes travel inside
a secure channel to it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from meshkey.cli.common import (
    call,
    call_waiting,
    get_home,
    pick_node,
    resolve_identities,
    timeout_option,
)
from meshkey.cli.errors import CliError, ExitCode
from meshkey.cli.output import emit, output_option
from meshkey.cli.progress import progress
from meshkey.cli.ticket import MAX_HINTS, RELAY, SEED, Hint, Ticket, TicketError, parse_ticket


def _endpoint(text: str) -> tuple[str, int] | None:
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or host in ("0.0.0.0", "::"):
        return None
    return host, int(port)


def hints_from(shared: dict[str, Any]) -> tuple[Hint, ...]:
    """The node's own addresses (if others can dial it), its relays and its seeds, merged
    by node and address, at most :data:`MAX_HINTS`."""
    from meshkey.identity.node_id import NodeId
    from meshkey.routing.address import (
        RouteError,
        ServiceAddress,
        TransportAddress,
        parse_route,
    )

    found: dict[tuple[bytes | None, str, int], tuple[int, str | None]] = {}
    for text in shared.get("direct", [])[:2]:
        endpoint = _endpoint(text)
        if endpoint is not None:
            found[(None, *endpoint)] = (SEED, None)
    for text in shared.get("relays", []):
        try:
            route = parse_route(text)
        except RouteError:
            continue
        first, last = route[0], route[-1]
        if not isinstance(first, TransportAddress) or first.node_id is None:
            continue
        name = last.name.removeprefix("forward_to_") if isinstance(last, ServiceAddress) else None
        key = (first.node_id.raw, first.host, first.port)
        flags, _ = found.get(key, (0, None))
        found[key] = (flags | RELAY, name)
    for text in shared.get("seeds", []):
        node_id, _, address = text.partition("@")
        endpoint = _endpoint(address)
        if endpoint is None:
            continue
        try:
            raw = NodeId.parse(node_id).raw
        except ValueError:
            continue
        key = (raw, *endpoint)
        flags, name = found.get(key, (0, None))
        found[key] = (flags | SEED, name)
    hints = [
        Hint(flags, node, host, port, name) for (node, host, port), (flags, name) in found.items()
    ]
    return tuple(hints[:MAX_HINTS])


@click.command("share")
@click.argument("target", metavar="HOST:PORT")
@click.option(
    "--at",
    "at",
    metavar="NODE",
    help="The node that shares it (next to the server) [default: the only or default node].",
)
@click.option(
    "--allow",
    multiple=True,
    metavar="IDENTITY",
    help="Only these identities may connect (repeatable) [default: anyone with the ticket "
    "who is authenticated end to end].",
)
@output_option
@click.pass_context
def share(
    ctx: click.Context, target: str, at: str | None, allow: tuple[str, ...], output: str
) -> None:
    """Share the TCP server at HOST:PORT (a bare PORT: 127.0.0.1:PORT) and print a ticket for
    `meshkey connect` on another machine.

    The outlet stays up with the node (and comes back when it restarts); the ticket names the
    node by its NodeId, says how to find it (seeds, relays) and is signed by it.

    \b
    meshkey share 127.0.0.1:5432                      # here: prints mk1...
    meshkey connect mk1... --listen 127.0.0.1:15432   # there
    psql -h 127.0.0.1 -p 15432
    """
    node = pick_node(ctx, at, "--at", create=True)
    args = {"to": target, "allow": resolve_identities(ctx, allow)}
    shared = call(ctx, node, "share", args, timeout=15)
    ticket = Ticket(
        node_id=_raw(shared["node_id"]),
        service=shared["outlet"]["address"].removeprefix("/service/"),
        hints=hints_from(shared),
    )
    signed = call(ctx, node, "ticket.sign", {"body": ticket.body()})["signature"]
    text = Ticket(ticket.node_id, ticket.service, ticket.hints, signed).to_text()
    record = {
        "ticket": text,
        "node": node,
        "node_id": shared["node_id"],
        "outlet": shared["outlet"],
        "hints": [_hint_record(h, shared["node_id"]) for h in ticket.hints],
    }
    if output != "json":
        click.echo(
            f"Sharing {shared['outlet']['to']} from node {node} as {shared['outlet']['address']}; "
            "on the other side:\n  meshkey connect TICKET --listen 127.0.0.1:PORT",
            err=True,
        )
        if not ticket.hints:
            click.echo(
                "warning: the ticket has no hints (this node has no seeds, no relay, and others "
                "cannot dial it): the other side must already know how to find it",
                err=True,
            )
    emit(output, record, text)


def _raw(node_id: str) -> bytes:
    from meshkey.identity.node_id import NodeId

    return NodeId.parse(node_id).raw


def _hint_record(hint: Hint, own: str) -> dict[str, Any]:
    return {
        "seed": hint.is_seed,
        "relay": hint.relay,
        "node": hint.seed_text(own),
    }


@click.command("connect")
@click.argument("ticket_text", metavar="TICKET")
@click.option(
    "--listen",
    "listen",
    default="127.0.0.1:0",
    show_default=True,
    metavar="HOST:PORT",
    help="Where to listen (a bare PORT means 127.0.0.1:PORT; port 0: the system chooses).",
)
@click.option(
    "--at",
    "at",
    metavar="NODE",
    help="The node that connects [default: the only or default node].",
)
@click.option("--alias", metavar="NAME", help="The inlet's name [default: inlet-PORT].")
@timeout_option("20s", "How long finding and reaching the node may take")
@output_option
@click.pass_context
def connect(
    ctx: click.Context,
    ticket_text: str,
    listen: str,
    at: str | None,
    alias: str | None,
    timeout: float,
    output: str,
) -> None:
    """Connect to what a `meshkey share` TICKET shares: listen on HOST:PORT and carry every
    connection there to it, end to end encrypted, by the sharing node's NodeId.

    A ticket that was changed is refused. A node without seeds joins the node graph
    through the ticket's hints (and keeps them as its seeds)."""
    try:
        ticket = parse_ticket(ticket_text)
        ticket.verify()
    except TicketError as exc:
        raise CliError(str(exc), ExitCode.USAGE) from exc
    hints = [hint.seed_text(ticket.node) for hint in ticket.hints]
    created = not at and not get_home(ctx).node_names()
    # A node made for this ticket joins through its hints from the start, so it listens
    # where they can reach it (all interfaces for hints on other machines).
    node = pick_node(ctx, at, "--at", create=True, seeds=hints or None)
    with progress("joining the node graph through the ticket's hints"):
        joined = _wait_joined(ctx, node, hints, timeout) if created else None
        if joined is None:
            joined = _join_through(ctx, node, ticket)
    route = f"/peer/{ticket.node}/secure/api/service/{ticket.service}"
    args = {
        "from": listen,
        "to": route,
        "alias": alias,
        "authorized": [ticket.node],
        "insecure": False,
        "timeout": timeout,
    }
    what = f"finding and reaching {ticket.node[:16]}…"
    inlet = call_waiting(ctx, node, "tcp_inlet.create", args, timeout + 5, what, ticket.node)
    record = {**inlet, "node": node}
    record["joined_through"] = joined
    if output != "json":
        click.echo(
            f"Connected: {record['address']} -> {ticket.node[:16]}… /service/{ticket.service} "
            f"(inlet {record['alias']} on node {node})",
            err=True,
        )
        if record.get("last_error"):
            click.echo(f"warning: {record['last_error']} (clients try again)", err=True)
    emit(output, record, record["address"])


def _wait_joined(ctx: click.Context, node: str, hints: list[str], timeout: float) -> list[str]:
    """A node created for the ticket joins through its hints on its own: wait until it has
    (within ``timeout``), so the inlet's first lookup finds the sharing node; warn if not."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = str(call(ctx, node, "status", {}, timeout=5)["graph"]["state"])
        if state == "joined":
            return hints
        time.sleep(0.2)
    click.echo(f"warning: node {node} has not joined the node graph yet: {state}", err=True)
    return hints


def _join_through(ctx: click.Context, node: str, ticket: Ticket) -> list[str]:
    """A node without seeds takes the ticket's hints as its seeds: each is added to its
    graph (if it proves its NodeId) and kept for its next start."""
    node_dir = get_home(ctx).node(node)
    if json.loads(node_dir.config().get("seeds") or "[]"):
        return []
    from meshkey.errors import MeshkeyError

    joined = []
    for hint in ticket.hints:
        seed = hint.seed_text(ticket.node)
        node_id, _, address = seed.partition("@")
        try:
            call(ctx, node, "peer.add", {"node_id": node_id, "address": address}, timeout=12)
        except MeshkeyError as exc:
            click.echo(f"warning: hint {seed}: {exc}", err=True)
            continue
        joined.append(seed)
    if joined:
        node_dir.set_config({"seeds": json.dumps(joined)})
    return joined
