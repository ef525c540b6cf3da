"""``python -m tests.natsim [--seeds N] [--loss P] [--json PATH] [-v]``: NATLAB.md's matrix in
the simulator for meshkey's punch strategy and the reference ones (Polykey, Ockam): per pair,
how many runs ended direct, the median simulated time to direct and the median probes sent.
``--json`` records every run (for the benchmark to compare with the lab)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

from meshkey.nat.strategy import MESHKEY, OCKAM, POLYKEY
from tests.natsim.scenario import KINDS, PairResult, format_details, format_matrix, run_pair


def summary(results: list[PairResult]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for a in KINDS:
        for b in KINDS:
            runs = [r for r in results if r.a is a and r.b is b]
            times = sorted(r.time_to_direct for r in runs if r.time_to_direct is not None)
            rows.append(
                {
                    "a": a.value,
                    "b": b.value,
                    "runs": len(runs),
                    "direct": len(times),
                    "first_attempt": sum(r.direct and r.attempts <= 2 for r in runs),
                    "p50": statistics.median(times) if times else None,
                    "p95": times[max(0, round(0.95 * len(times)) - 1)] if times else None,
                    "probes_p50": statistics.median(r.total_probes for r in runs),
                    "relay_bytes_p50": statistics.median(r.relay_bytes for r in runs),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.natsim")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--loss", type=float, default=0.0, help="loss per WAN port")
    parser.add_argument("--json", type=Path, help="write every run and the summary here")
    parser.add_argument("-v", action="store_true", help="one line per run")
    options = parser.parse_args()
    record: dict[str, object] = {"seeds": options.seeds, "loss": options.loss}
    for config in (MESHKEY, POLYKEY, OCKAM):
        results = [
            run_pair(a, b, config=config, seed=seed, loss=options.loss)
            for a in KINDS
            for b in KINDS
            for seed in range(1, options.seeds + 1)
        ]
        print(format_matrix(results))
        print()
        if options.v:
            print(format_details(results))
            print()
        record[config.name] = {
            "summary": summary(results),
            "runs": [{**dataclasses.asdict(r), "a": r.a.value, "b": r.b.value} for r in results],
        }
    if options.json:
        options.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
