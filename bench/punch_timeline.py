"""Where the time of one hole punch goes: one fresh pair of nodes in the NAT lab (root), a
secure channel through the relay, and both daemons' debug logs merged by time (the lab's
namespaces share the machine's clock), from the request to the switch to the direct path.

The initiator's first hop to the relay is opened before the clock starts (as a HyperDHT
client is bootstrapped before its ``connect()``), so the lines show the channel's handshake,
the punch's signalling and probes, and the direct hop's handshake and authentication.

    python -m bench.punch_timeline [eim|edm|public]    # the responder's NAT; the initiator: EIM
"""

from __future__ import annotations

import sys
import time

from tests.natlab.lab import Lab, NatKind

from bench.punch import control, wait_classified

SHOWN = ("channel.opened", "punch.", "hop.authenticated", "paths.direct_hop", "path.switched")


def main(kind: NatKind = NatKind.EIM) -> None:
    with Lab() as lab:
        relay = lab.add_public_host("relay", "203.0.113.10").create_node("relay")
        observer = lab.add_public_host("observer", "198.51.100.10").create_node("observer")
        responder_side = lab.add_side("a", kind)
        initiator_side = lab.add_side("b", NatKind.EIM)
        env = {"MESHKEY_LOG": "debug"}
        observers = ["--observer", relay.route(), "--observer", observer.route()]
        blue = responder_side.create_node("blue", args=observers, env=env)
        yellow = initiator_side.create_node("yellow", args=observers, env=env)
        blue.meshkey("relay", "create", "blue", "--at", relay.route(), "--to", "blue")
        wait_classified(blue)
        wait_classified(yellow)
        echo = f"{relay.route()}/service/echo"
        yellow.meshkey("message", "send", "warm", "--from", "yellow", "--to", echo)
        started = time.time()
        route = f"{relay.route()}/service/forward_to_blue/service/api"
        args = {"route": route, "authorized": [blue.node_id], "timeout": 30.0}
        described = control(yellow).call("channel.create", args, timeout=40)
        opened = time.time()
        time.sleep(3)
        channels = control(yellow).call("channel.list", {})
        path = next(c for c in channels if c["address"] == described["address"])["path"]
        print(f"channel.create returned after {(opened - started) * 1000:.0f} ms")
        print(f"path now: {path['now']}, switched at {path['switched_at']}")
        lines = []
        for node in (blue, yellow):
            for line in node.log().splitlines():
                if line[:4].isdigit() and any(f"event={word}" in line for word in SHOWN):
                    lines.append((line[:24], node.name, line[24:]))
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started))
        for stamp, name, text in sorted(lines):
            if stamp >= since:
                print(f"{stamp[11:]} {name:<6} {text[:170]}")
        clock = time.strftime("%H:%M:%S", time.gmtime(started))
        print(f"request at {clock}.{int(started % 1 * 1000):03d}")


if __name__ == "__main__":
    main(NatKind(sys.argv[1]) if len(sys.argv) > 1 else NatKind.EIM)
