"""Reach any node by its NodeId with nothing but a seed (issue 18), through real kernel NATs,
in a lab shaped like users' networks: ONE public node (the seed at 203.0.113.10, which is
also the only relay and the only observer anybody meets) and two sides of each kind
(``a-KIND`` and ``b-KIND``, each behind its own router).

For each of the 16 pairs of {public, EIM, EDM, UDP-blocked}, B on side ``b-KIND`` and A on
side ``a-KIND`` are created exactly as the README tells users, ``meshkey node create NAME
--seed NODEID@203.0.113.10:7000`` and nothing else (no listen addresses, no relay, no
observer), and then A:

1. sends ``hi`` to ``/peer/B_NODEID/service/uppercase`` and gets ``HI`` (retried until B's
   signed record, with its automatic relay, is published: up to 20 s; the time is kept);
2. opens ``secure-channel create --to /peer/B_NODEID/service/api`` and sends through it;
3. fetches a 2 MiB file with ``curl`` from an HTTP server next to B, through a portal: a
   ``tcp-outlet`` on B and a ``tcp-inlet`` on A to ``/peer/B_NODEID/secure/api/service/outlet``
   (sha256 compared);
4. after the transfer, ``secure-channel list`` on A says the path to B: direct for every pair
   NATLAB.md's matrix marks direct (over TCP for public with UDP-blocked), relayed with a
   reason for the others.

Each pair has a network of its own: its own seed node on the seed host (203.0.113.10, port
7000 + the pair's index), so in every pair's network the seed is the only public node and
the only server when B joins (a public B, too, joins a network where nobody else could dial
it back), and one pair's nodes never serve another's as relay, observer or contact. Each
pair runs with fresh nodes (cold: nothing cached); up to three pairs run at once. Each step
of each pair is its own test.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .lab import SEED_PORT, Host, Lab, NatKind, expected_direct, on_final_path

pytestmark = [pytest.mark.natlab, pytest.mark.timeout(900)]

SIDES = list(NatKind)
PAIRS = [(a, b) for a in SIDES for b in SIDES]
WORKERS = 3  # CLI calls are CPU-bound on 2 cores
RECORD_WAIT = 20.0  # seconds for B's record (with its relay) to be found
FINAL_PATH_WAIT = 10.0
FILE_SIZE = 2 * 1024 * 1024
HTTP_PORT = 8000
STEPS = ("message", "channel", "portal", "final_path")

#: Steps that fail because the product lacks something (issue 18), with what it lacks.
#: Each is a strict xfail: it turns into a failure the day the feature lands. (None left: a
#: UDP-blocked node, the last, joins over TCP at its seed's port since the TCP fallback.)
MISSING: dict[tuple[str, NatKind, NatKind], str] = {}


@dataclass
class Step:
    error: str | None = None
    seconds: float | None = None
    note: str = ""


@dataclass
class PairRun:
    a: NatKind
    b: NatKind
    steps: dict[str, Step] = field(default_factory=lambda: {s: Step() for s in STEPS})
    sends_to_first_answer: int = 0
    seconds_to_final_path: float | None = None  # from `secure-channel create`
    final_path: dict[str, Any] = field(default_factory=dict)
    responder_path: dict[str, Any] = field(default_factory=dict)


def pair_id(a: NatKind, b: NatKind) -> str:
    return f"{a}-to-{b}"


def step(run: PairRun, name: str, body: Callable[[Step], None]) -> None:
    """Runs one step; what it raised is kept as that step's error (the others still run)."""
    started = time.monotonic()
    current = run.steps[name]
    try:
        body(current)
    except Exception:
        current.error = f"{pair_id(run.a, run.b)}, {name}:\n{traceback.format_exc()}"
    if current.seconds is None:
        current.seconds = time.monotonic() - started


@dataclass
class Matrix:
    hosts: dict[str, Host]
    workdir: Path
    runs: dict[tuple[NatKind, NatKind], PairRun] = field(default_factory=dict)


