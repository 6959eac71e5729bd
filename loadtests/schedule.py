"""When each request is due: the open-loop arrival schedule, fixed before the run starts.

Latency is measured from these intended times, not from when a request actually left, so a
server stall shows up in the percentiles instead of silently pausing the generator
(coordinated omission). Each generator process gets its own share of the schedule: constant
rate interleaves the processes so the merged stream is evenly spaced; Poisson gives each
process an independent Poisson stream at rate/processes, whose superposition is Poisson at rate.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np

Arrivals = Literal["constant", "poisson"]


def intended_offsets(
    arrivals: Arrivals,
    rate: float,
    duration: float,
    *,
    process: int = 0,
    processes: int = 1,
    seed: int = 0,
    limit: int | None = None,
) -> np.ndarray:
    """Seconds after the run's start at which this process's requests are due, ascending, < duration."""
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    if not 0 <= process < processes:
        raise ValueError(f"process {process} is not in 0..{processes - 1}")
    share = rate / processes
    if arrivals == "constant":
        first = process / rate
        n = max(0, math.ceil((duration - first) * share))
        offsets = first + np.arange(n, dtype=np.float64) / share
        offsets = offsets[offsets < duration]
    elif arrivals == "poisson":
        rng = np.random.default_rng([seed, process])
        expected = share * duration
        chunks, end = [], 0.0
        while end < duration:
            gaps = rng.exponential(1.0 / share, size=int(expected + 6 * math.sqrt(expected) + 16))
            chunk = end + np.cumsum(gaps)
            chunks.append(chunk)
            end = float(chunk[-1])
        offsets = np.concatenate(chunks)
        offsets = offsets[offsets < duration]
    else:
        raise ValueError(f"arrivals must be 'constant' or 'poisson', not {arrivals!r}")
    return offsets if limit is None else offsets[:limit]
