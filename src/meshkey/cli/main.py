"""``meshkey``: identities, nodes and messages from the command line."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from meshkey.cli.errors import EXIT_CODES_HELP, CliError, ExitCode, exit_code_for
from meshkey.cli.output import emit, fields, output_option, table
from meshkey.node.control_client import ControlClient, ControlError
from meshkey.node.state import Home, NodeStateError, resolve_route
from meshkey.routing.address import RouteError, expand_placeholders, parse_route
from meshkey.routing.errors import RemoteError


class _Group(click.Group):
    """Turns every expected failure into one line on stderr and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CliError as exc:
            _fail(exc.message, exc.exit_code)
        except ControlError as exc:
            _fail(exc.message, exit_code_for(exc.code))
        except NodeStateError as exc:
            _fail(str(exc), exit_code_for(exc.code))
        except RouteError as exc:
            _fail(str(exc), ExitCode.USAGE)
        except ValueError as exc:  # invalid names and other bad values
            _fail(str(exc), ExitCode.USAGE)
        except KeyboardInterrupt:
            _fail("interrupted", ExitCode.FAILURE)
        except Exception as exc:
            identity_error = _identity_error_type()
            if isinstance(exc, identity_error):
                missing = str(exc).startswith("no identity")
                _fail(str(exc), ExitCode.NOT_FOUND if missing else ExitCode.FAILURE)
            raise


def _identity_error_type() -> type[Exception]:
    from meshkey.identity.errors import IdentityError

    return IdentityError


def _fail(message: str, code: ExitCode) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(int(code))


def _home(ctx: click.Context) -> Home:
    home: Home = ctx.obj
    return home


@click.group(
    cls=_Group,
    epilog=EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="MESHKEY_HOME",
    help="State directory (default: $MESHKEY_HOME or ~/.meshkey).",
)
@click.version_option(package_name="meshkey")
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


# -- identity -------------------------------------------------------------------------


@cli.group()
def identity() -> None:
    """Ed25519 identities; a node's NodeId is its identity's public key."""


@identity.command("create")
@click.argument("name")
@click.option(
    "--encrypt",
    is_flag=True,
    help="Encrypt the key with a passphrase (from $MESHKEY_PASSPHRASE, else prompted).",
)
@output_option
@click.pass_context
def identity_create(ctx: click.Context, name: str, encrypt: bool, output: str) -> None:
    """Create an identity NAME."""
    passphrase = None
    if encrypt:
        text = os.environ.get("MESHKEY_PASSPHRASE") or click.prompt(
            "Passphrase", hide_input=True, confirmation_prompt=True
        )
        passphrase = text.encode()
    home = _home(ctx)
    home.ensure()
    info = _identity_call(lambda: home.identities.create(name, passphrase))
    emit(output, info.as_dict(), lambda: f"Identity {name} created\n{info.node_id}")


@identity.command("list")
@output_option
@click.pass_context
def identity_list(ctx: click.Context, output: str) -> None:
    """List identities."""
    infos = _home(ctx).identities.list()
    emit(
        output,
        [i.as_dict() for i in infos],
        lambda: (
            table(
                ["NAME", "NODE ID", "CREATED", "ENCRYPTED"],
                [[i.name, i.node_id, i.created_at, "yes" if i.encrypted else "no"] for i in infos],
            )
            if infos
            else "No identities (create one with `meshkey identity create NAME`)."
        ),
    )


@identity.command("show")
@click.argument("name")
@output_option
@click.pass_context
def identity_show(ctx: click.Context, name: str, output: str) -> None:
    """Show identity NAME: its NodeId and creation time."""
    info = _identity_call(lambda: _home(ctx).identities.info(name))
    emit(
        output,
        info.as_dict(),
        lambda: fields(
            [
                ("name", info.name),
                ("node id", info.node_id),
                ("created", info.created_at),
                ("encrypted", "yes" if info.encrypted else "no"),
            ]
        ),
    )


@identity.command("delete")
@click.argument("name")
@click.pass_context
def identity_delete(ctx: click.Context, name: str) -> None:
    """Delete identity NAME (refused while a node uses it)."""
    home = _home(ctx)
    users = [n for n in home.node_names() if home.node(n).config().get("identity") == name]
    if users:
        raise CliError(
            f"identity {name!r} is used by node(s) {', '.join(users)}", ExitCode.CONFLICT
        )
    _identity_call(lambda: home.identities.delete(name))
    click.echo(f"Identity {name} deleted")


