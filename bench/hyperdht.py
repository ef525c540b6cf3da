"""HyperDHT 6.34 (npm) through the same NAT lab as ``bench/punch.py``: its hole punching
beside meshkey's, per pair of NAT kinds, and meshkey's figures as ratios to it (issue 13).

HyperDHT finds a peer by its public key on a DHT and punches through the DHT nodes that
relay its handshake; it has no TCP path and, without blind relays configured, no relayed
data path: a connection is direct or nothing. ``bench/hyperdht/lab.js`` runs it (``npm ci``
in ``bench/hyperdht`` installs the pinned ``hyperdht`` and ``@hyperswarm/testnet``).

Topology (one lab, as ``bench/punch.py``'s: 10 ms per WAN port, so 40 ms RTT between two
NATed hosts, and every WAN namespace drops packets arriving with TTL < 10, so HyperDHT's
TTL-5 packets die at the router they are sent toward, as a few internet hops would kill
them; NATLAB.md): three public DHT hosts with two DHT nodes each (HyperDHT classifies its
NAT from what several hosts saw; the first node made with ``HyperDHT.bootstrapper``), one
server side of each kind (public, EIM, EDM, UDP-blocked) and one client side of each kind
that initiates (EIM, EDM), each behind its own router.

Per try (server <- client, the client connects): a **fresh server process** with a fresh
key pair on the server's host listens (announces itself on the DHT); then a **fresh client
process** with its own key pair bootstraps (``fullyBootstrapped()``, not timed) and the
clock starts at ``connect(serverKey)``; the client writes 4 bytes on ``open`` and the clock
stops at the echoed reply. Both use new UDP ports every try and the routers' conntrack
entries of both hosts are deleted after it, so every try is a first punch with no mapping
left from the last one, and HyperDHT's one-random-punch-per-20-s limit (per process) never
refuses one. *Direct* means the connected raw UDX stream's remote address is the server's
public address (its router's WAN address, or its own when public).

The meshkey figures beside it come from ``bench/results/punch.json`` (``python -m bench
punch``), measured from ``channel.create`` (yellow has the relay's route to blue, no
lookup): ``from_request`` (the request to the channel's own switch to the direct path) and
``to_first_reply`` (that plus the direct path's RTT: the reply a message sent at the switch
would get). HyperDHT's clock runs from ``connect()`` to the first reply, lookup included.
Ratios are meshkey over HyperDHT: time < 1 and success >= 1 are better for meshkey.

    python -m bench hyperdht [--quick]        # or: python -m bench.hyperdht --tries N
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.natlab import Host, Lab, NatKind

from bench.common import RESULTS, percentile, save

SCRIPT_DIR = Path(__file__).with_name("hyperdht")
SCRIPT = SCRIPT_DIR / "lab.js"
#: (server's kind, client's kind): the client connects; bench/punch.py's pairs, and
#: UDP-blocked (meshkey: a relayed channel; HyperDHT has no TCP path).
PAIRS = [
    (NatKind.EIM, NatKind.EIM),
    (NatKind.EDM, NatKind.EIM),
    (NatKind.PUBLIC, NatKind.EIM),
    (NatKind.PUBLIC, NatKind.EDM),
    (NatKind.UDP_BLOCKED, NatKind.EIM),
]
DHT_HOSTS = [("dht1", "203.0.113.10"), ("dht2", "198.51.100.10"), ("dht3", "198.51.100.20")]
DHT_PORTS = (49737, 49738)
CONNECT_TIMEOUT_MS = int(os.environ.get("HYPERDHT_CONNECT_TIMEOUT_MS", "20000"))
LISTEN_TIMEOUT_S = 10.0
FIRST_PORT = 20000


class Process:
    """One ``node lab.js`` process in a lab namespace, read as JSON lines."""

    def __init__(self, host: Host, *args: str) -> None:
        self.popen = host.popen(
            "node",
            str(SCRIPT),
            *args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=str(SCRIPT_DIR),
        )
        self._buffer = b""

    def wait_for(self, events: set[str], timeout: float) -> dict[str, Any] | None:
        """The first line whose event is in ``events``, or None at the timeout or exit."""
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.popen.stdout, selectors.EVENT_READ)
            while True:
                while b"\n" in self._buffer:
                    line, self._buffer = self._buffer.split(b"\n", 1)
                    try:
                        event: dict[str, Any] = json.loads(line)
                    except ValueError:
                        continue
                    if event.get("event") in events:
                        return event
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    return None
                chunk = os.read(self.popen.stdout.fileno(), 65536)
                if not chunk:
                    return None
                self._buffer += chunk

    def stop(self) -> None:
        """Ends this process (it is ours: by its own PID)."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                stream.close()


def public_address(host: Host) -> str:
    return host.router.wan_address if host.router is not None else host.address


