"""A probe (fourteenth session, docs/benchmarks/logging-cost.md): logging off and on, each with every
process left to the scheduler ("free") and in one other layout, four sides per round (4 s
closed-loop slices, 32 connections), order rotated:
  - `pinned`: the gateway's request loop on CPU 0, its workers and shipper on the other CPUs; the
    load generator and the broker left free;
  - `away`: the load generator (and this harness, whose affinity it inherits) and the broker on
    CPU 1, standing in for clients and a broker on other machines; the gateway left free.
  - `alone` (twenty-third session): the request loop alone on CPU 0; its workers and shipper,
    the load generator (with this harness) and the broker all on CPU 1: `pinned` and `away`
    together, so that nothing but the loop runs on its core.
Run it in place, from the project root (earlier sessions copied it into loadtests/ first):

    deploy/with-kafka.sh .venv/bin/python docs/benchmarks/logging-cost/layout_probe.py pinned 16 <out.json>
    deploy/with-kafka.sh .venv/bin/python docs/benchmarks/logging-cost/layout_probe.py away 16 <out.json>
    deploy/with-kafka.sh .venv/bin/python docs/benchmarks/logging-cost/layout_probe.py alone 12 <out.json>

A fourth argument names the layout to compare against in place of `free` (twenty-sixth
session: `alone` against `away`, the load generator and the broker on CPU 1 in both, so only
the gateway's own placement differs):

    deploy/with-kafka.sh .venv/bin/python docs/benchmarks/logging-cost/layout_probe.py alone 16 <out.json> away

and `pool` gives one layout over the other, logging off and on, over all rounds of several runs:

    .venv/bin/python docs/benchmarks/logging-cost/layout_probe.py pool alone away docs/benchmarks/logging-cost/alone-vs-away-2c81513-*.json
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import orjson

from gateway.parallel.cpus import pin_process
from loadtests import host, servers
from loadtests.logging_cost import (MAX_STEAL, closed_loop, counts, keep_off_the_loop, kept_up_with, pooled_ratio,
                                    pooled_ratio_interval, rotated, warm_gateways)

ALL = set(range(os.cpu_count()))


def _pin(root: int, cpus_of: dict[bool, set[int]]) -> None:
    """Every thread of `root`'s process tree on cpus_of[whether its process is `root`]."""
    for pid in host.process_tree(root):
        try:
            pin_process(cpus_of[pid == root], pid)
        except FileNotFoundError:
            pass  # the process ended


def place(layout: str, gateway_pid: int, kafka_pid: int) -> None:
    if layout == "pinned":
        _pin(gateway_pid, {True: {0}, False: ALL - {0}})
        return
    _pin(gateway_pid, {True: {0}, False: ALL - {0}} if layout == "alone" else {True: ALL, False: ALL})
    if layout == "free":  # the harness (and the generator processes it spawns) and the broker anywhere
        pin_process(ALL)
        pin_process(ALL, kafka_pid)
    else:  # ... off CPU 0, as `loadtests.logging_cost --loop-cpus 0` keeps them
        keep_off_the_loop([0], kafka_pid)


def layout_over_baseline(results: list[dict], layout: str, baseline: str) -> None:
    """Prints `layout`'s throughput over `baseline`'s, logging off and on, over all rounds (a
    layout's own speed, not logging's cost): the pooled ratio and its paired bootstrap interval,
    the baseline's slices standing as "off" and the layout's as "on"."""
    for logging in ("off", "on"):
        pairs = [{"off": r[f"{logging}-{baseline}"], "on": r[f"{logging}-{layout}"]} for r in results]
        print(f"logging {logging}: {layout} over {baseline}, pooled over the {len(pairs)} rounds "
              f"{pooled_ratio(pairs):.1%} {pooled_ratio_interval(pairs)}", flush=True)


def main() -> None:
    if sys.argv[1] == "pool":
        layout, baseline, files = sys.argv[2], sys.argv[3], sys.argv[4:]
        layout_over_baseline([r for f in files for r in orjson.loads(Path(f).read_bytes())], layout, baseline)
        return
    layout, rounds, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    baseline = sys.argv[4] if len(sys.argv) > 4 else "free"
    sides = [("off", baseline), ("on", baseline), ("off", layout), ("on", layout)]
    with servers.kafka_broker() as (bootstrap, kafka_pid), ExitStack() as stack:
        gws, _ = warm_gateways(stack, bootstrap, kafka_pid)
        print("quiet", host.wait_for_quiet(max_wait_s=30), flush=True)
        results = []
        before = counts(gws["on"].url)
        for k in range(rounds):
            entry = {}
            for logging, where in rotated(sides, k):
                place(where, gws[logging].pid, kafka_pid)
                entry[f"{logging}-{where}"] = closed_loop(gws[logging], kafka_pid, 32, 4.0, 1.0, logged=logging == "on")
                place("free", gws[logging].pid, kafka_pid)
            results.append(entry)
            print(k, {s: (round(v["achieved_rate"]), v["cpu"].get("loop_waiting"), v["cpu"]["steal"],
                          v["shipped"] and v["shipped"]["queued"]) for s, v in entry.items()}, flush=True)
        time.sleep(5)
        after = counts(gws["on"].url)
        answered = after["answers"] - before["answers"]
        print("delivered", (after.get("delivered", 0) - before.get("delivered", 0)) / answered,
              "spooled", after.get("spooled", 0) - before.get("spooled", 0), flush=True)
    Path(out).write_bytes(orjson.dumps(results))
    for where in (baseline, layout):
        pairs = [{"off": r[f"off-{where}"], "on": r[f"on-{where}"]} for r in results
                 if kept_up_with(r[f"on-{where}"]["shipped"])
                 and max(r[f"off-{where}"]["cpu"]["steal"], r[f"on-{where}"]["cpu"]["steal"]) <= MAX_STEAL]
        median = lambda side, figure: sorted(figure(p[side]) for p in pairs)[len(pairs) // 2]
        print(f"{where}: {len(pairs)} pairs, on/off {pooled_ratio(pairs):.1%} {pooled_ratio_interval(pairs)}, median req/s off "
              f"{median('off', lambda v: v['achieved_rate']):.0f} on {median('on', lambda v: v['achieved_rate']):.0f}, "
              f"loop us off {median('off', lambda v: v['us_per_request']['gateway'])} "
              f"on {median('on', lambda v: v['us_per_request']['gateway'])}, loop waiting "
              f"off {median('off', lambda v: v['cpu'].get('loop_waiting') or 0)} "
              f"on {median('on', lambda v: v['cpu'].get('loop_waiting') or 0)}", flush=True)
    layout_over_baseline(results, layout, baseline)


if __name__ == "__main__":
    main()
