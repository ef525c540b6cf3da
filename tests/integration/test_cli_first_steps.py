"""What a new user ran into (issue 22, bugs 2-9), each as the command that showed it."""

from __future__ import annotations

import pytest

from meshkey.cli.errors import ExitCode

from .conftest import Cli

pytestmark = pytest.mark.integration


def test_a_dash_message_is_read_from_standard_input(blue_green: Cli) -> None:
    cli = blue_green
    route = "/node/blue/service/uppercase"
    assert cli.ok("message", "send", "-", "--to", route, input="hello\n") == "HELLO\n"
    assert cli.ok("message", "send", "--hex", "-", "--to", route, input="6869\n") == "4849\n"
    message = cli.fails(ExitCode.USAGE, "message", "send", "-", "--to", "-/service/echo")
    assert "standard input" in message
