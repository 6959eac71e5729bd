"""A probe (fifteenth session, docs/benchmarks/logging-cost.md): what logging costs below
saturation, where a service runs under a latency objective. Two gateways, logging off (no
Kafka) and on (every answer), alternated per round after the broker's warm-up:

- `search`: the harness's search mode on each side (loadtests.search: the highest open-loop
  rate whose p99 stays within 10 ms, with under 0.1% errors and 95% of the rate answered), from
  the same start rate (60% of the "off" side's closed-loop throughput), growing 1.2x, to 3%;
- `fixed RATES`: 8 s of open loop at each of the comma-separated rates, both sides, with the
  latency from the intended send time, the response time (from the actual send) and the load
  generator's dispatch lag.
Run it in place, from the project root (earlier sessions copied it into loadtests/ first):

    deploy/with-kafka.sh .venv/bin/python docs/benchmarks/logging-cost/slo_probe.py search 6 <out.json>
    deploy/with-kafka.sh .venv/bin/python docs/benchmarks/logging-cost/slo_probe.py fixed 6 <out.json> 1200,2000
"""
from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

import orjson

from loadtests import host, servers
from loadtests.logging_cost import SCENARIO, closed_loop, pooled_ratio, pooled_ratio_interval, rotated, warm_gateways
from loadtests.run import RunSettings
from loadtests.search import Criteria, run_search
from loadtests.tail_sides import VIEWS, run_side

SIDES = ("off", "on")


def searched(gateways: dict, kafka_pid: int, rounds: int) -> list[dict]:
    closed = closed_loop(gateways["off"], kafka_pid, 32, 4.0, 1.0)["achieved_rate"]
    criteria = Criteria(start_rate=round(0.6 * closed), growth=1.2, precision=0.03, max_trials=12)
    print("off side's closed loop", round(closed), "req/s;", criteria, flush=True)
    results = []
    for k in range(rounds):
        entry = {}
        for side in rotated(SIDES, k):
            found = run_search(RunSettings(url=gateways[side].url, scenario=SCENARIO, mode="constant", duration=5.0,
                                           warmup=1.0, label=side), criteria,
                               watch={"server": gateways[side].pid, "kafka": kafka_pid})
            entry[side] = {"max_rate": found["max_rate"], "first_failure": found["first_failure"],
                           "trials": [(t["rate"], t["passed"], t["why"], t["result"]["cpu"].get("steal"))
                                      for t in found["trials"]]}
        results.append(entry)
        print(k, {side: entry[side]["max_rate"] for side in SIDES},
              f"{entry['on']['max_rate'] / entry['off']['max_rate']:.1%}", flush=True)
    pairs = [{side: {"achieved_rate": r[side]["max_rate"]} for side in SIDES} for r in results]
    print(f"pooled on/off {pooled_ratio(pairs):.1%}, 95% interval {pooled_ratio_interval(pairs)}", flush=True)
    return results


def at_fixed_rates(gateways: dict, kafka_pid: int, rounds: int, rates: list[float]) -> list[dict]:
    results = []
    for k in range(rounds):
        for i, rate in enumerate(rates):
            entry: dict = {"round": k, "rate": rate}
            for side in rotated(SIDES, k + i):
                entry[side] = run_side(gateways[side], kafka_pid, rate, side)
            results.append(entry)
            print(k, rate, {side: {view: {q: entry[side][view].get(q) for q in ("p50", "p99", "p99.9")}
                                   for view in VIEWS} for side in SIDES}, flush=True)
    return results


def main() -> None:
    mode, rounds, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with servers.kafka_broker() as (bootstrap, kafka_pid), ExitStack() as stack:
        gateways, _ = warm_gateways(stack, bootstrap, kafka_pid)
        print("quiet", host.wait_for_quiet(max_wait_s=30), flush=True)
        if mode == "search":
            results = searched(gateways, kafka_pid, rounds)
        else:
            results = at_fixed_rates(gateways, kafka_pid, rounds, [float(r) for r in sys.argv[4].split(",")])
    Path(out).write_bytes(orjson.dumps(results))


if __name__ == "__main__":
    main()
