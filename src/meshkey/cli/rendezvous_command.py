"""``meshkey rendezvous create``: a rendezvous node, as Ockam's UDP puncture server.

meshkey needs no rendezvous of its own kind: every node answers reflexive-address requests on
its one UDP socket (that is how NATs are classified and punches timed), and signals punches
over secure channels. This runs a node for that job alone, in the foreground, with no state
directory: it tells others which address it sees their UDP socket as (give it to nodes with
``--observer HOST:PORT`` or ``$MESHKEY_RENDEZVOUS``), relays for whoever registers, and, with
``--healthcheck``, answers HTTP ``GET /`` with ``Alive``.
"""

from __future__ import annotations

import asyncio
import signal

import click

from meshkey.cli.common import CommandGroup
from meshkey.cli.errors import CliError, ExitCode

DEFAULT_UDP = "0.0.0.0:4000"


@click.group("rendezvous", cls=CommandGroup)
def rendezvous() -> None:
    """A rendezvous node: tells others how their NAT maps their UDP socket."""


@rendezvous.command("create")
@click.option(
    "--udp",
    "udp",
    default=DEFAULT_UDP,
    show_default=True,
    metavar="HOST:PORT",
    help="Its UDP socket (reflexive-address answers, QUIC hops).",
)
@click.option(
    "--healthcheck",
    metavar="HOST:PORT",
    help="Answer HTTP GET / with 'Alive' there (port 0: the system chooses).",
)
@click.pass_context
def rendezvous_create(ctx: click.Context, udp: str, healthcheck: str | None) -> None:
    """Run a rendezvous node in this process until interrupted (Ctrl-C). If the default port
    is taken, it takes one the system chooses (and says which)."""
    from meshkey.node.state import parse_listen
    from meshkey.routing.address import RouteError

    try:
        health = parse_listen(healthcheck) if healthcheck else None
        parse_listen(udp)
    except RouteError as exc:
        raise CliError(str(exc), ExitCode.USAGE) from exc
    fallback = ctx.get_parameter_source("udp") is click.core.ParameterSource.DEFAULT
    try:
        asyncio.run(_run(udp, health, fallback=fallback))
    except OSError as exc:
        raise CliError(f"cannot listen: {exc.strerror or exc}", ExitCode.CONFLICT) from exc


def _free(address: str) -> bool:
    import socket

    from meshkey.node.state import parse_listen

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind(parse_listen(address))
    except OSError:
        return False
    finally:
        probe.close()
    return True


async def _run(udp: str, health: tuple[str, int] | None, *, fallback: bool) -> None:
    from meshkey.node.control import HttpStatusServer
    from meshkey.node.core import Node

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if fallback and not _free(udp):
        click.echo(f"warning: UDP {udp} is taken: listening where the system chooses", err=True)
        udp = "0.0.0.0:0"
    node = Node(udp=udp, tcp=None, name="rendezvous", auto_relay=False)
    await node.start()
    checker = None
    try:
        bound = node.udp.address
        assert bound is not None
        click.echo(f"Rendezvous {node.node_id} on UDP {bound.host}:{bound.port}", err=True)
        click.echo(f"  nodes use it with --observer {bound.host}:{bound.port}", err=True)
        if health is not None:

            async def alive() -> tuple[bytes, str]:
                return b"Alive\n", "text/plain"

            checker = HttpStatusServer({"/": (alive, frozenset({"GET", "HEAD"}))})
            host, port = await checker.start(*health)
            click.echo(f"  health check: http://{host}:{port}/", err=True)
        await stop.wait()
    finally:
        if checker is not None:
            await checker.close()
        await node.stop()
