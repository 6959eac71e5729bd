"""Search mode: the highest offered rate the server holds within a latency objective.

A trial is one open-loop run at a fixed offered rate; it passes when the objective percentile
(default p99, measured from intended send times) is within the objective, fewer than 0.1% of
requests failed, and the server answered at least 95% of the offered rate. The search starts
at half of what a short closed-loop probe achieved, grows the rate by 1.5x until a trial
fails, then bisects between the best pass and the first failure to 5%. Every trial is kept;
a failed trial during which other jobs (or the hypervisor) took the CPU is run again (twice at most).
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

from loadtests.run import RunSettings, disturbed, execute


@dataclass(frozen=True)
class Criteria:
    objective_ms: float = 10.0
    percentile: str = "p99"
    max_error_rate: float = 0.001
    min_achieved: float = 0.95  # share of the offered rate that must be answered
    start_rate: float | None = None  # None: half the closed-loop probe's throughput
    max_rate: float = 200_000.0
    growth: float = 1.5
    precision: float = 0.05  # stop when (first failure - best pass) / best pass <= this
    max_trials: int = 12
    retries: int = 2  # times a failed trial is run again when other jobs or the hypervisor took the CPU
    probe_duration: float = 5.0
    probe_connections: int = 32


def verdict(result: dict[str, Any], criteria: Criteria) -> tuple[bool, str]:
    """(passed, why): the first criterion the trial missed, or what it achieved."""
    latency = result["latency_ms"].get(criteria.percentile)
    if latency is None:
        return False, "no measured requests"
    if result["error_rate"] is None or result["error_rate"] >= criteria.max_error_rate:
        return False, f"error rate {result['error_rate']:.4%} >= {criteria.max_error_rate:.2%}"
    if latency > criteria.objective_ms:
        return False, f"{criteria.percentile} {latency} ms > {criteria.objective_ms} ms"
    if result["achieved_rate"] < criteria.min_achieved * result["offered_rate"]:
        return False, f"answered {result['achieved_rate']}/s of {result['offered_rate']}/s offered"
    return True, f"{criteria.percentile} {latency} ms, {result['error_rate']:.4%} errors"


def run_search(settings: RunSettings, criteria: Criteria, *, watch: dict[str, int] | None = None,
               before_trial: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Runs the trials; `before_trial` (e.g. waiting for a quiet machine) runs before each run."""
    mode = settings.mode if settings.mode != "closed" else "constant"
    label = settings.label or "server"
    probe = None
    start = criteria.start_rate
    if start is None:
        if before_trial:
            before_trial()
        probe = execute(replace(settings, mode="closed", rate=None, duration=criteria.probe_duration,
                                warmup=min(settings.warmup, 1.0), connections=criteria.probe_connections,
                                label=f"{label} closed-loop probe"), watch=watch)
        start = max(1.0, 0.5 * probe["achieved_rate"])
    trials: list[dict[str, Any]] = []
    best: float | None = None  # highest passing rate
    worst: float | None = None  # lowest failing rate
    rate = round(start)
    while len(trials) < criteria.max_trials:
        if before_trial:
            before_trial()
        trial_settings = replace(settings, mode=mode, rate=rate, label=f"{label} @ {rate}/s")
        result = execute(trial_settings, watch=watch)
        passed, why = verdict(result, criteria)
        discarded = []
        while not passed and disturbed(result["cpu"]) and len(discarded) < criteria.retries:
            # A shared machine: another job's or guest's CPU burst is not the server's fault.
            discarded.append({"why": why, "cpu": result["cpu"], "latency_ms": result["latency_ms"]})
            if before_trial:
                before_trial()
            result = execute(trial_settings, watch=watch)
            passed, why = verdict(result, criteria)
        trials.append({"rate": rate, "passed": passed, "why": why, "disturbed": disturbed(result["cpu"]),
                       "discarded_attempts": discarded, "result": result})
        if passed:
            best = rate if best is None else max(best, rate)
        else:
            worst = rate if worst is None else min(worst, rate)
        if worst is None:
            if rate >= criteria.max_rate:
                break
            rate = round(min(rate * criteria.growth, criteria.max_rate))
        elif best is None:
            rate = round(rate / criteria.growth)
            if rate < 1:
                break
        else:
            if (worst - best) / best <= criteria.precision:
                break
            rate = round((best + worst) / 2)
        if any(t["rate"] == rate for t in trials):
            break
    at_best = next((t["result"] for t in trials if t["rate"] == best and t["passed"]), None)
    return {
        "label": label,
        "criteria": asdict(criteria),
        "mode": mode,
        "max_rate": best,
        "first_failure": worst,
        "disturbed_failures": [t["rate"] for t in trials if not t["passed"] and t["disturbed"]],
        "at_max": None if at_best is None else {
            "offered_rate": best, "achieved_rate": at_best["achieved_rate"], "rows_per_s": at_best["rows_per_s"],
            "latency_ms": at_best["latency_ms"], "error_rate": at_best["error_rate"], "cpu": at_best["cpu"],
            "diagnosis": at_best["diagnosis"]},
        "probe": probe,
        "trials": sorted(trials, key=lambda t: t["rate"]),
    }


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    d = Criteria()
    group = parser.add_argument_group("search mode")
    group.add_argument("--search", action="store_true", help="find the highest rate within the objective")
    group.add_argument("--objective-ms", type=float, default=d.objective_ms)
    group.add_argument("--percentile", default=d.percentile, choices=["p50", "p90", "p99", "p99.9"])
    group.add_argument("--max-error-rate", type=float, default=d.max_error_rate)
    group.add_argument("--start-rate", type=float, help="first trial's rate (default: from a closed-loop probe)")
    group.add_argument("--max-rate", type=float, default=d.max_rate)
    group.add_argument("--max-trials", type=int, default=d.max_trials)
    group.add_argument("--precision", type=float, default=d.precision)


def criteria_from(args: argparse.Namespace) -> Criteria:
    return Criteria(objective_ms=args.objective_ms, percentile=args.percentile, max_error_rate=args.max_error_rate,
                    start_rate=args.start_rate, max_rate=args.max_rate, max_trials=args.max_trials,
                    precision=args.precision)
