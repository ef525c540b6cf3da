"""``meshkey peer``: the node graph (Kademlia, in Polykey's model)."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from meshkey.cli.common import (
    DURATION,
    CommandGroup,
    at_option,
    call,
    call_waiting,
    local_names,
    pick_node,
    resolve_identities,
    timeout_option,
)
from meshkey.cli.errors import CliError, ExitCode
from meshkey.cli.output import emit, emit_table, fields, output_option
from meshkey.errors import MeshkeyError


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
    args = {"node_id": target, "timeout": timeout}
    result = call_waiting(ctx, node, "peer.find", args, timeout + 2, f"looking up {target[:16]}…")
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
@click.option("--count", "-c", type=click.IntRange(min=1), help="Send this many pings.")
@click.option("--watch", "-w", is_flag=True, help="Ping until interrupted (Ctrl-C).")
@click.option(
    "--interval",
    type=DURATION,
    default="1s",
    show_default=True,
    help="Time between pings (with --count or --watch).",
)
@timeout_option("10s", "How long to wait for each answer")
@output_option
@click.pass_context
def peer_ping(
    ctx: click.Context,
    node_id: str,
    at: str | None,
    count: int | None,
    watch: bool,
    interval: float,
    timeout: float,
    output: str,
) -> None:
    """Round trips to NODEID (its echo service, through a secure channel to it, as tailscale
    ping) with each RTT and path: direct ADDR, punched, or via relay NAME, and a line when
    the path changes. Exit 0 if any answer came back."""
    if count is not None and watch:
        raise CliError("give --count N or --watch, not both", ExitCode.USAGE)
    node = pick_node(ctx, at, "--at")
    target = _node_id(ctx, node_id)
    name = local_names(ctx).get(target)
    who = f"{name} ({target[:12]}…)" if name else target
    if count is None and not watch:
        args = {"node_id": target, "timeout": timeout}
        result = call_waiting(
            ctx, node, "peer.ping", args, timeout + 5, f"reaching {who}", peer=target
        )
        path = result.get("path") or {}
        via = f" {path['description']}" if path else ""
        emit(
            output,
            {**result, "node": node},
            f"Pong from {who}{via}: {_milliseconds(result['rtt_ms'])}",
        )
        return
    pings = Pings(who, output)
    try:
        sent = 0
        while watch or sent < (count or 0):
            if sent:
                time.sleep(interval)
            sent += 1
            try:
                args = {"node_id": target, "timeout": timeout}
                what = f"reaching {who}"
                pings.reply(call_waiting(ctx, node, "peer.ping", args, timeout + 5, what, target))
            except MeshkeyError as exc:
                pings.failure(exc)
    except KeyboardInterrupt:
        if not watch:
            raise
    pings.done({"node": node, "node_id": target})


class Pings:
    """A run of pings as it goes: a line each (or a JSON object each, with --output json,
    under --watch), a line when the path changes, and a summary."""

    def __init__(self, who: str, output: str) -> None:
        self.who = who
        self.output = output
        self.replies: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.path: str | None = None
        self.last_error: MeshkeyError | None = None

    def reply(self, result: dict[str, Any]) -> None:
        self.replies.append(result)
        path = (result.get("path") or {}).get("description") or "-"
        changed = self.path is not None and path != self.path
        previous, self.path = self.path, path
        if self.output == "json":
            click.echo(json.dumps({**result, "path_changed": changed}))
            return
        if changed:
            click.echo(f"path changed: {previous} -> {path}")
        click.echo(f"pong from {self.who} {path} in {_milliseconds(result['rtt_ms'])}")

    def failure(self, error: MeshkeyError) -> None:
        self.failures.append(str(error))
        self.last_error = error
        if self.output == "json":
            click.echo(json.dumps({"success": False, "error": str(error)}))
        else:
            click.echo(f"no answer: {error}")

    def done(self, about: dict[str, Any]) -> None:
        rtts = [r["rtt_ms"] for r in self.replies]
        sent = len(rtts) + len(self.failures)
        summary: dict[str, Any] = {
            **about,
            "sent": sent,
            "received": len(rtts),
            "min_ms": min(rtts) if rtts else None,
            "avg_ms": round(sum(rtts) / len(rtts), 3) if rtts else None,
            "max_ms": max(rtts) if rtts else None,
        }
        if self.output == "json":
            click.echo(json.dumps({"summary": summary}))
        else:
            line = f"{sent} sent, {len(rtts)} received"
            if rtts:
                line += (
                    f", rtt min/avg/max {_milliseconds(summary['min_ms'])[:-3]}/"
                    f"{_milliseconds(summary['avg_ms'])[:-3]}/{_milliseconds(summary['max_ms'])}"
                )
            click.echo(line)
        if not rtts and self.last_error is not None:
            raise self.last_error


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
