"""Messages along routes through real daemons, and every way sending can fail."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from meshkey.cli.errors import ExitCode
from meshkey.node.core import Node
from meshkey.routing.message import Message

from .conftest import Cli

pytestmark = pytest.mark.integration


def test_uppercase_one_and_two_hops(blue_green: Cli) -> None:
    cli = blue_green
    assert cli.ok("message", "send", "hello", "--to", "/node/blue/service/uppercase") == "HELLO\n"
    assert (
        cli.ok("message", "send", "hello", "--to", "/node/green/node/blue/service/uppercase")
        == "HELLO\n"
    )
    # green really was in the middle: it holds connections to the sender and to blue.
    peers = {c["direction"] for c in cli.json("node", "show", "green")["connections"]}
    assert "outbound" in peers


def test_from_a_node_and_hop_service(blue_green: Cli) -> None:
    cli = blue_green
    sent = cli.json("message", "send", "hi", "--from", "green", "--to", "/node/blue/service/echo")
    assert sent["reply"] == "hi"
    assert (
        cli.ok(
            "message",
            "send",
            "x",
            "--from",
            "/node/blue",
            "--to",
            "/node/green/service/hop/service/uppercase",
        )
        == "X\n"
    )
    for protocol in ("udp", "tcp"):
        address = cli.address("blue", protocol)
        assert cli.ok("message", "send", "raw", "--to", f"{address}/service/uppercase") == "RAW\n"
    assert cli.ok("message", "send", "6869", "--hex", "--to", "/node/blue/service/echo") == "6869\n"


def test_dash_segment_reads_a_route_from_stdin(blue_green: Cli) -> None:
    cli = blue_green
    out = cli.ok("message", "send", "piped", "--to", "-/service/uppercase", input="/node/blue\n")
    assert out == "PIPED\n"
    out = cli.ok("message", "send", "p", "--to", "/node/green/-/service/echo", input="/node/blue\n")
    assert out == "p\n"
    assert "standard input" in cli.fails(
        ExitCode.USAGE, "message", "send", "x", "--to", "-/service/echo", input=""
    )


@pytest.mark.parametrize(
    ("route", "reason"),
    [
        ("/service", "needs a name"),
        ("/ip4/999.1.1.1/tcp/1", "not an ip4 address"),
        ("/bogus/x", "unknown address type"),
        ("", "empty route"),
    ],
)
def test_malformed_routes(cli: Cli, route: str, reason: str) -> None:
    assert reason in cli.fails(ExitCode.USAGE, "message", "send", "x", "--to", route)


def test_failures_have_clear_errors_and_exit_codes(blue_green: Cli, unused_tcp_port: int) -> None:
    cli = blue_green
    assert "no node named 'nosuch'" in cli.fails(
        ExitCode.NOT_FOUND, "message", "send", "x", "--to", "/node/nosuch/service/echo"
    )
    assert "no service 'nope'" in cli.fails(
        ExitCode.NOT_FOUND, "message", "send", "x", "--to", "/node/blue/service/nope"
    )
    # Through green: the error is produced on blue and travels back along the return route.
    assert "no service 'nope'" in cli.fails(
        ExitCode.NOT_FOUND, "message", "send", "x", "--to", "/node/green/node/blue/service/nope"
    )
    assert "connection refused" in cli.fails(
        ExitCode.UNREACHABLE,
        "message",
        "send",
        "x",
        "--to",
        f"/ip4/127.0.0.1/tcp/{unused_tcp_port}/service/echo",
    )
    assert "connection refused" in cli.fails(
        ExitCode.UNREACHABLE,
        "message",
        "send",
        "x",
        "--from",
        "green",
        "--to",
        f"/ip4/127.0.0.1/tcp/{unused_tcp_port}/service/echo",
    )
    assert "invalid duration" in cli.fails(
        ExitCode.USAGE, "message", "send", "x", "--to", "/node/blue/service/echo", "--timeout", "x"
    )
    cli.ok("node", "stop", "blue")
    assert "not running" in cli.fails(
        ExitCode.CONFLICT, "message", "send", "x", "--to", "/node/blue/service/echo"
    )
    assert "not running" in cli.fails(
        ExitCode.CONFLICT, "message", "send", "x", "--from", "blue", "--to", "/service/echo"
    )


@contextlib.contextmanager
def silent_node() -> Iterator[str]:
    """An embedded node whose ``silent`` service never answers, in a thread of its own."""
    ready = threading.Event()
    stop: list[asyncio.Event] = []
    address: list[str] = []

    async def main() -> None:
        async with Node() as node:

            async def swallow(message: Message) -> None:
                return None

            node.register_worker("silent", swallow)
            address.append(str(node.addresses[0]))
            stop.append(asyncio.Event())
            ready.set()
            await stop[0].wait()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(main(),))
    thread.start()
    assert ready.wait(10)
    try:
        yield address[0]
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(10)
        loop.close()


def test_timeout(cli: Cli) -> None:
    with silent_node() as address:
        message = cli.fails(
            ExitCode.TIMEOUT,
            "message",
            "send",
            "x",
            "--to",
            f"{address}/service/silent",
            "--timeout",
            "300ms",
        )
    assert "within 0.3s" in message


def test_a_hop_that_never_authenticates_is_a_timeout_not_a_refusal(cli: Cli) -> None:
    """A server that accepts TCP and never says a word (TLS never completes): the hop's
    authentication times out, and the command says timeout (exit 6) within its own
    --timeout, not 'refused' (exit 7)."""
    cli.ok("node", "create", "blue")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        message = cli.fails(
            ExitCode.TIMEOUT,
            "message",
            "send",
            "x",
            "--from",
            "blue",
            "--to",
            f"/ip4/127.0.0.1/tcp/{port}/service/echo",
            "--timeout",
            "30s",
        )
    assert "timed out" in message
