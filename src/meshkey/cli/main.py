"""``meshkey``: the command line. Each command group lives in its own module."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from meshkey import __version__
from meshkey.cli.channel_commands import secure_channel, secure_channel_listener
from meshkey.cli.common import MeshkeyGroup
from meshkey.cli.errors import EXIT_CODES_HELP
from meshkey.cli.identity_commands import identity
from meshkey.cli.message_commands import message
from meshkey.cli.node_commands import node
from meshkey.cli.policy_commands import policy
from meshkey.cli.relay_commands import relay
from meshkey.cli.tcp_commands import tcp_connection, tcp_listener
from meshkey.node.state import Home


@click.group(
    cls=MeshkeyGroup,
    invoke_without_command=True,
    epilog=EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="MESHKEY_HOME",
    help="State directory (default: $MESHKEY_HOME or ~/.meshkey).",
)
@click.version_option(__version__, message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, home: Path | None) -> None:
    """meshkey connects programs across NATs and firewalls through end-to-end encrypted,
    mutually authenticated routes between cryptographic identities.

    \b
    Start here:
      meshkey node create blue
      meshkey node create green
      meshkey message send hello --to /node/green/node/blue/service/uppercase
    """
    ctx.obj = Home(home)
    if ctx.invoked_subcommand is None:  # `meshkey` alone: the help, and success
        click.echo(ctx.get_help())


@cli.command()
@click.option("--keep", is_flag=True, help="Leave the demo nodes running afterwards.")
@click.pass_context
def demo(ctx: click.Context, keep: bool) -> None:
    """Run a demo network of real node daemons and send messages across it."""
    from meshkey.cli.demo import run_demo

    run_demo(keep=keep)


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="meshkey")


for group in (
    identity,
    node,
    message,
    relay,
    secure_channel,
    secure_channel_listener,
    policy,
    tcp_listener,
    tcp_connection,
):
    cli.add_command(group)