def _identity_call(function: Any) -> Any:
    from meshkey.identity.errors import IdentityError

    try:
        return function()
    except IdentityError as exc:
        text = str(exc)
        if "already exists" in text:
            raise CliError(text, ExitCode.CONFLICT) from exc
        if text.startswith("no identity"):
            raise CliError(text, ExitCode.NOT_FOUND) from exc
        raise CliError(text) from exc


# -- node -----------------------------------------------------------------------------


@cli.group()
def node() -> None:
    """Node daemons: create, list, show, start, stop, delete, logs."""


def _node_name(value: str) -> str:
    return value.removeprefix("/node/")


@node.command("create")
@click.argument("name")
@click.option("--tcp", metavar="HOST:PORT", help="TCP listen address [default: 127.0.0.1:0].")
@click.option(
    "--identity",
    "identity_name",
    metavar="NAME",
    help="Use this identity [default: one named after the node, created if missing].",
)
@click.option("--foreground", "-f", is_flag=True, help="Run in this process until interrupted.")
@output_option
@click.pass_context
def node_create(
    ctx: click.Context,
    name: str,
    tcp: str | None,
    identity_name: str | None,
    foreground: bool,
    output: str,
) -> None:
    """Create node NAME and start it (in the background unless --foreground)."""
    from meshkey.node import launcher

    home = _home(ctx)
    launcher.create_node(home, name, tcp=tcp, identity=identity_name)
    if foreground:
        _run_foreground(home, name)
        return
    try:
        status = launcher.start_node(home, name)
    except NodeStateError:
        home.node(name).delete()  # a node that never ran is not left half-made
        raise
    _print_started(output, "created", status)


def _run_foreground(home: Home, name: str) -> None:
    from meshkey.node.daemon import run

    code = run(home, name)
    if code:
        sys.exit(code)


def _print_started(output: str, verb: str, status: dict[str, Any]) -> None:
    emit(
        output,
        status,
        lambda: (
            f"Node {status['name']} {verb}\n"
            + fields(
                [
                    ("node id", status["node_id"]),
                    ("addresses", status["addresses"]),
                    ("services", ", ".join(status["services"])),
                ]
            )
        ),
    )


@node.command("start")
@click.argument("name")
@click.option("--foreground", "-f", is_flag=True, help="Run in this process until interrupted.")
@output_option
@click.pass_context
def node_start(ctx: click.Context, name: str, foreground: bool, output: str) -> None:
    """Start node NAME again: same identity and, where free, the same port."""
    from meshkey.node import launcher

    name = _node_name(name)
    if foreground:
        _run_foreground(_home(ctx), name)
        return
    _print_started(output, "started", launcher.start_node(_home(ctx), name))


@node.command("stop")
@click.argument("name")
@click.pass_context
def node_stop(ctx: click.Context, name: str) -> None:
    """Stop node NAME."""
    from meshkey.node import launcher

    name = _node_name(name)
    launcher.stop_node(_home(ctx), name)
    click.echo(f"Node {name} stopped")


@node.command("delete")
@click.argument("name", required=False)
@click.option("--all", "all_nodes", is_flag=True, help="Delete every node.")
@click.option("--force", is_flag=True, help="Stop running nodes first instead of refusing.")
@click.pass_context
def node_delete(ctx: click.Context, name: str | None, all_nodes: bool, force: bool) -> None:
    """Delete node NAME (or --all). A running node is refused unless --force.

    The node's identity is kept (see `meshkey identity`)."""
    from meshkey.node import launcher

    home = _home(ctx)
    if bool(name) == all_nodes:
        raise CliError("give a node NAME or --all (not both)", ExitCode.USAGE)
    names = home.node_names() if all_nodes else [_node_name(name or "")]
    failures = []
    for each in names:
        try:
            launcher.delete_node(home, each, force=force)
            click.echo(f"Node {each} deleted")
        except NodeStateError as exc:
            if not all_nodes:
                raise
            failures.append(exc)
            click.echo(f"error: {exc}", err=True)
    if failures:
        sys.exit(int(exit_code_for(failures[0].code)))


@node.command("list")
@output_option
@click.pass_context
def node_list(ctx: click.Context, output: str) -> None:
    """List nodes, their NodeIds, status and addresses."""
    from meshkey.node.launcher import node_summary

    home = _home(ctx)
    nodes = [node_summary(home, n) for n in home.node_names()]

    def text() -> str:
        if not nodes:
            return "No nodes (create one with `meshkey node create NAME`)."
        return table(
            ["NAME", "STATUS", "NODE ID", "ADDRESS"],
            [
                [n["name"], n["status"], n["node_id"], _without_id((n["addresses"] or [""])[0])]
                for n in nodes
            ],
        )

    emit(output, nodes, text)


