"""The NAT lab: real kernel NATs in network namespaces, joined by a userspace WAN.

::

    host eim (10.1.0.2) ── router eim [lan0 10.1.0.1 | wan0 203.0.113.1] ──┐
    host edm (10.2.0.2) ── router edm [lan0 10.2.0.1 | wan0 203.0.113.2] ──┤
    public host relay (203.0.113.10) ──────────────────────────────────────┼── WAN switch
    public host observer (198.51.100.10) ──────────────────────────────────┘  (delay, loss)

A *router* is a namespace with a LAN side (a veth pair to each of its hosts, 10.K.0.0/24)
and a WAN side (a TAP device of the switch, ``wan0``), IP forwarding on, and the NAT of its
kind in iptables (NATLAB.md measured what each rule does on this kernel):

- ``eim``: ``MASQUERADE``: endpoint-independent mapping (the source port is kept, one public
  ip:port for every destination), address-and-port-dependent filtering;
- ``edm``: ``MASQUERADE --random-fully``: endpoint-dependent mapping ("symmetric"), a new
  random public port for each destination ip:port;
- ``udp-blocked``: ``MASQUERADE`` plus ``FORWARD -p udp -j DROP``: TCP works, UDP does not.

A *public* host has its public address on its own interface, on the WAN, with no router: the
reflexive address a peer observes is the host's local address, which is exactly how meshkey
tells "public" apart (DESIGN.md decision 10). A routed public subnet behind a non-NAT router
would behave the same for the traffic but needs a static route in every other WAN namespace;
a 1:1 NAT (SNAT+DNAT) would not be "no NAT" at all (the observed address differs from the
local one). So a public side is a host on the WAN, like the relay and observer hosts.

Every namespace on the WAN (routers and public hosts) drops packets arriving with a TTL below
the floor (default 10): the switch is one L2 hop, so without this a low-TTL packet meant to
die a few hops out would reach the peer's NAT (NATLAB.md: HyperDHT's punches). Every WAN
namespace routes *everything* on-link to the switch (``default dev wan0``), so traffic can
only ever reach the lab's own hosts; IPv6 is off inside the lab, so the counters show only
the traffic a test made.

Users' networks (NATLAB.md, "Shape the lab like users' networks"): ``one_public_node_hosts``
builds the seed issue's topology (one public host, ``seed``, which is the seed, the relay and
the only observer; no ``observer`` host) with sides of each kind; ``Host.create_seed_node``
starts the seed on ``0.0.0.0:7000`` (UDP and TCP) and ``Host.join`` any other node with
``--seed`` and nothing else. ``Lab.add_carrier_nat`` makes a carrier-grade NAT whose LAN is
in 100.64.0.0/10, and ``add_router(..., behind=cgn)`` a home router on it (double NAT);
``Router.renumber`` moves a router's WAN address (conntrack flushed), and
``Namespace.blocking_udp`` drops UDP to or from one public address for a while (a punched
path dies, the relay lives).

The API: ``Lab`` (a context manager) owns a run; ``lab.add_public_host``,
``lab.add_router`` + ``lab.add_host``, or ``lab.add_side(name, kind)`` (a router of that kind
with one host, or a public host for ``public``) build a topology. ``Host.run`` runs a command
inside the host (``ip netns exec``); ``Host.meshkey`` runs the real CLI there with the host's
own MESHKEY_HOME; ``Host.create_node`` starts a daemon on the host's address. ``Router``
reads, deletes and times out conntrack entries and adds iptables rules; ``lab.wan`` changes
the WAN's delay, loss, reordering and bandwidth at run time and reads its counters.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from . import state as run_state

SWITCH_SCRIPT = Path(__file__).with_name("switch.py")
DEFAULT_DELAY_MS = 10.0
DEFAULT_TTL_FLOOR = 10
FIRST_NODE_PORT = 4000
SEED_ADDRESS = "203.0.113.10"  # the one public node of the one-public-node lab
SEED_PORT = 7000


class NatKind(enum.StrEnum):
    PUBLIC = "public"
    EIM = "eim"
    EDM = "edm"
    UDP_BLOCKED = "udp-blocked"


#: NATLAB.md's matrix: the pairs of sides that must end on a direct path, and over what
#: (either order); every other pair stays relayed and says why.
DIRECT = {
    (NatKind.PUBLIC, NatKind.PUBLIC): "udp",
    (NatKind.PUBLIC, NatKind.EIM): "udp",
    (NatKind.PUBLIC, NatKind.EDM): "udp",
    (NatKind.PUBLIC, NatKind.UDP_BLOCKED): "tcp",
    (NatKind.EIM, NatKind.EIM): "udp",
    (NatKind.EIM, NatKind.EDM): "udp",
}


def expected_direct(a: NatKind, b: NatKind) -> str | None:
    """The transport of the direct path a pair must end on, or None (it stays relayed)."""
    return DIRECT.get((a, b)) or DIRECT.get((b, a))


def on_final_path(paths: list[dict[str, Any]], want: str | None) -> bool:
    """All of a node's channel ``paths`` to one peer (``secure-channel list``'s ``path``) are
    on the path the matrix says: direct over ``want`` (udp, tcp), or (None) relayed with the
    reason it is not direct."""
    if not paths:
        return False
    if want is None:
        return all(not p.get("direct") and p.get("upgrade") for p in paths)
    over_tcp = all("over tcp" in str(p.get("now")) for p in paths)
    return all(p.get("direct") for p in paths) and over_tcp == (want == "tcp")


class LabError(RuntimeError):
    pass


class CommandFailed(LabError):
    def __init__(self, where: str, result: subprocess.CompletedProcess[str]) -> None:
        self.result = result
        command = " ".join(str(a) for a in result.args)
        super().__init__(
            f"in {where}: `{command}` exited {result.returncode}: "
            f"{(result.stderr or result.stdout).strip()}"
        )


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of lab commands. Bytecode caching stays on: with
    PYTHONDONTWRITEBYTECODE set (as it is here), every CLI call and daemon would recompile
    meshkey's modules, several hundred ms of CPU each on a 2-core machine."""
    env = {**os.environ, **(extra or {})}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


