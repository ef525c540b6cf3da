"""``meshkey``: the command line. Each command group lives in its own module, imported only
when it is used: ``meshkey --version`` and ``meshkey --help`` load none of them."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

import click

from meshkey import __version__
from meshkey.cli.common import MeshkeyGroup
from meshkey.cli.errors import EXIT_CODES_HELP
from meshkey.cli.output import global_output_option

#: command -> (module, attribute, the one-line help shown by `meshkey --help`)
COMMANDS = {
    "demo": ("meshkey.cli.demo_command", "demo", "Run a demo network of real node daemons."),
    "identity": ("meshkey.cli.identity_commands", "identity", "Ed25519 identities."),
    "node": ("meshkey.cli.node_commands", "node", "Node daemons."),
    "message": ("meshkey.cli.message_commands", "message", "Send messages along routes."),
    "relay": ("meshkey.cli.relay_commands", "relay", "Relays (Ockam's forwarders)."),
    "secure-channel": (
        "meshkey.cli.channel_commands",
        "secure_channel",
        "End-to-end encrypted channels between identities.",
    ),
    "secure-channel-listener": (
        "meshkey.cli.channel_commands",
        "secure_channel_listener",
        "Where secure channels are opened to.",
    ),
    "peer": ("meshkey.cli.peer_commands", "peer", "The node graph: peers, lookups, pings."),
    "status": ("meshkey.cli.status_command", "status", "Every node at a glance."),
    "share": (
        "meshkey.cli.share_commands",
        "share",
        "Share a TCP server: prints a ticket for `connect`.",
    ),
    "connect": (
        "meshkey.cli.share_commands",
        "connect",
        "Connect to what a `share` ticket shares, by NodeId.",
    ),
    "policy": ("meshkey.cli.policy_commands", "policy", "Who may use which service."),
    "service": ("meshkey.cli.service_commands", "service", "A node's services."),
    "rendezvous": (
        "meshkey.cli.rendezvous_command",
        "rendezvous",
        "A rendezvous node: tells others how their NAT maps them.",
    ),
    "tcp-listener": ("meshkey.cli.tcp_commands", "tcp_listener", "More TCP listeners."),
    "tcp-connection": ("meshkey.cli.tcp_commands", "tcp_connection", "Live TCP hops."),
    "tcp-outlet": ("meshkey.cli.portal_commands", "tcp_outlet", "TCP portals: the server side."),
    "tcp-inlet": ("meshkey.cli.portal_commands", "tcp_inlet", "TCP portals: the client side."),
}


class LazyGroup(MeshkeyGroup):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module, attribute, _ = entry
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
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
@global_output_option
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
    from meshkey.node.state import Home

    ctx.obj = Home(home)
    if ctx.invoked_subcommand is None:  # `meshkey` alone: the help, and success
        click.echo(ctx.get_help())


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="meshkey")
