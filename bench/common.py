"""Shared helpers: temporary homes with daemons, percentiles, result files."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from meshkey.node import launcher
from meshkey.node.core import Node
from meshkey.node.state import Home

RESULTS = Path(__file__).parent / "results"


@contextlib.contextmanager
def daemons(*names: str) -> Iterator[Home]:
    with tempfile.TemporaryDirectory(prefix="meshkey-bench-") as directory:
        home = Home(directory)
        try:
            for name in names:
                launcher.create_node(home, name, tcp=None, identity=None)
                launcher.start_node(home, name)
            yield home
        finally:
            for name in names:
                if home.node(name).exists() and home.node(name).is_running():
                    launcher.stop_node(home, name)


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary(samples_ms: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(samples_ms),
        "p50_ms": round(percentile(samples_ms, 0.5), 3),
        "p99_ms": round(percentile(samples_ms, 0.99), 3),
        "mean_ms": round(statistics.fmean(samples_ms), 3),
    }


def save(name: str, data: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2))


async def round_trips(node: Node, target: str, count: int) -> list[float]:
    """Milliseconds of ``count`` sequential 64-byte round trips to ``target`` (after one)."""
    await node.send(target, b"warm-up")
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await node.send(target, b"x" * 64)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


@contextlib.contextmanager
def served_in_process(target: Callable[..., None], *args: Any) -> Iterator[Any]:
    """Runs ``target(*args, ports, stop)`` in a spawned process and yields the first thing it
    puts on ``ports`` (its address); on exit it puts on ``stop``, then ends the process."""
    context = multiprocessing.get_context("spawn")
    ports, stop = context.Queue(), context.Queue()
    process = context.Process(target=target, args=(*args, ports, stop))
    process.start()
    try:
        yield ports.get(timeout=30)
    finally:
        stop.put(True)
        process.join(5)
        if process.is_alive():
            process.terminate()
            process.join()
