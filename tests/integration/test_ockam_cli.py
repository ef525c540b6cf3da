"""Ockam's own local CLI tests, translated: the 58 cases of
``implementations/rust/ockam/ockam_command/tests/bats/local/`` (build-trust/ockam, fb8fb64)
that apply to meshkey, one test each, named after the bats file and case.

Translated, not copied: flags are spelled the meshkey way (``--tcp`` for
``--tcp-listener-address``, ``--allow IDENTITY`` for ``--expression``/``--allow EXPR``, which
are attribute-based policies meshkey does not have); JSON fields are meshkey's (``address``
for ``bind_addr``, ``worker_address`` and ``remote_address``); where meshkey answers a
missing thing with "not found" and exit 3 consistently (``policy show`` and ``tcp-outlet
delete`` of something deleted, which Ockam answers with success and ``[]``), the test expects
that; ``curl`` is ``urllib``; the Python upload server is a small one here. Left out: the
cases that need credentials, authorities, vaults, projects, Kafka or the network
(``authority``, ``credentials``, ``vault``, ``projects``, ``kafka``, ``jq``, ``reset``,
``command_reference``, ``use_cases`` (the local one is case 42, ``portals - ... relay``),
``spaces``, the four ``portals - local portal, ... credential expires``), and the three
``policies`` cases about policy expressions. The listener of ``message - secure-channels
with authorized identifiers`` runs on a node with the second identity (a meshkey listener has
its node's identity).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkey.cli.errors import ExitCode

from .conftest import Cli
from .programs import free_port

pytestmark = pytest.mark.integration


# -- what bats' helpers do --------------------------------------------------------------------


def fails(cli: Cli, *args: str, input: str | None = None) -> str:
    """run_failure: a non-zero exit; what it printed."""
    result = cli.run(*args, input=input)
    assert result.returncode != 0, f"meshkey {' '.join(args)} succeeded: {result.stdout}"
    assert "Traceback" not in result.stderr
    return result.stdout + result.stderr


def pid_of(cli: Cli, node: str) -> int:
    pid: int = cli.json("node", "show", node)["pid"]
    return pid


def force_kill_node(cli: Cli, node: str) -> None:
    pid = pid_of(cli, node)
    os.kill(pid, signal.SIGKILL)
    cli.wait_for(lambda: cli.json("node", "show", node)["status"] != "running", f"{node} dead")


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Python's file server, and POST /upload as the uploadserver module answers it."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        digest = hashlib.sha256()
        while length:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                break
            digest.update(chunk)
            length -= len(chunk)
        body = digest.hexdigest().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def python_server(directory: Path) -> Iterator[int]:
    """$PYTHON_SERVER_PORT: files under ``directory``, uploads to /upload."""
    import functools

    handler = functools.partial(_Handler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def python_port(tmp_path: Path) -> Iterator[int]:
    (tmp_path / "www").mkdir()
    with python_server(tmp_path / "www") as port:
        yield port


def head(port_or_url: int | str, timeout: float = 5) -> bool:
    """curl -sfI: a HEAD that succeeds."""
    url = port_or_url if isinstance(port_or_url, str) else f"http://127.0.0.1:{port_or_url}/"
    try:
        request = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return bool(response.status < 400)
    except (OSError, urllib.error.URLError):
        return False


def head_retrying(cli: Cli, port: int, seconds: float = 30) -> bool:
    """curl --retry ...: a HEAD that succeeds within ``seconds``."""
    with contextlib.suppress(AssertionError):
        cli.wait_for(lambda: head(port), f"127.0.0.1:{port} answers", seconds)
        return True
    return False


def get(url: str, timeout: float = 30) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
    return body


def background(cli: Cli, *args: str) -> subprocess.Popen[str]:
    """``$OCKAM ... &``."""
    return subprocess.Popen(
        [sys.executable, "-m", "meshkey", *args],
        env={**os.environ, "MESHKEY_HOME": str(cli.home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(5)


def running(cli: Cli, node: str, seconds: float = 10) -> None:
    """``sleep 2; node show NODE`` (succeeds once the node answers)."""
    cli.wait_for(
        lambda: (
            cli.run("node", "show", node, "-o", "json").returncode == 0
            and cli.json("node", "show", node)["status"] == "running"
        ),
        f"{node} running",
        seconds,
    )


# -- identity.bats ----------------------------------------------------------------------------


def test_identity__create_and_check_show_output(cli: Cli) -> None:
    cli.ok("identity", "create", "i")
    assert re.fullmatch(r"mk[a-z2-7]{52}\n", cli.ok("identity", "show", "i"))
    full = cli.ok("identity", "show", "i", "--full")
    assert "node id:" in full and "public key:" in full and "key type:" in full


def test_identity__crud(cli: Cli) -> None:
    cli.ok("identity", "create")
    cli.ok("identity", "create", "i")
    cli.ok("identity", "delete", "i", "--yes")
    cli.ok("identity", "create", "i")
    cli.ok("node", "create", "n", "--identity", "i")
    fails(cli, "identity", "delete", "i", "--yes")
    cli.ok("node", "delete", "n", "--yes")
    cli.ok("identity", "delete", "i", "--yes")
    cli.ok("identity", "create", "i1")
    cli.ok("identity", "create", "i2")
    listed = cli.ok("identity", "list")
    assert "i1" in listed and "i2" in listed
    cli.ok("identity", "delete", "i1", "--yes")
    listed = cli.ok("identity", "list")
    assert "i2" in listed and "i1" not in listed
    fails(cli, "identity", "delete", "i1", "--yes")
    cli.ok("identity", "delete", "--all", "--yes")
    assert "[]" in cli.ok("identity", "list", "--output", "json")
    cli.ok("identity", "delete", "--all")


def test_identity__set_default(cli: Cli) -> None:
    cli.ok("identity", "create", "i1")
    assert "The name of the default identity is 'i1'" in cli.ok("identity", "default")
    assert "The identity named 'i1' is already the default" in fails(
        cli, "identity", "default", "i1"
    )
    cli.ok("identity", "create", "i2")
    assert cli.ok("identity", "default", "i2") == "i2\n"


def test_identity__export_import(cli: Cli) -> None:
    cli.ok("identity", "create")
    exported = cli.ok("identity", "show", "--full", "--encoding", "hex")
    cli.ok("identity", "delete", "--all", "--yes")
    assert "[]" in cli.ok("identity", "list", "--output", "json")
    cli.ok("identity", "create", "--identity", exported.strip())
    assert cli.ok("identity", "show", "--full", "--encoding", "hex") == exported


# -- message.bats -----------------------------------------------------------------------------


def test_message__send_messages_between_local_nodes(cli: Cli) -> None:
    fails(cli, "message", "send", "hi", "--timeout", "5", "--to", "/node/n1/service/uppercase")
    cli.ok("node", "create", "n1")
    assert (
        cli.ok("message", "send", "hello", "--timeout", "5", "--to", "/node/n1/service/uppercase")
        == "HELLO\n"
    )
    cli.ok("node", "create", "n2")
    route = "/node/n2/service/uppercase"
    assert (
        cli.ok("message", "send", "abc", "--timeout", "5", "--from", "n1", "--to", route) == "ABC\n"
    )
    assert cli.ok("message", "send", "def", "--from", "/node/n1", "--to", route) == "DEF\n"


def test_message__secure_channels_with_authorized_identifiers(cli: Cli) -> None:
    cli.ok("identity", "create", "i1")
    idt1 = cli.ok("identity", "show", "i1").strip()
    cli.ok("identity", "create", "i2")
    idt2 = cli.ok("identity", "show", "i2").strip()
    cli.ok("node", "create", "n1", "--identity", "i1")
    cli.ok("node", "create", "n2", "--identity", "i2")
    cli.ok("secure-channel-listener", "create", "l", "--at", "n2", "--authorized", idt1)
    channel = cli.ok(
        "secure-channel",
        "create",
        "--from",
        "n1",
        "--to",
        "/node/n2/service/l",
        "--authorized",
        idt2,
    )
    reply = cli.ok(
        "message", "send", "hi", "--from", "/node/n1", "--to", "-/service/echo", input=channel
    )
    assert reply == "hi\n"


# -- nodes.bats -------------------------------------------------------------------------------


def test_nodes__create_with_random_name(cli: Cli) -> None:
    cli.ok("node", "create")


def test_nodes__create_with_name(cli: Cli) -> None:
    cli.ok("node", "create", "n")
    shown = cli.ok("node", "show", "n", "--output", "json")
    assert '"name": "n"' in shown and "/tcp/" in shown and '"uppercase"' in shown


def test_nodes__start_services(cli: Cli) -> None:
    cli.ok("node", "create", "n1")
    cli.ok("service", "start", "hop", "--addr", "my_hop", "--at", "n1")
    fails(cli, "service", "start", "hop", "--addr", "my_hop", "--at", "n1")


def test_nodes__is_restarted_with_default_services(cli: Cli) -> None:
    cli.ok("node", "create", "n")
    cli.run("node", "stop", "n")
    assert "echo" in cli.ok("node", "start", "n")


def test_nodes__fail_to_create_two_background_nodes_with_the_same_name(cli: Cli) -> None:
    cli.ok("node", "create", "n")
    fails(cli, "node", "create", "n")


def test_nodes__can_recreate_a_background_node_after_it_was_gracefully_stopped(cli: Cli) -> None:
    cli.ok("node", "create", "n")
    cli.ok("node", "stop", "n")
    cli.ok("node", "create", "n")


def test_nodes__can_recreate_a_background_node_after_it_was_killed(cli: Cli) -> None:
    cli.ok("node", "create", "n")
    force_kill_node(cli, "n")
    cli.ok("node", "create", "n")


def test_nodes__fail_to_create_two_foreground_nodes_with_the_same_name(
    cli: Cli, processes: list[subprocess.Popen[str]]
) -> None:
    processes.append(background(cli, "node", "create", "n", "-f"))
    running(cli, "n")
    fails(cli, "node", "create", "n", "-f")


def test_nodes__can_recreate_a_foreground_node_after_it_was_killed(
    cli: Cli, processes: list[subprocess.Popen[str]]
) -> None:
    processes.append(background(cli, "node", "create", "n", "-f"))
    running(cli, "n")
    force_kill_node(cli, "n")
    processes.append(background(cli, "node", "create", "n", "-f"))
    running(cli, "n")


def test_nodes__can_recreate_a_foreground_node_after_it_was_gracefully_stopped(
    cli: Cli, processes: list[subprocess.Popen[str]]
) -> None:
    processes.append(background(cli, "node", "create", "n", "-f"))
    running(cli, "n")
    cli.ok("node", "stop", "n")
    processes.append(background(cli, "node", "create", "n", "-f"))
    running(cli, "n")


def test_nodes__background_node_logs_to_file(cli: Cli) -> None:
    cli.ok("node", "create", "n")
    assert "node.log" in os.listdir(cli.home / "nodes" / "n")


def test_nodes__foreground_node_logs_to_stdout_only(
    cli: Cli, processes: list[subprocess.Popen[str]]
) -> None:
    """Ockam's foreground node keeps no node directory; meshkey's keeps its state there (as a
    background one does) but logs to the terminal only."""
    process = background(cli, "node", "create", "n", "-f")
    processes.append(process)
    running(cli, "n")
    assert not (cli.home / "nodes" / "n" / "node.log").exists()
    process.send_signal(signal.SIGINT)
    _, logged = process.communicate(timeout=15)
    assert "daemon.ready" in logged


def test_nodes__create_a_node_with_an_inline_configuration(cli: Cli) -> None:
    cli.ok(
        "node",
        "create",
        "--configuration",
        "{name: n, tcp-outlets: {db-outlet: {to: 5432, at: n}}}",
    )
    shown = cli.ok("node", "show", "n", "--output", "json")
    assert '"name": "n"' in shown and "127.0.0.1:5432" in shown


def test_nodes__node_in_foreground_with_configuration_is_deleted_if_something_fails(
    cli: Cli,
) -> None:
    fails(
        cli,
        "node",
        "create",
        "--configuration",
        '{name: n, tcp-outlets: {db-outlet: {to: "localhost:65536"}}}',
    )
    assert cli.run("node", "show", "n", "--output", "json").returncode == ExitCode.NOT_FOUND


def test_nodes__create_two_nodes_with_the_same_inline_configuration(cli: Cli) -> None:
    cli.ok("node", "create", "--configuration", "{tcp-outlets: {to: 8080}}")
    cli.ok("node", "create", "--configuration", "{tcp-outlets: {to: 8080}}")
    for node in cli.json("node", "list"):
        assert "8080" in cli.ok("node", "show", node["name"], "--output", "json")


def test_nodes__return_error_if_passed_variable_has_no_value(cli: Cli) -> None:
    output = fails(cli, "node", "create", "--configuration", "{name: n}", "--variable", "MY_VAR=")
    assert "empty value for variable 'my_var'" in output.lower()


def test_nodes__the_http_server_is_disabled_by_default(cli: Cli) -> None:
    cli.ok("node", "create")
    assert cli.json("node", "show")["http_server_address"] is None


def test_nodes__check_the_contents_returned_from_the_http_server_endpoints(cli: Cli) -> None:
    cli.ok("node", "create", "--http-server")
    address = cli.json("node", "show")["http_server_address"]
    assert head(f"http://{address}")
    assert not head(f"http://{address}/show")
    shown = json.loads(get(f"http://{address}/show"))
    assert shown["name"] == "default"


def test_nodes__the_http_server_is_enabled_with_a_boolean_flag_and_a_random_port(
    cli: Cli,
) -> None:
    cli.ok("node", "create", "--http-server")
    assert head(f"http://{cli.json('node', 'show')['http_server_address']}")


def test_nodes__the_http_server_is_enabled_with_a_specific_port(cli: Cli) -> None:
    port = free_port()
    cli.ok("node", "create", "--http-server-port", str(port))
    assert head(port)


def test_nodes__fail_to_create_node_with_invalid_name(cli: Cli) -> None:
    fails(cli, "node", "create", "n!")
    fails(cli, "node", "create", "n.1")
    fails(cli, "node", "create", "./config.yaml")
    fails(cli, "node", "create", "node.yaml")
    (cli.home / "node.yaml").parent.mkdir(parents=True, exist_ok=True)
    (cli.home / "node.yaml").write_text("name: n1\n")
    cli.ok("node", "create", str(cli.home / "node.yaml"))


# -- policies.bats ----------------------------------------------------------------------------


def _policy_case(cli: Cli, resource: str) -> None:
    allowed = cli.ok("identity", "create", "component").strip()
    cli.ok("policy", "create", "--resource", resource, "--allow", allowed)
    shown = cli.ok("policy", "show", resource)
    assert resource in shown and allowed in shown
    cli.ok("policy", "delete", resource, "-y")
    result = cli.run("policy", "show", resource)
    assert result.returncode == ExitCode.NOT_FOUND and resource not in result.stdout


def test_policies__create_resource_type_policy_backwards_compatibility(cli: Cli) -> None:
    _policy_case(cli, "tcp-outlet")


def test_policies__create_scoped_policy(cli: Cli) -> None:
    _policy_case(cli, "my_policy")


# -- portals.bats -----------------------------------------------------------------------------


def test_portals__create_tcp_outlet_on_implicit_default_node(cli: Cli) -> None:
    cli.ok("node", "delete", "--all", "-y")
    port = free_port()
    assert "/service/outlet" in cli.ok("tcp-outlet", "create", "--to", f"127.0.0.1:{port}")


def test_portals__create_tcp_outlet(cli: Cli) -> None:
    cli.ok("node", "delete", "--all", "-y")
    port = free_port()
    created = cli.ok("tcp-outlet", "create", "--to", f"127.0.0.1:{port}", "--from", "test-outlet")
    assert "/service/test-outlet" in created
    assert "/service/outlet" in cli.ok("tcp-outlet", "create", "--to", f"127.0.0.1:{port}")
    assert "/service/outlet" not in cli.ok("tcp-outlet", "create", "--to", f"127.0.0.1:{port}")


def test_portals__tcp_inlet_crud(cli: Cli) -> None:
    cli.ok("node", "create", "n1")
    cli.ok("node", "create", "n2")
    assert "/service/outlet" in cli.ok(
        "tcp-outlet", "create", "--at", "/node/n1", "--to", f"127.0.0.1:{free_port()}"
    )
    port = free_port()
    cli.ok(
        "tcp-inlet",
        "create",
        "--at",
        "/node/n2",
        "--from",
        f"127.0.0.1:{port}",
        "--to",
        "/node/n1/service/outlet",
        "--alias",
        "test-inlet",
    )
    cli.ok(
        "tcp-inlet",
        "create",
        "--at",
        "/node/n2",
        "--from",
        str(free_port()),
        "--to",
        "/node/n1/service/outlet",
    )
    shown = cli.ok("tcp-inlet", "show", "test-inlet", "--at", "/node/n2", "--output", "json")
    assert '"alias": "test-inlet"' in shown and f'"address": "127.0.0.1:{port}"' in shown
    cli.ok("tcp-inlet", "delete", "test-inlet", "--at", "/node/n2", "--yes")
    assert "not found" in fails(
        cli, "tcp-inlet", "delete", "test-inlet", "--at", "/node/n2", "--yes"
    )


def test_portals__tcp_outlet_crud(cli: Cli) -> None:
    cli.ok("node", "create", "n1")
    cli.ok("node", "create", "n2")
    port_1, port_2 = free_port(), free_port()
    assert "/service/outlet" in cli.ok(
        "tcp-outlet", "create", "--at", "/node/n1", "--to", f"127.0.0.1:{port_1}"
    )
    cli.ok("tcp-outlet", "create", "--at", "/node/n2", "--to", str(port_2))
    shown = cli.ok("tcp-outlet", "show", "outlet", "--at", "/node/n1", "-o", "json")
    assert '"address": "/service/outlet"' in shown and f'"to": "127.0.0.1:{port_1}"' in shown
    cli.ok("tcp-outlet", "delete", "outlet", "--yes")
    assert [o["node"] for o in cli.json("tcp-outlet", "list")] == ["n2"]  # the default node's


def test_portals__list_inlets_on_a_node(cli: Cli) -> None:
    cli.ok("node", "create", "n1")
    cli.ok("node", "create", "n2")
    port = free_port()
    cli.ok(
        "tcp-inlet",
        "create",
        "--at",
        "/node/n2",
        "--from",
        str(port),
        "--to",
        "/node/n1/service/outlet",
        "--alias",
        "tcp-inlet-2",
    )
    listed = cli.ok("tcp-inlet", "list", "--at", "/node/n2")
    assert "tcp-inlet-2" in listed and f"127.0.0.1:{port}" in listed


def test_portals__list_outlets_on_a_node(cli: Cli) -> None:
    cli.ok("node", "create", "n1")
    port = free_port()
    assert "/service/outlet" in cli.ok(
        "tcp-outlet", "create", "--at", "/node/n1", "--to", str(port)
    )
    listed = cli.ok("tcp-outlet", "list", "--at", "/node/n1")
    assert "/service/outlet" in listed and f"127.0.0.1:{port}" in listed


def test_portals__show_a_tcp_inlet(cli: Cli) -> None:
    cli.ok("node", "create", "n1")
    cli.ok("node", "create", "n2")
    cli.ok(
        "tcp-inlet",
        "create",
        "--at",
        "/node/n2",
        "--from",
        str(free_port()),
        "--to",
        "/node/n1/service/outlet",
        "--alias",
        "test-inlet",
    )
    cli.ok("tcp-inlet", "show", "test-inlet", "--at", "/node/n2")
    assert "not found" in fails(cli, "tcp-inlet", "show", "non-existing-inlet", "--at", "/node/n2")


def test_portals__show_a_tcp_outlet(cli: Cli) -> None:
    cli.ok("node", "create", "n1")
    assert "/service/outlet" in cli.ok(
        "tcp-outlet", "create", "--at", "/node/n1", "--to", str(free_port())
    )
    cli.ok("tcp-outlet", "show", "outlet")
    assert "not found" in fails(cli, "tcp-outlet", "show", "non-existing-outlet")


def _pair(cli: Cli, python_port: int) -> int:
    cli.ok("node", "create", "n1")
    cli.ok("node", "create", "n2")
    cli.ok("tcp-outlet", "create", "--at", "/node/n1", "--to", str(python_port))
    port = free_port()
    cli.ok(
        "tcp-inlet",
        "create",
        "--at",
        "/node/n2",
        "--from",
        str(port),
        "--to",
        "/node/n1/service/outlet",
    )
    return port


def test_portals__create_an_inlet_outlet_pair_and_move_tcp_traffic_through_it(
    cli: Cli, python_port: int
) -> None:
    assert head_retrying(cli, _pair(cli, python_port))


def test_portals__create_an_inlet_outlet_download_file(
    cli: Cli, python_port: int, tmp_path: Path
) -> None:
    port = _pair(cli, python_port)
    data = os.urandom(50 << 20)
    (tmp_path / "www" / "file.bin").write_bytes(data)
    assert get(f"http://127.0.0.1:{port}/file.bin", timeout=60) == data


def test_portals__create_an_inlet_outlet_upload_file(cli: Cli, python_port: int) -> None:
    port = _pair(cli, python_port)
    data = os.urandom(50 << 20)
    request = urllib.request.Request(f"http://127.0.0.1:{port}/upload", data=data, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.read().decode() == hashlib.sha256(data).hexdigest()


def test_portals__create_an_inlet_outlet_pair_where_the_outlet_points_to_an_https_endpoint(
    cli: Cli,
) -> None:
    cli.ok("node", "create", "n1")
    cli.ok("node", "create", "n2")
    cli.ok("tcp-outlet", "create", "--at", "/node/n1", "--to", "google.com:443")
    port = free_port()
    cli.ok(
        "tcp-inlet",
        "create",
        "--at",
        "/node/n2",
        "--from",
        str(port),
        "--to",
        "/node/n1/service/outlet",
    )


def test_portals__create_an_inlet_outlet_pair_with_relay_through_a_relay(
    cli: Cli, python_port: int
) -> None:
    cli.ok("node", "create", "relay")
    cli.ok("node", "create", "blue")
    cli.ok("tcp-outlet", "create", "--at", "/node/blue", "--to", str(python_port))
    cli.ok("relay", "create", "blue", "--at", "/node/relay", "--to", "/node/blue")
    cli.ok("node", "create", "green")
    port = free_port()
    channel = cli.ok(
        "secure-channel",
        "create",
        "--from",
        "/node/green",
        "--to",
        "/node/relay/service/forward_to_blue/service/api",
    )
    cli.ok(
        "tcp-inlet",
        "create",
        "--at",
        "/node/green",
        "--from",
        str(port),
        "--to",
        "-/service/outlet",
        input=channel,
    )
    assert head_retrying(cli, port)
    assert "/service" in cli.ok("secure-channel", "list", "--at", "green")


def test_portals__fail_to_create_two_tcp_outlets_with_the_same_worker_address(cli: Cli) -> None:
    cli.ok("node", "create", "n")
    cli.ok("tcp-outlet", "create", "--at", "n", "--to", str(free_port()), "--from", "o")
    fails(cli, "tcp-outlet", "create", "--at", "n", "--to", str(free_port()), "--from", "o")


def test_portals__fail_to_create_two_tcp_inlets_with_the_same_alias(cli: Cli) -> None:
    cli.ok("node", "create", "n")
    cli.ok("tcp-outlet", "create", "--at", "n", "--to", str(free_port()))
    route = "/node/n/service/outlet"
    cli.ok(
        "tcp-inlet",
        "create",
        "--at",
        "n",
        "--from",
        str(free_port()),
        "--to",
        route,
        "--alias",
        "i",
    )
    fails(
        cli,
        "tcp-inlet",
        "create",
        "--at",
        "n",
        "--from",
        str(free_port()),
        "--to",
        route,
        "--alias",
        "i",
    )


def test_portals__fail_to_create_two_tcp_inlets_at_the_same_socket_address(cli: Cli) -> None:
    cli.ok("node", "create", "n")
    cli.ok("tcp-outlet", "create", "--at", "n", "--to", str(free_port()), "--from", "o")
    port = str(free_port())
    cli.ok("tcp-inlet", "create", "--at", "n", "--from", port, "--to", "/node/n/service/outlet")
    fails(cli, "tcp-inlet", "create", "--at", "n", "--from", port, "--to", "/node/n/service/outlet")


def test_portals__local_inlet_and_outlet_removing_and_re_creating_the_outlet(
    cli: Cli, python_port: int
) -> None:
    node_port = free_port()
    cli.ok("node", "create", "blue", "--tcp", f"127.0.0.1:{node_port}")
    cli.ok("tcp-outlet", "create", "--at", "/node/blue", "--to", str(python_port))
    cli.ok("node", "create", "green")
    inlet_port = free_port()
    cli.ok(
        "tcp-inlet",
        "create",
        "--at",
        "/node/green",
        "--from",
        str(inlet_port),
        "--to",
        "/node/blue/secure/api/service/outlet",
    )
    assert head_retrying(cli, inlet_port)
    force_kill_node(cli, "blue")
    assert not head(inlet_port, timeout=3)
    cli.ok("node", "create", "blue", "--tcp", f"127.0.0.1:{node_port}")
    cli.ok("tcp-outlet", "create", "--at", "/node/blue", "--to", str(python_port))
    assert head_retrying(cli, inlet_port, 60)


def test_portals__local_inlet_and_outlet_in_reverse_order(cli: Cli, python_port: int) -> None:
    cli.ok("node", "create", "n1")
    node_port, inlet_port = free_port(), free_port()
    cli.ok(
        "tcp-inlet",
        "create",
        "--at",
        "/node/n1",
        "--from",
        str(inlet_port),
        "--to",
        f"/ip4/127.0.0.1/tcp/{node_port}/service/outlet",
    )
    cli.ok("node", "create", "n2", "--tcp", f"127.0.0.1:{node_port}")
    cli.ok("tcp-outlet", "create", "--at", "/node/n2", "--to", str(python_port))
    assert head_retrying(cli, inlet_port, 60)


@pytest.mark.xfail(
    strict=True,
    reason="tcp-inlet --identity is not built: a meshkey secure channel speaks as its node's "
    "identity (an inlet as another identity needs the channel manager to hold several)",
)
def test_portals__create_inlet_with_specific_identifier(cli: Cli, python_port: int) -> None:
    cli.ok("node", "create", "n")
    alt = cli.ok("identity", "create", "alt").strip()
    cli.ok("tcp-outlet", "create", "--to", str(python_port), "--allow", alt)
    port = free_port()
    cli.ok("tcp-inlet", "create", "--from", f"127.0.0.1:{port}", "--to", "/node/n/service/outlet")
    assert not head(port, timeout=3)
    port = free_port()
    cli.ok(
        "tcp-inlet",
        "create",
        "--from",
        f"127.0.0.1:{port}",
        "--to",
        "/node/n/secure/api/service/outlet",
    )
    assert not head(port, timeout=3)
    port = free_port()
    cli.ok(
        "tcp-inlet",
        "create",
        "--from",
        f"127.0.0.1:{port}",
        "--to",
        "/node/n/secure/api/service/outlet",
        "--identity",
        "alt",
    )
    assert head_retrying(cli, port, 15)


# -- relay.bats -------------------------------------------------------------------------------


def test_relay__create_relay_and_send_message_through_it(cli: Cli) -> None:
    cli.ok("node", "create", "n1")
    cli.ok("node", "create", "n2")
    cli.ok("relay", "create", "n2", "--at", "/node/n1", "--to", "/node/n2")
    route = "/node/n1/service/forward_to_n2/service/uppercase"
    assert cli.ok("message", "send", "--timeout", "5", "hello", "--to", route) == "HELLO\n"
    relay = cli.ok("relay", "create", "--at", "/node/n2", "--to", "/node/n1")
    reply = cli.ok("message", "send", "again", "--to", "/node/n2/-/service/uppercase", input=relay)
    assert reply == "AGAIN\n"


def test_relay__create_two_relays_and_list_them_on_a_node(cli: Cli) -> None:
    cli.ok("node", "create", "n1")
    cli.ok("node", "create", "n2")
    cli.ok("relay", "create", "blue", "--at", "/node/n1", "--to", "/node/n2")
    cli.ok("relay", "create", "red", "--at", "/node/n1", "--to", "/node/n2")
    listed = cli.ok("relay", "list", "--to", "/node/n2", "--output", "json")
    assert "/service/forward_to_blue" in listed and "/service/forward_to_red" in listed
    assert "[]" in cli.ok("relay", "list", "--to", "/node/n1", "--output", "json")


def test_relay__crud(cli: Cli) -> None:
    cli.ok("node", "create", "n1")
    cli.ok("node", "create", "n2")
    cli.ok("relay", "create", "blue", "--at", "/node/n1", "--to", "/node/n2")
    shown = cli.ok("relay", "show", "blue", "--at", "/node/n2", "--output", "json")
    assert '"address": "/service/forward_to_blue"' in shown and '"at": "/node/n1"' in shown
    assert "not found" in fails(cli, "relay", "show", "red", "--at", "/node/n2")
    cli.ok("relay", "create", "red", "--at", "/node/n1", "--to", "/node/n2")
    listed = cli.ok("relay", "list", "--to", "/node/n2", "--output", "json")
    assert "forward_to_blue" in listed and "forward_to_red" in listed
    cli.ok("relay", "delete", "-y", "blue", "--at", "/node/n2")
    listed = cli.ok("relay", "list", "--to", "/node/n2", "--output", "json")
    assert "forward_to_blue" not in listed and "forward_to_red" in listed
    fails(cli, "relay", "delete", "-y", "blue", "--at", "/node/n2")


# -- rendezvous_server.bats -------------------------------------------------------------------


def test_rendezvous_server__responds_to_a_healthcheck(
    cli: Cli, processes: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    processes.append(background(cli, "rendezvous", "create", f"--healthcheck=127.0.0.1:{port}"))
    cli.wait_for(lambda: head(port), "the health check answers")
    assert b"Alive" in get(f"http://127.0.0.1:{port}/", timeout=5)


def test_rendezvous_server__local_tcp_portal_over_udp_puncture(
    cli: Cli, processes: list[subprocess.Popen[str]], python_port: int
) -> None:
    port, inlet_port = free_port(), free_port()
    processes.append(
        background(
            cli, "rendezvous", "create", f"--udp=127.0.0.1:{port}", "--healthcheck=127.0.0.1:0"
        )
    )
    time.sleep(1)
    env = {"MESHKEY_RENDEZVOUS": f"127.0.0.1:{port}"}
    assert cli.run("node", "create", "bob", env=env).returncode == 0
    cli.ok("tcp-outlet", "create", "--at", "bob", "--to", str(python_port))
    assert cli.run("node", "create", "alice", env=env).returncode == 0
    cli.ok(
        "tcp-inlet",
        "create",
        "--at",
        "alice",
        "--udp",
        "--no-tcp-fallback",
        "--from",
        str(inlet_port),
        "--to",
        "/node/bob/secure/api/service/outlet",
    )
    assert head_retrying(cli, inlet_port)
    observers = cli.json("node", "show", "alice")["nat"]["observers"]
    assert f"127.0.0.1:{port}" in observers


# -- secure_channel.bats ----------------------------------------------------------------------


def test_secure_channel__create_secure_channel_and_send_message_through_it(cli: Cli) -> None:
    cli.ok("node", "create", "n1")
    cli.ok("node", "create", "n2")
    channel = cli.ok(
        "secure-channel", "create", "--from", "/node/n1", "--to", "/node/n2/service/api"
    ).strip()
    reply = cli.ok(
        "message",
        "send",
        "hi",
        "--timeout",
        "5",
        "--from",
        "/node/n1",
        "--to",
        f"{channel}/service/uppercase",
    )
    assert reply == "HI\n"
    channel = cli.ok(
        "secure-channel", "create", "--from", "/node/n1", "--to", "/node/n2/service/api"
    )
    reply = cli.ok(
        "message", "send", "yo", "--from", "/node/n1", "--to", "-/service/uppercase", input=channel
    )
    assert reply == "YO\n"
    cli.ok("secure-channel-listener", "create", "n2scl", "--at", "/node/n2")
    channel = cli.ok(
        "secure-channel", "create", "--from", "/node/n1", "--to", "/node/n2/service/n2scl"
    )
    reply = cli.ok(
        "message", "send", "ok", "--from", "/node/n1", "--to", "-/service/uppercase", input=channel
    )
    assert reply == "OK\n"


def test_secure_channel__send_message_directly_using_secure_multiaddr(cli: Cli) -> None:
    cli.ok("node", "create", "n1")
    cli.ok("node", "create", "n2")
    route = "/node/n2/secure/api/service/uppercase"
    assert (
        cli.ok("message", "send", "hi", "--timeout", "5", "--from", "/node/n1", "--to", route)
        == "HI\n"
    )


# -- tcp.bats ---------------------------------------------------------------------------------


def test_tcp__tcp_connection_crud(cli: Cli) -> None:
    address = f"127.0.0.1:{free_port()}"
    cli.ok("node", "create", "n1", "--tcp", address)
    created = cli.ok(
        "tcp-connection", "create", "--from", "n1", "--to", address, "--output", "json"
    )
    assert "n1" in created and address in created
    assert address in cli.ok("tcp-connection", "list", "--at", "n1")
    assert address in cli.ok("tcp-connection", "show", "--at", "n1", address)
    cli.ok("tcp-connection", "delete", "--at", "n1", address, "--yes")
    assert address not in cli.ok("tcp-connection", "list", "--at", "n1")


def test_tcp__tcp_listener_crud(cli: Cli) -> None:
    cli.ok("node", "create", "n1")
    address = f"127.0.0.1:{free_port()}"
    assert re.search(r"/tcp/\d+", cli.ok("tcp-listener", "create", address, "--at", "n1"))
    assert address in cli.ok("tcp-listener", "list", "--at", "n1")
    assert address in cli.ok("tcp-listener", "show", "--at", "n1", address)
    cli.ok("tcp-listener", "delete", "--at", "n1", address, "--yes")
    assert address not in cli.ok("tcp-listener", "list", "--at", "n1")


def test_tcp__create_a_tcp_connection_and_then_delete_it(cli: Cli) -> None:
    address = f"127.0.0.1:{free_port()}"
    cli.ok("node", "create", "n1", "--tcp", address)
    cli.ok("tcp-connection", "create", "--from", "n1", "--to", address, "--output", "json")
