"""``meshkey identity``: Ed25519 identities."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from meshkey.cli.common import CommandGroup, get_home
from meshkey.cli.errors import CliError, ExitCode
from meshkey.cli.output import emit, emit_table, fields, output_option

if TYPE_CHECKING:
    from meshkey.identity.store import IdentityInfo

DEFAULT_IDENTITY = "default"


@click.group(cls=CommandGroup)
def identity() -> None:
    """Ed25519 identities; a node's NodeId is its identity's public key.

    \b
    The first identity created is the default one (`identity default NAME` changes it).
    Move an identity to another machine with `identity export` and `identity import`."""


def _described(ctx: click.Context, info: IdentityInfo) -> dict[str, object]:
    """An identity, the same way in every command's JSON (one schema)."""
    return {**info.as_dict(), "default": info.name == get_home(ctx).identities.default()}


def _passphrase(confirm: bool) -> bytes:
    given = os.environ.get("MESHKEY_PASSPHRASE")
    if given:
        return given.encode()
    if not sys.stdin.isatty():
        raise CliError(
            "a passphrase is needed and there is no terminal to ask it on: set $MESHKEY_PASSPHRASE",
            ExitCode.USAGE,
        )
    text = click.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm)
    return str(text).encode()


@identity.command("create")
@click.argument("name", default=DEFAULT_IDENTITY)
@click.option(
    "--encrypt",
    is_flag=True,
    help="Encrypt the key with a passphrase (from $MESHKEY_PASSPHRASE, else prompted).",
)
@output_option
@click.pass_context
def identity_create(ctx: click.Context, name: str, encrypt: bool, output: str) -> None:
    """Create identity NAME [default: default]. Of several runs racing to create the same
    name, exactly one succeeds; the others fail with exit code 4."""
    passphrase = _passphrase(confirm=True) if encrypt else None
    home = get_home(ctx)
    home.ensure()
    info = home.identities.create(name, passphrase)
    emit(output, _described(ctx, info), lambda: f"Identity {name} created\n{info.node_id}")


@identity.command("list")
@output_option
@click.pass_context
def identity_list(ctx: click.Context, output: str) -> None:
    """List identities (the default one is marked)."""
    items = [_described(ctx, i) for i in get_home(ctx).identities.list()]
    emit_table(
        output,
        items,
        [
            ("NAME", lambda i: f"{i['name']} (default)" if i["default"] else i["name"]),
            ("NODE ID", lambda i: f"unusable: {i['error']}" if i["error"] else i["node_id"]),
            ("CREATED", "created_at"),
            ("ENCRYPTED", lambda i: "yes" if i["encrypted"] else "no"),
        ],
        "No identities (create one with `meshkey identity create NAME`).",
    )


def _named_or_default(ctx: click.Context, name: str | None) -> str:
    if name:
        return name
    default = get_home(ctx).identities.default()
    if default is None:
        raise CliError(
            "there is no default identity yet (create one: `meshkey identity create`)",
            ExitCode.NOT_FOUND,
        )
    return default


@identity.command("show")
@click.argument("name", required=False)
@output_option
@click.pass_context
def identity_show(ctx: click.Context, name: str | None, output: str) -> None:
    """Show identity NAME [default: the default identity]: its NodeId and creation time."""
    info = get_home(ctx).identities.info(_named_or_default(ctx, name))
    data = _described(ctx, info)
    emit(
        output,
        data,
        lambda: fields(
            [
                ("name", info.name),
                ("node id", info.node_id),
                ("created", info.created_at),
                ("encrypted", "yes" if info.encrypted else "no"),
                ("default", "yes" if data["default"] else "no"),
            ]
        ),
    )


@identity.command("default")
@click.argument("name", required=False)
@output_option
@click.pass_context
def identity_default(ctx: click.Context, name: str | None, output: str) -> None:
    """Print the default identity, or make NAME the default."""
    store = get_home(ctx).identities
    if name:
        store.set_default(name)
    current = _named_or_default(ctx, None)
    emit(output, {"default": current}, current)


@identity.command("delete")
@click.argument("name")
@click.pass_context
def identity_delete(ctx: click.Context, name: str) -> None:
    """Delete identity NAME (refused while a node uses it)."""
    home = get_home(ctx)
    users = [n for n in home.node_names() if home.node(n).config().get("identity") == name]
    if users:
        raise CliError(
            f"identity {name!r} is used by node(s) {', '.join(users)}", ExitCode.CONFLICT
        )
    home.identities.delete(name)
    click.echo(f"Identity {name} deleted")


@identity.command("export")
@click.argument("name", required=False)
@click.option(
    "--file",
    "path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write the export here (mode 0600) [default: standard output].",
)
@click.pass_context
def identity_export(ctx: click.Context, name: str | None, path: Path | None) -> None:
    """Export identity NAME [default: the default identity] for `identity import` elsewhere.

    The export holds the private key exactly as stored: an encrypted key stays encrypted (and
    needs its passphrase where it is imported); a plain one must be kept secret."""
    bundle = get_home(ctx).identities.export(_named_or_default(ctx, name))
    text = json.dumps(bundle, indent=2) + "\n"
    if path is None:
        click.echo(text, nl=False)
        return
    from meshkey.identity.store import write_private_file

    write_private_file(path, text.encode())
    click.echo(f"Identity {bundle['name']} exported to {path}", err=True)


@identity.command("import")
@click.argument("name_given", metavar="[NAME]", required=False)
@click.option(
    "--file",
    "path",
    default="-",
    show_default=True,
    help="The export to read; '-' reads standard input.",
)
@click.option("--name", metavar="NAME", help="Store it under this name [default: its own].")
@output_option
@click.pass_context
def identity_import(
    ctx: click.Context, name_given: str | None, path: str, name: str | None, output: str
) -> None:
    """Import an identity exported with `meshkey identity export` [as NAME; default: the
    name it was exported under]."""
    if name_given and name and name_given != name:
        raise CliError(f"two names given: {name_given} and --name {name}", ExitCode.USAGE)
    name = name_given or name
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    try:
        bundle = json.loads(text)
    except ValueError as exc:
        raise CliError(f"not a meshkey identity export: {exc}", ExitCode.USAGE) from exc
    encrypted = isinstance(bundle, dict) and bool(bundle.get("encrypted"))
    passphrase = os.environ.get("MESHKEY_PASSPHRASE") if encrypted else None
    home = get_home(ctx)
    home.ensure()
    info = home.identities.import_bundle(bundle, name, passphrase.encode() if passphrase else None)
    emit(output, _described(ctx, info), lambda: f"Identity {info.name} imported\n{info.node_id}")
