"""What every command group shares: the error handler, the state directory, node lookup."""

from __future__ import annotations

import sys
from typing import Any

import click

from meshkey.cli.errors import CliError, ExitCode, exit_code_for
from meshkey.node.control_client import ControlClient, ControlError
from meshkey.node.state import Home, NodeDir, NodeStateError
from meshkey.routing.address import RouteError, expand_placeholders, parse_route


class MeshkeyGroup(click.Group):
    """Turns every expected failure into one line on stderr and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CliError as exc:
            fail(exc.message, exc.exit_code)
        except ControlError as exc:
            fail(exc.message, exit_code_for(exc.code))
        except NodeStateError as exc:
            fail(str(exc), exit_code_for(exc.code))
        except RouteError as exc:
            fail(str(exc), ExitCode.USAGE)
        except ValueError as exc:  # invalid names and other bad values
            fail(str(exc), ExitCode.USAGE)
        except KeyboardInterrupt:
            fail("interrupted", ExitCode.FAILURE)
        except Exception as exc:
            identity_error = _identity_error_type()
            if isinstance(exc, identity_error):
                missing = str(exc).startswith("no identity")
                fail(str(exc), ExitCode.NOT_FOUND if missing else ExitCode.FAILURE)
            raise


def _identity_error_type() -> type[Exception]:
    from meshkey.identity.errors import IdentityError

    return IdentityError


def fail(message: str, code: ExitCode) -> None:
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


def pick_node(ctx: click.Context, given: str | None, option: str, hint: str | None = None) -> str:
    """The node a command acts on: ``given`` (``NAME`` or ``/node/NAME``); else a node named
    ``hint``; else the only node."""
    home = get_home(ctx)
    if given:
        return existing_node(ctx, given).name
    if hint and home.node(hint).exists():
        return hint
    names = home.node_names()
    if len(names) == 1:
        return names[0]
    known = ", ".join(names) if names else "none yet"
    raise CliError(f"which node? give {option} NODE (nodes: {known})", ExitCode.USAGE)


def call(
    ctx: click.Context, node: str, op: str, args: dict[str, Any] | None = None, timeout: float = 5.0
) -> Any:
    """Calls ``op`` on daemon ``node``'s control API."""
    node_dir = existing_node(ctx, node)
    try:
        return ControlClient(node_dir.socket_path, timeout=timeout).call(op, args)
    except ControlError as exc:
        if exc.message == "the node is not running":
            raise CliError(
                f"node {node_dir.name!r} is not running (start it with `meshkey node start "
                f"{node_dir.name}`)",
                ExitCode.CONFLICT,
            ) from exc
        raise


def across_nodes(
    ctx: click.Context, node: str | None, option: str, op: str, key: str | None = None
) -> list[dict[str, Any]]:
    """``op``'s list from ``node``, or from every running node, each item tagged with it."""
    home = get_home(ctx)
    names = (
        [pick_node(ctx, node, option)]
        if node
        else [n for n in home.node_names() if home.node(n).is_running()]
    )
    items = []
    for name in names:
        result = call(ctx, name, op)
        for item in result[key] if key else result:
            items.append({**item, "node": name})
    return items


def parse_duration(text: str) -> float:
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


def read_route(text: str) -> str:
    """Expands ``-`` segments from stdin, then checks the route parses."""
    expanded = expand_placeholders(text, sys.stdin.readline)
    parse_route(expanded)
    return expanded
