"""``meshkey peer``: the node graph (Kademlia, in Polykey's model)."""

from __future__ import annotations

from typing import Any

import click

from meshkey.cli.common import (
    CommandGroup,
    at_option,
    call,
    pick_node,
    resolve_identities,
    timeout_option,
)
from meshkey.cli.errors import CliError, ExitCode
from meshkey.cli.output import emit, emit_table, fields, output_option


@click.group(cls=CommandGroup)
def peer() -> None:
    """The node graph: the peers a node knows, found by lookups and joined through seeds.

    A peer enters the graph only once a hop to it authenticated its NodeId (inbound or
    outbound); names in other nodes' answers are only candidates to ask.

    \b
    meshkey node create green --udp 127.0.0.1:4000
    meshkey node create blue --seed NODEID_OF_GREEN@127.0.0.1:4000
    meshkey peer list --at green         # blue is there, at the address it was seen at
    meshkey peer find NODEID --at blue   # a lookup; exit code 3 if nobody has it
    """


def _node_id(ctx: click.Context, value: str) -> str:
    """A NodeId, or the name of a local node or identity (its NodeId)."""
    return resolve_identities(ctx, [value])[0]


@peer.command("add")
@click.argument("node_id", metavar="NODEID")
@click.argument("address", metavar="HOST:PORT")
@at_option
@click.option("--force", is_flag=True, help="Evict the bucket's oldest peer if it is full.")
@click.option(
    "--no-ping",
    is_flag=True,
    help="Do not contact it now: keep the address as a hint; the peer enters the graph once "
    "a hop to it authenticates.",
)
@timeout_option("10s", "How long the peer may take to answer")
@output_option
@click.pass_context
def peer_add(
    ctx: click.Context,
    node_id: str,
    address: str,
    at: str | None,
    force: bool,
    no_ping: bool,
    timeout: float,
    output: str,
) -> None:
    """Add peer NODEID, reachable over UDP at HOST:PORT (or /ip4/H/udp/P).

    The peer is contacted and added only if it proves it holds NODEID's key; a full bucket
    refuses it (exit code 7) unless --force.
    """
    node = pick_node(ctx, at, "--at")
    args = {"node_id": _node_id(ctx, node_id), "address": address, "force": force}
    result = call(ctx, node, "peer.add", {**args, "no_ping": no_ping}, timeout=timeout + 2)
    verb = "added" if result["added"] else "noted (it enters the graph once it authenticates)"
    emit(output, {**result, "node": node}, f"Peer {result['node_id']} {verb}")


@peer.command("find")
@click.argument("node_id", metavar="NODEID")
@at_option
@click.option("--verbose", "-v", is_flag=True, help="Show the lookup: rounds, nodes asked, time.")
@timeout_option("30s", "How long the lookup may take")
@output_option
@click.pass_context
def peer_find(
    ctx: click.Context, node_id: str, at: str | None, verbose: bool, timeout: float, output: str
) -> None:
    """Find where NODEID is: a lookup through the graph (its addresses, and its signed
    peer record if it published one). Exit code 3 when the network has no such node."""
    node = pick_node(ctx, at, "--at")
    target = _node_id(ctx, node_id)
    result = call(ctx, node, "peer.find", {"node_id": target, "timeout": timeout}, timeout + 2)
    lookup = result["lookup"]
    if not result["found"]:
        if output == "json":
            emit(output, {**result, "node": node}, "")
        detail = f" ({lookup['nodes_asked']} nodes asked in {lookup['rounds']} rounds)"
        raise CliError(f"peer {target} not found{detail}", ExitCode.NOT_FOUND)
    emit(output, {**result, "node": node}, lambda: _found(result, verbose))


