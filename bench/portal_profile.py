"""Where a portal's time goes: py-spy on the inlet and outlet node processes during one bulk
transfer (the nodes of ``bench portal``, one row), summarised by function.

    python -m bench.portal_profile [MODE] [MiB]   # MODE: secure (default), direct, relayed, tcp

Prints the transfer's MB/s and both nodes' CPU s/GB (a quick A/B of one lever without the
whole sitting), then per node the functions holding the most samples: "self" (the innermost
Python frame; uvloop's C loop, its socket I/O and callbacks, shows as ``Runner.run``) and
"inclusive". py-spy (PyPI) must be in this interpreter's environment; without it only the
figures are printed (so too with ``PORTAL_PROFILE=0``: a lever's A/B without the sampler's
cost). Minor page faults per GB say how much of the copying is fresh memory. Raw samples
go to bench/results/profile-<MODE>-<node>.txt.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.portal import (
    MiB,
    _inlet_node,
    _outlet_node,
    _relay_node,
    _serve_blocking,
    cpu_seconds,
    spawned,
    transfer,
)

RESULTS = Path(__file__).with_name("results")


def summarise(raw: Path, top: int = 18) -> str:
    """The ``top`` functions by self and by inclusive samples of py-spy's raw output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "    (no samples)"
    lines = [f"    {total} samples; self:"]
    lines += [f"    {100 * n / total:5.1f}% {f[:110]}" for f, n in own.most_common(top)]
    lines.append("    inclusive:")
    lines += [
        f"    {100 * n / total:5.1f}% {f[:110]}"
        for f, n in inclusive.most_common(top + 8)
        if n < total  # the process's own entry frames say nothing
    ]
    return "\n".join(lines)


def minor_faults(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def main(mode: str = "secure", mebibytes: int = 512) -> None:
    total = mebibytes * MiB
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    profiling = Path(spy).exists() and os.environ.get("PORTAL_PROFILE") != "0"
    RESULTS.mkdir(exist_ok=True)
    with (
        spawned(_serve_blocking, "sink") as (sink, _),
        spawned(_serve_blocking, "echo") as (echo, _),
        spawned(_relay_node) as (relay_addresses, relay_pid),
        spawned(_outlet_node, sink, echo, relay_addresses[0]) as (addresses, outlet_pid),
    ):
        kind = "/tcp/" if mode == "tcp" else "/udp/"
        address = next(a for a in addresses if kind in a)
        if mode == "relayed":
            address = f"{relay_addresses[0]}/service/forward_to_outlet"
        node_mode = "direct" if mode == "tcp" else mode
        with spawned(_inlet_node, address, node_mode) as ((sink_port, _), inlet_pid):
            transfer(sink_port, 8 * MiB)  # warm-up
            nodes = {"inlet": inlet_pid, "outlet": outlet_pid}
            if mode == "relayed":
                nodes["relay"] = relay_pid
            spies = {}
            if profiling:
                for name, pid in nodes.items():
                    out = RESULTS / f"profile-{mode}-{name}.txt"
                    spies[name] = subprocess.Popen(
                        [
                            spy,
                            "record",
                            "--nonblocking",
                            "-r",
                            "250",
                            "-f",
                            "raw",
                            "-o",
                            str(out),
                            "-p",
                            str(pid),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
            cpu_before = sum(cpu_seconds(pid) for pid in nodes.values())
            faults_before = sum(minor_faults(pid) for pid in nodes.values())
            rate = transfer(sink_port, total)
            cpu = sum(cpu_seconds(pid) for pid in nodes.values()) - cpu_before
            faults = sum(minor_faults(pid) for pid in nodes.values()) - faults_before
            for spied in spies.values():
                spied.send_signal(2)  # SIGINT: py-spy writes what it has
                spied.wait(30)
    per_gb = total / 1e9
    print(
        f"{mode}: {rate:.1f} MB/s, nodes {cpu / per_gb:.2f} CPU s/GB,"
        f" {faults / per_gb:.0f} minor faults/GB"
    )
    for name in spies:
        print(f"  {name}:")
        print(summarise(RESULTS / f"profile-{mode}-{name}.txt"))


if __name__ == "__main__":
    main(
        sys.argv[1] if len(sys.argv) > 1 else "secure",
        int(sys.argv[2]) if len(sys.argv) > 2 else 512,
    )
