"""`make bench`: the standard benchmark of the demo models, written to docs/benchmarks/.

With the same harness on the same machine it measures
  - raw onnxruntime rows/s in one process (the models' own cost),
  - the ceiling: a bare aiohttp endpoint returning a constant body,
  - the gateway without event logging (champion only),
  - the gateway with Kafka event logging and the shadow challenger of config/demo.yaml,
each server's highest constant arrival rate with p99 <= 10 ms (from intended send times) and
< 0.1% errors, using the fixed `standard` scenario, plus a wrk cross-check of the generator.
Servers (and a Kafka broker, unless $KAFKA_BOOTSTRAP names one) are started and stopped here.
Before every trial it waits (up to 30 s) for the machine to be quiet (idle, and no hypervisor
steal when it asks for CPU), and records what it saw.

    deploy/with-kafka.sh .venv/bin/python -m loadtests.bench          # what `make bench` runs
    .venv/bin/python -m loadtests.bench --only ceiling gateway --duration 5
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from loadtests import host, onnx_raw, report, servers, wrk
from loadtests.experiments import compare_with_wrk
from loadtests.run import RunSettings
from loadtests.scenario import load_scenario
from loadtests.search import Criteria, run_search

OUT = servers.ROOT / "docs" / "benchmarks"
SCENARIO = "standard"
CONFIGURATIONS = ("ceiling", "gateway", "gateway+kafka+shadow")


def _server(name: str, stack: ExitStack) -> tuple[servers.Server, dict[str, int]]:
    """The started server for a configuration and the extra processes whose CPU to report."""
    if name == "ceiling":
        return stack.enter_context(servers.ceiling()), {}
    if name == "gateway":
        return stack.enter_context(servers.gateway()), {}
    bootstrap, kafka_pid = stack.enter_context(servers.kafka_broker())
    return stack.enter_context(servers.gateway(kafka_bootstrap=bootstrap, shadow=True)), \
        ({"kafka": kafka_pid} if kafka_pid else {})


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    criteria = Criteria(objective_ms=args.objective_ms, max_trials=args.max_trials)
    settings = RunSettings(scenario=SCENARIO, mode="constant", duration=args.duration, warmup=args.warmup,
                           connections=args.connections, processes=args.processes)
    quiet_log: list[dict[str, float]] = []
    bench: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "make bench",
        "machine": host.describe_machine(),
        "scenario": load_scenario(SCENARIO).to_json(),
        "criteria": asdict(criteria),
        "settings": {"mode": settings.mode, "duration_s": settings.duration, "warmup_s": settings.warmup,
                     "connections": settings.connections, "processes": settings.processes},
        "onnxruntime": onnx_raw.measure_repository(servers.MODELS),
        "configurations": {},
        "quiet_waits": quiet_log,
    }
    started = time.monotonic()
    for name in args.only:
        with ExitStack() as stack:
            server, extra = _server(name, stack)
            watch = {"server": server.pid, **extra}
            search = run_search(replace(settings, url=server.url, label=name), criteria, watch=watch,
                                before_trial=lambda: quiet_log.append(host.wait_for_quiet(max_wait_s=30)))
            check = None
            if not args.no_wrk and name != "gateway+kafka+shadow" and wrk.available():
                check = compare_with_wrk(server, duration=5.0, repeats=2, quiet_wait_s=30)
        bench["configurations"][name] = {"server": server.description, "search": search, "wrk_check": check}
        print(report.format_search(search), flush=True)
    bench["elapsed_s"] = round(time.monotonic() - started, 1)
    return bench


def _cell(value: Any, fmt: str = "{:,.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def markdown(bench: dict[str, Any], png_name: str) -> str:
    m, s, c = bench["machine"], bench["settings"], bench["criteria"]
    rows = []
    for name, conf in bench["configurations"].items():
        search, best = conf["search"], conf["search"]["at_max"] or {}
        lat, cpu = best.get("latency_ms", {}), best.get("cpu", {})
        probe = search["probe"]
        check = conf["wrk_check"]
        rows.append(
            f"| {name} | {conf['server']['what']} | **{_cell(search['max_rate'])}** | {_cell(best.get('rows_per_s'))} | "
            f"{_cell(lat.get('p50'), '{:g}')} | {_cell(lat.get('p99'), '{:g}')} | {_cell(lat.get('p99.9'), '{:g}')} | "
            f"{_cell(cpu.get('server'), '{:g}')} ({_cell(cpu.get('server.main'), '{:g}')}) | "
            f"{_cell(cpu.get('kafka'), '{:g}')} | {_cell(cpu.get('generator'), '{:g}')} | "
            f"{_cell(cpu.get('machine_busy'), '{:g}')} ({_cell(cpu.get('other'), '{:g}')}, {_cell(cpu.get('steal'), '{:g}')}) | "
            f"{_cell(probe and probe['achieved_rate'])} ({_cell(probe and probe['latency_ms'].get('p99'), '{:g}')} ms) | "
            + (f"wrk {check['wrk_requests_per_s']:,.0f} vs {check['harness_requests_per_s']:,.0f} "
               f"({check['difference']:+.1%}; {check['clean_pairs']} clean of {len(check['pairs'])} pairs)"
               if check else "-") + " |")
    onnx = [f"| {model} | {r['batch_rows']} | {r['calls_per_s']:,.0f} | {r['rows_per_s']:,.0f} | {r['us_per_call']:g} |"
            for model, results in bench["onnxruntime"].items() for r in results]
    notes = []
    for name, conf in bench["configurations"].items():
        search = conf["search"]
        failure = next((t["result"] for t in search["trials"] if t["rate"] == search["first_failure"]), None)
        notes += [f"- **{name}** at {search['max_rate']:g}/s: {note}" for note in (search["at_max"] or {}).get("diagnosis", [])]
        if failure:
            notes += [f"- **{name}** at {search['first_failure']:g}/s (first failure): {note}" for note in failure["diagnosis"]]
    notes += [f"- **{name}**: caution: failing trials at {conf['search']['disturbed_failures']} req/s stayed "
              "disturbed by other jobs or hypervisor steal after retries; the figure may be low"
              for name, conf in bench["configurations"].items() if conf["search"]["disturbed_failures"]]
    waits = bench["quiet_waits"]
    waited = sum(w["waited_s"] for w in waits)
    noisy = sum(1 for w in waits if not w["quiet"])
    trials = "\n\n".join(report.format_search(conf["search"]) for conf in bench["configurations"].values())
    return f"""# Benchmark {bench['date'][:10]}

