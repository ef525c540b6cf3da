"""TCP portals made with the CLI, between real node daemons, used by real programs.

The README's session (blue behind a relay on green, yellow outside), then
``tcp-outlet create --at /node/blue`` and ``tcp-inlet create --at /node/yellow`` with a
``/secure/api`` route: psql, ssh and curl through them; green's capture (everything it routes,
after hop decryption) never holds the bytes. Persistence across ``node stop``/``node start``,
``--allow``, refusals, a relay killed mid-transfer, ``--insecure``, ``/secure/`` in
``message send``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshkey.cli.errors import ExitCode

from .conftest import Cli
from .programs import echo_server, free_port, http_server, postgres, ssh_command, throwaway_sshd

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
TO_BLUE = "/node/green/service/forward_to_blue"
SECURE_OUTLET = f"{TO_BLUE}/secure/api/service/outlet"


def captured(path: Path) -> list[bytes]:
    """The messages a daemon started with MESHKEY_CAPTURE=path routed."""
    data, messages = path.read_bytes(), []
    while data:
        (size,) = struct.unpack("!I", data[:4])
        messages.append(data[4 : 4 + size])
        data = data[4 + size :]
    return messages


@dataclass
class Readme:
    cli: Cli
    capture: Path  # green's


def readme_session(cli: Cli, tmp_path: Path, *options: str) -> Readme:
    """The README's session: blue, green (capturing), yellow; blue's relay on green.
    ``options`` go to every ``node create`` (``--no-direct``: traffic stays on the relay)."""
    capture = tmp_path / "green.capture"
    cli.ok("node", "create", "blue", *options)
    cli.ok("node", "create", "green", *options, env={"MESHKEY_CAPTURE": str(capture)})
    cli.ok("node", "create", "yellow", *options)
    assert cli.ok("relay", "create", "blue", "--at", "/node/green", "--to", "/node/blue") == (
        "/service/forward_to_blue\n"
    )
    return Readme(cli, capture)


@pytest.fixture
def readme(cli: Cli, tmp_path: Path) -> Readme:
    """The README's session as written (channels may move to a direct path)."""
    return readme_session(cli, tmp_path)


@pytest.fixture
def relayed(cli: Cli, tmp_path: Path) -> Readme:
    """The README's session with every node ``--no-direct``: all traffic crosses green."""
    return readme_session(cli, tmp_path, "--no-direct")


def inlet(cli: Cli, *args: str) -> tuple[str, int]:
    """``tcp-inlet create ARGS``; the host and port it listens on."""
    host, _, port = cli.ok("tcp-inlet", "create", *args).strip().rpartition(":")
    return host, int(port)


