"""How steady this machine's CPU speed is: a fixed pure-Python loop timed over and over on an
idle machine. On a VM whose speed swings, only runs alternated within seconds compare fairly.

    .venv/bin/python -m loadtests.host_speed --seconds 40
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time


def _loop() -> int:
    total = 0
    for i in range(2_000_000):
        total += i * i
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.host_speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=40.0)
    args = parser.parse_args(argv)
    runs: list[float] = []
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        _loop()
        runs.append(time.perf_counter() - started)
    print(f"{len(runs)} runs of the same loop over {args.seconds:.0f} s: min {min(runs):.3f} s, "
          f"median {statistics.median(runs):.3f} s, max {max(runs):.3f} s (max/min {max(runs) / min(runs):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
