"""Benchmarks, each run side by side with the reference it is compared to.

    python -m bench            # everything
    python -m bench rtt        # message round trip over TCP vs a plain TLS echo
    python -m bench cli        # wall time of CLI commands vs the bare interpreter
    python -m bench channels   # secure-channel handshakes/s vs TLS; RTT direct vs via relay
    python -m bench udp        # bulk over one QUIC hop: batched, unbatched, plain qh3
    python -m bench attacks    # attacks on a daemon while a legitimate client measures
    python -m bench natlab     # relay set-up and round trips through the NAT lab (root)
    python -m bench portal     # TCP portal throughput and latency vs loopback and ssh -L
    python -m bench dht        # node graph lookups vs kademlia 2.2.3 on one simulated network
    python -m bench dht-daemons  # `peer find` wall time on 30 real daemons on loopback
    python -m bench punch      # hole punching in the NAT lab vs Polykey's and Ockam's schedules
                               # (root; --tries N fresh punches per pair, default 50)
    python -m bench hyperdht   # HyperDHT 6.34 (npm, bench/hyperdht) punching in the same lab
                               # (root; node; --tries N per pair, default 20)
    python -m bench reach      # reach by NodeId with one public node: first reply, final path,
                               # fallback, renumbering, per pair kind (root)
    python -m bench setup      # request -> first reply over a fresh channel vs iroh's connect()

Figures go to stdout and to bench/results/<name>.json. Machines here are shared and noisy:
read the ratios, and rerun before believing a small difference.
"""

from __future__ import annotations

import argparse
import sys

from bench import (
    attacks,
    channels,
    cli_latency,
    dht,
    dht_daemons,
    hyperdht,
    natlab,
    portal,
    punch,
    reach,
    rtt,
    setup,
    udp,
)

SUITES = {
    "rtt": rtt.main,
    "cli": cli_latency.main,
    "channels": channels.main,
    "udp": udp.main,
    "attacks": attacks.main,  # issue 8's attacks while a legitimate client measures
    "natlab": natlab.main,  # relays through the NAT lab (root)
    "portal": portal.main,  # TCP portals vs loopback and ssh -L
    "dht": dht.main,  # node graph vs kademlia 2.2.3, simulated
    "dht-daemons": dht_daemons.main,  # peer find on 30 real daemons via the CLI
    "punch": punch.main,  # hole punching in the NAT lab vs the reference schedules (root)
    "hyperdht": hyperdht.main,  # HyperDHT's hole punching in the same lab (root, node)
    "reach": reach.main,  # reach by NodeId, one public node (root)
    "setup": setup.main,  # connection set-up on loopback vs iroh 1.2.0 (its own venv)
}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("suites", nargs="*", choices=[[], *SUITES], help="default: all")
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--tries", type=int, help="punch: fresh punches per pair and strategy")
    args = parser.parse_args()
    for name in args.suites or list(SUITES):
        if name == "punch":
            punch.main(quick=args.quick, tries=args.tries)
        elif name == "hyperdht":
            hyperdht.main(quick=args.quick, tries=args.tries)
        else:
            SUITES[name](quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
