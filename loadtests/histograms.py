"""HDR histograms of latencies in microseconds: build, ship between processes, merge, summarise.

Generator processes keep raw latencies in arrays during the run (recording into an HdrHistogram
costs ~4 us a value in Python, too much on the hot path) and build histograms afterwards; the
encoded (compressed) form travels to the parent, which merges them losslessly.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour: no latency a bounded run can produce is out of range
DIGITS = 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def new() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


def from_seconds(values: Iterable[float] | np.ndarray) -> HdrHistogram:
    """A histogram of latencies given in seconds, recorded as whole microseconds (at least 1)."""
    histogram = new()
    us = np.clip(np.rint(np.asarray(values, dtype=np.float64) * 1e6), LOWEST_US, HIGHEST_US).astype(np.int64)
    if us.size:
        unique, counts = np.unique(us, return_counts=True)
        for value, count in zip(unique.tolist(), counts.tolist()):
            histogram.record_value(value, count)
    return histogram


def encode(histogram: HdrHistogram) -> str:
    return histogram.encode().decode("ascii")


def decode(encoded: str) -> HdrHistogram:
    return HdrHistogram.decode(encoded.encode("ascii"))


def merge(encoded: Iterable[str]) -> HdrHistogram:
    total = new()
    for item in encoded:
        total.add(decode(item))
    return total


def summary_ms(histogram: HdrHistogram) -> dict[str, float | int]:
    """count, mean, p50/p90/p99/p99.9 and max in milliseconds (HDR precision: 3 significant digits)."""
    count = histogram.get_total_count()
    if count == 0:
        return {"count": 0}
    out: dict[str, float | int] = {"count": count, "mean": round(histogram.get_mean_value() / 1e3, 3)}
    for p in PERCENTILES:
        out[f"p{p:g}"] = round(histogram.get_value_at_percentile(p) / 1e3, 3)
    out["max"] = round(histogram.get_max_value() / 1e3, 3)
    return out