def round_trip(port: int, payload: bytes, timeout: float = 10) -> bytes:
    """Sends ``payload`` to 127.0.0.1:PORT, half-closes, reads to the end."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while data := sock.recv(1 << 16):
            received += data
    return bytes(received)


def closed_without_reply(port: int, timeout: float) -> bool:
    """Connects, says something, and sees the connection end (EOF or reset) in time; a
    socket timeout (a hang) raises."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(b"anyone there?")
            return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def run(*command: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(command, capture_output=True, timeout=timeout, check=False)


# -- the README session: psql, and what the relay sees --------------------------------------


@pytest.mark.skipif(not shutil.which("psql"), reason="no psql client")
@pytest.mark.parametrize("options", [(), ("--no-direct",)], ids=["as-written", "no-direct"])
def test_psql_through_the_readme_session_and_green_sees_no_sql(
    cli: Cli, tmp_path: Path, options: tuple[str, ...]
) -> None:
    """As written, the channel may move to a direct path under the portal (it must keep
    working); with --no-direct every byte crosses green, and green's capture shows it."""
    readme = readme_session(cli, tmp_path, *options)
    with postgres() as (pg_port, why):
        if pg_port is None:
            pytest.skip(f"cannot run a throwaway PostgreSQL here: {why}")
        assert cli.ok("tcp-outlet", "create", "--at", "/node/blue", "--to", f"127.0.0.1:{pg_port}")
        port = free_port()
        readme.capture.write_bytes(b"")  # from here on: only the portal's traffic
        assert inlet(
            cli, "--at", "/node/yellow", "--from", f"127.0.0.1:{port}", "--to", SECURE_OUTLET
        ) == ("127.0.0.1", port)
        sql = (
            "CREATE TABLE animals (name text); "
            "INSERT INTO animals VALUES ('heron'), ('otter'); "
            "SELECT name FROM animals ORDER BY name;"
        )
        psql = ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "meshkey", "-d", "postgres"]
        done = run(*psql, "-X", "-q", "-A", "-t", "-c", sql)
        assert done.returncode == 0, done.stderr
        assert done.stdout.decode().split() == ["heron", "otter"]
        # A second client, a second session on the same channel.
        again = run(*psql, "-X", "-A", "-t", "-c", "SELECT count(*) FROM animals")
        assert again.stdout.decode().strip() == "2", again.stderr
    messages = captured(readme.capture)
    assert messages, "green routed the portal's traffic"
    for secret in (b"animals", b"heron", b"otter", b"CREATE TABLE", b"SELECT"):
        assert not any(secret in m for m in messages), secret
    shown = cli.json("tcp-inlet", "show", f"127.0.0.1:{port}")
    if options:  # every byte each way went through green, sealed
        carried = shown["bytes_to_outlet"] + shown["bytes_from_outlet"]
        assert sum(len(m) for m in messages) > carried
    assert shown["sessions_total"] == 2 and shown["sessions_failed"] == 0
    assert shown["bytes_to_outlet"] > len(sql) and shown["bytes_from_outlet"] > 0
    assert shown["route"].startswith("/service/") and shown["to"] == SECURE_OUTLET
    outlet = cli.json("tcp-outlet", "show", "outlet", "--at", "blue")
    assert outlet["bytes_to_server"] == shown["bytes_to_outlet"]
    assert outlet["bytes_from_server"] == shown["bytes_from_outlet"]


def test_records_have_one_schema_and_the_cli_spellings_work(readme: Readme) -> None:
    cli = readme.cli
    with echo_server() as echo:
        created = cli.json(
            "tcp-outlet", "create", "--at", "blue", "--to", str(echo), "--from", "/service/echo2"
        )
        assert created["address"] == "/service/echo2" and created["alias"] == "echo2"
        assert created["to"] == f"127.0.0.1:{echo}"  # a bare port: 127.0.0.1
        (listed,) = cli.json("tcp-outlet", "list")
        shown = cli.json("tcp-outlet", "show", "/service/echo2")
        assert created.keys() == listed.keys() == shown.keys()
        made = cli.json(
            "tcp-inlet",
            "create",
            "--at",
            "/node/yellow",
            "--from",
            "0",
            "--alias",
            "echo",
            "--to",
            f"{TO_BLUE}/secure/api/service/echo2",
        )
        assert made["alias"] == "echo" and made["status"] == "listening"
        port = int(made["address"].rpartition(":")[2])
        assert round_trip(port, b"spelled like Ockam") == b"spelled like Ockam"
        (listed_inlet,) = cli.json("tcp-inlet", "list", "--at", "yellow")
        shown_inlet = cli.json("tcp-inlet", "show", "echo")
        assert made.keys() == listed_inlet.keys() == shown_inlet.keys()
        assert shown_inlet["sessions_total"] == 1 and shown_inlet["bytes_from_outlet"] == 18
        table = cli.ok("tcp-inlet", "list")
        assert "echo" in table and "listening" in table and "18 B" in table
        # Errors: one line each, with their exit codes.
        cli.fails(ExitCode.USAGE, "tcp-outlet", "create", "--at", "blue", "--to", "nowhere:x")
        cli.fails(
            ExitCode.CONFLICT,
            "tcp-outlet",
            "create",
            "--at",
            "blue",
            "--to",
            "1",
            "--from",
            "echo2",
        )
        cli.fails(
            ExitCode.CONFLICT,
            "tcp-inlet",
            "create",
            "--at",
            "yellow",
            "--alias",
            "echo",
            "--to",
            "/node/blue/service/echo2",
        )
        cli.fails(
            ExitCode.USAGE, "tcp-inlet", "create", "--at", "yellow", "--to", "/node/blue/secure/"
        )
        cli.fails(ExitCode.NOT_FOUND, "tcp-inlet", "show", "nope")
        # A route that does not answer yet is no error: the inlet listens, and says why.
        late = cli.run(
            "tcp-inlet", "create", "--at", "yellow", "--to", "/node/green/secure/nope/service/x"
        )
        assert late.returncode == 0 and late.stdout.startswith("127.0.0.1:"), late.stderr
        assert late.stderr.startswith("warning: ") and "nope" in late.stderr
        cli.ok("tcp-inlet", "delete", late.stdout.strip(), "--at", "yellow")
        cli.fails(ExitCode.NOT_FOUND, "tcp-outlet", "delete", "nope", "--at", "blue")
        assert "deleted" in cli.ok("tcp-inlet", "delete", "echo")
        assert "deleted" in cli.ok("tcp-outlet", "delete", "echo2")
        assert cli.json("tcp-inlet", "list") == [] and cli.json("tcp-outlet", "list") == []
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


