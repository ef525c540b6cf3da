"""No amplifier, no open dialler (issue 19: items 3, 6, 7a and the relay host's names), each
mounted against real daemons: what the node sends on an attacker's say-so stays within three
times what the attacker sent, goes nowhere a stranger picks, and a fresh client still gets in.

Bytes "sent on Mallory's say-so" are counted where they land: UDP sockets of this test stand
for the victims Mallory names. Bytes Mallory sent are counted as the payloads of its messages
(the secure channel, QUIC and UDP add more: the factor reported is an upper bound)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time

import pytest

from meshkey import Node
from meshkey.cli.errors import ExitCode
from meshkey.identity import Identity
from meshkey.nat.allowance import AMPLIFICATION
from meshkey.routing.address import ServiceAddress, TransportAddress, parse_address, parse_route
from meshkey.routing.message import Message
from meshkey.transport.blocking import BlockingHop
from meshkey.transport.interfaces import interface_addresses, is_loopback
from meshkey.wire.net import Endpoint, NatClass
from meshkey.wire.paths import PunchSignal, encode_path_signal
from meshkey.wire.punch import Capability, Connect, Sync, encode_punch_message

from .conftest import Cli

pytestmark = pytest.mark.integration


class Victims:
    """UDP sockets on loopback addresses that run no meshkey: what lands there is counted."""

    def __init__(self, count: int, first_host: int = 20) -> None:
        self.sockets = []
        for index in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((f"127.0.0.{first_host + index}", 0))
            sock.setblocking(False)
            self.sockets.append(sock)
        self.received = [0] * count

    @property
    def addresses(self) -> list[Endpoint]:
        return [(str(s.getsockname()[0]), int(s.getsockname()[1])) for s in self.sockets]

    def drain(self) -> None:
        for index, sock in enumerate(self.sockets):
            while True:
                try:
                    self.received[index] += len(sock.recv(65536))
                except BlockingIOError:
                    break

    async def collect(self, seconds: float) -> int:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.drain()
            await asyncio.sleep(0.02)
        self.drain()
        return sum(self.received)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def punch_signal(message: Connect | Sync) -> bytes:
    return encode_path_signal(PunchSignal(encode_punch_message(message)))


def foreign_connect(victims: list[Endpoint]) -> Connect:
    return Connect(
        os.urandom(16),
        reply=False,
        key_share=os.urandom(32),
        nat_class=NatClass.ENDPOINT_INDEPENDENT,
        local=tuple(victims[:8]),
        reflexive=tuple(victims[8:16]),
        capabilities=frozenset({Capability.BIRTHDAY}),
    )


async def test_a_punch_connect_naming_foreign_addresses_amplifies_at_most_three_times(
    cli: Cli,
) -> None:
    """The finding: one 406-byte CONNECT naming 16 foreign addresses made a node send 760
    probes there (120x); one a second kept it at 366 probes/s."""
    cli.ok("node", "create", "blue")
    blue = cli.address("blue", "udp")
    victims = Victims(16)
    try:
        async with Node(tcp=None) as mallory:
            channel = await mallory.create_secure_channel(f"{blue}/service/api")
            to_paths = parse_route(f"{channel}/service/_paths")
            sent = 0
            for _ in range(5):  # a CONNECT (and the SYNC that starts it) a second
                connect = foreign_connect(victims.addresses)
                for signal in (punch_signal(connect), punch_signal(Sync(connect.punch_id))):
                    sent += len(signal)
                    await mallory.router.route(Message(to_paths, (), signal))
                await victims.collect(1.0)
            landed = await victims.collect(6.0)
        assert landed > 0, "the first claimed address is still tried"
        assert landed <= AMPLIFICATION * sent, (landed, sent)
        # Of the public addresses only the first: the others never get a packet.
        assert victims.received[9:] == [0] * 7
    finally:
        victims.close()


def non_loopback_address() -> str:
    found = next((a for a in interface_addresses() if not is_loopback(a)), None)
    if found is None:
        pytest.skip("needs an address that is not loopback (a stranger seen from off host)")
    return found


async def test_a_stranger_cannot_make_a_node_dial_an_address_of_its_choosing(cli: Cli) -> None:
    """The finding: a stranger's message made a node open TCP (a TLS ClientHello) or QUIC
    (11 Initials) to any address it named. Mallory reaches green from a non-loopback address,
    as from another host; the victim is a UDP socket and a TCP listener."""
    host = non_loopback_address()
    cli.ok("node", "create", "green", "--udp", f"{host}:0", "--tcp", f"{host}:0")
    green = cli.address("green", "udp")
    udp_victim = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_victim.bind((host, 0))
    udp_victim.settimeout(0.5)
    tcp_victim = socket.socket()
    tcp_victim.bind((host, 0))
    tcp_victim.listen(8)
    tcp_victim.settimeout(0.5)
    try:
        async with Node(tcp=None, udp=f"{host}:0") as mallory:  # from host, not loopback
            routes = [
                f"{green}/ip4/{host}/udp/{udp_victim.getsockname()[1]}/service/echo",
                f"{green}/ip4/{host}/tcp/{tcp_victim.getsockname()[1]}/service/echo",
            ]
            for route in routes:
                with pytest.raises(Exception, match="opens no new connection") as refused:
                    await mallory.send(route, b"x", timeout=5)
                assert "forward" in str(refused.value)  # it says how to allow it
            with pytest.raises(TimeoutError):
                udp_victim.recv(65536)
            with pytest.raises(TimeoutError):
                tcp_victim.accept()
            # Allowed by a forward policy, mallory may (the victim then sees QUIC Initials).
            cli.ok("policy", "create", "--at", "green", "--resource", "forward", "--allow",
                   str(mallory.node_id))  # fmt: skip
            with contextlib.suppress(Exception):
                await mallory.send(routes[0], b"x", timeout=2)
            assert len(udp_victim.recv(65536)) >= 1200
            # And green still forwards over connections it has: to mallory's own, say.
            assert await mallory.send(f"{green}/service/echo", b"ok") == b"ok"
    finally:
        udp_victim.close()
        tcp_victim.close()


def test_slowloris_from_many_addresses_does_not_lock_out_fresh_clients(cli: Cli) -> None:
    """The finding: fresh TCP clients got 2 of 35 connections while 250 source IPs held
    slowloris sockets (the stranger limits, 256 in all and 8 per IP, were taken)."""
    cli.ok("node", "create", "blue")
    address = parse_address(cli.address("blue", "tcp"))
    assert isinstance(address, TransportAddress)
    stop = threading.Event()
    held: list[socket.socket] = []

    def slowloris() -> None:
        index = 0
        while not stop.is_set():
            sock = socket.socket()
            sock.bind((f"127.0.1.{1 + index % 250}", 0))  # 250 source IPs
            index += 1
            try:
                sock.connect(address.endpoint)
                held.append(sock)  # never says a word
            except OSError:
                sock.close()
            time.sleep(0.005)  # ~200 new connections a second, for as long as it runs

    attacker = threading.Thread(target=slowloris, daemon=True)
    attacker.start()
    try:
        time.sleep(2.0)  # the limits are taken
        served = 0
        for _ in range(35):
            try:
                with BlockingHop(Identity.generate(), address, timeout=5) as hop:
                    request = Message((ServiceAddress("echo"),), (ServiceAddress("me"),), b"hi")
                    hop.send(request.to_wire())
                    if Message.from_wire(hop.receive(5)).payload == b"hi":
                        served += 1
            except Exception:
                continue
        assert served == 35, f"{served} of 35 fresh clients served"
        status = cli.json("node", "show", "blue")
        assert status["unauthenticated"]["tcp"] <= 256
    finally:
        stop.set()
        attacker.join(10)
        for sock in held:
            sock.close()


def test_an_automatic_relay_name_cannot_be_squatted(cli: Cli) -> None:
    for node in ("blue", "green", "mallory"):
        cli.ok("node", "create", node)
    name = f"a.{cli.node_id('blue')[2:28]}.{cli.node_id('green')[2:10]}"
    refused = cli.fails(
        ExitCode.REFUSED, "relay", "create", name, "--at", "/node/green", "--to", "mallory"
    )
    assert "reserved" in refused
    cli.ok("relay", "create", name, "--at", "/node/green", "--to", "blue")
