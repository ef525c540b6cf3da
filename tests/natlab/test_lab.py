"""The lab itself: the TTL floor, the WAN's loss and counters, conntrack and iptables control,
unique names per run, tear-down, and the sweep of a killed run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import state as run_state
from .lab import Host, Lab, Namespace, NatKind

pytestmark = pytest.mark.natlab

PORT = 5555
REPO = Path(__file__).resolve().parents[2]

# Prints each datagram; once its stdin closes (the sender is done), it drains for GRACE seconds
# more (frames in flight take 20 ms on the WAN) and exits.
RECEIVER = textwrap.dedent(
    """
    import select, socket, sys, time
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", int(sys.argv[1])))
    print("ready", flush=True)
    deadline = None
    while deadline is None or time.monotonic() < deadline:
        waiting = [sock] if deadline else [sock, sys.stdin]
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        readable, _, _ = select.select(waiting, [], [], left)
        if sock in readable:
            print(sock.recv(2048).decode(), flush=True)
        if sys.stdin in readable and not sys.stdin.readline():
            deadline = time.monotonic() + float(sys.argv[2])
    """
)
GRACE = "0.5"
SENDER = textwrap.dedent(
    """
    import socket, sys
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", int(sys.argv[3])))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, int(sys.argv[4]))
    for index in range(int(sys.argv[5])):
        sock.sendto(f"{sys.argv[6]}-{index}".encode(), (sys.argv[1], int(sys.argv[2])))
    """
)


def received(
    sender: Namespace,
    receiver: Namespace,
    *,
    ttl: int = 64,
    count: int = 1,
    tag: str = "x",
    to: str | None = None,
    sport: int = 6000,
) -> list[str]:
    """Datagrams ``receiver`` got of ``count`` that ``sender`` sent to ``to`` (default: the
    receiver's public address), port 5555, with ``ttl``."""
    listener = receiver.popen(
        sys.executable,
        "-c",
        RECEIVER,
        str(PORT),
        GRACE,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout.readline() == "ready\n"
        target = to or (receiver.public_address if isinstance(receiver, Host) else "")
        args = [target, str(PORT), str(sport), str(ttl), str(count), tag]
        sender.run(sys.executable, "-c", SENDER, *args)
        out: str = listener.communicate("", timeout=30)[0]
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    return out.split()


@pytest.fixture(scope="module")
def small(lab: Lab) -> dict[str, Host]:
    return {
        "a": lab.add_public_host("a", "203.0.113.20"),
        "b": lab.add_public_host("b", "198.51.100.20"),
        "eim": lab.add_side("eim", NatKind.EIM),
    }


def test_wan_namespaces_drop_packets_below_the_ttl_floor(lab: Lab, small: dict[str, Host]) -> None:
    a, b = small["a"], small["b"]
    assert received(a, b, ttl=64, tag="normal") == ["normal-0"]
    assert received(a, b, ttl=9, tag="low") == []  # below the default floor of 10
    assert received(a, b, ttl=10, tag="floor") == ["floor-0"]
    b.set_ttl_floor(0)
    try:
        assert received(a, b, ttl=9, tag="low") == ["low-0"]
    finally:
        b.set_ttl_floor(lab.ttl_floor)
    # The same rule guards each router's WAN side: a low-TTL packet to the router dies there.
    router = small["eim"].router
    assert router is not None
    assert received(a, router, ttl=9, to=router.wan_address) == []
    assert received(a, router, ttl=64, to=router.wan_address, tag="ok") == ["ok-0"]


def test_wan_loss_is_applied_at_run_time_and_counted(lab: Lab, small: dict[str, Host]) -> None:
    a, b = small["a"], small["b"]
    assert received(a, b, tag="warm") == ["warm-0"]  # ARP settled, MACs learned
    lab.wan.reset_counters()
    with lab.wan.impaired(["b"], loss=100):
        assert [p["loss"] for p in lab.wan.settings() if p["label"] == "b"] == [100.0]
        assert received(a, b, count=50, tag="lost") == []
    counters = lab.wan.counters()
    assert counters["a"]["frames_in"] >= 50
    assert counters["b"]["lost_out"] >= 50 and counters["b"]["frames_out"] == 0
    assert [p["loss"] for p in lab.wan.settings() if p["label"] == "b"] == [0.0]  # restored
    got = received(a, b, count=50, tag="kept")
    assert sorted(got) == sorted(f"kept-{i}" for i in range(50))
    assert lab.wan.counters()["b"]["frames_out"] >= 50
    settings = lab.wan.set(["a"], delay_ms=25, reorder=10, rate_mbit=50)
    assert (settings[0]["delay_ms"], settings[0]["reorder"], settings[0]["rate_mbit"]) == (
        25.0,
        10.0,
        50.0,
    )
    lab.wan.set(["a"], delay_ms=lab.delay_ms, reorder=0, rate_mbit=None)
    with pytest.raises(Exception, match="loss is a percentage"):
        lab.wan.set(["a"], loss=150)


def test_conntrack_mappings_and_iptables_rules_of_a_router(small: dict[str, Host]) -> None:
    host, public = small["eim"], small["a"]
    router = host.router
    assert router is not None
    assert received(host, public, sport=6001, tag="out") == ["out-0"]
    [mapping] = router.mappings(host, 6001)
    assert mapping.original.dst == public.address and mapping.public == (router.wan_address, 6001)
    assert router.conntrack_delete("-p", "udp", "--orig-src", host.address, "--sport", "6001") == 1
    assert router.mappings(host, 6001) == []
    assert router.conntrack_delete("-p", "udp", "--orig-src", host.address, "--sport", "6001") == 0
    with router.rule("-p", "udp", "--dport", str(PORT), "-j", "DROP"):
        assert received(host, public, sport=6002, tag="blocked") == []
    assert received(host, public, sport=6002, tag="open") == ["open-0"]
    router.set_udp_timeouts(17, 33)
    assert router.udp_timeouts() == (17, 33)


def test_two_runs_never_collide_and_close_removes_everything(
    lab: Lab, small: dict[str, Host]
) -> None:
    with Lab() as other:
        twin = other.add_public_host("a", "203.0.113.20")  # same lab name, same address
        assert other.run_id != lab.run_id and twin.netns != small["a"].netns
        assert {twin.netns, small["a"].netns} <= set(run_state.list_netns())
        assert other.state is not None
        switch_pid, switch_start = other.state.switch_pid, other.state.switch_start
        state_file, workdir = other.state.path, other.workdir
        assert state_file.exists() and workdir.is_dir()
    assert twin.netns not in run_state.list_netns()
    assert small["a"].netns in run_state.list_netns()  # the first run is untouched
    assert not run_state.alive(switch_pid, switch_start)
    assert not state_file.exists() and not workdir.exists()
    assert received(small["a"], small["b"], tag="still") == ["still-0"]


KILLED_RUN = textwrap.dedent(
    """
    import json, time
    from tests.natlab import Lab, NatKind
    lab = Lab()
    lab.start()
    host = lab.add_side("victim", NatKind.EIM)
    node = host.create_node("n")
    daemon = int((host.home / "nodes" / "n" / "daemon.pid").read_text())
    print(json.dumps({"run_id": lab.run_id, "daemon": daemon}), flush=True)
    time.sleep(600)
    """
)


@pytest.fixture
def killed_run() -> Iterator[dict[str, int | str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        facts = json.loads(process.stdout.readline())
        os.kill(process.pid, signal.SIGKILL)  # no finalizer, no atexit: as if killed by CI
        process.wait()
        yield facts
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        run_state.sweep()


def test_the_sweep_removes_what_a_killed_run_left(killed_run: dict[str, int | str]) -> None:
    run_id, daemon = str(killed_run["run_id"]), int(killed_run["daemon"])
    [left] = [s for s in run_state.load_all() if s.run_id == run_id]
    assert not left.owner_alive()
    names = set(left.namespaces)
    assert names == {f"nl-{run_id}-victim", f"nl-{run_id}-victim-nat"}
    assert names <= set(run_state.list_netns())
    assert Path(f"/proc/{daemon}").exists()  # its daemon still runs inside the namespace
    # The switch noticed its owner die and left by itself (its TAP devices with it).
    deadline = time.monotonic() + 10
    while run_state.alive(left.switch_pid, left.switch_start) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not run_state.alive(left.switch_pid, left.switch_start)
    swept = run_state.sweep()
    assert f"netns nl-{run_id}-victim" in swept[run_id]
    assert not names & set(run_state.list_netns())
    assert not Path(f"/proc/{daemon}").exists() or run_state.zombie(daemon)
    assert run_id not in {s.run_id for s in run_state.load_all()}
    assert not Path(left.workdir).exists()
