"""Wall time of CLI commands, against the bare interpreter started the same way.

The target (DESIGN.md) is under 150 ms on a warm machine. Measured with subprocesses, like a
user's shell would run them, after two warm-up runs. "Warm" includes cached bytecode: this
environment sets PYTHONDONTWRITEBYTECODE, which would recompile meshkey's modules (an editable
install) on every run, so the benchmark compiles them once and lets Python use the cache.
"""

from __future__ import annotations

import compileall
import os
import subprocess
import sys
import time

import meshkey
from bench.common import daemons, save, summary


def _time(command: list[str], env: dict[str, str], runs: int) -> list[float]:
    samples = []
    for index in range(runs + 2):
        started = time.perf_counter()
        result = subprocess.run(command, env=env, capture_output=True, check=False)
        elapsed = (time.perf_counter() - started) * 1000
        if result.returncode != 0:
            raise RuntimeError(f"{command}: {result.stderr.decode()}")
        if index >= 2:
            samples.append(elapsed)
    return samples


def main(*, quick: bool = False) -> None:
    runs = 10 if quick else 30
    compileall.compile_dir(os.path.dirname(meshkey.__file__), quiet=1)
    cli = [sys.executable, "-m", "meshkey"]
    with daemons("blue", "green") as home:
        env = {**os.environ, "MESHKEY_HOME": str(home.path)}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        commands = {
            "python -c pass (floor)": [sys.executable, "-c", "pass"],
            "meshkey --version": [*cli, "--version"],
            "meshkey --help": [*cli, "--help"],
            "meshkey node list": [*cli, "node", "list"],
            "meshkey secure-channel list": [*cli, "secure-channel", "list"],
            "meshkey message send --from green (daemon sends)": [
                *cli,
                "message",
                "send",
                "hi",
                "--from",
                "green",
                "--to",
                "/node/blue/service/uppercase",
            ],
            "meshkey message send --to /node/blue/... (blue sends)": [
                *cli,
                "message",
                "send",
                "hi",
                "--to",
                "/node/blue/service/uppercase",
            ],
            "meshkey message send --to /ip4/... (short-lived node)": [
                *cli,
                "message",
                "send",
                "hi",
                "--to",
                f"{home.resolve_node('blue', 'tcp')}/service/uppercase",
            ],
        }
        result = {name: summary(_time(cmd, env, runs)) for name, cmd in commands.items()}
    save("cli", result)
    print(f"CLI wall time, {runs} runs each (target: under 150 ms)")
    for name, figures in result.items():
        print(f"  {name:<50} p50 {figures['p50_ms']:7.1f} ms  p99 {figures['p99_ms']:7.1f} ms")
