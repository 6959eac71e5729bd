"""A probe (twentieth session, docs/benchmarks/logging-cost.md): does a gateway process keep a
speed of its own for its lifetime? Two runs of `make bench-logging` at the same gateway code read
90.8% and 85.7%, each with a 95% interval about a point wide: the runs differ by more than the
pairs inside each run do. If each process start draws a lasting speed (memory layout, hash seed,
where its threads first land), a run's two gateways, started once, carry that draw through all
40 pairs and the pair bootstrap cannot see it.

An A/A test of that: two identical gateways (the demo, logging off, no Kafka), A and B, started
together, warmed, then closed-loop slices alternated between them as `make bench-logging`
alternates off and on (32 connections, 4 s slices, `loadtests.logging_cost.closed_loop`); then
both are stopped and two new ones started, `starts` times. Per start: A over B pooled, with the
same pair-bootstrap interval as the harness. If the starts' ratios spread beyond their intervals,
a single start per side is a draw the harness's interval does not cover. Run from the project
root after `make models` (no broker needed):

    .venv/bin/python docs/benchmarks/logging-cost/restart_probe.py [starts] [pairs] [out.json]

Twenty-first session: the same with every process's hash seed and address layout fixed
(`PYTHONHASHSEED=0 setarch x86_64 -R` before the command; both are inherited by the gateways,
their workers and shippers). Whether the starts differ by more than their pairs allow, for
probe files already written (a one-way ANOVA of the pairs' log ratios, grouped by start; tau is
the spread between starts beyond the pairs' own):

    .venv/bin/python docs/benchmarks/logging-cost/restart_probe.py summarise <probe.json>...

With several files it also gives Fisher's combined p over them (twenty-second session).
"""
from __future__ import annotations

import math
import sys
from contextlib import ExitStack

import numpy as np
import orjson
from scipy.stats import combine_pvalues, f_oneway

from loadtests import report
from loadtests.logging_cost import closed_loop, first_load, pooled_ratio, pooled_ratio_interval, rotated, warm_gateways

SIDES = ("A", "B")


def one_start(pairs: int) -> dict:
    """A fresh A and B, warmed by one slice each, then `pairs` alternated slices a side."""
    with ExitStack() as stack:
        gateways, _ = warm_gateways(stack, "", None, trees={side: None for side in SIDES}, warmup=0)  # both off
        first_load(gateways, None, 32, 4.0, 1.0)
        entries = [{side: closed_loop(gateways[side], None, 32, 4.0, 1.0) for side in rotated(SIDES, k)}
                   for k in range(pairs)]
    as_pairs = [{"off": e["B"], "on": e["A"]} for e in entries]  # pooled_ratio's names: A over B
    ratio, interval = pooled_ratio(as_pairs), pooled_ratio_interval(as_pairs)
    rates = {side: [round(e[side]["achieved_rate"]) for e in entries] for side in SIDES}
    return {"a_over_b": round(ratio, 4), "ci95": interval, "req_s": rates}


def between_starts(results: list[dict]) -> dict:
    """One-way ANOVA of the pairs' log ratios (A over B), grouped by start: do the starts differ by
    more than the pairs inside a start let them? `tau` is the spread of the starts' own ratios
    beyond that noise (variance components, 0 when none shows), `within_start_se` the noise of one
    start's mean: a draw much smaller than it cannot show. Every start has the same number of
    pairs (`one_start`), which the variance components assume."""
    groups = [np.log(np.array(r["req_s"]["A"]) / np.array(r["req_s"]["B"])) for r in results]
    pairs = len(groups[0])
    within = float(np.mean([g.var(ddof=1) for g in groups]))
    between = pairs * float(np.var([g.mean() for g in groups], ddof=1))
    test = f_oneway(*groups)
    return {"f": round(float(test.statistic), 2), "p": float(test.pvalue),
            "tau": round(math.sqrt(max(0.0, (between - within) / pairs)), 4),
            "within_start_se": round(math.sqrt(within / pairs), 4)}


def main() -> None:
    if sys.argv[1:2] == ["summarise"]:
        tests = []
        for path in sys.argv[2:]:
            with open(path, "rb") as f:
                tests.append(between_starts(orjson.loads(f.read())["results"]))
            print(path, tests[-1])
        if len(tests) > 1:  # the runs as one question: do starts differ, in any of them?
            print("Fisher's combined p over these runs:", combine_pvalues([t["p"] for t in tests], method="fisher").pvalue)
        return
    starts = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    pairs = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    found = []
    for n in range(starts):
        result = one_start(pairs)
        found.append(result)
        mean = {side: round(sum(v) / len(v)) for side, v in result["req_s"].items()}
        print(f"start {n + 1}: A/B {result['a_over_b']:.1%} (interval {result['ci95']}), "
              f"mean req/s A {mean['A']:,}, B {mean['B']:,}", flush=True)
    if len(sys.argv) > 3:
        report.write_json(sys.argv[3], {"starts": starts, "pairs": pairs, "results": found})


if __name__ == "__main__":
    main()