# -- ssh and curl -------------------------------------------------------------------------


@pytest.mark.skipif(not shutil.which("ssh"), reason="no ssh client")
def test_ssh_runs_a_remote_command_through_a_cli_portal(blue_green: Cli) -> None:
    cli = blue_green
    with throwaway_sshd() as sshd:
        if sshd is None:
            pytest.skip("cannot start a throwaway sshd (no /usr/sbin/sshd or ssh-keygen)")
        cli.ok("tcp-outlet", "create", "--at", "blue", "--to", str(sshd.port), "--from", "ssh")
        # One hop between the two nodes: end to end already (mutually authenticated TLS/QUIC).
        _, port = inlet(cli, "--at", "green", "--to", "/node/blue/service/ssh")
        done = run(*ssh_command(sshd, port), "echo", "through", "meshkey")
        assert done.returncode == 0, done.stderr
        assert done.stdout == b"through meshkey\n"


@pytest.mark.skipif(not shutil.which("curl"), reason="no curl")
def test_curl_downloads_100_MiB_intact_through_a_cli_portal(
    blue_green: Cli, tmp_path: Path
) -> None:
    cli = blue_green
    served = tmp_path / "www"
    served.mkdir()
    big = served / "big.bin"
    digest = hashlib.sha256()
    with big.open("wb") as file:
        for _ in range(100):
            chunk = os.urandom(MiB)
            digest.update(chunk)
            file.write(chunk)
    with http_server(served) as http_port:
        cli.ok("tcp-outlet", "create", "--at", "blue", "--to", f"127.0.0.1:{http_port}")
        _, port = inlet(cli, "--at", "green", "--to", "/node/blue/secure/api/service/outlet")
        target = tmp_path / "downloaded.bin"
        done = run(
            "curl", "-sSf", "-o", str(target), f"http://127.0.0.1:{port}/big.bin", timeout=180
        )
        assert done.returncode == 0, done.stderr
        downloaded = hashlib.sha256()
        with target.open("rb") as file:
            while chunk := file.read(MiB):
                downloaded.update(chunk)
        assert downloaded.hexdigest() == digest.hexdigest()
    shown = cli.json("tcp-inlet", "show", str(port))
    assert shown["bytes_from_outlet"] > 100 * MiB


# -- persistence ----------------------------------------------------------------------------


def test_inlets_and_outlets_survive_a_restart_of_their_node(blue_green: Cli) -> None:
    cli = blue_green
    with echo_server() as echo:
        cli.ok(
            "tcp-outlet",
            "create",
            "--at",
            "blue",
            "--to",
            str(echo),
            "--alias",
            "web",
            "--allow",
            "green",
        )
        _, port = inlet(
            cli, "--at", "green", "--alias", "db", "--to", "/node/blue/secure/api/service/outlet"
        )
        assert round_trip(port, b"before") == b"before"
        before = cli.json("tcp-inlet", "show", "db"), cli.json("tcp-outlet", "show", "web")
        for node in ("blue", "green"):
            cli.ok("node", "stop", node)
            cli.ok("node", "start", node)
        inlet_after, outlet_after = (
            cli.json("tcp-inlet", "show", "db"),
            cli.json("tcp-outlet", "show", "web"),
        )
        for key in ("alias", "address", "to", "authorized", "insecure", "created_at"):
            assert inlet_after[key] == before[0][key], key
        for key in ("alias", "address", "to", "allow", "insecure", "created_at"):
            assert outlet_after[key] == before[1][key], key
        assert outlet_after["allow"] == [cli.node_id("green")]
        assert inlet_after["status"] == "listening" and inlet_after["sessions_total"] == 0
        cli.wait_for(
            lambda: _works(port, b"after a restart"), "the restored portal to carry bytes", 30
        )