def run_pair(matrix: Matrix, a: NatKind, b: NatKind) -> PairRun:
    run = PairRun(a, b)
    index = PAIRS.index((a, b))
    seed = matrix.hosts["seed"].create_seed_node(f"seed-{index}", port=SEED_PORT + index)
    receiver = matrix.hosts[f"b-{b}"].join(f"from-{a}", seed)
    sender = matrix.hosts[f"a-{a}"].join(f"to-{b}", seed)
    peer = receiver.node_id
    want = expected_direct(a, b)

    def message(current: Step) -> None:
        to = f"/peer/{peer}/service/uppercase"
        result, seconds, sends = sender.send_until_answered("hi", to, RECORD_WAIT)
        current.seconds, run.sends_to_first_answer = seconds, sends
        assert result.returncode == 0 and result.stdout == "HI\n", (
            f"no answer within {RECORD_WAIT:.0f} s ({sends} sends): "
            f"exit {result.returncode}: {result.stderr.strip()}"
        )

    def channel(current: Step) -> None:
        started = time.monotonic()
        created = sender.meshkey(
            "secure-channel",
            "create",
            "--from",
            sender.name,
            "--to",
            f"/peer/{peer}/service/api",
            "--timeout",
            "30s",
            check=False,
        )
        assert created.returncode == 0, f"exit {created.returncode}: {created.stderr.strip()}"
        current.seconds = time.monotonic() - started
        address = created.stdout.strip()
        reply = sender.send("through the channel", f"{address}/service/uppercase")
        assert reply.stdout == "THROUGH THE CHANNEL\n", (reply.returncode, reply.stderr)
        waiting_from = time.monotonic()
        _, seconds = sender.wait_paths(peer, lambda p: on_final_path(p, want), FINAL_PATH_WAIT)
        if seconds is not None:
            run.seconds_to_final_path = waiting_from - started + seconds

    def portal(current: Step) -> None:
        directory = matrix.workdir / f"http-{a}-{b}"
        directory.mkdir()
        data = os.urandom(FILE_SIZE)
        (directory / "file").write_bytes(data)
        port = HTTP_PORT + SIDES.index(a)
        server = receiver.host.serve_http(directory, port)
        try:
            receiver.meshkey("tcp-outlet", "create", "--at", receiver.name, "--to", f"{port}")
            inlet = sender.host.meshkey_json(
                "tcp-inlet",
                "create",
                "--at",
                sender.name,
                "--to",
                f"/peer/{peer}/secure/api/service/outlet",
                "--timeout",
                "30s",
            )
            into = directory / "fetched"
            started = time.monotonic()
            fetched = sender.host.curl(f"http://{inlet['address']}/file", into, max_time=120)
            current.seconds = time.monotonic() - started
            assert fetched.returncode == 0, f"curl exit {fetched.returncode}: {fetched.stderr}"
            got = hashlib.sha256(into.read_bytes()).hexdigest()
            assert got == hashlib.sha256(data).hexdigest(), f"{into.stat().st_size} bytes"
        finally:
            server.terminate()
            server.wait(10)

    def final_path(current: Step) -> None:
        paths, _ = sender.wait_paths(peer, lambda p: on_final_path(p, want), FINAL_PATH_WAIT)
        run.final_path = paths[0] if paths else {}
        responder = receiver.channel_paths(sender.node_id)
        run.responder_path = responder[0] if responder else {}
        shown = [(p.get("now"), p.get("upgrade")) for p in paths]
        wanted = f"direct over {want}" if want else "relay, with the reason"
        assert on_final_path(paths, want), f"want {wanted}; A's channels to B: {shown}"

    step(run, "message", message)
    step(run, "channel", channel)
    step(run, "portal", portal)
    step(run, "final_path", final_path)
    return run


@pytest.fixture(scope="module")
def matrix(lab: Lab, reach_hosts: dict[str, Host]) -> Matrix:
    matrix = Matrix(reach_hosts, lab.workdir)
    pool = concurrent.futures.ThreadPoolExecutor(WORKERS)
    try:
        futures = {pool.submit(run_pair, matrix, a, b): (a, b) for a, b in PAIRS}
        for future, pair in futures.items():
            matrix.runs[pair] = future.result()
    finally:  # interrupted: drop the pairs not started, so the lab tears down in seconds
        pool.shutdown(wait=True, cancel_futures=True)
    return matrix


def cases(name: str) -> list[Any]:
    return [
        pytest.param(
            a,
            b,
            id=pair_id(a, b),
            marks=[pytest.mark.xfail(reason=MISSING[(name, a, b)], strict=True)]
            if (name, a, b) in MISSING
            else [],
        )
        for a, b in PAIRS
    ]


def check(matrix: Matrix, name: str, a: NatKind, b: NatKind) -> None:
    error = matrix.runs[(a, b)].steps[name].error
    if error:
        pytest.fail(error, pytrace=False)


@pytest.mark.parametrize(("a", "b"), cases("message"))
def test_message_to_peer(matrix: Matrix, a: NatKind, b: NatKind) -> None:
    check(matrix, "message", a, b)


@pytest.mark.parametrize(("a", "b"), cases("channel"))
def test_secure_channel_to_peer(matrix: Matrix, a: NatKind, b: NatKind) -> None:
    check(matrix, "channel", a, b)


@pytest.mark.parametrize(("a", "b"), cases("portal"))
def test_curl_through_a_portal_to_peer(matrix: Matrix, a: NatKind, b: NatKind) -> None:
    check(matrix, "portal", a, b)


@pytest.mark.parametrize(("a", "b"), cases("final_path"))
def test_final_path(matrix: Matrix, a: NatKind, b: NatKind) -> None:
    check(matrix, "final_path", a, b)


def test_reach_summary(matrix: Matrix) -> None:
    """Prints each pair's timings and final path (shown with -s / in the CI log)."""
    rows = [
        f"{'A':>11} -> {'B':<11} {'hi':>6} {'sends':>5} {'channel':>7} {'2 MiB':>6} "
        f"{'final':>6}  path on A | on B"
    ]

    def seconds(value: float | None) -> str:
        return f"{value:.2f}" if value is not None else "-"

    for (a, b), run in sorted(matrix.runs.items()):
        marks = {n: "" if s.error is None else "!" for n, s in run.steps.items()}
        rows.append(
            f"{a:>11} -> {b:<11} {seconds(run.steps['message'].seconds) + marks['message']:>6} "
            f"{run.sends_to_first_answer:>5} "
            f"{seconds(run.steps['channel'].seconds) + marks['channel']:>7} "
            f"{seconds(run.steps['portal'].seconds) + marks['portal']:>6} "
            f"{seconds(run.seconds_to_final_path) + marks['final_path']:>6}  "
            f"{run.final_path.get('now')} | {run.responder_path.get('now')}"
        )
    print("\n".join(rows))
    assert len(matrix.runs) == 16
