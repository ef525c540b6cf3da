"""Waits over a second show what they wait for on a terminal, and nothing when piped."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys

import pytest

from meshkey.cli.errors import ExitCode

from .conftest import Cli

pytestmark = pytest.mark.integration


def run_on_a_terminal(cli: Cli, *args: str) -> tuple[int, str]:
    """Runs meshkey with its standard error on a pseudo-terminal; the exit code and what it
    wrote there."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "meshkey", *args],
        env={**os.environ, "MESHKEY_HOME": str(cli.home)},
        stdout=subprocess.DEVNULL,
        stderr=terminal,
    )
    os.close(terminal)
    written = bytearray()
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal's other end closed
            break
        if not chunk:
            break
        written += chunk
    os.close(controller)
    return process.wait(timeout=30), written.decode(errors="replace")


def test_a_long_wait_shows_progress_on_a_terminal_only(blue_green: Cli) -> None:
    cli = blue_green
    green = cli.json("node", "show", "green")["pid"]
    command = ("message", "send", "x", "--from", "blue", "--to", "/node/green/service/echo")
    os.kill(green, signal.SIGSTOP)  # green does not answer: the send waits its timeout
    try:
        code, shown = run_on_a_terminal(cli, *command, "--timeout", "2500ms")
        piped = cli.run(*command, "--timeout", "2500ms")
    finally:
        os.kill(green, signal.SIGCONT)
    assert code == ExitCode.TIMEOUT
    assert "waiting for the reply from /node/green/service/echo" in shown
    assert "(1." in shown or "(2." in shown  # the time waited so far
    assert shown.rstrip().endswith("within 2.5s")  # the line wiped, then the error
    assert piped.returncode == ExitCode.TIMEOUT
    assert piped.stderr.count("\n") == 1 and "waiting" not in piped.stderr

    code, shown = run_on_a_terminal(cli, "message", "send", "x", "--to", "/node/blue/service/echo")
    assert code == 0 and shown == ""  # quick: nothing shown
