"""A probe (fifteenth session, docs/benchmarks/logging-cost.md): is what logging adds to the tail
at a fixed open-loop rate the CPU it puts beside the gateway? Four sides per round, order
rotated, 8 s each at RATE: logging off; logging on; logging off with the `cpu` bystander of
loadtests.bystander burning SHARE of a core in bursts every READ_PAUSE; logging off with its
`kafka` bystander (a real shipper fed RATE shadowed requests' events a second, producing to the
same broker: the logging work beside the gateway, none in it). Its load generator and
bystanders run in spawned processes, which import their code by module name, so it runs from
loadtests/:

    cp docs/benchmarks/logging-cost/tail_bystander_probe.py loadtests/_tail_bystander_probe.py
    deploy/with-kafka.sh .venv/bin/python -m loadtests._tail_bystander_probe 2000 6 0.12 <out.json>   # RATE ROUNDS SHARE OUT
"""
from __future__ import annotations

import statistics as st
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import orjson

from loadtests import host, servers
from loadtests.bystander import Bystander, burn, produce
from loadtests.logging_cost import SCENARIO, demo_gateway, warm_broker
from loadtests.run import RunSettings, execute

SIDES = ["off", "on", "cpu", "kafka"]


def main() -> None:
    rate, rounds, share, out = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    with servers.kafka_broker() as (bootstrap, kafka_pid), ExitStack() as stack:
        tmp = lambda: stack.enter_context(tempfile.TemporaryDirectory())
        gws = {"off": stack.enter_context(demo_gateway(None, tmp(), {})),
               "on": stack.enter_context(demo_gateway(bootstrap, tmp(), {}))}
        print("warm", warm_broker(gws["on"], kafka_pid, 1200.0, 40), flush=True)
        bystanders = {"cpu": Bystander(burn, share, 0), "kafka": Bystander(produce, bootstrap, rate, tmp())}
        print("quiet", host.wait_for_quiet(max_wait_s=30), flush=True)
        results = []
        try:
            for k in range(rounds):
                entry = {}
                for side in SIDES[k % 4:] + SIDES[:k % 4]:
                    b = bystanders.get(side)
                    gw = gws["on" if side == "on" else "off"]
                    if b:
                        b.active.set()
                        time.sleep(0.5)
                        c0, t0 = b.cpu_seconds(), time.monotonic()
                    r = execute(RunSettings(url=gw.url, scenario=SCENARIO, mode="constant", rate=rate, duration=8.0,
                                            warmup=1.0, label=side), watch={"server": gw.pid, "kafka": kafka_pid})
                    extra = None
                    if b:
                        extra = round((b.cpu_seconds() - c0) / (time.monotonic() - t0), 3)  # cores while it ran
                        b.active.clear()
                        time.sleep(1.0)
                    entry[side] = {"response_time_ms": r["response_time_ms"], "cpu": r["cpu"], "bystander_cores": extra}
                results.append(entry)
                print(k, {s: (entry[s]["response_time_ms"]["p50"], entry[s]["response_time_ms"]["p99"],
                              entry[s]["response_time_ms"]["p99.9"], entry[s]["cpu"]["machine_busy"],
                              entry[s]["bystander_cores"]) for s in SIDES}, flush=True)
        finally:
            for b in bystanders.values():
                b.close()
    Path(out).write_bytes(orjson.dumps(results))
    for s in SIDES:
        print(s, "median p99", st.median(r[s]["response_time_ms"]["p99"] for r in results),
              "p99.9", st.median(r[s]["response_time_ms"]["p99.9"] for r in results),
              "machine busy", st.median(r[s]["cpu"]["machine_busy"] for r in results))


if __name__ == "__main__":
    main()