# -- the WAN ---------------------------------------------------------------------------------


class Wan:
    """Control of the switch process: settings per port (by label or device name) and
    counters. Loss and reordering are in percent and apply to both directions of a port."""

    def __init__(self, control: Path) -> None:
        self.control = control
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._file: Any = None

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        with self._lock:
            if self._socket is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(10)
                try:
                    sock.connect(str(self.control))
                except OSError:
                    sock.close()  # not connected: the next request tries again
                    raise
                self._socket, self._file = sock, sock.makefile("rwb")
            self._file.write(json.dumps({"op": op, **fields}).encode() + b"\n")
            self._file.flush()
            line = self._file.readline()
        if not line:
            raise LabError("the WAN switch closed its control socket")
        answer: dict[str, Any] = json.loads(line)
        if not answer.pop("ok"):
            raise LabError(f"WAN switch: {answer['error']}")
        return answer

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    def set(
        self,
        ports: Sequence[str] | None = None,
        *,
        delay_ms: float | None = None,
        loss: float | None = None,
        reorder: float | None = None,
        reorder_ms: float | None = None,
        rate_mbit: float | bool | None = False,
        queue_bytes: int | None = None,
    ) -> list[dict[str, Any]]:
        """Changes the given ports (labels such as a router's or public host's name), or every
        port; ``rate_mbit=None`` removes a bandwidth cap. Returns the ports' new settings."""
        settings: dict[str, Any] = {}
        for key, value in (
            ("delay_ms", delay_ms),
            ("loss", loss),
            ("reorder", reorder),
            ("reorder_ms", reorder_ms),
            ("queue_bytes", queue_bytes),
        ):
            if value is not None:
                settings[key] = value
        if rate_mbit is not False:
            settings["rate_mbit"] = rate_mbit
        result: list[dict[str, Any]] = self.request(
            "set", ports=None if ports is None else list(ports), settings=settings
        )["ports"]
        return result

    @contextlib.contextmanager
    def impaired(self, ports: Sequence[str] | None = None, **settings: Any) -> Iterator[None]:
        """Applies ``settings`` for the duration of a ``with`` block, then restores them."""
        before = {p["label"]: p for p in self.settings()}
        self.set(ports, **settings)
        try:
            yield
        finally:
            for label, port in before.items():
                if ports is None or label in ports:
                    self.set(
                        [label],
                        delay_ms=port["delay_ms"],
                        loss=port["loss"],
                        reorder=port["reorder"],
                        reorder_ms=port["reorder_ms"],
                        rate_mbit=port["rate_mbit"],
                        queue_bytes=port["queue_bytes"],
                    )

    def settings(self) -> list[dict[str, Any]]:
        ports: list[dict[str, Any]] = self.request("get")["ports"]
        return ports

    def counters(self) -> dict[str, dict[str, int]]:
        """Per port label: frames/bytes in (sent into the WAN by that namespace) and out
        (delivered to it), frames lost by the configured loss each way, queue drops."""
        counters: dict[str, dict[str, int]] = self.request("counters")["counters"]
        return counters

    def reset_counters(self) -> None:
        self.request("reset_counters")

    def counters_table(self) -> str:
        rows = [
            f"{'port':<14}{'frames in':>10}{'bytes in':>12}{'frames out':>11}{'bytes out':>12}"
            f"{'lost in':>9}{'lost out':>9}{'q drops':>8}"
        ]
        for label, c in sorted(self.counters().items()):
            rows.append(
                f"{label:<14}{c['frames_in']:>10}{c['bytes_in']:>12}{c['frames_out']:>11}"
                f"{c['bytes_out']:>12}{c['lost_in']:>9}{c['lost_out']:>9}{c['queue_drops']:>8}"
            )
        return "\n".join(rows)


# -- namespaces ------------------------------------------------------------------------------


