"""``meshkey identity``: Ed25519 identities."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from meshkey.cli.common import CommandGroup, get_home, yes_option
from meshkey.cli.errors import CliError, ExitCode
from meshkey.cli.output import emit, emit_table, fields, output_option
from meshkey.node.state import NodeStateError

if TYPE_CHECKING:
    from meshkey.identity.store import IdentityInfo
    from meshkey.node.state import Home

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
@click.argument("name", required=False)
@click.option(
    "--encrypt",
    is_flag=True,
    help="Encrypt the key with a passphrase (from $MESHKEY_PASSPHRASE, else prompted).",
)
@click.option(
    "--identity",
    "exported",
    metavar="HEX",
    help="Create it from an identity shown with `identity show --full --encoding hex` (or "
    "exported): the same key, the same NodeId [default name: its own].",
)
@output_option
@click.pass_context
def identity_create(
    ctx: click.Context, name: str | None, encrypt: bool, exported: str | None, output: str
) -> None:
    """Create identity NAME [default: default] and print its NodeId (the line on stdout, so
    `$(meshkey identity create alice)` is it). Of several runs racing to create the same
    name, exactly one succeeds; the others fail with exit code 4."""
    home = get_home(ctx)
    home.ensure()
    if exported is not None:
        if encrypt:
            raise CliError(
                "--identity keeps the key as it was exported: no --encrypt", ExitCode.USAGE
            )
        info = _import(ctx, _bundle_from_hex(exported), name)
    else:
        passphrase = _passphrase(confirm=True) if encrypt else None
        info = home.identities.create(name or DEFAULT_IDENTITY, passphrase)
    if output != "json":
        click.echo(f"Identity {info.name} created", err=True)
    emit(output, _described(ctx, info), info.node_id)


def _bundle_from_hex(text: str) -> object:
    try:
        return json.loads(bytes.fromhex(text.strip()).decode())
    except ValueError as exc:
        raise CliError(
            "--identity: not an identity in hex (see `meshkey identity show --full --encoding "
            "hex`)",
            ExitCode.USAGE,
        ) from exc


def _import(ctx: click.Context, bundle: object, name: str | None) -> IdentityInfo:
    encrypted = isinstance(bundle, dict) and bool(bundle.get("encrypted"))
    passphrase = os.environ.get("MESHKEY_PASSPHRASE") if encrypted else None
    return get_home(ctx).identities.import_bundle(
        bundle, name, passphrase.encode() if passphrase else None
    )


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
@click.option(
    "--full",
    is_flag=True,
    help="Everything about it: NodeId, public key, key type, creation, encryption.",
)
@click.option(
    "--encoding",
    type=click.Choice(["hex"]),
    help="With --full: the whole identity in one line of hex, its private key included "
    "(what `identity create --identity` takes; keep it secret).",
)
@output_option
@click.pass_context
def identity_show(
    ctx: click.Context, name: str | None, full: bool, encoding: str | None, output: str
) -> None:
    """Show identity NAME [default: the default identity]: its NodeId (--full: everything)."""
    store = get_home(ctx).identities
    info = store.info(_named_or_default(ctx, name))
    data = _described(ctx, info)
    if encoding is not None:
        if not full:
            raise CliError("--encoding hex goes with --full", ExitCode.USAGE)
        bundle = json.dumps(store.export(info.name), sort_keys=True, separators=(",", ":"))
        if sys.stdout.isatty():
            click.echo("warning: this holds the identity's private key: keep it secret", err=True)
        emit(output, {**data, "hex": bundle.encode().hex()}, bundle.encode().hex())
        return
    if not full:
        emit(output, data, info.node_id)
        return
    from meshkey.identity.node_id import NodeId

    public = NodeId.parse(info.node_id).raw.hex()
    emit(
        output,
        {**data, "public_key": public, "key_type": "Ed25519"},
        lambda: fields(
            [
                ("name", info.name),
                ("node id", info.node_id),
                ("public key", public),
                ("key type", "Ed25519"),
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
        if store.default() == name:
            raise CliError(f"The identity named {name!r} is already the default", ExitCode.CONFLICT)
        store.set_default(name)
        emit(output, {"default": name}, name)
        return
    current = _named_or_default(ctx, None)
    emit(output, {"default": current}, f"The name of the default identity is {current!r}")


@identity.command("delete")
@click.argument("name", required=False)
@click.option("--all", "every", is_flag=True, help="Delete every identity no node uses.")
@yes_option
@click.pass_context
def identity_delete(ctx: click.Context, name: str | None, every: bool) -> None:
    """Delete identity NAME, or --all (refused while a node uses it)."""
    home = get_home(ctx)
    if bool(name) == every:
        raise CliError("give an identity NAME or --all (not both)", ExitCode.USAGE)
    names = [i.name for i in home.identities.list()] if every else [name or ""]
    users = {
        identity: [n for n in home.node_names() if _identity_of(home, n) == identity]
        for identity in names
    }
    if not every and users[names[0]]:
        raise CliError(
            f"identity {name!r} is used by node(s) {', '.join(users[names[0]])}",
            ExitCode.CONFLICT,
        )
    kept = []
    for each in names:
        if users[each]:
            kept.append(each)
            click.echo(f"Identity {each} kept: node(s) {', '.join(users[each])} use it", err=True)
            continue
        home.identities.delete(each)
        click.echo(f"Identity {each} deleted")
    if kept:
        sys.exit(int(ExitCode.CONFLICT))


def _identity_of(home: Home, node: str) -> str | None:
    try:
        return home.node(node).config().get("identity")
    except NodeStateError:
        return None


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
    get_home(ctx).ensure()
    info = _import(ctx, bundle, name)
    emit(output, _described(ctx, info), lambda: f"Identity {info.name} imported\n{info.node_id}")
