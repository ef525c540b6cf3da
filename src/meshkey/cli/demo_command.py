"""``meshkey demo``."""

from __future__ import annotations

import click


@click.command()
@click.option("--keep", is_flag=True, help="Leave the demo nodes running afterwards.")
@click.option(
    "--nat",
    is_flag=True,
    help="Instead: two nodes behind two real NATs (network namespaces, as root, from a "
    "checkout) that know only a seed find each other, relay and punch through.",
)
def demo(keep: bool, nat: bool) -> None:
    """Run a demo network of real node daemons and send messages across it."""
    if nat:
        from meshkey.cli.demo_nat import run_nat_demo

        run_nat_demo()
        return
    from meshkey.cli.demo import run_demo

    run_demo(keep=keep)