def forget_mappings(host: Host) -> None:
    if host.router is not None:
        host.router.conntrack_delete("-p", "udp", "--orig-src", host.address)


def ttl_drops(host: Host | Any) -> int:
    """Packets the namespace's TTL floor dropped (iptables' counter of the raw rule)."""
    out = host.iptables("-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n", check=False).stdout
    total = 0
    for line in out.splitlines():
        if "DROP" in line and "TTL" in line.upper():
            total += int(line.split()[0])
    return total


def one_try(
    server_host: Host, client_host: Host, bootstrap: str, ports: tuple[int, int]
) -> dict[str, Any]:
    server = Process(server_host, "server", "--bootstrap", bootstrap, "--port", str(ports[0]))
    client: Process | None = None
    try:
        started = time.monotonic()
        listening = server.wait_for({"listening", "listen-failed", "error"}, LISTEN_TIMEOUT_S)
        listen_s = time.monotonic() - started
        if listening is None or listening["event"] != "listening":
            error = (listening or {}).get("error", "no answer")
            return {"connected": False, "direct": False, "error": f"server: {error}"}
        client = Process(
            client_host,
            "client",
            "--bootstrap",
            bootstrap,
            "--port",
            str(ports[1]),
            "--key",
            listening["publicKey"],
            "--peer-host",
            public_address(server_host),
            "--timeout",
            str(CONNECT_TIMEOUT_MS),
        )
        result = client.wait_for({"result", "error"}, CONNECT_TIMEOUT_MS / 1000 + 15)
        if result is None:
            return {"connected": False, "direct": False, "error": "client: no result"}
        result["listen_s"] = round(listen_s, 3)
        result["server_nat"] = listening.get("nat")
        return result
    finally:
        if client is not None:
            client.stop()
        server.stop()
        forget_mappings(server_host)
        forget_mappings(client_host)


def figures(tries: list[dict[str, Any]]) -> dict[str, Any]:
    direct = [t for t in tries if t.get("direct")]
    replies = [float(t["replyMs"]) for t in direct]
    out: dict[str, Any] = {
        "tries": len(tries),
        "connected": sum(bool(t.get("connected")) for t in tries),
        "direct": len(direct),
        "success": round(len(direct) / len(tries), 3),
    }
    if replies:
        opens = [float(t["openMs"]) for t in direct if "openMs" in t]
        out |= {
            "p50_ms": round(percentile(replies, 0.5), 1),
            "p95_ms": round(percentile(replies, 0.95), 1),
            "open_p50_ms": round(percentile(opens, 0.5), 1) if opens else None,
        }
    punches: dict[str, int] = {}
    for t in tries:
        for kind, count in (t.get("punches") or {}).items():
            punches[kind] = punches.get(kind, 0) + int(count)
    out["client_punches"] = punches
    errors: dict[str, int] = {}
    for t in tries:
        if not t.get("direct"):
            reason = str(t.get("error") or f"connected via {t.get('remoteHost')}")
            errors[reason] = errors.get(reason, 0) + 1
    if errors:
        out["failures"] = errors
    return out


def ratio(mine: float | None, theirs: float | None) -> float | None:
    if mine is None or theirs is None or theirs == 0:
        return None
    return round(mine / theirs, 3)


def meshkey_ratios(hyper: dict[str, Any]) -> dict[str, Any]:
    """meshkey (bench/results/punch.json, if there) over HyperDHT, pair by pair."""
    path = RESULTS / "punch.json"
    if not path.exists():
        return {}
    mine = json.loads(path.read_text()).get("strategies", {}).get("meshkey", {})
    out: dict[str, Any] = {}
    for label, theirs in hyper.items():
        figures_mine = mine.get(label)
        if figures_mine is None:
            continue
        out[label] = {
            "from_request_p50": ratio(
                figures_mine.get("from_request_p50_ms"), theirs.get("p50_ms")
            ),
            "from_request_p95": ratio(
                figures_mine.get("from_request_p95_ms"), theirs.get("p95_ms")
            ),
            "to_first_reply_p50": ratio(
                figures_mine.get("to_first_reply_p50_ms"), theirs.get("p50_ms")
            ),
            "to_first_reply_p95": ratio(
                figures_mine.get("to_first_reply_p95_ms"), theirs.get("p95_ms")
            ),
            "success": ratio(figures_mine.get("success"), theirs.get("success")),
            "success_gain": round(figures_mine.get("success", 0) - theirs["success"], 3),
        }
    return out


def refresh_ratios() -> dict[str, Any]:
    """Recomputes the ratios in ``hyperdht.json`` from the ``punch.json`` there now (the two
    benchmarks run one after the other; either may be rerun alone)."""
    path = RESULTS / "hyperdht.json"
    data = json.loads(path.read_text())
    data["meshkey_over_hyperdht"] = ratios = meshkey_ratios(data["pairs"])
    save("hyperdht", data)
    return ratios


