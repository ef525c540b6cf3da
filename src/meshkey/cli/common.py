"""What every command group shares: the error handler, the state directory, node lookup."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from meshkey.cli.errors import CliError, ExitCode, exit_code_for
from meshkey.errors import MeshkeyError
from meshkey.node.control_client import ControlClient, ControlError

if TYPE_CHECKING:
    from meshkey.node.state import Home, NodeDir

F = TypeVar("F", bound=Callable[..., Any])

#: The node `node create` makes without a NAME, and commands make when there is none.
DEFAULT_NODE = "default"


class MeshkeyGroup(click.Group):
    """Turns every expected failure into one line on stderr and a documented exit code (one
    mapping, from the error's kind, whichever command met it)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Click's own usage errors become one line too (and the help, exit 0); with
        ``--output json`` anywhere on the line, a JSON line, even when the arguments around
        it could not be parsed."""
        kwargs["standalone_mode"] = False
        argv = kwargs.get("args")
        if argv is None:
            argv = args[0] if args else sys.argv[1:]
        set_json_errors(wants_json(argv))
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
            fail(f"{exc.format_message()}{where}", ExitCode.USAGE, kind="invalid")
        except click.ClickException as exc:
            fail(exc.format_message(), ExitCode.FAILURE, kind="failure")
        except (click.Abort, KeyboardInterrupt):
            fail("interrupted", ExitCode.INTERRUPTED, kind="interrupted")

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CliError as exc:
            fail(exc.message, exc.exit_code, kind=exc.kind)
        except MeshkeyError as exc:
            fail(str(exc), exit_code_for(exc.kind), kind=exc.kind)
        except ValueError as exc:  # invalid names and other bad values
            fail(str(exc), ExitCode.USAGE, kind="invalid")
        except OSError as exc:  # e.g. a state directory that cannot be created or read
            where = f" ({exc.filename})" if exc.filename else ""
            fail(f"{exc.strerror or exc}{where}", ExitCode.USAGE, kind="invalid")
        except KeyboardInterrupt:  # Ctrl-C: the shell's convention, 128 + SIGINT
            fail("interrupted", ExitCode.INTERRUPTED, kind="interrupted")


_json_errors = False


def set_json_errors(value: bool) -> None:
    global _json_errors
    _json_errors = value


def wants_json(argv: Sequence[str]) -> bool:
    """Whether the command line asks for JSON (``-o json``, ``--output json``,
    ``--output=json``, ``-ojson``), wherever it stands."""
    for index, token in enumerate(argv):
        if token == "--":
            break
        if token in ("-o", "--output") and index + 1 < len(argv):
            if argv[index + 1] == "json":
                return True
        elif token in ("-ojson", "--output=json"):
            return True
    return False


class CommandGroup(click.Group):
    """A command group whose list shows each command's first sentence whole (click's own
    cuts it at the width left over, with '...')."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, first_sentence(command)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def first_sentence(command: click.Command) -> str:
    """A command's summary: its short help, else its help's first sentence."""
    if command.short_help:
        return command.short_help
    import inspect
    import re

    paragraph = inspect.cleandoc(command.help or "").split("\n\n")[0].replace("\n", " ")
    return re.split(r"(?<=\.)\s", paragraph, maxsplit=1)[0]


def fail(message: str, code: ExitCode, *, kind: str = "failure") -> NoReturn:
    """One line on stderr (a JSON object with ``--output json``), then exit ``code``."""
    context = click.get_current_context(silent=True)
    meta = context.meta.get("meshkey.output") if context is not None else None
    if meta == "json" or (meta is None and _json_errors):
        click.echo(json.dumps({"error": message, "code": kind, "exit": int(code)}), err=True)
    else:
        click.echo(f"error: {message}", err=True)
    sys.exit(int(code))


def get_home(ctx: click.Context) -> Home:
    home: Home = ctx.obj
    return home


def node_name(value: str) -> str:
    """A node given as ``blue`` or ``/node/blue``."""
    return value.removeprefix("/node/")


def existing_node(ctx: click.Context, name: str) -> NodeDir:
    node = get_home(ctx).node(node_name(name))
    if not node.exists():
        raise CliError(f"no node named {node.name!r} (see `meshkey node list`)", ExitCode.NOT_FOUND)
    return node