`{bench['command']}` on {m['cpu_model']}, {m['cores']} cores, {m['memory_gb']} GB RAM, {m['os']};
Python {m['python']}, onnxruntime {m['versions']['onnxruntime']}, aiohttp {m['versions']['aiohttp']},
uvloop {m['versions']['uvloop']}. Generator and servers share this machine.

Load: scenario `{bench['scenario']['name']}` ({bench['scenario']['description']}), {s['mode']}
arrivals (open loop), {s['processes']} generator process(es), {s['connections']} connections,
{s['duration_s']:g} s measured per trial after {s['warmup_s']:g} s warm-up. A configuration's
figure is the highest offered rate with {c['percentile']} <= {c['objective_ms']:g} ms, measured from
each request's intended send time, and < {c['max_error_rate']:.1%} errors (search: see
loadtests/search.py). Took {bench['elapsed_s']:.0f} s; waited {waited:.0f} s for a quiet machine
(idle, and the hypervisor giving it the CPU it asks for); {noisy} of {len(waits)} trials started
without one after 30 s of waiting. Trials disturbed by other jobs or hypervisor steal are run again.

## Throughput at the objective

| configuration | what | req/s at {c['percentile']} <= {c['objective_ms']:g} ms | rows/s | p50 ms | p99 ms | p99.9 ms | server cores (main process) | kafka cores | generator cores | machine busy cores (other jobs, hypervisor steal) | closed-loop probe req/s (p99) | generator check: wrk vs harness, closed loop |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

![latency percentiles against offered rate]({png_name})

## Raw onnxruntime, one process, one intra-op thread (as a gateway worker)

| model | rows per call | calls/s | rows/s | us per call |
|---|---|---|---|---|
{chr(10).join(onnx)}

## What limited each configuration, at its highest passing rate and at the first failure

The p99 objective is usually reached before anything is saturated: a process at 80% of a core
already queues its tail. "Closest to saturation" names the resource nearest its limit.

{chr(10).join(notes)}

## Every trial

```
{trials}
```

All figures (every trial's full result, with encoded HDR histograms) are in the JSON beside this file.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--only", nargs="+", choices=CONFIGURATIONS, default=list(CONFIGURATIONS))
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per trial")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--processes", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="generator processes (default: half the cores; the servers need the rest)")
    parser.add_argument("--objective-ms", type=float, default=10.0)
    parser.add_argument("--max-trials", type=int, default=10)
    parser.add_argument("--no-wrk", action="store_true", help="skip the wrk cross-check")
    args = parser.parse_args(argv)
    if not servers.MODELS.joinpath("wine").is_dir():
        parser.error(f"no demo models in {servers.MODELS}; run `make models` first")
    bench = run_bench(args)
    stamp = bench["date"][:10]
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_json(args.out / f"{stamp}-bench.json", bench)
    report.plot_searches({name: conf["search"] for name, conf in bench["configurations"].items()},
                         args.out / f"{stamp}-bench.png", title=f"make bench {stamp}: scenario {SCENARIO}")
    text = markdown(bench, f"{stamp}-bench.png")
    (args.out / f"{stamp}-bench.md").write_text(text)
    (args.out / "latest.md").write_text(text)
    print(f"\nwrote {args.out}/{stamp}-bench.{{json,png,md}} and latest.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
