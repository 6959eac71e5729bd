"""A probe (fourteenth session, docs/benchmarks/logging-cost.md): the demo gateway without Kafka
("off", what `make bench-logging` compares against), with Kafka configured and the route's
`log_sample_rate` at RATE ("quiet"; at 0, the default, nothing is sampled: the feedback reader
and the control producer run, the shipper gets no events), and logging every answer ("on").
Three sides per round (4 s closed-loop slices, 32 connections), order rotated.
Run it in place, from the project root (earlier sessions copied it into loadtests/ first):

    deploy/with-kafka.sh .venv/bin/python docs/benchmarks/logging-cost/kafka_quiet_probe.py 18            # ROUNDS [RATE [OUT]]
    deploy/with-kafka.sh .venv/bin/python docs/benchmarks/logging-cost/kafka_quiet_probe.py 18 0.5 <out.json>
"""
from __future__ import annotations

import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import orjson

from loadtests import host, servers
from loadtests.logging_cost import (closed_loop, counts, demo_gateway, pooled_ratio, pooled_ratio_interval, rotated,
                                    warm_broker)


def main() -> None:
    rounds = int(sys.argv[1])
    rate = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    out = sys.argv[3] if len(sys.argv) > 3 else "/tmp/kafka_quiet.json"
    sides = ["off", "quiet", "on"]
    with servers.kafka_broker() as (bootstrap, kafka_pid), ExitStack() as stack:
        spools = {side: stack.enter_context(tempfile.TemporaryDirectory()) for side in sides}
        gws = {"off": stack.enter_context(demo_gateway(None, spools["off"], {})),
               "quiet": stack.enter_context(demo_gateway(bootstrap, spools["quiet"], {}, log_sample_rate=rate)),
               "on": stack.enter_context(demo_gateway(bootstrap, spools["on"], {}))}
        print("quiet side's log_sample_rate:", gws["quiet"].description["config"]["models"]["wine"]["log_sample_rate"],
              flush=True)
        print("warm", warm_broker(gws["on"], kafka_pid, 1200.0, 40), flush=True)
        print("quiet", host.wait_for_quiet(max_wait_s=30), flush=True)
        results = []
        for k in range(rounds):
            order = rotated(sides, k)
            entry = {s: closed_loop(gws[s], kafka_pid, 32, 4.0, 1.0, logged=s != "off") for s in order}
            results.append(entry)
            print(k, {s: (round(v["achieved_rate"]), v["cpu"].get("loop_waiting"), v["us_per_request"]["gateway"],
                          v["us_per_request"]["shipper"]) for s, v in entry.items()}, flush=True)
        q = counts(gws["quiet"].url)
        print("quiet side's events per model answer:", {k: round(v / q["answers"], 4) for k, v in q.items()
                                                        if k != "answers"}, flush=True)
    Path(out).write_bytes(orjson.dumps(results))
    for a, b in (("on", "off"), ("quiet", "off"), ("on", "quiet")):
        pairs = [{"on": r[a], "off": r[b]} for r in results]
        print(f"{a}/{b}: {pooled_ratio(pairs):.1%} {pooled_ratio_interval(pairs)}", flush=True)
    for s in sides:
        med = lambda key: sorted(r[s]["us_per_request"][key] for r in results)[len(results) // 2]
        print(s, "median req/s", sorted(r[s]["achieved_rate"] for r in results)[len(results) // 2],
              "loop us", med("gateway"), "workers", med("workers"), "shipper", med("shipper"))


if __name__ == "__main__":
    main()