def pick_node(
    ctx: click.Context,
    given: str | None,
    option: str,
    hint: str | None = None,
    *,
    create: bool = False,
    seeds: list[str] | None = None,
) -> str:
    """The node a command acts on: ``given`` (``NAME`` or ``/node/NAME``); else a node named
    ``hint``; else the only node; else the default node (the first created, or `node default
    NAME`). With ``create``, where there is no node at all, one named ``default`` is created
    and started (Ockam's implicit default node), joining through ``seeds`` if given (its
    listeners then follow them: on all interfaces for seeds on other machines)."""
    home = get_home(ctx)
    if given:
        return existing_node(ctx, given).name
    if hint and home.node(hint).exists():
        return hint
    names = home.node_names()
    if len(names) == 1:
        return names[0]
    default = home.default_node()
    if default is not None:
        return default
    if not names and create:
        from meshkey.node import launcher

        launcher.create_node(home, DEFAULT_NODE, tcp=None, identity=None, seeds=seeds)
        launcher.start_node(home, DEFAULT_NODE)
        click.echo(f"Node {DEFAULT_NODE} created and started (there was no node)", err=True)
        return DEFAULT_NODE
    known = ", ".join(names) if names else "none yet"
    wanted = "its NAME" if option == "NAME" else f"{option} NODE"
    raise CliError(f"which node? give {wanted} (nodes: {known})", ExitCode.USAGE)


def prefer_default(ctx: click.Context, nodes: list[str]) -> str | None:
    """Of several nodes that have what a command names, the default node, if it is one."""
    default = get_home(ctx).default_node()
    return default if default in nodes else None


def call(
    ctx: click.Context, node: str, op: str, args: dict[str, Any] | None = None, timeout: float = 5.0
) -> Any:
    """Calls ``op`` on daemon ``node``'s control API."""
    node_dir = existing_node(ctx, node)
    try:
        return ControlClient(node_dir.socket_path, timeout=timeout).call(op, args)
    except ControlError as exc:
        if exc.message == "the node is not running":
            if node_dir.is_running():  # the lock says otherwise: say what is wrong
                raise CliError(
                    f"node {node_dir.name!r} is running but its control socket is missing; "
                    f"restart it (`meshkey node stop {node_dir.name}`, then `meshkey node "
                    f"start {node_dir.name}`)",
                    ExitCode.FAILURE,
                ) from exc
            raise CliError(
                f"node {node_dir.name!r} is not running (start it with `meshkey node start "
                f"{node_dir.name}`)",
                ExitCode.CONFLICT,
            ) from exc
        if exc.code == "no_answer":  # the daemon itself, not what it was asked to do
            raise CliError(
                f"node {node_dir.name!r} did not answer within {timeout:g}s (is it stopped, "
                "or overloaded?)",
                ExitCode.TIMEOUT,
            ) from exc
        raise


def call_waiting(
    ctx: click.Context,
    node: str,
    op: str,
    args: dict[str, Any],
    timeout: float,
    what: str,
    peer: str | None = None,
) -> Any:
    """:func:`call`, showing ``what`` on a terminal if it takes over a second (and, for a
    ``peer`` NodeId, how reaching it stands: looking up, punching, via relay)."""
    from meshkey.cli.progress import peer_stage, progress

    def stage() -> str | None:
        if peer is None:
            return None
        return peer_stage(call(ctx, node, "peer.progress", {"node_id": peer}, 1.0))

    with progress(what, stage if peer else None):
        return call(ctx, node, op, args, timeout)


def peer_in(route: str) -> str | None:
    """The NodeId of a route's first ``/peer/NODEID`` hop, if it has one."""
    segments = route.split("/")
    for index in range(1, len(segments) - 1, 2):
        if segments[index] == "peer":
            return segments[index + 1]
    return None


def per_node(
    ctx: click.Context, node: str | None, option: str, op: str, args: dict[str, Any] | None = None
) -> list[tuple[str, Any]]:
    """``op``'s answer from ``node``, or from every running node, with the node's name."""
    home = get_home(ctx)
    if node:
        name = pick_node(ctx, node, option)
        return [(name, call(ctx, name, op, args))]
    names = [n for n in home.node_names() if home.node(n).is_running()]
    # All at once, each with a short timeout: one node that does not answer (stopped with
    # SIGSTOP, overloaded) is named on stderr, and the others are listed all the same.
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(16, len(names)))) as pool:
        futures = {name: pool.submit(call, ctx, name, op, args, 2.0) for name in names}
    answers: list[tuple[str, Any]] = []
    for name, future in futures.items():
        try:
            answers.append((name, future.result()))
        except MeshkeyError as exc:
            click.echo(f"warning: node {name}: {exc}", err=True)
    return answers


