"""What event logging costs the gateway: the demo config (shadow challenger: two events per
request; `--champion-only`: one) with Kafka logging on vs off, the rest identical. Both gateways
run at once and the measurements alternate between them (ABBA...), a few seconds each, so the
machine's drifts (this VM's speed moves by 2x within minutes) hit both sides alike.

Two measures:
  - CPU per request: open-loop runs at a fixed rate well below saturation; CPU seconds used by
    the gateway's whole process tree (main loop, model workers, event shipper), per answered
    request, split by process, plus the Kafka broker's and the generator's. On a CPU-bound
    machine throughput is inversely proportional to the CPU each request costs;
  - throughput (the issue-3 measurement): closed-loop slices, 32 connections, scenario
    `standard`, achieved requests/s; the ratio is all "on" requests over all "off" requests,
    the median of the adjacent pairs' ratios and a 95% interval beside it. Both gateways are
    started afresh `--starts` times in a run, the slices shared out among the starts: each
    process start draws a speed it keeps for its life (two identical gateways, A over B, read
    97.8-105.0% over ten starts, three of them with pair intervals that leave out 100%:
    docs/benchmarks/logging-cost/restart_probe.py), so one start per side puts one draw into
    every pair of a run, and runs at the same code read 90.8% and 85.7% with pair intervals a
    point wide. The interval is therefore Student's t over the starts' ratios (each start's
    pairs pooled): what another run could read. A pair counts only if the hypervisor took
    at most MAX_STEAL cores from either slice (steal hit "off" slices harder in one run, and
    lifted its ratio from 81% on the quiet pairs to 91%), and only if the "on" gateway's
    shipper kept up (`kept_up_with`): the events it queued for Kafka during the slice (its own
    counter) are at least KEEP_UP of the model answers, else the throughput would defer logging
    work past the window (it did, before 0d85a45), and it spooled none; over all slices it must
    have queued KEEP_UP of the answers, and Kafka must have confirmed every event of the slices
    a few seconds after the last.

Before measuring, logged load runs until the broker's JIT compiler is nearly idle: a fresh JVM
spends minutes compiling, which a long-running broker has done (reported, and capped).

    deploy/with-kafka.sh .venv/bin/python -m loadtests.logging_cost      # what `make bench-logging` runs
    deploy/with-kafka.sh .venv/bin/python -m loadtests.logging_cost --rounds 1 --slices 4 --starts 2 --cpu-duration 8 --broker-warmup 20
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import orjson
import yaml
from prometheus_client.parser import text_string_to_metric_families
from scipy import stats

from gateway.parallel.cpus import CpuLayout, pin_process
from loadtests import host, report, servers
from loadtests.run import RunSettings, execute

SCENARIO = "standard"
KEEP_UP = 0.97  # events queued per model answer over all the slices, at least
AFTER_SLICES = 5.0  # seconds after each start's last slice at which every event its "on" gateway logged must be in Kafka
DELIVERED_AFTER = 0.999  # ... all of them (per answer; runs before --starts counted the warm-ups' late events too)
MAX_STEAL = 0.05  # cores the hypervisor took from either slice of a pair, at most: steal removes the CPU being measured
SLICE_KEEP_UP = 0.9  # in one slice (4 s): the shipper reads in 100 ms bursts, Kafka confirms per linger
ISSUE_LINE = 0.9  # issue 3: logging on keeps at least this share of logging off's throughput
PARTS = ("gateway", "workers", "shipper")
SIDES = ("off", "on")  # logging off (no Kafka at all), logging every answer


def demo_gateway(kafka_bootstrap: str | None, spool_dir: str, kafka_settings: dict[str, Any],
                 source: Path = servers.ROOT, shadow: bool = True,
                 log_sample_rate: float | None = None,
                 loop_cpus: list[int] | str | None = servers.AS_IN_DEMO) -> servers.Server:
    """The demo gateway, logging on or off, its spool in `spool_dir`: with its shadow challenger
    (two events per request) unless `shadow` is false (champion only, one event per request);
    `log_sample_rate`, if given, in place of the demo's own; `loop_cpus`, its `server.loop_cpus`."""
    return servers.gateway(kafka_bootstrap=kafka_bootstrap, shadow=shadow, log_sample_rate=log_sample_rate,
                           kafka_settings={**kafka_settings, "spool": {"directory": spool_dir}}, source=source,
                           loop_cpus=loop_cpus)