@dataclass(repr=False)
class Namespace:
    lab: Lab
    name: str  # the lab's name for it: "relay", "eim"...
    netns: str  # the kernel's: nl-RUNID-NAME

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} in netns {self.netns}>"

    def run(
        self,
        *command: str,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Runs ``command`` inside this namespace and waits for it."""
        result = subprocess.run(
            ["ip", "netns", "exec", self.netns, *command],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=subprocess_env(env),
            check=False,
        )
        if check and result.returncode != 0:
            raise CommandFailed(self.name, result)
        return result

    def popen(self, *command: str, env: dict[str, str] | None = None, **kwargs: Any) -> Any:
        """Starts ``command`` inside this namespace (ended with the lab at the latest)."""
        return subprocess.Popen(
            ["ip", "netns", "exec", self.netns, *command], env=subprocess_env(env), **kwargs
        )

    def script(self, lines: Sequence[str], timeout: float = 30) -> None:
        """Runs shell ``lines`` inside the namespace, stopping at the first failure."""
        self.run("sh", "-euc", "\n".join(lines), timeout=timeout)

    def iptables(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("iptables", "-w", *args, check=check)

    @contextlib.contextmanager
    def blocking_udp(self, remote: str, direction: str = "both") -> Iterator[None]:
        """Drops UDP between this namespace's WAN side and the public address ``remote`` for
        a ``with`` block (a router or a public host; both have ``wan0``): a punched path to
        a peer at ``remote`` dies while the relay, at another address, lives. ``direction``:
        ``out`` (packets to ``remote``), ``in`` (packets from it) or ``both``. Inbound is
        dropped in the raw table (before conntrack and the NAT see it), outbound in mangle
        POSTROUTING (before the NAT rewrites the source), so nothing dropped refreshes a
        mapping."""
        if direction not in ("in", "out", "both"):
            raise ValueError(f"direction is in, out or both: {direction!r}")
        rules: list[tuple[str, str, list[str]]] = []
        if direction in ("in", "both"):
            rules.append(("raw", "PREROUTING", ["-i", "wan0", "-p", "udp", "-s", remote]))
        if direction in ("out", "both"):
            rules.append(("mangle", "POSTROUTING", ["-o", "wan0", "-p", "udp", "-d", remote]))
        inserted: list[tuple[str, str, list[str]]] = []
        try:
            for table, chain, match in rules:
                self.iptables("-t", table, "-I", chain, *match, "-j", "DROP")
                inserted.append((table, chain, match))
            yield
        finally:
            for table, chain, match in inserted:
                self.iptables("-t", table, "-D", chain, *match, "-j", "DROP", check=False)

    def set_ttl_floor(self, floor: int) -> None:
        """Drops WAN packets arriving with TTL < ``floor`` (0: drop none), as the hops of a real
        internet path would."""
        self.iptables("-t", "raw", "-F", "PREROUTING")
        if floor > 0:
            self.iptables(*ttl_rule(floor))


def ttl_rule(floor: int) -> list[str]:
    match = ["-i", "wan0", "-m", "ttl", "--ttl-lt", str(floor)]
    return ["-t", "raw", "-A", "PREROUTING", *match, "-j", "DROP"]


@dataclass(frozen=True)
class Tuple4:
    src: str
    dst: str
    sport: int
    dport: int


@dataclass(frozen=True)
class ConntrackEntry:
    """One line of ``conntrack -L``: the original direction (as the sender wrote it) and the
    reply direction (what the NAT made of it: for an outbound flow through MASQUERADE, the
    reply's destination is the public address and port of the mapping)."""

    protocol: str
    timeout: int
    original: Tuple4
    reply: Tuple4
    flags: frozenset[str]
    line: str

    @property
    def public(self) -> tuple[str, int]:
        """The mapping's public side for an outbound flow: where replies are sent to."""
        return (self.reply.dst, self.reply.dport)


_FIELD = re.compile(r"(src|dst|sport|dport)=(\S+)")


def parse_conntrack(text: str) -> list[ConntrackEntry]:
    entries = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or words[0] not in ("udp", "tcp", "icmp"):
            continue
        pairs = _FIELD.findall(line)
        if len(pairs) < 8:
            continue
        first = dict(pairs[:4])
        second = dict(pairs[4:8])
        timeout = int(words[2]) if words[2].isdigit() else -1
        entries.append(
            ConntrackEntry(
                protocol=words[0],
                timeout=timeout,
                original=Tuple4(
                    first["src"], first["dst"], int(first["sport"]), int(first["dport"])
                ),
                reply=Tuple4(
                    second["src"], second["dst"], int(second["sport"]), int(second["dport"])
                ),
                flags=frozenset(w.strip("[]") for w in words if w.startswith("[")),
                line=line,
            )
        )
    return entries


@dataclass(repr=False)
class Router(Namespace):
    kind: NatKind
    wan_address: str
    lan_prefix: str  # "10.K.0" (a carrier-grade NAT's: "100.64.K")
    hosts: list[Host] = field(default_factory=list)
    #: The carrier-grade NAT this router's WAN side is on (None: it is on the lab's WAN).
    upstream: Router | None = None
    routers: list[Router] = field(default_factory=list)  # routers on this one's LAN
    lan_ports: int = 0  # veth ports on the LAN bridge so far (hosts and routers)

    @property
    def lan_address(self) -> str:
        return f"{self.lan_prefix}.1"

    @property
    def public_address(self) -> str:
        """Where traffic through this router appears to come from on the lab's WAN (behind
        a carrier-grade NAT: that NAT's WAN address)."""
        return self.upstream.public_address if self.upstream is not None else self.wan_address

    def renumber(self, new_address: str) -> str:
        """Moves the WAN side to ``new_address`` now, as an ISP's new DHCP lease or a
        network change would: the old address goes, the new one comes, the default route
        is put back (behind a carrier-grade NAT it goes via that NAT's LAN address), and
        every conntrack entry is flushed (the NAT mappings of the old address are dead).
        Returns the old address."""
        old, gateway = self.wan_address, self.upstream.lan_address if self.upstream else None
        self.script(
            [
                f"ip addr del {old}/24 dev wan0",
                f"ip addr add {new_address}/24 dev wan0",
                f"ip route replace default {f'via {gateway}' if gateway else 'dev wan0'}",
                "conntrack -F 2>/dev/null || true",
            ]
        )
        self.wan_address = new_address
        for host in self.hosts:
            self.lab._record_host(host)
        return old

    def conntrack_text(self, *args: str) -> str:
        """``conntrack -L`` (all protocols unless ``args`` filter, e.g. ``-p udp``)."""
        return self.run("conntrack", "-L", *args).stdout

    def conntrack(self, *args: str) -> list[ConntrackEntry]:
        return parse_conntrack(self.conntrack_text(*args))

    def mappings(self, host: Host | None = None, sport: int | None = None) -> list[ConntrackEntry]:
        """The UDP entries of flows that ``host`` (from port ``sport``) started."""
        entries = self.conntrack("-p", "udp")
        return [
            e
            for e in entries
            if (host is None or e.original.src == host.address)
            and (sport is None or e.original.sport == sport)
        ]

    def conntrack_delete(self, *filters: str) -> int:
        """``conntrack -D FILTERS`` (e.g. ``-p udp --orig-src 10.1.0.2``): deletes those NAT
        mappings and returns how many went; 0 is not an error."""
        result = self.run("conntrack", "-D", *filters, check=False)
        found = re.search(r"(\d+) flow entries have been deleted", result.stderr)
        if found is None and result.returncode != 0:
            raise CommandFailed(self.name, result)
        return int(found.group(1)) if found else 0

    def flush_conntrack(self) -> None:
        self.run("conntrack", "-F")

    def set_udp_timeouts(self, timeout: int, stream: int | None = None) -> None:
        """How long an idle UDP mapping lives: ``timeout`` for one-way or unreplied flows,
        ``stream`` (default: the same) for flows that saw traffic both ways."""
        self.run(
            "sysctl",
            "-qw",
            f"net.netfilter.nf_conntrack_udp_timeout={timeout}",
            f"net.netfilter.nf_conntrack_udp_timeout_stream={stream if stream else timeout}",
        )

    def udp_timeouts(self) -> tuple[int, int]:
        out = self.run(
            "sysctl",
            "-n",
            "net.netfilter.nf_conntrack_udp_timeout",
            "net.netfilter.nf_conntrack_udp_timeout_stream",
        ).stdout.split()
        return int(out[0]), int(out[1])

    @contextlib.contextmanager
    def rule(self, *spec: str, table: str = "filter", chain: str = "FORWARD") -> Iterator[None]:
        """An iptables rule inserted first in ``table``/``chain`` for a ``with`` block, e.g.
        ``router.rule("-p", "udp", "--dport", "4000", "-j", "DROP")``."""
        self.iptables("-t", table, "-I", chain, *spec)
        try:
            yield
        finally:
            self.iptables("-t", table, "-D", chain, *spec, check=False)

    def block_udp(self) -> None:
        self.iptables("-A", "FORWARD", "-p", "udp", "-j", "DROP")


@dataclass(repr=False)
class Host(Namespace):
    kind: NatKind
    address: str  # the host's own address (private behind a router)
    router: Router | None
    home: Path
    next_port: int = FIRST_NODE_PORT
    nodes: dict[str, MeshkeyNode] = field(default_factory=dict)

    @property
    def public_address(self) -> str:
        """Where this host's traffic appears to come from on the WAN."""
        return self.router.public_address if self.router is not None else self.address

    def meshkey(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """The real CLI inside this host, with the host's MESHKEY_HOME."""
        return self.run(
            sys.executable,
            "-m",
            "meshkey",
            *args,
            check=check,
            timeout=timeout,
            input=input,
            env={"MESHKEY_HOME": str(self.home), **(env or {})},
        )

    def meshkey_json(self, *args: str, timeout: float = 60) -> Any:
        return json.loads(self.meshkey(*args, "--output", "json", timeout=timeout).stdout)

    def create_node(
        self,
        name: str,
        *,
        udp_port: int | None = None,
        tcp_port: int | None = None,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        listen: str | None = None,
    ) -> MeshkeyNode:
        """``meshkey node create NAME --udp ADDR:PORT --tcp ADDR:PORT [ARGS]`` on this host
        (``env``: for the daemon, e.g. MESHKEY_CAPTURE; ``listen``: the address to bind,
        default the host's own, e.g. ``0.0.0.0``)."""
        if udp_port is None:
            udp_port = self.next_port
        if tcp_port is None:
            tcp_port = udp_port + 1
        self.next_port = max(self.next_port, udp_port, tcp_port) + 1
        bind = listen or self.address
        command = [
            "node",
            "create",
            name,
            "--udp",
            f"{bind}:{udp_port}",
            "--tcp",
            f"{bind}:{tcp_port}",
            *args,
            "--output",
            "json",
        ]
        status = json.loads(self.meshkey(*command, env=env).stdout)
        node = MeshkeyNode(self, name, status["node_id"], udp_port, tcp_port)
        self.nodes[name] = node
        return node

    def create_seed_node(self, name: str = "seed", port: int = SEED_PORT) -> MeshkeyNode:
        """The network's first node on a public host, as its operator would start it: on
        all interfaces, UDP and TCP on the same port number (so its address is known), no
        seed of its own."""
        return self.create_node(name, udp_port=port, tcp_port=port, listen="0.0.0.0")

    def join(
        self,
        name: str,
        seed: MeshkeyNode | str,
        *,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> MeshkeyNode:
        """``meshkey node create NAME --seed NODEID@HOST:PORT``, as the README tells users
        (no listen addresses, no relay, no observer: the node finds all that out itself);
        ``args`` only for what a test must change on purpose. The node's ports are the
        ones it chose (its UDP and TCP addresses in ``node show``)."""
        seed_text = seed if isinstance(seed, str) else seed.seed_text
        command = ["node", "create", name, "--seed", seed_text, *args, "--output", "json"]
        status = json.loads(self.meshkey(*command, env=env).stdout)
        ports = {"udp": 0, "tcp": 0}
        for address in status.get("addresses", []):
            found = re.match(r"/ip4/[^/]+/(udp|tcp)/(\d+)", address)
            if found:
                ports[found.group(1)] = ports[found.group(1)] or int(found.group(2))
        node = MeshkeyNode(self, name, status["node_id"], ports["udp"], ports["tcp"])
        self.nodes[name] = node
        return node

    def serve_http(self, directory: Path, port: int) -> subprocess.Popen[bytes]:
        """``python -m http.server PORT`` on 127.0.0.1 inside this host, serving
        ``directory``; returns once it accepts connections (ended with the lab at the
        latest; terminate it to end it sooner)."""
        server: subprocess.Popen[bytes] = self.popen(
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(directory),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), 1).close()"
        while self.run(sys.executable, "-c", probe, check=False).returncode != 0:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise LabError(f"the HTTP server on {self.name}:{port} did not start")
            time.sleep(0.1)
        return server

    def curl(
        self, url: str, into: Path, *, max_time: float = 120, limit_rate: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``curl URL -o INTO`` inside this host (not checked: its returncode and stderr
        say what went wrong)."""
        command = ["curl", "--silent", "--show-error", "--max-time", str(max_time)]
        if limit_rate:
            command += ["--limit-rate", limit_rate]
        return self.run(*command, "--output", str(into), url, check=False, timeout=max_time + 30)

    def logs(self, lines: int = 80) -> dict[str, str]:
        """The last ``lines`` of each daemon's log on this host."""
        logs = {}
        for log in sorted(self.home.glob("nodes/*/node.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            logs[log.parent.name] = "\n".join(text)
        return logs


@dataclass
class MeshkeyNode:
    host: Host
    name: str
    node_id: str
    udp_port: int
    tcp_port: int

    def route(self, protocol: str = "udp") -> str:
        """This node's listener as a route segment pinned to its NodeId (reachable from the
        WAN only where its host is public)."""
        port = self.udp_port if protocol == "udp" else self.tcp_port
        return f"/ip4/{self.host.address}/{protocol}/{port}/id/{self.node_id}"

    @property
    def seed_text(self) -> str:
        """``NODEID@HOST:PORT``, what ``--seed`` takes (the host's own address: reachable
        from the WAN only where the host is public)."""
        return f"{self.node_id}@{self.host.address}:{self.udp_port}"

    def meshkey(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.host.meshkey(*args, **kwargs)

    def stop(self) -> None:
        """``meshkey node stop NAME`` (the daemon ends cleanly)."""
        self.host.meshkey("node", "stop", self.name)

    def pid(self) -> int:
        return int(self.show()["pid"])

    def send(self, text: str, to: str, *, timeout: str = "10s") -> subprocess.CompletedProcess[str]:
        """``meshkey message send TEXT --from NAME --to ROUTE`` (not checked: see the
        result's returncode, stdout and stderr)."""
        command = ["message", "send", text, "--from", self.name, "--to", to, "--timeout", timeout]
        return self.host.meshkey(*command, check=False, timeout=120)

    def control(self, op: str, args: dict[str, Any] | None = None, timeout: float = 30) -> Any:
        """One request to this node's daemon over its control socket (what the CLI sends,
        without the CLI's start-up), e.g. ``control("channel.list")``; raises
        ``meshkey.node.control_client.ControlError``."""
        from meshkey.node.control_client import ControlClient
        from meshkey.node.state import Home

        client = ControlClient(Home(self.host.home).node(self.name).socket_path)
        return client.call(op, args, timeout=timeout)

    def control_send(self, route: str, payload: bytes, *, timeout: float = 10.0) -> bytes:
        """Sends ``payload`` from this node's daemon to ``route`` over its control socket
        (what ``message send --from`` asks, without the CLI's start-up, so a clock around it
        times the daemon); the reply, or ``meshkey.node.control_client.ControlError``."""
        args = {"route": route, "payload": payload, "timeout": timeout}
        reply: bytes = self.control("message.send", args, timeout=timeout + 5)["payload"]
        return reply

    def send_until_answered(
        self, text: str, to: str, within: float, *, timeout: str = "5s", pause: float = 0.5
    ) -> tuple[subprocess.CompletedProcess[str], float, int]:
        """Sends until one send is answered or ``within`` seconds passed: the last result,
        the seconds from the first send to the answer (to the last failure if none) and
        how many sends it took."""
        started = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            result = self.send(text, to, timeout=timeout)
            elapsed = time.monotonic() - started
            if result.returncode == 0 or elapsed >= within:
                return result, elapsed, attempts
            time.sleep(pause)

    def channels(self) -> list[dict[str, Any]]:
        """``secure-channel list --at NAME``: each channel with its peer, state and path."""
        listed: list[dict[str, Any]] = self.host.meshkey_json(
            "secure-channel", "list", "--at", self.name
        )
        return listed

    def channel(self, address: str) -> dict[str, Any]:
        """``secure-channel show ADDRESS --at NAME``."""
        shown: dict[str, Any] = self.host.meshkey_json(
            "secure-channel", "show", address, "--at", self.name
        )
        return shown

    def channel_paths(self, peer: str) -> list[dict[str, Any]]:
        """The paths of this node's channels to ``peer`` (a NodeId), as ``secure-channel
        list`` shows them (``now``, ``direct``, ``upgrade``: why not direct...)."""
        return [dict(c.get("path") or {}) for c in self.channels() if c.get("peer") == peer]

    def wait_paths(
        self, peer: str, done: Callable[[list[dict[str, Any]]], bool], within: float
    ) -> tuple[list[dict[str, Any]], float | None]:
        """Polls this node's channels to ``peer`` until ``done(paths)`` or ``within`` seconds
        passed: the last paths seen, and the seconds it took (None: not within)."""
        started = time.monotonic()
        while True:
            paths = self.channel_paths(peer)
            if done(paths):
                return paths, time.monotonic() - started
            if time.monotonic() - started > within:
                return paths, None
            time.sleep(0.2)

    def open_channel(self, to: str, *, timeout: str = "30s") -> str:
        """``secure-channel create --from NAME --to ROUTE``: the channel's address."""
        created = self.meshkey(
            "secure-channel", "create", "--from", self.name, "--to", to, "--timeout", timeout
        )
        return created.stdout.strip()

    def relays(self) -> list[dict[str, Any]]:
        """``relay list --at NAME``: the relays this node keeps (``automatic`` or not)."""
        listed: list[dict[str, Any]] = self.host.meshkey_json("relay", "list", "--at", self.name)
        return listed

    def find(self, node_id: str) -> dict[str, Any]:
        """``peer find NODEID --at NAME``: the lookup's answer with the signed record ({}
        when the lookup failed)."""
        result = self.meshkey(
            "peer", "find", node_id, "--at", self.name, "--output", "json", check=False
        )
        if result.returncode != 0 or not result.stdout.strip():
            return {}
        found: dict[str, Any] = json.loads(result.stdout)
        return found

    def show(self) -> Any:
        return self.host.meshkey_json("node", "show", self.name)

    def transports(self, peer: str | None = None) -> set[str]:
        """The transports of this node's open connections (``udp``, ``tcp``), to ``peer`` (a
        NodeId) or to anyone; a connection not open is named ``TRANSPORT:STATE:REMOTE``."""
        return {
            c["transport"]
            if c["state"] == "open"
            else f"{c['transport']}:{c['state']}:{c['remote']}"
            for c in self.show().get("connections", [])
            if peer is None or c["peer"] == peer
        }

    def log(self) -> str:
        return (self.host.home / "nodes" / self.name / "node.log").read_text(errors="replace")


# -- the lab ---------------------------------------------------------------------------------

_LIVE_LABS: list[Lab] = []
_HANDLERS_INSTALLED = False


def live_labs() -> list[Lab]:
    return list(_LIVE_LABS)


def _close_live_labs() -> None:
    for lab in list(_LIVE_LABS):
        lab.close()


def _on_termination(signum: int, frame: FrameType | None) -> None:
    # Raising here unwinds the main thread through every `with Lab()` and pytest finalizer.
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def _install_handlers() -> None:
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED:
        return
    _HANDLERS_INSTALLED = True
    atexit.register(_close_live_labs)
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) in (signal.SIG_DFL, None):
                signal.signal(signum, _on_termination)


class Lab:
    """One run of the lab. Use it as a context manager (or call ``close``); it also closes at
    interpreter exit and on SIGTERM/SIGHUP, and ``python -m tests.natlab sweep`` removes what
    a killed run left."""

    def __init__(
        self,
        *,
        delay_ms: float = DEFAULT_DELAY_MS,
        ttl_floor: int = DEFAULT_TTL_FLOOR,
        seed: int | None = None,
        keep_workdir: bool = False,
        purpose: str = "test",
    ) -> None:
        self.purpose = purpose
        self.delay_ms = delay_ms
        self.ttl_floor = ttl_floor
        self.seed = seed
        self.keep_workdir = keep_workdir
        self.routers: dict[str, Router] = {}
        self.hosts: dict[str, Host] = {}
        self._switch: subprocess.Popen[bytes] | None = None
        self._taps = 0
        self._lans = 0
        self._router_addresses = 0
        self._wan_hosts = 0
        self._closed = False
        self.state: run_state.RunState | None = None
        self.wan: Wan

    # -- life cycle ---

    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        run_state.sweep()
        _install_handlers()
        run_id = run_state.new_run_id()
        workdir = Path(tempfile.mkdtemp(prefix=f"{run_state.WORKDIR_PREFIX}{run_id}-"))
        pid = os.getpid()
        start = run_state.process_start_time(pid)
        assert start is not None
        self.state = run_state.RunState(run_id, pid, start, str(workdir), purpose=self.purpose)
        self.state.save()
        _LIVE_LABS.append(self)
        try:
            self._start_switch()
        except BaseException:
            self.close()
            raise

    @property
    def run_id(self) -> str:
        assert self.state is not None
        return self.state.run_id

    @property
    def workdir(self) -> Path:
        assert self.state is not None
        return Path(self.state.workdir)

    def _start_switch(self) -> None:
        assert self.state is not None
        control = self.workdir / "wan.sock"
        command = [sys.executable, str(SWITCH_SCRIPT), "--control", str(control)]
        command += ["--owner", str(os.getpid())]
        if self.seed is not None:
            command += ["--seed", str(self.seed)]
        with open(self.workdir / "switch.log", "ab") as log:
            self._switch = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C reaches us, and we tear down
                env=subprocess_env(),
            )
        self.state.switch_pid = self._switch.pid
        self.state.switch_start = run_state.process_start_time(self._switch.pid)
        self.state.save()
        deadline = time.monotonic() + 10
        while not control.exists():
            if self._switch.poll() is not None or time.monotonic() > deadline:
                log_text = (self.workdir / "switch.log").read_text(errors="replace")
                raise LabError(f"the WAN switch did not start: {log_text.strip()}")
            time.sleep(0.01)
        self.wan = Wan(control)
        while True:  # the socket file exists from bind(); it answers once it listens
            try:
                self.wan.request("ping")
                return
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def close(self) -> None:
        """Ends every process in the lab's namespaces, deletes them, stops the switch."""
        if self._closed:
            return
        self._closed = True
        if self in _LIVE_LABS:
            _LIVE_LABS.remove(self)
        if self.state is None:
            return
        with contextlib.suppress(AttributeError):
            self.wan.close()
        run_state.remove(self.state, keep_workdir=self.keep_workdir)
        if self._switch is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._switch.wait(5)

    def mark_ready(self) -> None:
        assert self.state is not None
        self.state.ready = True
        self.state.save()

    # -- building ---

    def _netns(self, name: str) -> str:
        assert self.state is not None
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,30}", name):
            raise ValueError(f"lab names are lowercase letters, digits and '-': {name!r}")
        if name in self.hosts or name in self.routers:
            raise ValueError(f"{name!r} is already in the lab")
        netns = f"{run_state.NETNS_PREFIX}{self.run_id}-{name}"
        self.state.namespaces.append(netns)
        self.state.save()  # recorded before it exists
        subprocess.run(["ip", "netns", "add", netns], check=True, capture_output=True)
        return netns

    def _wan_port(self, label: str, netns: str) -> str:
        """A new switch port, its TAP device moved into ``netns`` (not yet named wan0)."""
        assert self.state is not None
        tap = f"nl{self.run_id}w{self._taps}"
        self._taps += 1
        self.state.taps.append(tap)
        self.state.save()
        self.wan.request("add_port", name=tap, label=label, settings={"delay_ms": self.delay_ms})
        subprocess.run(["ip", "link", "set", tap, "netns", netns], check=True, capture_output=True)
        return tap

    def _wan_lines(self, tap: str, address: str) -> list[str]:
        return [
            f"ip link set {tap} name wan0",
            f"ip addr add {address}/24 dev wan0",
            "ip link set wan0 up",
            # Everything is on-link on the switch: both documentation /24s and any other
            # address, which no lab namespace owns, so nothing leaves the lab.
            "ip route add default dev wan0",
            f"iptables -w {' '.join(ttl_rule(self.ttl_floor))}" if self.ttl_floor > 0 else ":",
        ]

    def _record_host(self, host: Host) -> None:
        assert self.state is not None
        self.state.hosts[host.name] = {
            "netns": host.netns,
            "address": host.address,
            "public_address": host.public_address,
            "kind": str(host.kind),
            "home": str(host.home),
            "router": host.router.netns if host.router else None,
        }
        self.state.save()

    def add_public_host(self, name: str, address: str | None = None) -> Host:
        """A host on the WAN with a public address (e.g. 203.0.113.10 or 198.51.100.10)."""
        if address is None:  # public sides: 203.0.113.100, .101, ...
            address = f"203.0.113.{100 + self._wan_hosts}"
            self._wan_hosts += 1
        netns = self._netns(name)
        tap = self._wan_port(name, netns)
        host = Host(self, name, netns, NatKind.PUBLIC, address, None, self.workdir / "homes" / name)
        host.script([*_NO_IPV6, "ip link set lo up", *self._wan_lines(tap, address)])
        self.hosts[name] = host
        self._record_host(host)
        return host

    #: Public addresses the lab's tests and benchmarks name themselves (the seed, fixed public
    #: hosts, renumbering targets): a router never gets one of them.
    _FIXED_PUBLIC = frozenset({9, 10, *range(20, 40), 60, 77})

    def _next_router_address(self) -> str:
        """The next router WAN address, 203.0.113.1 upwards, skipping the fixed ones (the
        tenth router used to take the seed's 203.0.113.10)."""
        while True:
            self._router_addresses += 1
            if self._router_addresses >= 100:  # 100 and up are public hosts'
                raise LabError("the lab has no router address left")
            if self._router_addresses not in self._FIXED_PUBLIC:
                return f"203.0.113.{self._router_addresses}"

    def add_router(
        self,
        name: str,
        kind: NatKind | str,
        wan_address: str | None = None,
        *,
        behind: Router | None = None,
        lan_prefix: str | None = None,
    ) -> Router:
        """A NAT of ``kind``: on the lab's WAN (at ``wan_address``, default 203.0.113.K), or
        ``behind`` another router (a home router behind a carrier-grade NAT: its WAN side is
        a port on that router's LAN, its address the next free one there). ``lan_prefix``:
        the first three octets of its LAN (default ``10.K.0``; a carrier-grade NAT's is in
        100.64.0.0/10, see :meth:`add_carrier_nat`)."""
        kind = NatKind(kind)
        if kind is NatKind.PUBLIC:
            raise ValueError("a public side has no router: use add_public_host")
        self._lans += 1
        netns = self._netns(name)
        if lan_prefix is None:
            lan_prefix = f"10.{self._lans}.0"
        if behind is None:
            if wan_address is None:
                wan_address = self._next_router_address()
            tap = self._wan_port(name, netns)
            wan_lines = self._wan_lines(tap, wan_address)
        else:
            port_address = self._lan_port(behind, netns, "wan0")
            if wan_address is None:
                wan_address = port_address
            wan_lines = [
                f"ip addr add {wan_address}/24 dev wan0",
                "ip link set wan0 up",
                f"ip route add default via {behind.lan_address}",
            ]
        router = Router(self, name, netns, kind, wan_address, lan_prefix, upstream=behind)
        masquerade = "iptables -w -t nat -A POSTROUTING -o wan0 -j MASQUERADE"
        lines = [
            *_NO_IPV6,
            "ip link set lo up",
            *wan_lines,
            "sysctl -qw net.ipv4.ip_forward=1",
            masquerade + (" --random-fully" if kind is NatKind.EDM else ""),
        ]
        if kind is NatKind.UDP_BLOCKED:
            lines.append("iptables -w -A FORWARD -p udp -j DROP")
        router.script(lines)
        if behind is not None:
            behind.routers.append(router)
        self.routers[name] = router
        return router

    def add_carrier_nat(self, name: str, kind: NatKind | str) -> Router:
        """A carrier-grade NAT on the WAN whose LAN is shared address space (RFC 6598,
        100.64.K.0/24 out of 100.64.0.0/10): home routers go behind it with
        ``add_router(..., behind=cgn)``."""
        return self.add_router(name, kind, lan_prefix=f"100.64.{self._lans + 1}")

    def _lan_port(self, router: Router, netns: str, device: str) -> str:
        """A veth pair from ``device`` in ``netns`` to ``router``'s LAN bridge (made with the
        first port); returns the address that side gets (``PREFIX.2``, ``.3``, ...)."""
        index = router.lan_ports
        router.lan_ports += 1
        lan = f"lan{index}"
        peer = ["peer", "name", lan, "netns", router.netns]
        subprocess.run(
            ["ip", "link", "add", device, "netns", netns, "type", "veth", *peer],
            check=True,
            capture_output=True,
        )
        if index == 0:
            router.script(
                [
                    "ip link add lanbr type bridge mcast_snooping 0",
                    "ip link set lanbr up",
                    f"ip addr add {router.lan_address}/24 dev lanbr",
                ]
            )
        router.script([f"ip link set {lan} master lanbr", f"ip link set {lan} up"])
        return f"{router.lan_prefix}.{2 + index}"

    def add_host(self, name: str, behind: Router) -> Host:
        """A host on ``behind``'s LAN (10.K.0.2, .3, ...), its default route via the router."""
        netns = self._netns(name)
        address = self._lan_port(behind, netns, "eth0")
        host = Host(self, name, netns, behind.kind, address, behind, self.workdir / "homes" / name)
        host.script(
            [
                *_NO_IPV6,
                "ip link set lo up",
                f"ip addr add {address}/24 dev eth0",
                "ip link set eth0 up",
                f"ip route add default via {behind.lan_address}",
            ]
        )
        behind.hosts.append(host)
        self.hosts[name] = host
        self._record_host(host)
        return host

    def add_side(self, name: str, kind: NatKind | str) -> Host:
        """One side of the matrix: a host behind its own router of ``kind`` (the router is
        named ``NAME-nat``), or a public host for ``public``."""
        kind = NatKind(kind)
        if kind is NatKind.PUBLIC:
            return self.add_public_host(name)
        return self.add_host(name, self.add_router(f"{name}-nat", kind))

    # -- looking inside ---

    def diagnostics(self, log_lines: int = 60) -> str:
        """Each router's conntrack table, the WAN's settings and counters, the daemons' logs."""
        parts = [f"NAT lab run {self.run_id} (work directory {self.workdir})"]
        for router in self.routers.values():
            try:
                table = router.conntrack_text().strip() or "(empty)"
            except (LabError, subprocess.SubprocessError) as exc:
                table = f"(conntrack -L failed: {exc})"
            parts.append(f"--- conntrack -L in router {router.name} ({router.kind}) ---\n{table}")
        try:
            parts.append("--- WAN counters ---\n" + self.wan.counters_table())
            settings = ", ".join(
                f"{p['label']}: {p['delay_ms']} ms, {p['loss']} % loss" for p in self.wan.settings()
            )
            parts.append(f"--- WAN settings ---\n{settings}")
        except (LabError, OSError) as exc:
            parts.append(f"--- WAN: unavailable ({exc}) ---")
        for host in self.hosts.values():
            for node, text in host.logs(log_lines).items():
                parts.append(f"--- log of {node} on {host.name} ---\n{text}")
        return "\n".join(parts)


_NO_IPV6 = [
    "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1",
]


def standard_lab_hosts(lab: Lab) -> dict[str, Host]:
    """The topology the lab tests share: two public observers with different addresses (the
    relay at 203.0.113.10, an observer at 198.51.100.10) and one side of each kind."""
    hosts = {
        "relay": lab.add_public_host("relay", "203.0.113.10"),
        "observer": lab.add_public_host("observer", "198.51.100.10"),
    }
    for kind in NatKind:
        hosts[str(kind)] = lab.add_side(str(kind), kind)
    return hosts


def one_public_node_hosts(lab: Lab, prefixes: Sequence[str] = ("a", "b")) -> dict[str, Host]:
    """The seed issue's topology, shaped like users' networks (NATLAB.md): ONE public host,
    ``seed`` at 203.0.113.10, which is the seed, the relay and the only observer a node
    meets (there is no ``observer`` host, so nothing offers a second IP), and one side of
    each kind per prefix, named ``PREFIX-KIND`` (``a-eim`` behind router ``a-eim-nat``;
    ``PREFIX-public`` a public host at 203.0.113.100 and up: public nodes join as servers,
    as a user's public machine would). Two prefixes give each pair of kinds, the same kind
    included, two different routers."""
    hosts = {"seed": lab.hosts.get("seed") or lab.add_public_host("seed", SEED_ADDRESS)}
    for prefix in prefixes:
        for kind in NatKind:
            name = f"{prefix}-{kind}"
            hosts[name] = lab.add_side(name, kind)
    return hosts
