"""``meshkey message``: send messages along routes."""

from __future__ import annotations

import base64
import sys
import time

import click

from meshkey.cli.common import (
    CommandGroup,
    call_waiting,
    get_home,
    node_name,
    peer_in,
    read_route,
    timeout_option,
)
from meshkey.cli.errors import CliError, ExitCode, exit_code_for
from meshkey.cli.output import emit, output_option
from meshkey.node.state import Home, resolve_route
from meshkey.routing.address import (
    NodeNameAddress,
    Route,
    TransportAddress,
    check_destination,
    format_route,
    parse_route,
)
from meshkey.routing.errors import RemoteError
from meshkey.wire.frames import MAX_PAYLOAD


@click.group(cls=CommandGroup)
def message() -> None:
    """Send messages along routes."""


def _payload(text: str | None, path: str | None, hex_mode: bool) -> bytes:
    if (text is None) == (path is None):
        raise CliError(
            "give the MESSAGE ('-' reads it from standard input), or --file PATH",
            ExitCode.USAGE,
        )
    if text == "-":  # as everywhere, '-' is standard input: a line's newline is not sent
        data = sys.stdin.buffer.read(MAX_PAYLOAD + 2)
        data = data[:-2] if data.endswith(b"\r\n") else data.removesuffix(b"\n")
        if len(data) > MAX_PAYLOAD:
            raise CliError(f"MESSAGE -: over the {MAX_PAYLOAD}-byte limit", ExitCode.USAGE)
        if not hex_mode:
            return data
        text = data.decode(errors="replace").strip()
    if path is not None:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_PAYLOAD + 1)
        else:
            try:
                with open(path, "rb") as handle:
                    data = handle.read(MAX_PAYLOAD + 1)
            except OSError as exc:
                raise CliError(f"--file {path}: {exc.strerror or exc}", ExitCode.USAGE) from exc
        if len(data) > MAX_PAYLOAD:
            raise CliError(f"--file {path}: over the {MAX_PAYLOAD}-byte limit", ExitCode.USAGE)
        return data
    assert text is not None
    if not hex_mode:
        return text.encode()
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise CliError(f"--hex: MESSAGE is not hex ({exc})", ExitCode.USAGE) from exc


def _show(reply: bytes, hex_mode: bool, output: str, route: str, elapsed: float) -> None:
    """Prints the reply faithfully: text as text, bytes that are not text as they are when
    stdout is a file or a pipe, and never as silently mangled text on a terminal."""
    data = {"route": route, "elapsed_ms": round(elapsed * 1000, 3), "size": len(reply)}
    if hex_mode:
        emit(output, {**data, "reply": reply.hex(), "encoding": "hex"}, reply.hex())
        return
    try:
        text = reply.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if output == "json":
        if text is not None:
            emit(output, {**data, "reply": text, "encoding": "utf-8"}, "")
        else:
            encoded = base64.b64encode(reply).decode()
            emit(output, {**data, "reply": encoded, "encoding": "base64"}, "")
        return
    if text is not None:
        click.echo(text)
        return
    if sys.stdout.isatty():
        raise CliError(
            f"the reply is {len(reply)} bytes of binary data: use --hex, or redirect the "
            "output to a file",
            ExitCode.FAILURE,
        )
    sys.stdout.buffer.write(reply)
    sys.stdout.buffer.flush()


@message.command("send")
@click.argument("text", metavar="MESSAGE|-", required=False)
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
    help="Send from this node (name or /node/NAME) [default: the local node the route starts "
    "at, if it runs; else a short-lived node in this process, with a fresh identity].",
)
@click.option(
    "--file",
    "path",
    metavar="PATH",
    help="Send the contents of PATH instead of MESSAGE ('-' reads standard input); binary is "
    f"fine, up to {MAX_PAYLOAD} bytes.",
)
@timeout_option("10s", "How long to wait for a reply")
@click.option("--hex", "hex_mode", is_flag=True, help="MESSAGE is hex; print the reply as hex.")
@output_option
@click.pass_context
def message_send(
    ctx: click.Context,
    text: str | None,
    to: str,
    from_node: str | None,
    path: str | None,
    timeout: float,
    hex_mode: bool,
    output: str,
) -> None:
    """Send MESSAGE (or --file PATH; '-' for either reads standard input) along a route and
    print the reply.

    A reply that is not UTF-8 text is written as it is when the output is a file or a pipe
    (and refused on a terminal: use --hex); with --output json it is base64.

    \b
    Examples:
      meshkey message send hello --to /node/blue/service/uppercase
      meshkey message send hello --to /node/green/node/blue/service/echo
      meshkey message send --file photo.jpg --to /node/blue/service/echo > copy.jpg
      date | meshkey message send - --to /node/blue/service/uppercase
      meshkey message send hello --from yellow --to /ip4/127.0.0.1/tcp/4000/service/echo
    """
    if "-" in (path, text) and "-" in to.split("/"):
        raise CliError(
            "the message and a '-' in --to cannot both be read from standard input",
            ExitCode.USAGE,
        )
    route = read_route(to)
    check_destination(parse_route(route), route)
    payload = _payload(text, path, hex_mode)
    home = get_home(ctx)
    started = time.perf_counter()
    sender, onward = _sender(home, from_node, route)
    if sender is not None:
        args = {"route": onward, "payload": payload, "timeout": timeout}
        what = f"waiting for the reply from {route}"
        result = call_waiting(ctx, sender, "message.send", args, timeout + 5, what, peer_in(route))
        reply: bytes = result["payload"]
    else:
        reply = _send_embedded(home, route, payload, timeout)
    _show(reply, hex_mode, output, route, time.perf_counter() - started)


def _sender(home: Home, from_node: str | None, route: str) -> tuple[str | None, str]:
    """Which daemon sends, and the route it is given.

    ``--from NODE``: that node, the whole route. Without it, a route that starts at a local
    node that runs (``/node/blue/...``) is handed to that node with the rest of the route
    (the CLI user owns the node: it acts for them, and the command stays quick); any other
    route is sent by a short-lived node in this process (None)."""
    if from_node:
        return node_name(from_node), route
    parsed = parse_route(route)
    first = parsed[0]
    if isinstance(first, NodeNameAddress) and len(parsed) > 1:
        node = home.node(first.name)
        if node.exists() and node.is_running():
            return first.name, format_route(parsed[1:])
    return None, route


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