def _found(result: dict[str, Any], verbose: bool) -> str:
    record = result.get("record") or {}
    pairs: list[tuple[str, Any]] = [
        ("node id", result["node_id"]),
        ("addresses", result["addresses"]),
        ("in graph", "yes" if result["in_graph"] else "no"),
    ]
    if record:
        pairs += [
            ("record", f"sequence {record['sequence']}, NAT {record['nat_class']}"),
            ("reflexive", record["reflexive"]),
            ("relays", record["relays"]),
        ]
    if verbose:
        lookup = result["lookup"]
        pairs += [
            ("rounds", lookup["rounds"]),
            ("nodes asked", lookup["nodes_asked"]),
            ("messages", lookup["messages"]),
            ("failed", lookup["failed"]),
            ("took", f"{lookup['duration'] * 1000:.1f} ms"),
        ]
    return fields(pairs)


@peer.command("list")
@at_option
@output_option
@click.pass_context
def peer_list(ctx: click.Context, at: str | None, output: str) -> None:
    """List the node graph: each peer's NodeId, addresses, bucket, when it was last seen,
    whether it is a server (reachable, answers DHT queries) or a client (behind a NAT:
    reachable only through its own connection or relay), and how it was learned."""
    node = pick_node(ctx, at, "--at")
    result = call(ctx, node, "peer.list")
    peers = result["peers"]
    if output == "json":
        emit(output, {**result, "node": node}, "")
        return
    click.echo(f"Node {node} ({result['mode']}): {len(peers)} peers")
    emit_table(
        output,
        peers,
        [
            ("NODE ID", "node_id"),
            ("ADDRESSES", lambda p: ", ".join(p["addresses"])),
            ("BUCKET", "bucket"),
            ("LAST SEEN", lambda p: f"{p['last_seen_ago']:.0f}s ago"),
            ("MODE", "mode"),
            ("LEARNED", "learned"),
        ],
        "The graph is empty.",
    )


@peer.command("ping")
@click.argument("node_id", metavar="NODEID")
@at_option
@timeout_option("10s", "How long to wait for the answer")
@output_option
@click.pass_context
def peer_ping(
    ctx: click.Context, node_id: str, at: str | None, timeout: float, output: str
) -> None:
    """An authenticated round trip to NODEID (its echo service, through a secure channel to
    it) and the path it took: direct, punched or via a relay."""
    node = pick_node(ctx, at, "--at")
    result = call(ctx, node, "peer.ping", {"node_id": _node_id(ctx, node_id)}, timeout=timeout)
    path = result.get("path") or {}
    via = f" {path['description']}" if path else ""
    emit(
        output,
        {**result, "node": node},
        f"Pong from {result['node_id']}{via}: {_milliseconds(result['rtt_ms'])}",
    )


def _milliseconds(value: float) -> str:
    """Three significant digits at least, down to the microsecond: 0.084 ms, 1.27 ms."""
    return f"{value:.3f} ms" if value < 10 else f"{value:.1f} ms"


@peer.command("connections")
@at_option
@output_option
@click.pass_context
def peer_connections(ctx: click.Context, at: str | None, output: str) -> None:
    """List the live hops to peers: NodeId, transport, remote address, direction, age."""
    node = pick_node(ctx, at, "--at")
    hops = call(ctx, node, "peer.connections")
    emit_table(
        output,
        [{**hop, "node": node} for hop in hops],
        [
            ("PEER", "peer"),
            ("TRANSPORT", "transport"),
            ("REMOTE", "remote"),
            ("DIRECTION", "direction"),
            ("AGE", lambda h: f"{h['age']:.0f}s"),
            ("RTT", lambda h: None if h.get("rtt_ms") is None else f"{h['rtt_ms']} ms"),
        ],
        "No live hops.",
    )


@peer.command("remove")
@click.argument("node_id", metavar="NODEID")
@at_option
@click.pass_context
def peer_remove(ctx: click.Context, node_id: str, at: str | None) -> None:
    """Remove NODEID from the graph (it comes back if it connects again and authenticates)."""
    node = pick_node(ctx, at, "--at")
    target = _node_id(ctx, node_id)
    call(ctx, node, "peer.remove", {"node_id": target})
    click.echo(f"Peer {target} removed")