def _works(port: int, payload: bytes) -> bool:
    try:
        return round_trip(port, payload, timeout=5) == payload
    except OSError:
        return False


# -- refusals -------------------------------------------------------------------------------


def test_an_identity_not_in_allow_is_refused_and_an_allowed_one_served(readme: Readme) -> None:
    cli = readme.cli
    with echo_server() as echo:
        cli.ok("tcp-outlet", "create", "--at", "blue", "--to", str(echo), "--allow", "green")
        _, port = inlet(cli, "--at", "yellow", "--to", SECURE_OUTLET)
        assert closed_without_reply(port, timeout=5)
        outlet = cli.json("tcp-outlet", "show", "outlet")
        assert outlet["refused"] == 1 and "not allowed" in outlet["last_error"]
        assert "not allowed" in cli.json("tcp-inlet", "show", str(port))["last_error"]
        cli.ok("tcp-outlet", "delete", "outlet")
        cli.ok("tcp-outlet", "create", "--at", "blue", "--to", str(echo), "--allow", "yellow")
        assert round_trip(port, b"now allowed") == b"now allowed"


def test_a_refused_outlet_closes_the_clients_connection_within_a_second(
    readme: Readme,
) -> None:
    cli = readme.cli
    nothing_there = free_port()
    cli.ok("tcp-outlet", "create", "--at", "blue", "--to", str(nothing_there))
    _, port = inlet(cli, "--at", "yellow", "--to", SECURE_OUTLET)
    assert closed_without_reply(port, timeout=1.0)
    assert "connection refused" in cli.json("tcp-inlet", "show", str(port))["last_error"]
    assert "connection refused" in cli.json("tcp-outlet", "show", "outlet")["last_error"]


def test_a_route_through_other_nodes_needs_a_secure_channel_or_insecure(
    readme: Readme,
) -> None:
    cli = readme.cli
    in_the_clear = f"{TO_BLUE}/service/outlet"
    with echo_server() as echo:
        cli.ok("tcp-outlet", "create", "--at", "blue", "--to", str(echo))
        error = cli.fails(
            ExitCode.USAGE, "tcp-inlet", "create", "--at", "yellow", "--to", in_the_clear
        )
        assert f"{TO_BLUE}/secure/api/service/outlet" in error and "--insecure" in error
        # Forced: the inlet sends, but the outlet will not serve what crossed green in the
        # clear unless it too says so.
        _, port = inlet(cli, "--at", "yellow", "--insecure", "--to", in_the_clear)
        assert closed_without_reply(port, timeout=5)
        assert "secure channel" in cli.json("tcp-outlet", "show", "outlet")["last_error"]
        cli.ok(
            "tcp-outlet",
            "create",
            "--at",
            "blue",
            "--to",
            str(echo),
            "--from",
            "plain",
            "--insecure",
        )
        _, plain = inlet(cli, "--at", "yellow", "--insecure", "--to", f"{TO_BLUE}/service/plain")
        readme.capture.write_bytes(b"")
        assert round_trip(plain, b"postcard text") == b"postcard text"
        # The control: green did see these bytes (so the capture shows what it would see).
        assert any(b"postcard text" in m for m in captured(readme.capture))
    # A single hop is end to end: no channel and no --insecure needed.
    cli.ok("tcp-inlet", "create", "--at", "yellow", "--to", "/node/blue/service/outlet")


# -- a relay that dies ------------------------------------------------------------------------


def relay_status(cli: Cli) -> str:
    status: str = cli.json("relay", "show", "blue", "--at", "blue")["status"]
    return status


