"""``meshkey identity``: Ed25519 identities."""

from __future__ import annotations

import os
from typing import Any

import click

from meshkey.cli.common import get_home
from meshkey.cli.errors import CliError, ExitCode
from meshkey.cli.output import emit, emit_table, fields, output_option


@click.group()
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
    home = get_home(ctx)
    home.ensure()
    info = _identity_call(lambda: home.identities.create(name, passphrase))
    emit(output, info.as_dict(), lambda: f"Identity {name} created\n{info.node_id}")


@identity.command("list")
@output_option
@click.pass_context
def identity_list(ctx: click.Context, output: str) -> None:
    """List identities."""
    infos = get_home(ctx).identities.list()
    emit_table(
        output,
        [i.as_dict() for i in infos],
        [
            ("NAME", "name"),
            ("NODE ID", lambda i: f"unusable: {i['error']}" if i["error"] else i["node_id"]),
            ("CREATED", "created_at"),
            ("ENCRYPTED", lambda i: "yes" if i["encrypted"] else "no"),
        ],
        "No identities (create one with `meshkey identity create NAME`).",
    )


@identity.command("show")
@click.argument("name")
@output_option
@click.pass_context
def identity_show(ctx: click.Context, name: str, output: str) -> None:
    """Show identity NAME: its NodeId and creation time."""
    info = _identity_call(lambda: get_home(ctx).identities.info(name))
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
    home = get_home(ctx)
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
