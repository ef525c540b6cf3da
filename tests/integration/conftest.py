"""Fixtures that run the real CLI and real node daemons in a private MESHKEY_HOME."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshkey.node.state import Home


@dataclass
class Cli:
    home: Path

    def run(
        self,
        *args: str,
        input: str | None = None,
        timeout: float = 60,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "MESHKEY_HOME": str(self.home), **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "meshkey", *args],
            input=input,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str, input: str | None = None, env: dict[str, str] | None = None) -> str:
        result = self.run(*args, input=input, env=env)
        assert result.returncode == 0, f"meshkey {' '.join(args)}: {result.stderr}"
        return result.stdout

    def json(self, *args: str, input: str | None = None) -> Any:
        return json.loads(self.ok(*args, "--output", "json", input=input))

    def fails(self, code: int, *args: str, input: str | None = None) -> str:
        result = self.run(*args, input=input)
        assert result.returncode == code, (
            f"meshkey {' '.join(args)} exited {result.returncode}, expected {code}: "
            f"{result.stdout}{result.stderr}"
        )
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        return lines[0]

    def node_id(self, node: str) -> str:
        node_id: str = self.json("node", "show", node)["node_id"]
        return node_id

    def wait_for(self, predicate: Any, what: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.1)

    def address(self, node: str, protocol: str = "udp") -> str:
        """The node's listening address for ``protocol`` (``/node/NAME`` means its UDP one)."""
        status: dict[str, Any] = self.json("node", "show", node)
        address: str = next(a for a in status["addresses"] if f"/{protocol}/" in a)
        return address

    def log(self, node: str) -> str:
        """The daemon's log and whatever it wrote to stdout/stderr (tracebacks would go there)."""
        directory = self.home / "nodes" / node
        parts = [directory / "node.log", directory / "daemon.out"]
        return "".join(p.read_text(errors="replace") for p in parts if p.exists())


def stop_all(home: Path) -> None:
    """Kills every daemon this test started (by the pid its own node wrote), whatever happened."""
    state = Home(home)
    for name in state.node_names():
        node = state.node(name)
        pid = node.pid()
        if pid is not None and node.is_running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    home = tmp_path / "home"
    yield Cli(home)
    stop_all(home)


@pytest.fixture
def blue_green(cli: Cli) -> Cli:
    """Two running daemons, blue and green."""
    cli.ok("node", "create", "blue")
    cli.ok("node", "create", "green")
    return cli
