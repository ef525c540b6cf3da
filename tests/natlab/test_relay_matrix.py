"""The relay matrix through real kernel NATs: for every pair of sides (public, EIM, EDM,
UDP-blocked on each side), blue on side A registers a relay on a public relay node, yellow on
side B sends ``hello`` through ``/service/forward_to_.../service/uppercase`` and gets
``HELLO``, then opens a secure channel to blue through the relay (authorizing only blue's
NodeId) and sends through it. Hops are UDP (QUIC) where the side's router lets UDP through,
TCP where it blocks UDP. Then the whole matrix again, with fresh daemons, while every WAN port
drops 5 % of the frames in each direction.

The 16 pairs of one matrix run concurrently (they share the relay and the daemons of a side,
as a real relay is shared) in a module fixture; each pair is then reported as its own test.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from .lab import Host, Lab, MeshkeyNode, NatKind

pytestmark = [pytest.mark.natlab, pytest.mark.timeout(300)]

SIDES = list(NatKind)
PAIRS = [(a, b) for a in SIDES for b in SIDES]
PAIR_IDS = [f"{a}-to-{b}" for a, b in PAIRS]
WORKERS = 4  # CLI calls are CPU-bound; more would only queue on 2 cores
LOSS_PERCENT = 5.0


def hop_protocol(kind: NatKind) -> str:
    return "tcp" if kind is NatKind.UDP_BLOCKED else "udp"


@dataclass
class PairOutcome:
    error: str | None = None
    seconds: float = 0.0
    steps: list[str] = field(default_factory=list)


@dataclass
class Matrix:
    relay: MeshkeyNode
    blues: dict[NatKind, MeshkeyNode]
    yellows: dict[NatKind, MeshkeyNode]
    outcomes: dict[tuple[NatKind, NatKind], PairOutcome] = field(default_factory=dict)
    transports: dict[str, set[str]] = field(default_factory=dict)  # per node, after the run
    lost_frames: int = 0


@contextlib.contextmanager
def workers() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    """A thread pool that, when interrupted (Ctrl-C, SIGTERM), drops the work not yet
    started, so the lab tears down in seconds."""
    pool = concurrent.futures.ThreadPoolExecutor(WORKERS)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def start_side_nodes(
    hosts: dict[str, Host], suffix: str
) -> tuple[dict[NatKind, MeshkeyNode], dict[NatKind, MeshkeyNode]]:
    with workers() as pool:
        blues = {k: pool.submit(hosts[str(k)].create_node, f"blue{suffix}") for k in SIDES}
        yellows = {k: pool.submit(hosts[str(k)].create_node, f"yellow{suffix}") for k in SIDES}
        return (
            {k: f.result() for k, f in blues.items()},
            {k: f.result() for k, f in yellows.items()},
        )


def connect(matrix: Matrix, a: NatKind, b: NatKind, tag: str) -> PairOutcome:
    """Blue on side ``a``, yellow on side ``b``: relay, message, secure channel."""
    outcome = PairOutcome()
    started = time.monotonic()
    blue, yellow, relay = matrix.blues[a], matrix.yellows[b], matrix.relay
    try:
        name = f"{a}-{b}{tag}"
        created = blue.meshkey(
            "relay", "create", name, "--at", relay.route(hop_protocol(a)), "--to", blue.name
        ).stdout
        assert created == f"/service/forward_to_{name}\n", created
        outcome.steps.append("relay created")
        to_blue = relay.route(hop_protocol(b)) + created.strip()
        wait = ("--timeout", "30s")
        upper = f"{to_blue}/service/uppercase"
        reply = yellow.meshkey(
            "message", "send", "hello", "--from", yellow.name, "--to", upper, *wait
        )
        assert reply.stdout == "HELLO\n", reply
        outcome.steps.append("hello from the yellow daemon")
        # The short-lived node in the CLI (its own socket, its own NAT mapping).
        reply = yellow.host.meshkey("message", "send", "hello", "--to", upper, *wait)
        assert reply.stdout == "HELLO\n", reply
        outcome.steps.append("hello from the one-shot CLI")
        channel = yellow.meshkey(
            "secure-channel",
            "create",
            "--from",
            yellow.name,
            "--to",
            f"{to_blue}/service/api",
            "--authorized",
            blue.node_id,
            *wait,
        ).stdout.strip()
        assert channel.startswith("/service/"), channel
        outcome.steps.append(f"secure channel {channel}")
        text = f"hello {b} to {a} through the channel"
        reply = yellow.meshkey(
            "message", "send", text, "--from", yellow.name, "--to", f"{channel}/service/uppercase"
        )
        assert reply.stdout == text.upper() + "\n", reply
        outcome.steps.append("message through the channel")
    except Exception:
        outcome.error = f"{a} -> {b}: after {outcome.steps}:\n{traceback.format_exc()}"
    outcome.seconds = time.monotonic() - started
    return outcome


def run_matrix(matrix: Matrix, tag: str) -> None:
    with workers() as pool:
        futures = {pool.submit(connect, matrix, a, b, tag): (a, b) for a, b in PAIRS}
        for future, pair in futures.items():
            matrix.outcomes[pair] = future.result()
        nodes = [*matrix.blues.values(), *matrix.yellows.values()]
        # Toward the relay only: two nodes on one LAN may also have punched a direct hop.
        relay_id = matrix.relay.node_id
        shown = {
            node.host.name + "/" + node.name: pool.submit(node.transports, relay_id)
            for node in nodes
        }
        matrix.transports = {key: future.result() for key, future in shown.items()}


@pytest.fixture(scope="module")
def relay(hosts: dict[str, Host]) -> MeshkeyNode:
    return hosts["relay"].create_node("relay")


@pytest.fixture(scope="module")
def clean(hosts: dict[str, Host], relay: MeshkeyNode) -> Matrix:
    matrix = Matrix(relay, *start_side_nodes(hosts, ""))
    run_matrix(matrix, "")
    return matrix


@pytest.fixture(scope="module")
def lossy(lab: Lab, hosts: dict[str, Host], relay: MeshkeyNode, clean: Matrix) -> Matrix:
    lab.wan.reset_counters()
    with lab.wan.impaired(loss=LOSS_PERCENT):
        matrix = Matrix(relay, *start_side_nodes(hosts, "2"))
        run_matrix(matrix, "-lossy")
    counters = lab.wan.counters().values()
    matrix.lost_frames = sum(c["lost_in"] + c["lost_out"] for c in counters)
    return matrix


def check(matrix: Matrix, a: NatKind, b: NatKind) -> None:
    outcome = matrix.outcomes[(a, b)]
    if outcome.error:
        pytest.fail(outcome.error, pytrace=False)
    # Each side's nodes reached the relay over the hop its router allows (and no other).
    blue, yellow = matrix.blues[a], matrix.yellows[b]
    assert matrix.transports[f"{a}/{blue.name}"] == {hop_protocol(a)}
    assert matrix.transports[f"{b}/{yellow.name}"] == {hop_protocol(b)}


@pytest.mark.parametrize(("a", "b"), PAIRS, ids=PAIR_IDS)
def test_relay_matrix(clean: Matrix, a: NatKind, b: NatKind) -> None:
    check(clean, a, b)


@pytest.mark.parametrize(("a", "b"), PAIRS, ids=PAIR_IDS)
def test_relay_matrix_with_loss(lossy: Matrix, a: NatKind, b: NatKind) -> None:
    assert lossy.lost_frames > 0  # the WAN really dropped frames during this matrix
    check(lossy, a, b)


def test_every_pair_connects(clean: Matrix, lossy: Matrix) -> None:
    for name, matrix in (("clean", clean), ("5 % loss", lossy)):
        failed = [f"{a}->{b}" for (a, b), o in matrix.outcomes.items() if o.error]
        assert len(matrix.outcomes) == 16 and not failed, f"{name}: {failed}"
