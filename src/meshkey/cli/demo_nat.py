"""``meshkey demo --nat``: two nodes behind two real NATs that know only a seed.

It builds the project's NAT lab (tests/natlab: network namespaces, kernel NATs made with
iptables MASQUERADE, a userspace WAN with 10 ms per port), starts one public seed and two
nodes behind two home routers given nothing but ``--seed``, and shows what meshkey finds on
its own: where each node listens, its NAT class, its automatic relay on the seed, the lookup
of the other by NodeId, the first message through the relay, the punch and the direct path,
with timings. It needs root and the lab's tools, and runs from a checkout of the repository
(the lab lives with the tests); anywhere else it says what is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click

REPOSITORY = Path(__file__).resolve().parents[3]
SEED_PORT = 7000


def _missing() -> str | None:
    """What this machine lacks for the lab, or None."""
    if os.geteuid() != 0:
        return "it needs root (network namespaces, TAP devices, iptables): run it with sudo"
    tools = [t for t in ("ip", "iptables", "conntrack") if not shutil.which(t)]
    if tools:
        return f"it needs {', '.join(tools)} (apt-get install iproute2 iptables conntrack)"
    if not (REPOSITORY / "tests" / "natlab" / "lab.py").exists():
        return "it runs from a checkout of the meshkey repository (the lab lives in tests/natlab)"
    return None


def run_nat_demo() -> None:
    reason = _missing()
    if reason is not None:
        raise click.ClickException(f"meshkey demo --nat cannot run here: {reason}")
    sys.path.insert(0, str(REPOSITORY))
    from tests.natlab.lab import Lab, NatKind

    click.secho("meshkey demo --nat: one public seed, two nodes behind two home NATs", bold=True)
    click.echo(
        "  blue   10.1.0.2 -- home router A (MASQUERADE) 203.0.113.1 --+\n"
        "  yellow 10.2.0.2 -- home router B (MASQUERADE) 203.0.113.2 --+-- WAN (10 ms per port)\n"
        "  seed   203.0.113.10 (public) --------------------------------+\n"
    )
    with Lab(purpose="demo") as lab:
        seed_host = lab.add_public_host("seed", "203.0.113.10")
        blue_host = lab.add_side("blue", NatKind.EIM)
        yellow_host = lab.add_side("yellow", NatKind.EIM)
        listen = f"0.0.0.0:{SEED_PORT}"
        seed = _json(seed_host, "node", "create", "seed", "--udp", listen, "--tcp", listen)
        seed_arg = f"{seed['node_id']}@203.0.113.10:{SEED_PORT}"
        click.echo(f"  seed:   meshkey node create seed --udp {listen} --tcp {listen}")
        click.echo(f"  others: meshkey node create NAME --seed {seed_arg[:16]}…@203.0.113.10:7000")
        started = time.monotonic()
        blue = _json(blue_host, "node", "create", "blue", "--seed", seed_arg)
        yellow = _json(yellow_host, "node", "create", "yellow", "--seed", seed_arg)
        click.echo(f"\n  blue   {blue['node_id']}\n  yellow {yellow['node_id']}")
        click.echo(f"  both listen on all interfaces: {blue['addresses'][1]}")
        for name, host in (("blue", blue_host), ("yellow", yellow_host)):
            relay = _wait_relay(host, name)
            nat = _json(host, "node", "show", name)["nat"]
            click.echo(
                f"  {name:<6} NAT {nat.get('class')} ({nat.get('reason')}); automatic relay "
                f"{relay['status']} on the seed after {time.monotonic() - started:.2f} s"
            )
        route = f"/peer/{blue['node_id']}/service/uppercase"
        click.echo(f"\n  yellow: meshkey message send hello --from yellow --to {route[:22]}…")
        sent = time.monotonic()
        reply = _until_ok(
            yellow_host, "message", "send", "hello", "--from", "yellow", "--to", route
        )
        click.echo(
            f"    reply {reply.strip()!r} after {(time.monotonic() - sent) * 1000:.0f} ms "
            "(looked up in the node graph, sent through blue's relay)"
        )
        channel_route = f"/peer/{blue['node_id']}/service/api"
        sent = time.monotonic()
        channel = _until_ok(
            yellow_host, "secure-channel", "create", "--from", "yellow", "--to", channel_route
        ).strip()
        click.echo(
            f"  secure channel {channel} open after {(time.monotonic() - sent) * 1000:.0f} ms"
        )
        shown = _wait_direct(yellow_host, channel)
        path = shown.get("path") or {}
        click.echo(
            f"    path: {path.get('now')} after {(time.monotonic() - sent) * 1000:.0f} ms "
            f"({path.get('upgrade')})"
        )
        reply = yellow_host.meshkey(
            "message",
            "send",
            "direct now",
            "--from",
            "yellow",
            "--to",
            f"{channel}/service/uppercase",
        ).stdout
        click.echo(f"    through it: {reply.strip()!r}")
        click.echo(
            "\nNobody typed an address or created a relay: each node listened where the seed "
            "could reach it,\nkept a relay on it because nobody outside could dial in, and "
            "the two punched through\nboth NATs underneath the channel."
        )


def _json(host: Any, *args: str) -> Any:
    return json.loads(host.meshkey(*args, "--output", "json").stdout)


def _wait_relay(host: Any, name: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        relays = _json(host, "relay", "list", "--at", name)
        active = [r for r in relays if r.get("status") == "active"]
        if active:
            found: dict[str, Any] = active[0]
            return found
        if time.monotonic() > deadline:
            raise click.ClickException(f"{name} has no active relay after {timeout:g} s: {relays}")
        time.sleep(0.2)


def _until_ok(host: Any, *args: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        result = host.meshkey(*args, check=False)
        if result.returncode == 0:
            out: str = result.stdout
            return out
        if time.monotonic() > deadline:
            raise click.ClickException(f"meshkey {' '.join(args)}: {result.stderr.strip()}")
        time.sleep(0.3)


def _wait_direct(host: Any, channel: str, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        shown: dict[str, Any] = _json(host, "secure-channel", "show", channel, "--at", "yellow")
        if (shown.get("path") or {}).get("direct") or time.monotonic() > deadline:
            return shown
        time.sleep(0.1)
