"""``meshkey share`` and ``meshkey connect``: one command each side, by NodeId (issue 22)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import urllib.request
from pathlib import Path

import pytest

from meshkey.cli.errors import ExitCode
from meshkey.node.state import Home

from .conftest import Cli
from .programs import echo_server, http_server

pytestmark = pytest.mark.integration


def round_trip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while data := sock.recv(1 << 16):
            received += data
    return bytes(received)


def works(port: int) -> bool:
    try:
        return round_trip(port, b"x") == b"x"
    except OSError:
        return False


def port_of(listen: str) -> int:
    return int(listen.strip().rpartition(":")[2])


def test_share_and_connect_between_two_daemons(cli: Cli, tmp_path: Path) -> None:
    cli.ok("node", "create", "blue")
    cli.ok("node", "create", "yellow")
    (tmp_path / "file.bin").write_bytes(os.urandom(3 << 20))
    with echo_server() as echo, http_server(tmp_path) as http:
        shared = cli.json("share", str(echo), "--at", "blue")
        ticket = shared["ticket"]
        assert ticket.startswith("mk1") and len(ticket) < 400
        assert cli.ok("share", str(echo), "--at", "blue").strip() == ticket  # the same outlet
        listen = cli.ok("connect", ticket, "--listen", "127.0.0.1:0", "--at", "yellow")
        payload = os.urandom(1 << 20)
        assert round_trip(port_of(listen), payload) == payload

        web = cli.ok("share", f"127.0.0.1:{http}", "--at", "blue").strip()
        inlet = cli.json("connect", web, "--at", "yellow")
        assert inlet["to"].startswith(f"/peer/{cli.node_id('blue')}/secure/api/service/share-")
        url = f"http://{inlet['address']}/file.bin"
        with urllib.request.urlopen(url, timeout=30) as response:
            body = response.read()
        assert (
            hashlib.sha256(body).digest()
            == hashlib.sha256((tmp_path / "file.bin").read_bytes()).digest()
        )
    # yellow had no seeds: it took the ticket's hints (blue itself, which others can dial)
    seeds = json.loads(Home(cli.home).node("yellow").config()["seeds"])
    assert [s.partition("@")[0] for s in seeds] == [cli.node_id("blue")]
    peers = cli.json("peer", "list", "--at", "yellow")["peers"]
    assert cli.node_id("blue") in {p["node_id"] for p in peers}

    # a changed ticket is refused with a clear error, and nothing is opened
    before = len(cli.json("tcp-inlet", "list", "--at", "yellow"))
    middle = len(ticket) // 2
    changed = ticket[:middle] + ("b" if ticket[middle] != "b" else "c") + ticket[middle + 1 :]
    message = cli.fails(ExitCode.USAGE, "connect", changed, "--at", "yellow")
    assert "changed or mistyped" in message
    assert "starts with mk1" in cli.fails(ExitCode.USAGE, "connect", "hello", "--at", "yellow")
    assert len(cli.json("tcp-inlet", "list", "--at", "yellow")) == before


def test_connect_finds_a_relayed_node_through_the_tickets_hints(cli: Cli) -> None:
    """blue is a client of the graph, behind its relay on green (the seed); yellow knows
    nobody: the ticket's hints get it into the graph, the lookup finds blue's record."""
    cli.ok("node", "create", "green")
    udp = cli.address("green", "udp").split("/")
    seed = f"{cli.node_id('green')}@{udp[2]}:{udp[4]}"
    cli.ok("node", "create", "blue", "--seed", seed, "--dht-mode", "client")
    cli.ok("relay", "create", "blue", "--at", "/node/green", "--to", "blue")
    cli.ok("node", "create", "yellow")

    def relayed() -> bool:
        return [r["status"] for r in cli.json("relay", "list", "--to", "blue")] == ["active"]

    cli.wait_for(relayed, "blue's relay on green")
    with echo_server() as echo:
        shared = cli.json("share", str(echo), "--at", "blue")
        hints = shared["hints"]
        assert any(h["relay"] == "blue" for h in hints) and any(h["seed"] for h in hints)
        listen = cli.ok("connect", shared["ticket"], "--at", "yellow", "--timeout", "20s")
        cli.wait_for(lambda: works(port_of(listen)), "the portal", 40)
        payload = os.urandom(256 << 10)
        assert round_trip(port_of(listen), payload) == payload
    assert seed in json.loads(Home(cli.home).node("yellow").config()["seeds"])