def across_nodes(
    ctx: click.Context, node: str | None, option: str, op: str, key: str | None = None
) -> list[dict[str, Any]]:
    """``op``'s list from ``node``, or from every running node, each item tagged with it."""
    return [
        {**item, "node": name}
        for name, result in per_node(ctx, node, option, op)
        for item in (result[key] if key else result)
    ]


def local_names(ctx: click.Context) -> dict[str, str]:
    """NodeId -> the local node's name, for every node here."""
    home = get_home(ctx)
    names = {}
    for name in home.node_names():
        try:
            node_id = home.node(name).config().get("node_id")
        except MeshkeyError:
            continue
        if node_id:
            names[node_id] = name
    return names


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_DURATION = 3600.0


def parse_duration(text: str) -> float:
    """``10``, ``10s``, ``500ms``, ``2m``, ``1h`` -> seconds (more than 0, at most 1 h)."""
    number, scale = text.strip(), 1.0
    for suffix in ("ms", "s", "m", "h"):
        if number.endswith(suffix):
            number, scale = number[: -len(suffix)], _UNITS[suffix]
            break
    try:
        value = float(number) * scale
    except ValueError:
        value = -1
    if not 0 < value <= MAX_DURATION:
        raise CliError(
            f"invalid duration {text!r}: a number with ms, s, m or h (seconds if none), "
            "more than 0 and at most 1h, e.g. 500ms, 10s, 2m",
            ExitCode.USAGE,
        )
    return value


if TYPE_CHECKING:  # click's ParamType is generic for type checkers only in newer releases
    _ParamType = click.ParamType[float, Any]
else:
    _ParamType = click.ParamType


class Duration(_ParamType):
    """A ``--timeout``-style option: shown as DURATION, parsed by :func:`parse_duration`."""

    name = "duration"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float):
            return value
        try:
            return parse_duration(str(value))
        except CliError as exc:
            self.fail(exc.message, param, ctx)


DURATION = Duration()


def at_option(function: F) -> F:
    """``--at NODE``: the local node a command manages [default: the only node]."""
    return click.option(
        "--at",
        "at",
        metavar="NODE",
        help="The local node (name or /node/NAME) [default: the only node].",
    )(function)


def yes_option(function: F) -> F:
    """``--yes``/``-y``: Ockam's confirmation skip; meshkey never asks, so it changes nothing."""
    return click.option(
        "--yes", "-y", "_yes", is_flag=True, expose_value=False, help="Do not ask (nothing does)."
    )(function)


def timeout_option(default: str, what: str) -> Callable[[F], F]:
    return click.option(
        "--timeout",
        type=DURATION,
        default=default,
        show_default=True,
        help=f"{what} (e.g. 500ms, 10s, 2m; at most 1h).",
    )


def resolve_identities(ctx: click.Context, values: tuple[str, ...] | list[str]) -> list[str]:
    """NodeIds from NodeIds, local node names or identity names (``--allow yellow``)."""
    from meshkey.identity.node_id import NodeId

    home = get_home(ctx)
    resolved = []
    for value in values:
        try:
            resolved.append(str(NodeId.parse(value)))
            continue
        except ValueError:
            pass
        name = node_name(value)
        node = home.node(name) if _valid_name(name) else None
        if node is not None and node.exists():
            node_id = node.config().get("node_id")
            if node_id:
                resolved.append(node_id)
                continue
        if _valid_name(name) and home.identities.exists(name):
            resolved.append(home.identities.info(name).node_id)
            continue
        raise CliError(
            f"{value!r} is neither a NodeId nor the name of a local node or identity",
            ExitCode.USAGE,
        )
    return resolved


def _valid_name(name: str) -> bool:
    from meshkey.identity.names import check_name

    try:
        check_name("node", name)
    except ValueError:
        return False
    return True


def read_route(text: str, ctx: click.Context | None = None) -> str:
    """Expands ``-`` segments from stdin and ``/peer/NAME`` (a local node or identity, as
    ``peer find NAME`` takes it) to ``/peer/NODEID``, then checks the route parses."""
    from meshkey.identity.node_id import NodeId
    from meshkey.routing.address import expand_placeholders, parse_route

    expanded = expand_placeholders(text, sys.stdin.readline)
    segments = expanded.split("/")
    context = ctx or click.get_current_context(silent=True)
    for index in range(1, len(segments) - 1, 2):  # a route is /KIND/VALUE pairs
        if segments[index] != "peer" or context is None or not segments[index + 1]:
            continue
        try:
            NodeId.parse(segments[index + 1])
        except ValueError:
            segments[index + 1] = resolve_identities(context, [segments[index + 1]])[0]
    expanded = "/".join(segments)
    parse_route(expanded)
    return expanded