def test_the_relay_killed_mid_transfer_gives_a_clear_error_and_the_inlet_lives_on(
    relayed: Readme,
) -> None:
    """--no-direct: the channel stays on the relay (otherwise it may have moved to a direct
    path, and green's death would not touch the portal at all)."""
    cli = relayed.cli
    with echo_server() as echo:
        cli.ok("tcp-outlet", "create", "--at", "blue", "--to", str(echo))
        _, port = inlet(cli, "--at", "yellow", "--to", SECURE_OUTLET)
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(b"x" * MiB)
            received = 0
            while received < MiB:
                received += len(sock.recv(1 << 16))  # flowing through the relay
            stop = threading.Event()

            def keep_sending() -> None:
                with contextlib.suppress(OSError):
                    while not stop.is_set():
                        sock.sendall(b"y" * 65536)

            sender = threading.Thread(target=keep_sending, daemon=True)
            sender.start()
            green_pid = cli.json("node", "show", "green")["pid"]
            os.kill(green_pid, signal.SIGKILL)  # the relay dies with data in flight
            # It ends, with EOF or a reset; the socket's timeout (TimeoutError, not a
            # ConnectionError) would fail the test if it hung.
            with contextlib.suppress(ConnectionError):
                while sock.recv(1 << 16):
                    pass
            stop.set()
            sender.join(5)
        shown = cli.json("tcp-inlet", "show", str(port))
        assert shown["status"] == "listening"
        assert shown["sessions_failed"] >= 1
        # e.g. "route error: secure channel … is unreachable: cannot connect to /ip4/…: …"
        assert "route" in shown["last_error"] or "timeout" in shown["last_error"]
        # While green is down the inlet still listens, and a client is turned away promptly.
        assert closed_without_reply(port, timeout=30)
        reason = cli.json("tcp-inlet", "show", str(port))["last_error"]
        assert "green" in reason or "unreachable" in reason, reason  # "node 'green' is not…"
        # Blue notices (its relay keepalive), green comes back, the same inlet works again.
        cli.wait_for(lambda: relay_status(cli) != "active", "blue to notice green died", 90)
        cli.ok("node", "start", "green")
        cli.wait_for(lambda: _works(port, b"again"), "the inlet to work again", 120)
    log = cli.log("yellow")
    assert "portal.session_failed" in log or "portal.inlet_route_failed" in log
    assert "Traceback" not in log


# -- /secure/ in message send ---------------------------------------------------------------


def test_secure_routes_in_message_send(readme: Readme) -> None:
    cli = readme.cli
    route = f"{TO_BLUE}/secure/api/service/uppercase"
    readme.capture.write_bytes(b"")
    assert cli.ok("message", "send", "hello", "--to", route, "--from", "yellow") == "HELLO\n"
    assert cli.ok("message", "send", "again", "--to", route, "--from", "yellow") == "AGAIN\n"
    messages = captured(readme.capture)
    assert messages and not any(b"hello" in m or b"HELLO" in m for m in messages)
    channels: list[dict[str, Any]] = cli.json("secure-channel", "list", "--at", "yellow")
    assert [c["role"] for c in channels] == ["initiator"]  # reused, not one per message
    # Without --from, a route that starts at a running local node is sent by that node.
    assert cli.ok("message", "send", "short-lived", "--to", route) == "SHORT-LIVED\n"
    # Nested: a channel to green, and inside it one to blue through the relay.
    nested = "/node/green/secure/api/service/forward_to_blue/secure/api/service/uppercase"
    assert cli.ok("message", "send", "nested", "--to", nested, "--from", "yellow") == "NESTED\n"
    cli.fails(
        ExitCode.NOT_FOUND,
        "message",
        "send",
        "x",
        "--from",
        "yellow",
        "--to",
        f"{TO_BLUE}/secure/nope/service/echo",
    )
    # A channel can be created through a /secure/ route, too (a channel inside a channel).
    address = cli.ok(
        "secure-channel",
        "create",
        "--from",
        "yellow",
        "--to",
        "/node/green/secure/api/node/blue/service/api",
    ).strip()
    assert (
        cli.ok(
            "message", "send", "inner", "--from", "yellow", "--to", f"{address}/service/uppercase"
        )
        == "INNER\n"
    )
