"""The NAT lab by hand (as root, from the repository root)::

    python -m tests.natlab up [--detach] [--relay]  # relay, observer, public, eim, edm, udp-blocked
    python -m tests.natlab up --one-public-node --relay  # seed (203.0.113.10:7000), a-*, b-* sides
    python -m tests.natlab status                   # runs, their hosts, the WAN's counters
    python -m tests.natlab exec eim bash            # a shell on the host behind the EIM router
    python -m tests.natlab exec eim meshkey node list   # MESHKEY_HOME is the host's own
    python -m tests.natlab wan --loss 5 eim-nat     # change the WAN at run time; print it
    python -m tests.natlab down                     # tear down the labs `up` made
    python -m tests.natlab sweep                    # remove what killed runs left behind

``up`` holds the lab in the foreground until Ctrl-C (or SIGTERM); with ``--detach`` it runs in
the background until ``down``. Inside a host, ``meshkey`` is this interpreter's (the
worktree's venv), and routes name the lab's addresses, e.g. ``/ip4/203.0.113.10/udp/4000/...``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import state as run_state
from .lab import Lab, Wan, one_public_node_hosts, standard_lab_hosts


def _live(run_id: str | None) -> run_state.RunState:
    states = [s for s in run_state.load_all() if s.owner_alive() and s.ready]
    if run_id is not None:
        states = [s for s in states if s.run_id == run_id]
    if len(states) != 1:
        found = ", ".join(s.run_id for s in states) or "none"
        raise SystemExit(f"error: name one running lab with --run (running: {found})")
    return states[0]


def up(args: argparse.Namespace) -> int:
    if args.detach:
        log = Path(f"/tmp/meshkey-natlab-up-{os.getpid()}.log")
        command = [sys.executable, "-m", "tests.natlab", "up"] + (["--relay"] if args.relay else [])
        command += ["--one-public-node"] if args.one_public_node else []
        command += ["--delay-ms", str(args.delay_ms)]
        with open(log, "wb") as out:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            mine = [s for s in run_state.load_all() if s.owner_pid == process.pid and s.ready]
            if mine:
                print(log.read_text(), end="")
                return 0
            time.sleep(0.1)
        print(log.read_text(), end="", file=sys.stderr)
        return 1
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    with Lab(delay_ms=args.delay_ms, purpose="manual") as lab:
        if args.one_public_node:
            hosts = one_public_node_hosts(lab)
            if args.relay:
                relay = hosts["seed"].create_seed_node()
        else:
            hosts = standard_lab_hosts(lab)
            if args.relay:
                relay = hosts["relay"].create_node("relay")
        lab.mark_ready()
        print(f"NAT lab {lab.run_id} is up (owner pid {os.getpid()}); work directory {lab.workdir}")
        for host in hosts.values():
            via = f" behind {host.router.name} ({host.router.kind})" if host.router else ""
            print(f"  {host.name:<12} {host.address:<15} public {host.public_address:<15}{via}")
        if args.relay:
            print(f"  relay node: {relay.route('udp')}\n              {relay.route('tcp')}")
            if args.one_public_node:
                print(f"  join it:    meshkey node create NAME --seed {relay.seed_text}")
        print("shell: python -m tests.natlab exec HOST bash; stop: Ctrl-C or `... down`")
        sys.stdout.flush()
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while not stop:
            signal.pause()
    return 0


def down(args: argparse.Namespace) -> int:
    for state in run_state.load_all():
        if args.run and state.run_id != args.run:
            continue
        if not state.owner_alive():
            print(f"{state.run_id}: owner gone, sweeping: {run_state.remove(state)}")
            continue
        if state.purpose != "manual" and not args.force:
            print(
                f"{state.run_id}: owned by a {state.purpose} run (pid {state.owner_pid}); skipped"
            )
            continue
        os.kill(state.owner_pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while state.path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        print(f"{state.run_id}: {'down' if not state.path.exists() else 'still going down'}")
    return 0


def status(args: argparse.Namespace) -> int:
    states = run_state.load_all()
    if not states:
        print("No NAT lab runs.")
    for state in states:
        owner = "alive" if state.owner_alive() else "GONE (python -m tests.natlab sweep)"
        print(f"run {state.run_id} ({state.purpose}): owner pid {state.owner_pid} {owner}")
        for name, host in state.hosts.items():
            print(f"  {name:<12} {host['kind']:<12} {host['address']:<15} {host['public_address']}")
        control = Path(state.workdir) / "wan.sock"
        if state.owner_alive() and control.exists():
            wan = Wan(control)
            with contextlib.closing(wan):
                print("\n".join("  " + line for line in wan.counters_table().splitlines()))
    return 0


def exec_in(args: argparse.Namespace) -> int:
    state = _live(args.run)
    host = state.hosts.get(args.host)
    if host is None:
        raise SystemExit(f"error: no host {args.host!r} (hosts: {', '.join(state.hosts)})")
    command = args.command or [os.environ.get("SHELL", "bash")]
    env = [
        f"MESHKEY_HOME={host['home']}",
        f"PATH={Path(sys.executable).parent}:{os.environ['PATH']}",
    ]
    os.execvp("ip", ["ip", "netns", "exec", host["netns"], "env", *env, *command])


def wan(args: argparse.Namespace) -> int:
    state = _live(args.run)
    control = Wan(Path(state.workdir) / "wan.sock")
    with contextlib.closing(control):
        changes = {
            key: value
            for key, value in (
                ("delay_ms", args.delay_ms),
                ("loss", args.loss),
                ("reorder", args.reorder),
            )
            if value is not None
        }
        if changes or args.rate_mbit is not None:
            rate = None if args.rate_mbit == 0 else args.rate_mbit
            control.set(
                args.ports or None,
                rate_mbit=rate if args.rate_mbit is not None else False,
                **changes,
            )
        for port in control.settings():
            print(
                f"  {port['label']:<16} delay {port['delay_ms']} ms, loss {port['loss']} %, "
                f"reorder {port['reorder']} %, rate {port['rate_mbit'] or '-'} Mbit/s"
            )
        print(control.counters_table())
    return 0


def sweep(args: argparse.Namespace) -> int:
    swept = run_state.sweep()
    for run_id, removed in swept.items():
        print(f"{run_id}: removed {', '.join(removed) or 'nothing left'}")
    if not swept:
        print("Nothing to sweep.")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.natlab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("up", help="build the standard lab and hold it")
    p.add_argument("--detach", action="store_true", help="run in the background until `down`")
    p.add_argument("--relay", action="store_true", help="start a meshkey node on the relay host")
    p.add_argument(
        "--one-public-node",
        action="store_true",
        help="the seed issue's lab: one public host 'seed' (with --relay: the seed node on "
        "0.0.0.0:7000, UDP and TCP) and sides a-KIND, b-KIND of each kind",
    )
    p.add_argument("--delay-ms", type=float, default=10.0, help="one-way delay per WAN port")
    p.set_defaults(func=up)
    p = commands.add_parser("down", help="tear down labs made by `up`")
    p.add_argument("--run", help="only this run id")
    p.add_argument("--force", action="store_true", help="also runs owned by tests")
    p.set_defaults(func=down)
    commands.add_parser("status", help="runs, hosts, WAN counters").set_defaults(func=status)
    p = commands.add_parser("exec", help="run a command (default: a shell) in a lab host")
    p.add_argument("--run", help="the run id (when more than one lab runs)")
    p.add_argument("host")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=exec_in)
    p = commands.add_parser("wan", help="show or change the WAN's settings, show its counters")
    p.add_argument("--run", help="the run id (when more than one lab runs)")
    p.add_argument("--delay-ms", type=float)
    p.add_argument("--loss", type=float, help="percent, both directions")
    p.add_argument("--reorder", type=float, help="percent of frames held back")
    p.add_argument("--rate-mbit", type=float, help="bandwidth cap (0: none)")
    p.add_argument("ports", nargs="*", help="port labels (default: every port)")
    p.set_defaults(func=wan)
    commands.add_parser("sweep", help="remove what killed runs left").set_defaults(func=sweep)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("error: the NAT lab needs root")
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
