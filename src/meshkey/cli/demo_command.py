"""``meshkey demo``."""

from __future__ import annotations

import click


@click.command()
@click.option("--keep", is_flag=True, help="Leave the demo nodes running afterwards.")
def demo(keep: bool) -> None:
    """Run a demo network of real node daemons and send messages across it."""
    from meshkey.cli.demo import run_demo

    run_demo(keep=keep)
