"""Relays through real kernel NATs (the NAT lab, as root): set-up time and round trip, per
NAT kind, next to the floor the WAN's configured delay sets.

For each kind (public, EIM, EDM, UDP-blocked), blue and yellow daemons sit on that side's
host, behind that side's router, and the relay node on a public host (UDP hops, TCP where the
router blocks UDP). Measured through the daemons' control sockets, so no CLI start-up is in
the figures:

- relay set-up: a fresh blue daemon (no connection yet) is told ``relay.create``; the clock
  runs from that call until yellow (already connected to the relay) has the first reply from
  blue through the relay. It includes blue's hop handshake through its NAT, the registration,
  and one relayed round trip.
  ``relay.create`` alone (until the registration is confirmed) is shown beside it.
- round trip: yellow sends 64 bytes to blue's echo through the relay, timed inside yellow's
  daemon (``elapsed``, from the event loop's clock: whole milliseconds under uvloop), one at
  a time.
- floor: a relayed round trip crosses the WAN four times (yellow to relay, relay to blue and
  back), each crossing two switch ports, so with the default 10 ms per port it is 80 ms; the
  WAN RTT between two NATed hosts (one crossing each way) is half that.

    python -m bench natlab [--quick]
"""

from __future__ import annotations

import os
import time
from typing import Any

from tests.natlab import Lab, MeshkeyNode, NatKind, standard_lab_hosts

from bench.common import save, summary
from meshkey.node.control_client import ControlClient
from meshkey.node.state import Home


def control(node: MeshkeyNode) -> ControlClient:
    return ControlClient(Home(node.host.home).node(node.name).socket_path, timeout=30)


def send(node: MeshkeyNode, route: str, payload: bytes) -> dict[str, Any]:
    result: dict[str, Any] = control(node).call(
        "message.send", {"route": route, "payload": payload, "timeout": 20}, timeout=30
    )
    return result


def measure_kind(
    relay: MeshkeyNode, kind: NatKind, nodes: list[MeshkeyNode], yellow: MeshkeyNode, count: int
) -> dict[str, Any]:
    protocol = "tcp" if kind is NatKind.UDP_BLOCKED else "udp"
    at = relay.route(protocol)
    assert send(yellow, f"{at}/service/echo", b"warm-up")["payload"] == b"warm-up"
    setups, creates = [], []
    for index, blue in enumerate(nodes):
        name = f"{kind}-{index}"
        started = time.perf_counter()
        control(blue).call("relay.create", {"name": name, "at": at}, timeout=30)
        created = time.perf_counter()
        reply = send(yellow, f"{at}/service/forward_to_{name}/service/echo", b"first")
        setups.append((time.perf_counter() - started) * 1000)
        creates.append((created - started) * 1000)
        assert reply["payload"] == b"first"
    route = f"{at}/service/forward_to_{kind}-0/service/echo"
    send(yellow, route, b"warm-up")
    round_trips = []
    for _ in range(count):
        reply = send(yellow, route, b"x" * 64)
        assert reply["payload"] == b"x" * 64
        round_trips.append(reply["elapsed"] * 1000)
    return {
        "protocol": protocol,
        "setup": summary(setups),
        "create": summary(creates),
        "rtt": summary(round_trips),
    }


def main(*, quick: bool = False) -> None:
    if os.geteuid() != 0:
        print("natlab: skipped (the NAT lab needs root)")
        return
    fresh, count = (3, 20) if quick else (8, 100)
    results: dict[str, Any] = {}
    with Lab() as lab:
        hosts = standard_lab_hosts(lab)
        relay = hosts["relay"].create_node("relay")
        ports = {p["label"]: p["delay_ms"] for p in lab.wan.settings()}
        for kind in NatKind:
            host = hosts[str(kind)]
            side_port = host.router.name if host.router else host.name
            one_way = ports[side_port] + ports["relay"]  # one crossing of the WAN
            yellow = host.create_node("yellow")
            blues = [host.create_node(f"blue{i}") for i in range(fresh)]
            figures = measure_kind(relay, kind, blues, yellow, count)
            figures["wan_rtt_ms"] = 2 * one_way
            figures["floor_ms"] = 4 * one_way
            results[str(kind)] = figures
    save("natlab", {"delay_ms_per_port": lab.delay_ms, "kinds": results})
    print(
        f"Relays through the NAT lab (WAN {lab.delay_ms:g} ms per port; blue and yellow behind "
        f"the same kind, relay on a public host; {fresh} set-ups, {count} round trips)"
    )
    print(
        f"  {'kind':<12}{'hops':<6}{'WAN RTT':>9}{'floor':>8}{'set-up p50':>12}{'p99':>8}"
        f"{'(create)':>10}{'RTT p50':>10}{'p99':>8}{'RTT/floor':>11}"
    )
    for label, f in results.items():
        print(
            f"  {label:<12}{f['protocol']:<6}{f['wan_rtt_ms']:>6.0f} ms{f['floor_ms']:>5.0f} ms"
            f"{f['setup']['p50_ms']:>9.1f} ms{f['setup']['p99_ms']:>5.0f} ms"
            f"{f['create']['p50_ms']:>7.0f} ms"
            f"{f['rtt']['p50_ms']:>7.1f} ms{f['rtt']['p99_ms']:>5.0f} ms"
            f"{f['rtt']['p50_ms'] / f['floor_ms']:>10.2f}x"
        )
