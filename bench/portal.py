"""TCP portal throughput and latency, side by side with plain loopback TCP and ``ssh -L``.

Processes (spawned, so each has its own interpreter and event loop, as daemons would):

* a **sink**: a blocking TCP server that reads to EOF and answers with the byte count, and
  an **echo** server for round trips;
* an **outlet node** (``meshkey.Node`` + :class:`~meshkey.portal.Outlet` to the sink/echo);
* an **inlet node** (``meshkey.Node`` + :class:`~meshkey.portal.Inlet`), whose route is a
  direct UDP (QUIC) hop, a direct TCP (TLS) hop, a secure channel over the UDP hop, or a
  secure channel through a **relay node** (Ockam's forwarder session; kept on the relay with
  ``no_direct``, so every byte crosses three nodes: CPU per GB counts the relay's too).

This process is the client: it sends N bytes with blocking ``sendall``, half-closes, and
waits for the sink's count, so the time covers every byte arriving. The same client runs
against the sink directly (the ceiling) and through ``ssh -L`` to a throwaway ``sshd`` on a
loopback port (temporary host and user keys). CPU seconds per GB are the inlet's and
outlet's node processes' user+system time (from /proc) over the bytes moved.

The reference for the mission's case (a portal through a secure channel over a punched
UDP path) is iroh's core: one QUIC stream between two processes, through iroh's PyPI bindings
in a venv of their own (:func:`iroh_python`; ``bench/iroh_peer.py`` runs there). Ratios to
it, to ``ssh -L`` and between rows are issue 21's targets.

    python -m bench portal [--quick]
    BENCH_PORTAL_ROWS=portal_secure_channel_udp python -m bench portal   # some rows only
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.integration.programs import free_port, ssh_command, throwaway_sshd, wait_for_port

from bench.common import percentile, save, served_in_process

MiB = 1024 * 1024
CHUNK = 1024 * 1024


# -- servers (run in their own processes) -------------------------------------------------


def _serve_blocking(kind: str, ports: Any, stop: Any) -> None:
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    ports.put((server.getsockname()[1], os.getpid()))

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buffer = bytearray(CHUNK)
            if kind == "sink":
                count = 0
                while n := conn.recv_into(buffer):
                    count += n
                conn.sendall(str(count).encode())
            else:
                while n := conn.recv_into(buffer):
                    conn.sendall(memoryview(buffer)[:n])

    def accept_loop() -> None:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    stop.get()


def _relay_node(ports: Any, stop: Any) -> None:
    """A node that only relays: the outlet node registers ``forward_to_outlet`` on it."""
    import asyncio

    import uvloop

    from meshkey.log import configure_logging
    from meshkey.node.core import Node

    configure_logging("warning")
    # The relay node is the user's own here: its bound on what it forwards for one owner
    # (4 MiB/s, against strangers' relays) would measure the bound, not the datapath.
    from meshkey.relay import registry

    registry.RELAY_BYTES_PER_SECOND = registry.RELAY_BURST_BYTES = 1 << 40

    async def main() -> None:
        async with Node(tcp=None) as node:
            ports.put(([str(a) for a in node.addresses], os.getpid()))
            await asyncio.get_running_loop().run_in_executor(None, stop.get)

    uvloop.run(main())


def _outlet_node(sink: int, echo: int, relay: str, ports: Any, stop: Any) -> None:
    import asyncio

    import uvloop

    from meshkey.log import configure_logging
    from meshkey.node.core import Node
    from meshkey.portal import Outlet
    from meshkey.portal.budget import BudgetLimits, PortalBudget

    configure_logging("warning")  # failed sessions say why, on stderr

    async def main() -> None:
        async with Node() as node:
            sink_outlet = Outlet(node.router, "127.0.0.1", sink, name="sink")
            # 1000 idle sessions of one inlet are measured through it: past the 64 sessions
            # an identity may hold by default.
            many = PortalBudget(BudgetLimits(sessions=2048, sessions_per_peer=1024))
            echo_outlet = Outlet(node.router, "127.0.0.1", echo, name="echo_outlet", budget=many)
            await node.create_relay("outlet", relay)  # for the relayed row
            ports.put(([str(a) for a in node.addresses], os.getpid()))
            await asyncio.get_running_loop().run_in_executor(None, stop.get)
            await sink_outlet.close()
            await echo_outlet.close()

    uvloop.run(main())


def _inlet_node(route_to_node: str, mode: str, ports: Any, stop: Any) -> None:
    import asyncio

    import uvloop

    from meshkey.log import configure_logging
    from meshkey.node.core import Node
    from meshkey.portal import Inlet

    configure_logging("warning")
    from meshkey.routing.address import parse_route

    async def main() -> None:
        async with Node(tcp=None) as node:
            base = route_to_node
            if mode == "secure":
                base = await node.create_secure_channel(f"{route_to_node}/service/api")
            elif mode == "relayed":  # Ockam's session: a channel through the relay, kept there
                base = await node.create_secure_channel(
                    f"{route_to_node}/service/api", no_direct=True
                )
            inlets = [
                Inlet(node.router, parse_route(f"{base}/service/{service}"))
                for service in ("sink", "echo_outlet")
            ]
            addresses = [await inlet.listen() for inlet in inlets]
            ports.put(([port for _, port in addresses], os.getpid()))
            await asyncio.get_running_loop().run_in_executor(None, stop.get)
            for inlet in inlets:
                await inlet.close()

    uvloop.run(main())


@contextlib.contextmanager
def spawned(target: Callable[..., None], *args: Any) -> Iterator[tuple[Any, int]]:
    """Like bench.common.served_in_process, but yields (what it put, its pid)."""
    context = multiprocessing.get_context("spawn")
    ports, stop = context.Queue(), context.Queue()
    process = context.Process(target=target, args=(*args, ports, stop), daemon=True)
    process.start()
    try:
        value, pid = ports.get(timeout=60)
        yield value, pid
    finally:
        stop.put(True)
        process.join(5)
        if process.is_alive():
            process.terminate()
            process.join()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the client ---------------------------------------------------------------------------


def transfer(port: int, total: int) -> float:
    """MB/s of sending ``total`` bytes to the sink behind ``port`` until it counted them."""
    payload = memoryview(bytes(CHUNK))
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        started = time.perf_counter()
        for _ in range(total // CHUNK):
            sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while data := sock.recv(64):
            reply += data
        elapsed = time.perf_counter() - started
    assert int(reply) == total, (reply, total)
    return total / elapsed / 1e6


def parallel_transfer(port: int, total: int, streams: int) -> float:
    """Aggregate MB/s of ``streams`` concurrent transfers sharing ``total`` bytes."""
    import threading

    share = max(CHUNK, total // streams // CHUNK * CHUNK)
    started = time.perf_counter()
    threads = [threading.Thread(target=transfer, args=(port, share)) for _ in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return share * streams / (time.perf_counter() - started) / 1e6


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def idle_sessions_rss(port: int, pids: list[int], count: int) -> dict[str, float]:
    """KiB of RSS each node process gains per idle session (one echoed byte, then quiet)."""
    before = [rss_kib(pid) for pid in pids]
    sockets = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(b"!")
            sockets.append(sock)
        for sock in sockets:
            assert sock.recv(1) == b"!"
        time.sleep(1.0)
        after = [rss_kib(pid) for pid in pids]
    finally:
        for sock in sockets:
            sock.close()
    return {
        "sessions": count,
        "inlet_KiB_per_session": round((after[0] - before[0]) / count, 1),
        "outlet_KiB_per_session": round((after[1] - before[1]) / count, 1),
        "inlet_RSS_MiB": round(after[0] / 1024, 1),
        "outlet_RSS_MiB": round(after[1] / 1024, 1),
    }


def round_trips(port: int, count: int) -> dict[str, float]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        message = b"x" * 64
        samples = []
        for i in range(count + 20):
            started = time.perf_counter()
            sock.sendall(message)
            got = 0
            while got < 64:
                got += len(sock.recv(64 - got))
            if i >= 20:  # after a warm-up
                samples.append((time.perf_counter() - started) * 1000)
    return {
        "p50_ms": round(percentile(samples, 0.5), 3),
        "p99_ms": round(percentile(samples, 0.99), 3),
    }


@contextlib.contextmanager
def ssh_tunnel(target_port: int) -> Iterator[int | None]:
    """``ssh -L`` through a throwaway sshd to 127.0.0.1:TARGET; yields the local port."""
    with throwaway_sshd() as sshd:
        if sshd is None:
            yield None
            return
        local_port = free_port()
        forward = f"127.0.0.1:{local_port}:127.0.0.1:{target_port}"
        tunnel = subprocess.Popen(
            ssh_command(sshd, sshd.port, "-N", "-L", forward), stderr=subprocess.DEVNULL
        )
        try:
            wait_for_port(local_port)
            yield local_port
        except TimeoutError:
            yield None
        finally:
            tunnel.terminate()
            tunnel.wait(5)


# -- iroh, the reference for the mission's case ---------------------------------------------

IROH_VERSION = "1.2.0"
IROH_VENV = Path.home() / ".cache" / "meshkey-bench" / f"iroh-{IROH_VERSION}"


def iroh_python() -> Path | None:
    """The interpreter of a venv of its own holding iroh's PyPI bindings (made on first use,
    from the configured package index); None when they cannot be had."""
    python = IROH_VENV / "bin" / "python"
    if not python.exists():
        made = subprocess.run(
            f"python3 -m venv {IROH_VENV} && {IROH_VENV}/bin/pip install -q iroh=={IROH_VERSION}",
            shell=True,
            capture_output=True,
            check=False,
        )
        if made.returncode != 0:
            shutil.rmtree(IROH_VENV, ignore_errors=True)
            return None
    return python


def iroh_row(total: int, rtts: int) -> dict[str, Any]:
    """iroh's core, one QUIC stream between two processes (bench/iroh_peer.py)."""
    python = iroh_python()
    if python is None:
        return {"error": f"iroh {IROH_VERSION} (PyPI) could not be installed"}
    script = Path(__file__).with_name("iroh_peer.py")
    run = subprocess.run(
        [str(python), str(script), "client", str(total), str(rtts)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if run.returncode != 0:
        return {"error": f"iroh failed: {run.stderr.strip().splitlines()[-1:]}"}
    row: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    return row


# -- the suite ----------------------------------------------------------------------------


def _through_portal(
    results: dict[str, Any], name: str, node_address: str, mode: str, node_pids: list[int],
    total: int, rtts: int, extras: bool,
) -> None:  # fmt: skip
    with spawned(_inlet_node, node_address, mode) as ((sink_port, echo_port), inlet_pid):
        transfer(sink_port, 8 * MiB)  # warm-up: connections, QUIC windows
        pids = [inlet_pid, *node_pids]
        cpu_before = sum(cpu_seconds(pid) for pid in pids)
        rate = transfer(sink_port, total)
        cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
        results[name] = {
            "MB_per_s": round(rate, 1),
            "node_cpu_s_per_GB": round(cpu / (total / 1e9), 2),
            "rtt_64B": round_trips(echo_port, rtts),
        }
        if extras:  # idle first: RSS grown by bulk buffers is not given back to the OS
            results[name]["idle"] = idle_sessions_rss(echo_port, pids, 1000)
            for streams in (8, 64):
                aggregate = parallel_transfer(sink_port, total, streams)
                results[name][f"MB_per_s_{streams}_streams"] = round(aggregate, 1)


def _ratio(numerator: float | None, denominator: float | None, digits: int = 2) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, digits)


def ratios(results: dict[str, Any]) -> dict[str, float | None]:
    """Issue 21's targets, as ratios within this run (>= 1.0 meets a throughput target;
    the RTT ratio meets its target at <= 1.0)."""

    def rate(name: str) -> float | None:
        value = results.get(name, {}).get("MB_per_s")
        return float(value) if value is not None else None

    def rtt(name: str) -> float | None:
        value = results.get(name, {}).get("rtt_64B", {}).get("p50_ms")
        return float(value) if value is not None else None

    mission = "portal_secure_channel_udp"
    return {
        "secure_udp_vs_iroh": _ratio(rate(mission), rate("iroh_one_stream")),
        "secure_udp_rtt_vs_iroh": _ratio(rtt(mission), rtt("iroh_one_stream")),
        "tcp_vs_ssh_L": _ratio(rate("portal_direct_tcp"), rate("ssh_L")),
        "secure_udp_vs_ssh_L": _ratio(rate(mission), rate("ssh_L")),
        "relayed_vs_secure_udp": _ratio(rate("portal_secure_channel_relayed"), rate(mission)),
        "udp_vs_quic_hop": _ratio(rate("portal_direct_udp"), rate("quic_hop_messages")),
        "udp_vs_loopback": _ratio(rate("portal_direct_udp"), rate("plain_loopback_tcp"), 3),
    }


def main(*, quick: bool = False) -> None:
    total = (128 if quick else 512) * MiB
    rtts = 300 if quick else 2000
    results: dict[str, Any] = {"bytes": total}
    # BENCH_PORTAL_ROWS=portal_secure_channel_udp,...: only those portal rows (a lever's
    # before and after, without the whole sitting); the references always run.
    selected = {row for row in os.environ.get("BENCH_PORTAL_ROWS", "").split(",") if row}
    with (
        spawned(_serve_blocking, "sink") as (sink, _),
        spawned(_serve_blocking, "echo") as (echo, _),
    ):
        results["plain_loopback_tcp"] = {
            "MB_per_s": round(transfer(sink, total), 1),
            "rtt_64B": round_trips(echo, rtts),
        }
        with ssh_tunnel(sink) as ssh_sink, ssh_tunnel(echo) as ssh_echo:
            if ssh_sink is None or ssh_echo is None:
                results["ssh_L"] = {"error": "could not start a throwaway sshd"}
            else:
                transfer(ssh_sink, 8 * MiB)
                results["ssh_L"] = {
                    "MB_per_s": round(transfer(ssh_sink, total), 1),
                    "rtt_64B": round_trips(ssh_echo, rtts),
                }
        # The hop underneath, alone: 1 MiB messages over one QUIC hop (bench/udp.py's test),
        # so the portal's figure can be read against what its path carries in this run.
        import uvloop

        from bench.udp import _meshkey_send, _meshkey_sink

        with served_in_process(_meshkey_sink, True) as address:
            hop_rate, _ = uvloop.run(_meshkey_send(address, total, True))
        results["quic_hop_messages"] = {"MB_per_s": round(hop_rate, 1)}
        with (
            spawned(_relay_node) as (relay_addresses, relay_pid),
            spawned(_outlet_node, sink, echo, relay_addresses[0]) as (addresses, outlet_pid),
        ):
            udp = next(a for a in addresses if "/udp/" in a)
            tcp = next(a for a in addresses if "/tcp/" in a)
            relayed = f"{relay_addresses[0]}/service/forward_to_outlet"
            for name, address, mode, pids in (
                ("portal_direct_udp", udp, "direct", [outlet_pid]),
                ("portal_direct_tcp", tcp, "direct", [outlet_pid]),
                ("portal_secure_channel_udp", udp, "secure", [outlet_pid]),
                ("portal_secure_channel_relayed", relayed, "relayed", [outlet_pid, relay_pid]),
            ):
                if selected and name not in selected:
                    continue
                extras = name == "portal_direct_udp"
                _through_portal(results, name, address, mode, pids, total, rtts, extras)
    results["iroh_one_stream"] = iroh_row(total, rtts)
    results["ratios"] = ratios(results)
    save("portal", results)
    print(f"one TCP stream, {total // MiB} MiB, client -> [inlet node] -> [outlet node] -> sink")
    print(f"  {'quic_hop_messages':<28} {results['quic_hop_messages']['MB_per_s']:8.1f} MB/s")
    for name in (
        "plain_loopback_tcp",
        "ssh_L",
        "iroh_one_stream",
        "portal_direct_udp",
        "portal_direct_tcp",
        "portal_secure_channel_udp",
        "portal_secure_channel_relayed",
    ):
        entry = results.get(name)
        if entry is None:
            continue
        if "error" in entry:
            print(f"  {name:<28} {entry['error']}")
            continue
        cpu = entry.get("node_cpu_s_per_GB")
        extra = f"  nodes {cpu:5.2f} CPU s/GB" if cpu is not None else ""
        rtt = entry["rtt_64B"]
        print(
            f"  {name:<28} {entry['MB_per_s']:8.1f} MB/s   64 B RTT p50 {rtt['p50_ms']:.3f} ms"
            f" p99 {rtt['p99_ms']:.3f} ms{extra}"
        )
    udp_entry = results.get("portal_direct_udp")
    if udp_entry is None:
        print(f"  ratios: {results['ratios']}")
        return
    print(
        f"  portal_direct_udp, parallel streams: 8 -> {udp_entry['MB_per_s_8_streams']} MB/s,"
        f" 64 -> {udp_entry['MB_per_s_64_streams']} MB/s (aggregate)"
    )
    idle = udp_entry["idle"]
    print(
        f"  {idle['sessions']} idle sessions: inlet +{idle['inlet_KiB_per_session']} KiB/session"
        f" (RSS {idle['inlet_RSS_MiB']} MiB), outlet +{idle['outlet_KiB_per_session']}"
        f" KiB/session (RSS {idle['outlet_RSS_MiB']} MiB)"
    )
    print(f"  ratios: {results['ratios']}")
