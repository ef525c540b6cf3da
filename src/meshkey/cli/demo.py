"""``meshkey demo``: a small network of real node daemons, and messages across it.

It uses a private state directory (so it never touches your nodes), starts three daemons
through the same code paths as ``meshkey node create``, embeds a fourth node in this process
through the Python API, and sends messages along multi-hop routes, through a relay and a
secure channel, and to a node found by its NodeId alone in the node graph.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from meshkey.node import launcher
from meshkey.node.control_client import ControlClient
from meshkey.node.state import Home


def run_demo(*, keep: bool) -> None:
    directory = Path(tempfile.mkdtemp(prefix="meshkey-demo-"))
    home = Home(directory)
    names = ["green", "blue", "yellow"]
    click.secho(f"meshkey demo: state in {directory}", bold=True)
    try:
        seeds: list[str] = []  # green is the others' seed into the node graph
        for name in names:
            launcher.create_node(home, name, tcp=None, identity=None, seeds=seeds)
            status = launcher.start_node(home, name)
            udp = status["addresses"][0]
            click.echo(f"  started node {name:<8} {udp}")
            if not seeds:
                parts = udp.split("/")  # /ip4/HOST/udp/PORT/id/NODEID
                seeds = [f"{status['node_id']}@{parts[2]}:{parts[4]}"]
        asyncio.run(_exchange(home))
        click.echo()
        click.echo("Each hop above was QUIC (TLS 1.3 inside) on each node's one UDP socket;")
        click.echo("each side proved its NodeId to the other, and the secure channel (Noise XX)")
        click.echo("ran end to end between yellow's and blue's identities.")
    finally:
        if keep:
            click.echo(
                f"\nNodes left running. Try:\n  export MESHKEY_HOME={directory}\n"
                "  meshkey node list\n  meshkey message send hi --to "
                "/node/yellow/node/blue/service/uppercase\n"
                "Clean up with: meshkey node delete --all --force"
            )
        else:
            for name in names:
                if home.node(name).exists():
                    launcher.delete_node(home, name, force=True)
            shutil.rmtree(directory, ignore_errors=True)
            click.echo("\nDemo nodes stopped and deleted.")


async def _exchange(home: Home) -> None:
    from meshkey.node.core import Node

    # This process is a node too: embedded with the Python API, with its own identity.
    async with Node(home=home, name="demo") as here:
        here.register_service("reverse", lambda payload: payload[::-1])
        click.echo(f"  embedded node demo    {here.addresses[0]} (this process)\n")
        exchanges = [
            ("/node/blue/service/uppercase", b"hello"),
            ("/node/green/node/blue/service/uppercase", b"hello through green"),
            ("/node/yellow/node/green/node/blue/service/echo", b"three hops out, three back"),
            ("/node/green/service/hop/service/uppercase", b"via green's hop service"),
        ]
        for route, payload in exchanges:
            started = time.perf_counter()
            reply = await here.send(route, payload)
            elapsed = (time.perf_counter() - started) * 1000
            click.echo(f"  {route}")
            click.echo(
                f"    sent {payload.decode()!r:<32} reply {reply.decode()!r}  ({elapsed:.1f} ms)"
            )
        # And the other way: daemon blue sends to a service of this embedded node.
        route = f"{here.addresses[0]}/service/reverse"
        blue = ControlClient(home.node("blue").socket_path)
        result = await asyncio.to_thread(
            blue.call, "message.send", {"route": route, "payload": b"stressed", "timeout": 5}
        )
        click.echo(f"  blue -> {route}")
        click.echo(f"    sent 'stressed' reply {result['payload'].decode()!r}")

        observed = await asyncio.to_thread(
            blue.call, "udp.whoami", {"via": "/node/green", "timeout": 3}, 10
        )
        click.echo(f"\n  node whoami blue --via /node/green -> {observed['observed']}")
        click.echo("    (the address green sees blue's one UDP socket as)")

        # Ockam's forwarder session: blue registers a relay on green (blue dials out, so it
        # could sit behind a NAT), then yellow opens a secure channel to blue through it.
        click.echo("\n  relay create blue --at /node/green --to /node/blue")
        relay = await asyncio.to_thread(
            blue.call, "relay.create", {"name": "blue", "at": "/node/green"}, 15
        )
        click.echo(f"    -> {relay['address']} on green")
        through = "/node/green/service/forward_to_blue"
        reply = await here.send(f"{through}/service/uppercase", b"relayed")
        click.echo(f"  {through}/service/uppercase: 'relayed' -> {reply.decode()!r}")
        yellow = ControlClient(home.node("yellow").socket_path)
        channel = await asyncio.to_thread(
            yellow.call, "channel.create", {"route": f"{through}/service/api"}, 15
        )
        click.echo(f"  secure-channel create --from yellow --to {through}/service/api")
        click.echo(f"    -> {channel['address']}, peer {channel['peer'][:12]}… (blue)")
        result = await asyncio.to_thread(
            yellow.call,
            "message.send",
            {"route": f"{channel['address']}/service/uppercase", "payload": b"secret"},
            15,
        )
        click.echo(
            f"  yellow -> {channel['address'][:20]}…/service/uppercase: 'secret' -> "
            f"{result['payload'].decode()!r}  (end to end: green saw only ciphertext)"
        )

        # The node graph: blue and yellow joined it through their seed, green. Yellow finds
        # blue by its NodeId alone, and reaches it with /peer/NODEID.
        blue_id = channel["peer"]
        found = await _find(yellow, blue_id)
        lookup = found["lookup"]
        click.echo(f"\n  peer find {blue_id[:12]}… --at yellow")
        click.echo(
            f"    -> {', '.join(found['addresses'])} ({lookup['nodes_asked']} nodes asked, "
            f"{lookup['duration'] * 1000:.1f} ms)"
        )
        route = f"/peer/{blue_id}/service/uppercase"
        result = await asyncio.to_thread(
            yellow.call, "message.send", {"route": route, "payload": b"by node id"}, 15
        )
        click.echo(
            f"  yellow -> /peer/{blue_id[:12]}…/service/uppercase: 'by node id' -> "
            f"{result['payload'].decode()!r}"
        )


async def _find(client: ControlClient, node_id: str) -> dict[str, Any]:
    """``peer find``, retried for a few seconds: the daemons join the graph in the
    background of their start."""
    deadline = time.monotonic() + 10
    while True:
        found: dict[str, Any] = await asyncio.to_thread(
            client.call, "peer.find", {"node_id": node_id, "timeout": 5}, 10
        )
        if found["found"] or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)
