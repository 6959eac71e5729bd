"""A probe (twenty-third session, docs/benchmarks/logging-cost.md): does an EEVDF slice of its
own for the gateway's request loop (sched_setattr's sched_runtime on its thread, Linux >= 6.12;
workers, shipper and everything else keep the default) win back what logging costs the loop in
preemptions? With logging on, the loop waits for its core about ten times as long as with it off
(0.036 against 0.003 cores) and is preempted about three times as often. A long slice lets the
running loop finish it before a woken task takes the core (RUN_TO_PARITY); a short one gives
it earlier deadlines, so a woken task less often has an earlier one and preempts it.
Four sides per round, rotated, 4 s closed-loop slices with 32 connections: off, on, off/slice,
on/slice (the same two gateways; the loop's slice is set before a side and reset after), so the
slice's effect on the on/off ratio is read within each gateway start.
Run it in place, from the project root, as root or with CAP_SYS_NICE:

    deploy/with-kafka.sh .venv/bin/python docs/benchmarks/logging-cost/loop_slice_probe.py 12 20 <out.json>   # ROUNDS SLICE_MS OUT (0.1-100 ms)
"""
from __future__ import annotations

import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import orjson

from loadtests import host, servers
from loadtests.logging_cost import (closed_loop, kept_up_with, pooled_ratio, pooled_ratio_interval, rotated,
                                    warm_gateways)
from slice_probe import set_slice  # beside this file

SIDES = ["off", "on", "off/slice", "on/slice"]


@contextmanager
def loop_slice(gateway: servers.Server, ns: int) -> Iterator[None]:
    """The gateway's request loop (its main thread) on a slice of `ns` (0: the kernel's default) while inside."""
    set_slice(gateway.pid, ns)
    try:
        yield
    finally:
        set_slice(gateway.pid, 0)


def main() -> None:
    rounds, slice_ms, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    results = []
    with servers.kafka_broker() as (bootstrap, kafka_pid), ExitStack() as stack:
        gws, _ = warm_gateways(stack, bootstrap, kafka_pid)
        print("quiet", host.wait_for_quiet(max_wait_s=30), flush=True)
        for k in range(rounds):
            entry = {}
            for side in rotated(SIDES, k):
                mode = side.split("/")[0]
                with loop_slice(gws[mode], int(slice_ms * 1e6) if side.endswith("/slice") else 0):
                    entry[side] = closed_loop(gws[mode], kafka_pid, 32, 4.0, 1.0, logged=mode == "on")
            results.append(entry)
            print(k, {s: (round(v["achieved_rate"]), v["cpu"].get("loop_waiting"), v["us_per_request"]["gateway"])
                      for s, v in entry.items()}, flush=True)
    Path(out).write_bytes(orjson.dumps(results))
    kept = [r for r in results if kept_up_with(r["on"]["shipped"]) and kept_up_with(r["on/slice"]["shipped"])]
    print(f"rounds where the shipper kept up on both logged sides: {len(kept)} of {len(results)}")
    for a, b in (("on", "off"), ("on/slice", "off/slice"), ("off/slice", "off"), ("on/slice", "on")):
        pairs = [{"on": r[a], "off": r[b]} for r in kept]
        print(f"{a} / {b}: {pooled_ratio(pairs):.1%} {pooled_ratio_interval(pairs)}", flush=True)
    for side in SIDES:
        med = lambda f: sorted(f(r[side]) for r in kept)[len(kept) // 2]  # noqa: E731
        print(side, "median req/s", round(med(lambda s: s["achieved_rate"])), "loop us",
              med(lambda s: s["us_per_request"]["gateway"]), "loop waiting", med(lambda s: s["cpu"]["loop_waiting"]))


if __name__ == "__main__":
    main()
