"""A node configuration is applied whole or refused whole, with the reason; applied again to a
running node it converges it or says what differs (issue 22, bug 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshkey.cli.errors import ExitCode

from .conftest import Cli

pytestmark = pytest.mark.integration

README_EXAMPLE = """
[node]
name = "blue"

[[relays]]
name = "blue"
at = "/node/green"

[[policies]]
resource = "uppercase"
allow = ["yellow", "${FRIEND}"]
"""


def relayed(cli: Cli) -> bool:
    """Whether green relays to blue (forward_to_blue)."""
    route = "/node/green/service/forward_to_blue/service/echo"
    return cli.run("message", "send", "hi", "--to", route, "--timeout", "3s").returncode == 0


def test_a_configuration_that_cannot_be_applied_whole_changes_nothing(
    cli: Cli, tmp_path: Path
) -> None:
    cli.ok("node", "create", "green")
    cli.ok("identity", "create", "friend")
    config = tmp_path / "blue.toml"
    config.write_text(README_EXAMPLE)
    # 'yellow' is nobody yet: refused before anything is done (no blue, no relay on green)
    message = cli.fails(
        ExitCode.USAGE,
        "node",
        "create",
        "--configuration",
        str(config),
        "--variable",
        "FRIEND=friend",
    )
    assert "policies[0].allow" in message and "'yellow'" in message
    assert [n["name"] for n in cli.json("node", "list")] == ["green"]
    assert "blue" not in [i["name"] for i in cli.json("identity", "list")]
    assert not relayed(cli)

    # a step that fails half-way (its relay node is stopped) undoes the steps before it
    cli.ok("node", "create", "yellow")
    cli.ok("node", "stop", "green")
    message = cli.fails(
        ExitCode.CONFLICT,
        "node",
        "create",
        "--configuration",
        str(config),
        "--variable",
        "FRIEND=friend",
    )
    assert "create relay blue failed" in message and "green" in message
    assert "blue" not in [n["name"] for n in cli.json("node", "list")]

    # whole: the policy applies (only yellow and friend may use uppercase)
    cli.ok("node", "start", "green")
    cli.ok("node", "create", "--configuration", str(config), "--variable", "FRIEND=friend")
    policy = cli.json("policy", "show", "--resource", "uppercase", "--at", "blue")
    assert policy["allow"] == sorted(
        [cli.node_id("yellow"), cli.json("identity", "show", "friend")["node_id"]]
    )
    assert relayed(cli)


def test_a_configuration_applied_to_a_running_node_converges_it(cli: Cli, tmp_path: Path) -> None:
    cli.ok("node", "create", "green")
    cli.ok("node", "create", "yellow")
    cli.ok("node", "create", "blue")
    config = tmp_path / "blue.yaml"
    config.write_text(
        "name: blue\n"
        "policies:\n  uppercase: {allow: [yellow]}\n"
        "relays:\n  blue: {at: /node/green}\n"
        "tcp-outlets:\n  db: {to: 5432}\n"
    )
    applied = cli.json("node", "create", "--configuration", str(config))
    assert sorted(applied["changes"]) == [
        "create policy uppercase",
        "create relay blue",
        "create tcp-outlet db",
    ]
    assert cli.json("policy", "show", "--resource", "uppercase", "--at", "blue")["allow"] == [
        cli.node_id("yellow")
    ]
    assert "nothing to change" in cli.ok("node", "create", "--configuration", str(config))

    # what differs is brought in line; a refusal half-way puts back what it replaced
    cli.ok("policy", "create", "--at", "blue", "--resource", "uppercase", "--allow", "green")
    changed = cli.json("node", "create", "--configuration", str(config))
    assert changed["changes"] == ["replace policy uppercase"]
    cli.ok("policy", "create", "--at", "blue", "--resource", "uppercase", "--allow", "green")
    taken = cli.address("blue", "tcp").split("/")[4]  # blue's own TCP port: in use
    inlet = f"tcp-inlets:\n  i: {{from: {taken}, to: /node/green/service/x}}\n"
    config.write_text(config.read_text() + inlet)
    cli.fails(ExitCode.CONFLICT, "node", "create", "--configuration", str(config))
    assert cli.json("policy", "show", "--resource", "uppercase", "--at", "blue")["allow"] == [
        cli.node_id("green")
    ]

    # node settings are fixed at creation: every difference named, nothing done
    fixed = tmp_path / "fixed.toml"
    fixed.write_text('[node]\nname = "blue"\nudp = "127.0.0.1:1"\ndht_mode = "client"\n')
    message = cli.fails(ExitCode.CONFLICT, "node", "create", "--configuration", str(fixed))
    assert "udp is" in message and "dht-mode is auto, not client" in message
    # and a plain create of a running node is refused, as in Ockam
    assert "already running" in cli.fails(ExitCode.CONFLICT, "node", "create", "blue")


def test_inline_configurations_and_empty_variables(cli: Cli) -> None:
    created = cli.json(
        "node",
        "create",
        "--configuration",
        "{name: n, tcp-outlets: {db-outlet: {to: 5432, at: n}}}",
    )
    assert created["name"] == "n"
    [outlet] = cli.json("tcp-outlet", "list", "--at", "n")
    assert (outlet["alias"], outlet["to"]) == ("db-outlet", "127.0.0.1:5432")
    message = cli.fails(
        ExitCode.USAGE,
        "node",
        "create",
        "--configuration",
        "{name: m, tcp-outlets: {o: {to: 'localhost:65536'}}}",
    )
    assert "tcp_outlets.o.to" in message
    assert "m" not in [n["name"] for n in cli.json("node", "list")]
    message = cli.fails(
        ExitCode.USAGE, "node", "create", "--configuration", "{name: m}", "--variable", "MY_VAR="
    )
    assert "empty value for variable 'MY_VAR'" in message
