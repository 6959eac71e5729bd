"""A probe (fourteenth session, docs/benchmarks/logging-cost.md): logging off and on, each with the
gateway's processes left to the scheduler ("free") and with its request loop pinned to CPU 0 and its
workers and shipper to the other CPUs ("pinned"); the load generator and the broker are left free.
Four sides per round (4 s closed-loop slices, 32 connections), order rotated. Its load generator
runs in spawned processes, which import their code by module name, so it runs from loadtests/:

    cp docs/benchmarks/logging-cost/layout_probe.py loadtests/_layout_probe.py
    deploy/with-kafka.sh .venv/bin/python -m loadtests._layout_probe 16 <out.json>
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import orjson

from loadtests import host, servers
from loadtests.logging_cost import (_pooled_ratio_interval, closed_loop, counts, demo_gateway, kept_up_with,
                                    warm_broker)

ALL = set(range(os.cpu_count()))


def set_layout(root: int, layout: str) -> None:
    for pid in host.process_tree(root):
        cpus = ALL if layout == "free" else ({0} if pid == root else ALL - {0})
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                os.sched_setaffinity(int(tid), cpus)
            except OSError:
                pass


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    out = sys.argv[2] if len(sys.argv) > 2 else "/tmp/layout.json"
    sides = [("off", "free"), ("on", "free"), ("off", "pinned"), ("on", "pinned")]
    with servers.kafka_broker() as (bootstrap, kafka_pid), ExitStack() as stack:
        gws = {s: stack.enter_context(demo_gateway(bootstrap if s == "on" else None,
                                                   stack.enter_context(tempfile.TemporaryDirectory()), {}))
               for s in ("off", "on")}
        print("warm", warm_broker(gws["on"], kafka_pid, 1200.0, 40), flush=True)
        print("quiet", host.wait_for_quiet(max_wait_s=30), flush=True)
        results = []
        before = counts(gws["on"].url)
        for k in range(rounds):
            entry = {}
            order = sides[k % 4:] + sides[:k % 4]
            for logging, layout in order:
                set_layout(gws[logging].pid, layout)
                entry[f"{logging}-{layout}"] = closed_loop(gws[logging], kafka_pid, 32, 4.0, 1.0, logged=logging == "on")
            results.append(entry)
            print(k, {s: (round(v["achieved_rate"]), v["cpu"].get("loop_waiting"), v["cpu"]["steal"],
                          v["shipped"] and v["shipped"]["queued"]) for s, v in entry.items()}, flush=True)
        time.sleep(5)
        after = counts(gws["on"].url)
        answered = after["answers"] - before["answers"]
        print("delivered", (after.get("delivered", 0) - before.get("delivered", 0)) / answered,
              "spooled", after.get("spooled", 0) - before.get("spooled", 0), flush=True)
    Path(out).write_bytes(orjson.dumps(results))
    for layout in ("free", "pinned"):
        pairs = [{"off": r[f"off-{layout}"], "on": r[f"on-{layout}"]} for r in results
                 if kept_up_with(r[f"on-{layout}"]["shipped"])]
        ratio = sum(p["on"]["achieved_rate"] for p in pairs) / sum(p["off"]["achieved_rate"] for p in pairs)
        off = sorted(p["off"]["achieved_rate"] for p in pairs)[len(pairs) // 2]
        on = sorted(p["on"]["achieved_rate"] for p in pairs)[len(pairs) // 2]
        wait = sorted(p["on"]["cpu"].get("loop_waiting") or 0 for p in pairs)[len(pairs) // 2]
        print(f"{layout}: {len(pairs)} pairs, on/off {ratio:.1%} {_pooled_ratio_interval(pairs)}, "
              f"median off {off:.0f} on {on:.0f}, loop waiting on {wait}", flush=True)
    pinned_vs_free = [r["off-pinned"]["achieved_rate"] / r["off-free"]["achieved_rate"] for r in results]
    print("off pinned/free median", sorted(pinned_vs_free)[len(pinned_vs_free) // 2])


if __name__ == "__main__":
    main()
