"""Sides at a fixed open-loop rate, for the probes that ask where logging's added tail comes from
(docs/benchmarks/logging-cost/*_probe.py). Each round runs every side once, in an order
rotated per round, so that the shared host's drift over a run falls on every side alike; a
side may have a bystander working beside the gateway while it runs (the gateways they compare
come from logging_cost.warm_gateways, as slo_probe.py's do)."""
from __future__ import annotations

import statistics
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import orjson

from loadtests import servers
from loadtests.logging_cost import SCENARIO, rotated
from loadtests.run import RunSettings, execute

if TYPE_CHECKING:
    from loadtests.bystander import Bystander

# Each side's latencies: from the intended send time, from the actual send (the server's part),
# and the load generator's lag between them.
VIEWS = ("latency_ms", "response_time_ms", "dispatch_lag_ms")


def run_side(server: servers.Server, kafka_pid: int | None, rate: float, label: str,
             bystander: Bystander | None = None, duration: float = 8.0) -> dict[str, Any]:
    """`rate` req/s at `server` for `duration` s after a 1 s warm-up, with `bystander` working
    while it runs: the latencies (`VIEWS`), the rate answered, the CPU (the gateway's tree, the
    broker, the machine), the errors, and the bystander's cores (the CPU it used while it ran)."""
    if bystander is not None:
        bystander.active.set()
        time.sleep(0.5)
        burnt, started = bystander.cpu_seconds(), time.monotonic()
    result = execute(RunSettings(url=server.url, scenario=SCENARIO, mode="constant", rate=rate, duration=duration,
                                 warmup=1.0, label=label), watch={"server": server.pid, "kafka": kafka_pid})
    cores = None
    if bystander is not None:
        cores = round((bystander.cpu_seconds() - burnt) / (time.monotonic() - started), 3)
        bystander.active.clear()
        time.sleep(1.0)
    return {**{view: result[view] for view in VIEWS}, "achieved_rate": result["achieved_rate"], "cpu": result["cpu"],
            "errors": result.get("errors"), "bystander_cores": cores}


def run_rounds(count: int, sides: Sequence[str], rate: float, kafka_pid: int | None,
               gateway_of: Callable[[str], servers.Server],
               bystander_of: Callable[[str], Bystander | None] = lambda side: None,
               around: Callable[[str], AbstractContextManager] = lambda side: nullcontext()) -> list[dict[str, Any]]:
    """`count` rounds of every side (`run_side` at `rate`, on `gateway_of(side)` with
    `bystander_of(side)` beside it, inside `around(side)`: a setting made for that side alone),
    each round's figures printed as it ends."""
    rounds = []
    for k in range(count):
        entry = {}
        for side in rotated(sides, k):
            with around(side):
                entry[side] = run_side(gateway_of(side), kafka_pid, rate, side, bystander_of(side))
        rounds.append(entry)
        print(k, round_line(entry, sides), flush=True)
    return rounds


def round_line(entry: dict[str, dict[str, Any]], sides: Sequence[str]) -> dict[str, tuple]:
    """One round at a glance: per side, p50, p99 and p99.9 (ms), machine busy and steal
    (cores), and the bystander's cores."""
    return {side: (entry[side]["response_time_ms"]["p50"], entry[side]["response_time_ms"]["p99"],
                   entry[side]["response_time_ms"]["p99.9"], entry[side]["cpu"]["machine_busy"],
                   entry[side]["cpu"]["steal"], entry[side]["bystander_cores"]) for side in sides}


def finish(rounds: list[dict[str, dict[str, Any]]], sides: Sequence[str], out: str | Path) -> None:
    """Writes the rounds to `out` (JSON) and prints each side's medians over them."""
    Path(out).write_bytes(orjson.dumps(rounds))
    for side in sides:
        median = lambda pick: statistics.median(pick(r[side]) for r in rounds)  # noqa: E731
        print(side, "median p99", median(lambda s: s["response_time_ms"]["p99"]),
              "p99.9", median(lambda s: s["response_time_ms"]["p99.9"]),
              "machine busy", median(lambda s: s["cpu"]["machine_busy"]))
