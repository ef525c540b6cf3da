"""``python -m tests.natsim [SEEDS]``: NATLAB.md's matrix in the simulator, for meshkey's
punch strategy and the reference ones (Polykey, Ockam), with per-run details."""

from __future__ import annotations

import sys

from meshkey.nat.strategy import MESHKEY, OCKAM, POLYKEY
from tests.natsim.scenario import format_details, format_matrix, run_matrix


def main() -> None:
    seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    for config in (MESHKEY, POLYKEY, OCKAM):
        results = run_matrix(config, seeds=range(1, seeds + 1))
        print(format_matrix(results))
        print()
        if "-v" in sys.argv:
            print(format_details(results))
            print()


if __name__ == "__main__":
    main()
