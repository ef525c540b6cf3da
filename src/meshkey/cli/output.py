"""Printing results: human tables by default, ``--output json`` for scripts."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def _remember_output(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """The format for results and errors (JSON on stderr); a command's own ``-o`` wins over
    the one given before the command (``meshkey -o json node list``)."""
    given_before = ctx.meta.get("meshkey.output")
    source = ctx.get_parameter_source(param.name) if param.name else None
    if given_before and source is click.core.ParameterSource.DEFAULT:
        return str(given_before)
    ctx.meta["meshkey.output"] = value
    return value


OUTPUT_HELP = "Output format; json is stable for scripts (errors too: a JSON object on stderr)."


def output_option(function: F) -> F:
    return click.option(
        "--output",
        "-o",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        is_eager=True,
        callback=_remember_output,
        help=OUTPUT_HELP,
    )(function)


def global_output_option(function: F) -> F:
    """``meshkey -o json COMMAND``: every command's output (and errors) as JSON."""
    return click.option(
        "--output",
        "-o",
        type=click.Choice(["text", "json"]),
        default=None,
        is_eager=True,
        expose_value=False,
        callback=_remember_global_output,
        help=OUTPUT_HELP,
    )(function)


def _remember_global_output(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.meta["meshkey.output"] = value


def emit(output: str, data: Any, text: Callable[[], str] | str) -> None:
    if output == "json":
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo(text() if callable(text) else text)


Column = tuple[str, "str | Callable[[dict[str, Any]], Any]"]


def emit_table(
    output: str, items: list[dict[str, Any]], columns: Sequence[Column], empty: str
) -> None:
    """A list of records: a table (each column a key or a function of the record), or
    ``empty`` when there are none; the records themselves with ``--output json``."""

    def text() -> str:
        if not items:
            return empty
        return table(
            [header for header, _ in columns],
            [
                [key(item) if callable(key) else item.get(key) for _, key in columns]
                for item in items
            ],
        )

    emit(output, items, text)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def fields(pairs: Sequence[tuple[str, Any]]) -> str:
    width = max(len(key) for key, _ in pairs)
    lines = []
    for key, value in pairs:
        shown = value
        if isinstance(value, list):
            shown = ("\n" + " " * (width + 4)).join(str(v) for v in value) if value else "-"
        lines.append(f"{key + ':':<{width + 2}}  {'-' if shown is None else shown}")
    return "\n".join(lines)
