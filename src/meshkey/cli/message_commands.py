"""``meshkey message``: send messages along routes."""

from __future__ import annotations

import time

import click

from meshkey.cli.common import call, get_home, node_name, parse_duration, read_route
from meshkey.cli.errors import CliError, ExitCode, exit_code_for
from meshkey.cli.output import emit, output_option
from meshkey.node.state import Home, resolve_route
from meshkey.routing.address import NodeNameAddress, Route, TransportAddress, parse_route
from meshkey.routing.errors import RemoteError


@click.group()
def message() -> None:
    """Send messages along routes."""


@message.command("send")
@click.argument("text", metavar="MESSAGE")
@click.option(
    "--to",
    "to",
    required=True,
    metavar="ROUTE",
    help="Where to: e.g. /node/blue/service/uppercase; '-' reads a route from stdin.",
)
@click.option(
    "--from",
    "from_node",
    metavar="NODE",
    help="Send from this node (name or /node/NAME) [default: a short-lived node in "
    "this process, with a fresh identity].",
)
@click.option("--timeout", default="10s", show_default=True, help="How long to wait for a reply.")
@click.option("--hex", "hex_mode", is_flag=True, help="MESSAGE is hex; print the reply as hex.")
@output_option
@click.pass_context
def message_send(
    ctx: click.Context,
    text: str,
    to: str,
    from_node: str | None,
    timeout: str,
    hex_mode: bool,
    output: str,
) -> None:
    """Send MESSAGE along a route and print the reply.

    \b
    Examples:
      meshkey message send hello --to /node/blue/service/uppercase
      meshkey message send hello --to /node/green/node/blue/service/echo
      meshkey message send hello --from yellow --to /ip4/127.0.0.1/tcp/4000/service/echo
    """
    seconds = parse_duration(timeout)
    route = read_route(to)
    try:
        payload = bytes.fromhex(text) if hex_mode else text.encode()
    except ValueError as exc:
        raise CliError(f"--hex: MESSAGE is not hex ({exc})", ExitCode.USAGE) from exc
    home = get_home(ctx)
    started = time.perf_counter()
    if from_node:
        result = call(
            ctx,
            node_name(from_node),
            "message.send",
            {"route": route, "payload": payload, "timeout": seconds},
            timeout=seconds + 5,
        )
        reply: bytes = result["payload"]
    else:
        reply = _send_embedded(home, route, payload, seconds)
    elapsed = time.perf_counter() - started
    shown = reply.hex() if hex_mode else reply.decode("utf-8", errors="replace")
    emit(
        output,
        {"reply": shown, "route": route, "elapsed_ms": round(elapsed * 1000, 3)},
        shown,
    )


def _send_embedded(home: Home, route: str, payload: bytes, timeout: float) -> bytes:
    """Sends as a short-lived node in this process: fresh identity, no listener, no loop.

    It reaches the route's first node over TCP (the node runs on this machine, and loading
    QUIC would cost this process more than the whole exchange); every hop after that is the
    route's own, UDP for ``/node/NAME``.
    """
    from meshkey.node.oneshot import send_once

    parsed = parse_route(route)
    first = parsed[0]
    if isinstance(first, NodeNameAddress):
        parsed = (home.resolve_node(first.name, "tcp"), *parsed[1:])
    resolved = resolve_route(parsed, home)
    try:
        if isinstance(resolved[0], TransportAddress) and resolved[0].protocol == "udp":
            return _send_from_full_node(home, resolved, payload, timeout)
        return send_once(resolved, payload, timeout=timeout)
    except RemoteError as exc:
        raise CliError(exc.text, exit_code_for(exc.code.name.lower())) from exc


def _send_from_full_node(home: Home, route: Route, payload: bytes, timeout: float) -> bytes:
    """A route that starts with a UDP hop needs QUIC: a whole (short-lived) node sends it."""
    import asyncio

    from meshkey.node.core import Node

    async def send() -> bytes:
        async with Node(tcp=None, udp=None, home=home) as node:
            return await node.send(route, payload, timeout=timeout)

    return asyncio.run(send())