def loop_placement(given: str | None) -> list[int] | None:
    """The request loop's CPUs for `--loop-cpus`, resolved as the gateways will resolve them (they
    start with this harness's CPUs): "CPU[,CPU...]" as given, "auto" the first CPU if there are
    two or more, "free" none (every process left to the scheduler); not given, what
    config/demo.yaml's `server.loop_cpus` says."""
    if given is None:
        value = (servers.demo_config().get("server") or {}).get("loop_cpus")
    elif given == "free":
        value = None
    elif given == "auto":
        value = given
    else:
        value = [int(c) for c in given.split(",")]
    loop = CpuLayout.of(value).loop
    return list(loop) if loop else None


def keep_off_the_loop(loop_cpus: list[int], kafka_pid: int) -> list[int]:
    """This harness (and the load generators it starts from now on) and the broker on the CPUs
    not in `loop_cpus`: they stand in for clients and a broker on other machines, which take no
    time from the gateway's request loop; they still share the CPUs of its workers and shipper.
    The gateways the harness starts are not held to it (servers.HARNESS_CPUS). Returns those CPUs."""
    others = sorted(servers.HARNESS_CPUS - set(loop_cpus))
    pin_process(others)
    pin_process(others, kafka_pid)
    return others


def part_of(pid: int, root: int) -> str:
    """Which part of the gateway rooted at `root` a process of its tree is."""
    if pid == root:
        return "gateway"
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "workers"
    return "shipper" if b"gateway.events.shipper" in cmdline else "workers"


def _cpu_by_part(root: int) -> dict[str, float]:
    """CPU seconds so far of each part of the gateway's process tree."""
    sample = host.sample_cpu({"server": root}).trees["server"]
    parts = dict.fromkeys(PARTS, 0.0)
    for pid, seconds in sample.items():
        parts[part_of(pid, root)] += seconds
    return parts