def prerequisites() -> str | None:
    if os.geteuid() != 0:
        return "the NAT lab needs root"
    if shutil.which("node") is None:
        return "node is not installed"
    if not (SCRIPT_DIR / "node_modules" / "hyperdht").exists():
        return f"hyperdht is not installed: run `npm ci` in {SCRIPT_DIR}"
    return None


def main(*, quick: bool = False, tries: int | None = None, pairs: list[str] | None = None) -> None:
    missing = prerequisites()
    if missing:
        print(f"hyperdht: skipped ({missing})")
        return
    count = tries or (3 if quick else 20)
    version = json.loads((SCRIPT_DIR / "node_modules/hyperdht/package.json").read_text())["version"]
    results: dict[str, Any] = {}
    raw: dict[str, list[dict[str, Any]]] = {}
    bootstrap = f"{DHT_HOSTS[0][1]}:{DHT_PORTS[0]}"
    dht: list[Process] = []
    with Lab(purpose="bench-hyperdht") as lab:
        try:
            for index, (name, address) in enumerate(DHT_HOSTS):
                host = lab.add_public_host(name, address)
                args = ["bootstrap", "--host", address, "--ports", ",".join(map(str, DHT_PORTS))]
                if index == 0:
                    args.append("--first")
                else:
                    args += ["--bootstrap", bootstrap]
                process = Process(host, *args)
                dht.append(process)
                if process.wait_for({"ready"}, 30) is None:
                    raise RuntimeError(f"the DHT nodes on {name} did not bootstrap")
            kinds = sorted({k for pair in PAIRS for k in pair}, key=list(NatKind).index)
            servers = {kind: lab.add_side(f"s-{kind}", kind) for kind in kinds}
            clients = {kind: lab.add_side(f"c-{kind}", kind) for kind in {y for _, y in PAIRS}}
            port = FIRST_PORT
            for server_kind, client_kind in PAIRS:
                label = f"{server_kind}<-{client_kind}"
                if pairs and label not in pairs:
                    continue
                samples = []
                # A server behind a UDP-blocked router never gets on the DHT: each try only
                # waits out LISTEN_TIMEOUT_S, so a few say it.
                for index in range(min(count, 10) if server_kind is NatKind.UDP_BLOCKED else count):
                    ports = (port, port + 1)
                    port += 2
                    sample = one_try(servers[server_kind], clients[client_kind], bootstrap, ports)
                    samples.append(sample)
                    how = "direct" if sample["direct"] else "NOT direct"
                    shown = (
                        f"{sample['replyMs']:>8.0f} ms {how}"
                        if sample.get("connected")
                        else f"  failed   {sample.get('error')}"
                    )
                    print(f"    hyperdht {label:<18}{index:>3}{shown}", flush=True)
                raw[label] = samples
                results[label] = figures(samples)
            drops = {name: ttl_drops(router) for name, router in lab.routers.items()}
        finally:
            for process in dht:
                process.stop()
        delay = lab.delay_ms
    ratios = meshkey_ratios(results)
    save(
        "hyperdht",
        {
            "hyperdht_version": version,
            "delay_ms_per_port": delay,
            "tries": count,
            "pairs": results,
            "ttl_floor_drops_per_router": drops,
            "meshkey_over_hyperdht": ratios,
            "tries_raw": raw,
        },
    )
    print(
        f"HyperDHT {version} in the NAT lab (WAN {delay:g} ms per port; {count} fresh "
        "server/client processes per pair; connect() -> first reply)"
    )
    print(f"  {'pair':<18}{'p50':>9}{'p95':>9}{'direct':>9}  failures")
    for label, f in results.items():
        p50 = f"{f['p50_ms']:>6.0f} ms" if "p50_ms" in f else "      -  "
        p95 = f"{f['p95_ms']:>6.0f} ms" if "p95_ms" in f else "      -  "
        print(f"  {label:<18}{p50}{p95}{f['success']:>9.0%}  {f.get('failures', '')}")
    print(f"  low-TTL packets dropped at the routers' TTL floor: {drops}")
    for label, r in ratios.items():
        print(f"  meshkey/hyperdht {label:<18}{r}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.hyperdht")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tries", type=int, help="fresh punches per pair (20)")
    parser.add_argument("--pairs", help="comma-separated, e.g. eim<-eim,edm<-eim (default: all)")
    parser.add_argument(
        "--ratios", action="store_true", help="only recompute the ratios from punch.json"
    )
    arguments = parser.parse_args()
    if arguments.ratios:
        for label, figures_ratio in refresh_ratios().items():
            print(f"  meshkey/hyperdht {label:<18}{figures_ratio}")
        sys.exit(0)
    main(
        quick=arguments.quick,
        tries=arguments.tries,
        pairs=arguments.pairs.split(",") if arguments.pairs else None,
    )
    sys.exit(0)