def _without_id(address: str) -> str:
    """The address without its /id/NODEID suffix (the table shows the NodeId already)."""
    return address.split("/id/", maxsplit=1)[0] or "-"


@node.command("show")
@click.argument("name")
@output_option
@click.pass_context
def node_show(ctx: click.Context, name: str, output: str) -> None:
    """Show node NAME: NodeId, status, addresses, services and connections."""
    from meshkey.node.launcher import node_summary

    home = _home(ctx)
    name = _node_name(name)
    summary = node_summary(home, name)
    if summary["status"] == "running":
        try:
            live = ControlClient(home.node(name).socket_path).call("status")
            summary.update(
                addresses=live["addresses"],
                services=live["services"],
                connections=live["connections"],
                started_at=live["started_at"],
            )
        except ControlError as exc:
            summary["status"] = f"not answering ({exc.message})"

    def text() -> str:
        connections = [
            f"{c['direction']:<8} {c['transport']} {c['remote']:<21} {c['peer'] or '-'}"
            for c in summary.get("connections", [])
        ]
        return fields(
            [
                ("name", summary["name"]),
                ("node id", summary["node_id"]),
                ("identity", summary["identity"]),
                ("status", summary["status"]),
                ("pid", summary["pid"]),
                ("addresses", summary["addresses"]),
                ("services", ", ".join(summary.get("services", [])) or None),
                ("connections", connections),
                ("created", summary["created_at"]),
            ]
        )

    emit(output, summary, text)


@node.command("logs")
@click.argument("name")
@click.option("--lines", "-n", default=50, show_default=True, help="How many lines to show.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines (Ctrl-C to stop).")
@click.pass_context
def node_logs(ctx: click.Context, name: str, lines: int, follow: bool) -> None:
    """Show the log of node NAME."""
    node_dir = _home(ctx).node(_node_name(name))
    if not node_dir.exists():
        raise CliError(f"no node named {name!r} (see `meshkey node list`)", ExitCode.NOT_FOUND)
    if not node_dir.log_path.exists():
        return
    with open(node_dir.log_path, errors="replace") as handle:
        for line in handle.readlines()[-lines:] if lines > 0 else []:
            click.echo(line, nl=False)
        while follow:
            line = handle.readline()
            if line:
                click.echo(line, nl=False)
            else:
                time.sleep(0.2)


# -- message --------------------------------------------------------------------------


def _parse_duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0}
    for suffix in ("ms", "s", "m"):
        if text.endswith(suffix):
            number, scale = text[: -len(suffix)], units[suffix]
            break
    else:
        number, scale = text, 1.0
    try:
        value = float(number) * scale
    except ValueError:
        value = -1
    if not 0 < value <= 3600:
        raise CliError(f"invalid timeout {text!r}: use e.g. 10, 10s, 500ms", ExitCode.USAGE)
    return value


def _read_route(text: str) -> str:
    """Expands ``-`` segments from stdin, then checks the route parses."""
    expanded = expand_placeholders(text, sys.stdin.readline)
    parse_route(expanded)
    return expanded


@cli.group()
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
    seconds = _parse_duration(timeout)
    route = _read_route(to)
    try:
        payload = bytes.fromhex(text) if hex_mode else text.encode()
    except ValueError as exc:
        raise CliError(f"--hex: MESSAGE is not hex ({exc})", ExitCode.USAGE) from exc
    home = _home(ctx)
    started = time.perf_counter()
    if from_node:
        name = _node_name(from_node)
        node_dir = home.node(name)
        if not node_dir.exists():
            raise CliError(f"no node named {name!r} (see `meshkey node list`)", ExitCode.NOT_FOUND)
        result = ControlClient(node_dir.socket_path).call(
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
    """Sends as a short-lived node in this process: fresh identity, no listener, no loop."""
    from meshkey.node.oneshot import send_once

    try:
        return send_once(resolve_route(route, home), payload, timeout=timeout)
    except RemoteError as exc:
        raise CliError(exc.text, exit_code_for(exc.code.name.lower())) from exc


@cli.command()
@click.option("--keep", is_flag=True, help="Leave the demo nodes running afterwards.")
@click.pass_context
def demo(ctx: click.Context, keep: bool) -> None:
    """Run a demo network of real node daemons and send messages across it."""
    from meshkey.cli.demo import run_demo

    run_demo(keep=keep)


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="meshkey")