def counts(url: str) -> dict[str, float]:
    """Model answers, and events by the shipper's outcome, from the gateway's /metrics."""
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    found = {"answers": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_model_requests_total":
                found["answers"] += sample.value
            elif sample.name == "gateway_events_total":
                found[sample.labels["outcome"]] = found.get(sample.labels["outcome"], 0.0) + sample.value
            elif sample.name == "gateway_events_unshipped_total":
                found["unshipped"] = sample.value
    return found


def _measured(server: servers.Server, kafka_pid: int | None, settings: RunSettings,
              logged: bool = False) -> tuple[dict[str, Any], dict[str, float], dict[str, float] | None]:
    """Runs `settings` against the gateway: the harness's result, the CPU µs per answered
    request of each part of the gateway's tree and of the broker over the measured window, and
    (`logged`) the window's model answers and the share of them the shipper queued, Kafka
    confirmed and the shipper spooled."""
    samples: list[dict[str, float]] = []
    seen: list[dict[str, float]] = []
    waited: list[tuple[float, float]] = []

    def snap() -> None:
        samples.append(_cpu_by_part(server.pid))
        waited.append((time.monotonic(), host.waiting_seconds(server.pid)))
        if logged:
            seen.append(counts(server.url))

    result = execute(settings, watch={"server": server.pid, "kafka": kafka_pid},
                     actions=[(settings.warmup, snap), (settings.warmup + settings.duration, snap)])
    answered = max(result["achieved_rate"] * settings.duration, 1.0)
    us = {part: round((samples[1][part] - samples[0][part]) / answered * 1e6, 1) for part in PARTS}
    # Idle when logging is off; 0 when there is no broker to watch (a probe of gateways without Kafka)
    us["kafka"] = round(result["cpu"].get("kafka", 0.0) * settings.duration / answered * 1e6, 1)
    # Cores' worth of time the request loop was ready but waited for a core: at saturation, throughput lost
    (t0, w0), (t1, w1) = waited
    result["cpu"]["loop_waiting"] = None if w0 is None or w1 is None else round((w1 - w0) / max(t1 - t0, 1e-9), 3)
    shipped = None
    if logged:
        answers = max(seen[1]["answers"] - seen[0]["answers"], 1.0)
        shipped = {outcome: round((seen[1].get(outcome, 0.0) - seen[0].get(outcome, 0.0)) / answers, 3)
                   for outcome in ("queued", "delivered", "spooled")}
        shipped["answers"] = answers
    return result, us, shipped


def cpu_per_request(server: servers.Server, kafka_pid: int | None, rate: float, duration: float,
                    warmup: float) -> dict[str, Any]:
    """Open loop at `rate`: microseconds of CPU per answered request, by process."""
    result, us, _ = _measured(server, kafka_pid, RunSettings(
        url=server.url, scenario=SCENARIO, mode="constant", rate=rate, duration=duration, warmup=warmup,
        connections=64, processes=1, label="cpu"))
    answered = max(result["achieved_rate"] * duration, 1.0)
    us["server"] = round(sum(us[p] for p in PARTS), 1)
    cpu = result["cpu"]
    us["generator"] = round(cpu["generator"] * duration / answered * 1e6, 1)
    us["machine"] = round(us["server"] + us["kafka"] + us["generator"], 1)  # all that shares the cores
    return {"us_per_request": us, "achieved_rate": result["achieved_rate"], "errors": result["errors"],
            "p99_ms": result["latency_ms"]["p99"], "other_cores": cpu["other"], "steal_cores": cpu["steal"]}


def closed_loop(server: servers.Server, kafka_pid: int | None, connections: int, duration: float,
                warmup: float, logged: bool = False) -> dict[str, Any]:
    """Closed loop: achieved requests/s, where the cores went at saturation (CPU µs per
    request by process), and (`logged`) how much of the window's logging the shipper kept up with."""
    result, us, shipped = _measured(server, kafka_pid, RunSettings(
        url=server.url, scenario=SCENARIO, mode="closed", connections=connections, duration=duration,
        warmup=warmup, label="closed"), logged)
    return {"achieved_rate": result["achieved_rate"], "errors": result["errors"], "cpu": result["cpu"],
            "us_per_request": us, "shipped": shipped}


def first_load(gateways: dict[str, servers.Server], kafka_pid: int | None, connections: int, duration: float,
               warmup: float) -> None:
    """One closed-loop slice on each fresh gateway, not measured: a new process's first load
    (connections, caches, the workers' first batches) is not what its later slices see."""
    for server in gateways.values():
        closed_loop(server, kafka_pid, connections, duration, warmup)


JIT_THREADS = "CompilerThre"  # the JVM's "C1/C2 CompilerThread<n>", cut to 15 characters by the kernel


def warm_broker(server: servers.Server, kafka_pid: int, rate: float, max_seconds: float,
                quiet_jit: float = 0.02) -> dict[str, Any]:
    """Logged load in 10 s steps until the broker's JIT compiler threads use under `quiet_jit`
    of a core, or `max_seconds` passed."""
    steps: list[float] = []
    while 10 * len(steps) < max_seconds:
        before = host.thread_cpu_seconds(kafka_pid, JIT_THREADS)
        cpu_per_request(server, kafka_pid, rate, 9.0, 1.0)
        steps.append(round((host.thread_cpu_seconds(kafka_pid, JIT_THREADS) - before) / 10.0, 3))
        if steps[-1] < quiet_jit:
            break
    return {"seconds": 10 * len(steps), "jit_cores_per_step": steps}


def warm_gateways(stack: ExitStack, bootstrap: str, kafka_pid: int | None,
                  trees: dict[str, Path | None] | None = None, kafka_settings: dict[str, Any] | None = None,
                  shadow: bool = True, rate: float = 1200.0, warmup: float = 40.0,
                  loop_cpus: list[int] | str | None = servers.AS_IN_DEMO,
                  ) -> tuple[dict[str, servers.Server], dict[str, Any] | None]:
    """The demo gateways a comparison runs, one per name in `trees` (None: the project's own,
    logging off, no Kafka; a path: that source tree's, logging to `bootstrap`; by default "off"
    and "on" of the project's own), each with a spool of its own and ended by `stack`; then the
    broker warmed by the "on" gateway's load at `rate` for at most `warmup` s (0: not warmed).
    Returns the gateways and the warm-up's steps."""
    trees = trees or {"off": None, "on": servers.ROOT}
    gateways = {name: stack.enter_context(demo_gateway(
        None if tree is None else bootstrap,
        stack.enter_context(tempfile.TemporaryDirectory(prefix=f"logcost-spool-{name}-")), kafka_settings or {},
        source=tree or servers.ROOT, shadow=shadow, loop_cpus=loop_cpus)) for name, tree in trees.items()}
    warm = warm_broker(gateways["on"], kafka_pid, rate, warmup) if warmup else None
    print(f"broker warm-up: {warm}", flush=True)
    return gateways, warm


def _spread(values: list[float], digits: int = 1) -> dict[str, float]:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


def _shown(spread: dict[str, float], unit: str, spec: str = "") -> str:
    """A `_spread` as the verdict prints it: median [min-max]."""
    return f"{spread['median']:{spec}} {unit} [{spread['min']:{spec}}-{spread['max']:{spec}}]"


def summarise(rounds: list[dict[str, Any]], slices: list[dict[str, Any]],
              delivery: dict[str, float] | None = None) -> dict[str, Any]:
    """The verdict: figures per side, the on/off ratios, and whether the run counts at all.

    `delivery`: what Kafka had of the slices' events AFTER_SLICES after the last one; a run
    whose events were not all there (or went to the spool) deferred or escaped its logging work."""
    out: dict[str, Any] = {}
    for side in SIDES:
        runs = [r[side] for r in rounds]
        out[side] = {"us_per_request": {k: _spread([r["us_per_request"][k] for r in runs])
                                        for k in runs[0]["us_per_request"]},
                     # what logging adds to the tail below saturation (runs before this was read lack it)
                     "p99_ms": _spread([r["p99_ms"] for r in runs if "p99_ms" in r] or [float("nan")], 3),
                     "closed_req_s": _spread([s[side]["achieved_rate"] for s in slices]),
                     # runs before this was measured, or on a kernel without schedstat, lack it
                     "loop_waiting_cores": _spread([w for s in slices if (w := s[side]["cpu"].get("loop_waiting"))
                                                    is not None] or [float("nan")], 3)}
    # When the cores are the limit, requests/s is inversely proportional to the CPU per request
    # of everything sharing them (gateway tree, broker, load generator).
    off, on = out["off"]["us_per_request"]["machine"]["median"], out["on"]["us_per_request"]["machine"]["median"]
    out["cpu_ratio"] = round(off / on, 3)
    kept_up = [s for s in slices if kept_up_with(s["on"]["shipped"])]
    out["slices_kept_up"] = f"{len(kept_up)} of {len(slices)}"
    stolen = [s for s in kept_up if max(s["off"]["cpu"]["steal"], s["on"]["cpu"]["steal"]) > MAX_STEAL]
    out["pairs_with_steal"] = f"{len(stolen)} of {len(kept_up)}"
    kept_up = [s for s in kept_up if s not in stolen]
    out["closed_ratio"] = round(pooled_ratio(kept_up), 3) if kept_up else None
    by_start = starts_ratios(kept_up)
    out["closed_ratio_by_start"] = by_start
    # Over the starts when there were several; runs before --starts had one, and resampled pairs
    out["closed_ratio_interval_over"] = "starts" if len(by_start) > 1 else "pairs"
    out["closed_ratio_ci95"] = starts_interval(by_start) if len(by_start) > 1 else pooled_ratio_interval(kept_up)
    out["closed_pair_ratio_median"] = round(statistics.median(
        s["on"]["achieved_rate"] / s["off"]["achieved_rate"] for s in kept_up), 3) if kept_up else None
    # Over all the slices, what the shipper queued and Kafka confirmed per model answer: what one
    # slice's window cuts off at its end it took in at its start, so the run-wide share is exact
    # to the lag at one end; it must be near 1, or the "on" figures deferred logging work.
    weights = [s["on"]["shipped"].get("answers", 1.0) for s in slices]  # runs before 3d938d7 lack them
    out["shipped"] = {outcome: round(sum(w * s["on"]["shipped"][outcome] for w, s in zip(weights, slices))
                                     / (sum(weights) or 1.0), 3)
                      for outcome in ("queued", "delivered", "spooled")}
    out["shipper_kept_up"] = out["shipped"]["queued"] >= KEEP_UP
    if delivery is not None:
        out["delivered_after_slices"] = (delivery["delivered"] >= DELIVERED_AFTER and delivery["spooled"] == 0
                                         and delivery["dropped"] == 0 and delivery.get("unshipped", 0.0) == 0)
    out["run_counts"] = out["shipper_kept_up"] and out.get("delivered_after_slices", True)
    return out


def pooled_ratio(pairs: list[dict[str, Any]]) -> float:
    """All "on" requests over all "off" requests of closed-loop pairs ({"off": slice, "on": slice})."""
    return sum(s["on"]["achieved_rate"] for s in pairs) / sum(s["off"]["achieved_rate"] for s in pairs)


def pooled_ratio_interval(pairs: list[dict[str, Any]]) -> list[float] | None:
    """95% bootstrap interval of the pooled on/off ratio, resampling whole pairs: how far this
    run's figure may be from the host's state it ran in (pairs swing with the host; runs hours
    apart have read outside each other's intervals)."""
    if len(pairs) < 3:
        return None
    on = np.array([s["on"]["achieved_rate"] for s in pairs])
    off = np.array([s["off"]["achieved_rate"] for s in pairs])
    found = stats.bootstrap((on, off), lambda a, b, axis: a.sum(axis) / b.sum(axis), paired=True,
                            vectorized=True, n_resamples=9999, method="percentile", random_state=0)
    return [round(float(found.confidence_interval.low), 3), round(float(found.confidence_interval.high), 3)]


def starts_ratios(pairs: list[dict[str, Any]]) -> list[float]:
    """Each gateway start's pooled on/off ratio, in start order (a run's pairs carry their start;
    runs from before --starts had one)."""
    starts: dict[int, list[dict[str, Any]]] = {}
    for pair in pairs:
        starts.setdefault(pair.get("start", 0), []).append(pair)
    return [round(pooled_ratio(starts[k]), 4) for k in sorted(starts)]


def starts_interval(ratios: list[float]) -> list[float] | None:
    """95% Student's t interval of the mean of the starts' ratios: each start draws both gateways'
    speeds anew, so the starts, not the pairs, are the independent samples of what a run reads."""
    if len(ratios) < 2:
        return None
    mean, sem = float(np.mean(ratios)), float(stats.sem(ratios))
    if sem == 0.0:  # starts that agree exactly (scipy's interval is undefined at zero spread)
        return [round(mean, 3), round(mean, 3)]
    low, high = stats.t.interval(0.95, len(ratios) - 1, loc=mean, scale=sem)
    return [round(float(low), 3), round(float(high), 3)]


def pooled_over_runs(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """What several runs say together: the starts of the runs that count, pooled, and the t
    interval over them (`starts_interval`). A run from before --starts adds its one start."""
    counting = [s for s in summaries if s["run_counts"] and s["closed_ratio_by_start"]]
    ratios = [r for s in counting for r in s["closed_ratio_by_start"]]
    return {"runs_counted": f"{len(counting)} of {len(summaries)}", "starts": len(ratios),
            "closed_ratio_mean_of_starts": round(float(np.mean(ratios)), 3) if ratios else None,
            "closed_ratio_ci95": starts_interval(ratios),
            f"below_{ISSUE_LINE}_p": float(stats.ttest_1samp(ratios, ISSUE_LINE, alternative="less").pvalue) if len(ratios) > 1 else None}


def kept_up_with(shipped: dict[str, float]) -> bool:
    """Whether the shipper kept up with a slice's logging: it queued nearly every event for Kafka
    (SLICE_KEEP_UP: within the granularity of its bursts) and spooled none (a stalled delivery
    sends events to the disk spool, which costs less than Kafka: that slice would not measure
    logging to Kafka)."""
    return shipped["queued"] >= SLICE_KEEP_UP and shipped["spooled"] == 0


def rotated(sides: Sequence[str], round_index: int) -> list[str]:
    """The sides in round `round_index`'s order: each round starts one side later, so the shared
    host's drift over a run falls on every side alike (with two sides, they alternate)."""
    start = round_index % len(sides)
    return [*sides[start:], *sides[:start]]


def run(args: argparse.Namespace) -> dict[str, Any]:
    kafka_settings = dict(_setting(s) for s in args.kafka)
    per_start = args.slices // args.starts
    rounds: list[dict[str, Any]] = []
    slices: list[dict[str, Any]] = []
    tally: dict[str, float] = {}  # what the "on" gateways counted in their lives, all starts
    failures: list[str] = []
    loop_cpus = loop_placement(args.loop_cpus)
    with servers.kafka_broker() as (bootstrap, kafka_pid):
        if kafka_pid is None:
            raise SystemExit("the Kafka broker must run on this machine (its CPU is part of the cost)")
        if loop_cpus is None:
            print("every process free: the gateways' request loops share the CPUs with everything else", flush=True)
        else:
            print(f"request loops on CPU {loop_cpus}; this harness, its load generators and the broker on CPU "
                  f"{keep_off_the_loop(loop_cpus, kafka_pid)}", flush=True)
        for start in range(args.starts):
            with ExitStack() as stack:  # both gateways stopped at the end of their start
                gateways, warmed = warm_gateways(stack, bootstrap, kafka_pid, kafka_settings=kafka_settings,
                                                 shadow=not args.champion_only, rate=args.rate,
                                                 warmup=args.broker_warmup if start == 0 else 0, loop_cpus=loop_cpus)
                if start == 0:
                    warm = warmed
                    quiet = host.wait_for_quiet(max_wait_s=args.quiet_wait) if args.quiet_wait else None
                    rounds = _cpu_rounds(gateways, kafka_pid, args)
                first_load(gateways, kafka_pid, args.connections, args.closed_duration, args.closed_warmup)
                for k in range(len(slices), len(slices) + per_start):
                    entry = {side: closed_loop(gateways[side], kafka_pid, args.connections, args.closed_duration,
                                               args.closed_warmup, logged=side == "on") for side in rotated(SIDES, k)}
                    slices.append({**entry, "start": start})
                    print(f"closed slice {k + 1} (start {start + 1}): off {entry['off']['achieved_rate']:,.0f} req/s, on "
                          f"{entry['on']['achieved_rate']:,.0f} req/s ({entry['on']['achieved_rate'] / entry['off']['achieved_rate']:.1%}); "
                          f"shipped {entry['on']['shipped']}; steal off {entry['off']['cpu']['steal']}, "
                          f"on {entry['on']['cpu']['steal']}; loop waiting for a core off {entry['off']['cpu']['loop_waiting']}, "
                          f"on {entry['on']['cpu']['loop_waiting']}", flush=True)
                # Then every event the fresh "on" gateway logged (its warm-ups' too) must be in Kafka:
                # its counters started at zero, so the check is exact
                time.sleep(AFTER_SLICES)
                for key, value in counts(gateways["on"].url).items():
                    tally[key] = tally.get(key, 0.0) + value
                failures += delivery_failures(gateways["on"].log_text())
        answered = max(tally["answers"], 1.0)
        delivery = {outcome: round(tally.get(outcome, 0.0) / answered, 4) for outcome in ("delivered", "spooled", "dropped")}
        delivery["unshipped"] = tally.get("unshipped", 0.0)
        print(f"{AFTER_SLICES:.0f} s after each start's last slice: {delivery} of the {answered:,.0f} model answers "
              f"the 'on' gateways gave", flush=True)
        for line in failures:
            print(f"  {line}", flush=True)
    return {"settings": vars(args), "loop_cpus": loop_cpus, "machine": host.describe_machine(),
            "broker_warmup": warm, "quiet": quiet,
            "rounds": rounds, "slices": slices, "delivery_after_slices": delivery, "delivery_failures": failures,
            "summary": summarise(rounds, slices, delivery)}


def _cpu_rounds(gateways: dict[str, servers.Server], kafka_pid: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The open-loop CPU measures, `args.rounds` per side, alternated (on the first start's gateways)."""
    rounds = []
    for k in range(args.rounds):
        entry = {side: cpu_per_request(gateways[side], kafka_pid, args.rate, args.cpu_duration, args.warmup)
                 for side in rotated(SIDES, k)}
        rounds.append(entry)
        for side in SIDES:
            cpu = entry[side]
            print(f"cpu round {k + 1} logging {side:3}: {cpu['us_per_request']} us/request at "
                  f"{cpu['achieved_rate']:.0f}/s (p99 {cpu['p99_ms']} ms, other {cpu['other_cores']}, "
                  f"steal {cpu['steal_cores']})", flush=True)
    return rounds


def delivery_failures(log: str) -> list[str]:
    """The shipper's lines of a gateway's log that say why it gave up on Kafka and spooled: with a
    healthy broker on this host, which of its stall rules fired is what a run that spooled must tell."""
    from gateway.events.logger import DELIVERY_FAILED

    return [line.strip() for line in log.splitlines() if DELIVERY_FAILED in line]


def _setting(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    return key, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.logging_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="CPU measures per side, alternated")
    parser.add_argument("--rate", type=float, default=1200.0, help="open-loop req/s for the CPU measure")
    parser.add_argument("--cpu-duration", type=float, default=20.0)
    parser.add_argument("--slices", type=int, default=40, help="closed-loop slices per side, alternated: "
                        "enough that the pairs left after the steal filter pin the ratio to a few percent")
    parser.add_argument("--starts", type=int, default=8,
                        help="times both gateways are started afresh, the slices shared out among them: "
                        "the interval is over the starts, so a start's lasting speed cannot pass for logging's cost")
    parser.add_argument("--closed-duration", type=float, default=4.0,
                        help="seconds per slice: short, so that many alternations average this VM's drifts")
    parser.add_argument("--closed-warmup", type=float, default=1.0)
    parser.add_argument("--warmup", type=float, default=2.0, help="before each CPU measure")
    parser.add_argument("--connections", type=int, default=32, help="closed-loop connections")
    parser.add_argument("--quiet-wait", type=float, default=0.0,
                        help="wait up to this many seconds for a quiet machine before measuring (0: don't)")
    parser.add_argument("--broker-warmup", type=float, default=180.0,
                        help="at most this many seconds of logged load first, until the broker's JIT is idle")
    parser.add_argument("--kafka", action="append", default=[], metavar="KEY=VALUE",
                        help="override a `kafka:` setting of the config (e.g. linger_ms=100), both sides")
    parser.add_argument("--champion-only", action="store_true",
                        help="both sides without the demo's shadow challenger: one event per request, not two")
    parser.add_argument("--loop-cpus", metavar="CPU[,CPU...]|auto|free",
                        help="both gateways with server.loop_cpus set to these CPUs (auto: the first CPU, as the "
                        "gateway resolves it; free: unset, every process left to the scheduler), and this harness, "
                        "its load generators and the broker kept off them (keep_off_the_loop); default: as "
                        "config/demo.yaml sets server.loop_cpus")
    parser.add_argument("--out", help="also write every figure here (JSON)")
    parser.add_argument("--summarise", metavar="JSON", nargs="+",
                        help="measure nothing: apply this version's verdict to runs' figures written by --out "
                        "(e.g. docs/benchmarks/logging-cost/run-*.json); with several, also pool their starts")
    args = parser.parse_args(argv)
    if args.summarise:
        summaries = []
        for path in args.summarise:
            data = orjson.loads(Path(path).read_bytes())
            summaries.append(summarise(data["rounds"], data["slices"], data.get("delivery_after_slices")))
            print(path, orjson.dumps(summaries[-1], option=orjson.OPT_INDENT_2).decode())
        if len(summaries) > 1:
            print("pooled:", orjson.dumps(pooled_over_runs(summaries), option=orjson.OPT_INDENT_2).decode())
        return 0
    if args.starts < 1 or args.slices % args.starts:
        parser.error(f"--slices ({args.slices}) must be a multiple of --starts ({args.starts}), which is at least 1")
    data = run(args)
    s = data["summary"]
    print(f"\nCPU per request (gateway tree + Kafka broker + load generator), median [min-max] over "
          f"{args.rounds} rounds at {args.rate:.0f} req/s open loop:")
    for side in SIDES:
        parts = ", ".join(f"{k} {v['median']}" for k, v in s[side]["us_per_request"].items() if k != "machine")
        total = s[side]["us_per_request"]["machine"]
        print(f"  logging {side:3}: {_shown(total, 'us')}  ({parts})")
    print(f"  => CPU-bound throughput ratio on/off (off us / on us): {s['cpu_ratio']:.1%}")
    print(f"  p99 latency at that rate, median [min-max]: off {_shown(s['off']['p99_ms'], 'ms')}, "
          f"on {_shown(s['on']['p99_ms'], 'ms')}")
    print(f"Closed loop, {args.connections} connections, {args.slices} slices of {args.closed_duration:.0f} s per side: "
          f"off {_shown(s['off']['closed_req_s'], 'req/s', ',.0f')}, "
          f"on {_shown(s['on']['closed_req_s'], 'req/s', ',.0f')}; the shipper kept up in "
          f"{s['slices_kept_up']} slices; over all slices it queued {s['shipped']['queued']:.1%} of the model answers "
          f"({'kept up' if s['shipper_kept_up'] else 'FELL BEHIND'}), Kafka confirmed {s['shipped']['delivered']:.1%} "
          f"within them and {data['delivery_after_slices']['delivered']:.2%} by {AFTER_SLICES:.0f} s after")
    print(f"  pairs left out for steal over {MAX_STEAL} cores: {s['pairs_with_steal']}")
    print(f"  the request loop waited for a core (median over the slices, in cores): off "
          f"{s['off']['loop_waiting_cores']['median']}, on {s['on']['loop_waiting_cores']['median']}")
    if not s["run_counts"]:
        print("  THE RUN DOES NOT COUNT: the shipper fell behind, or Kafka did not have every event "
              f"{AFTER_SLICES:.0f} s after each start's last slice (or some went to the spool)")
    if s["closed_ratio"] is not None:
        interval = s.get("closed_ratio_ci95")
        over = {"starts": f"the {len(s['closed_ratio_by_start'])} gateway starts",
                "pairs": "resampled pairs (one gateway start a side)"}[s.get("closed_ratio_interval_over", "pairs")]
        spread = f"95% interval over {over} {interval[0]:.1%}-{interval[1]:.1%}; " if interval else ""
        print(f"  => on/off over the pairs that count: {s['closed_ratio']:.1%} "
              f"({spread}median of adjacent pairs {s['closed_pair_ratio_median']:.1%})")
        if len(s["closed_ratio_by_start"]) > 1:
            print(f"  by start: {', '.join(f'{r:.1%}' for r in s['closed_ratio_by_start'])}")
    if args.out:
        report.write_json(args.out, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
