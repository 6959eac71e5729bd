"""What event logging costs the gateway: the demo config (shadow challenger) with Kafka logging
on vs off, the rest identical, alternated round by round so slow drifts on a shared machine
hit both sides alike.

Two measures per gateway start:
  - CPU per request: an open-loop run at a fixed rate well below saturation; CPU seconds used by
    the gateway's whole process tree (main loop, model workers, event shipper), per answered
    request, split by process, plus the Kafka broker's and the generator's. On a CPU-bound
    machine throughput is inversely proportional to the CPU each request costs, so this is the
    yardstick that survives neighbours;
  - throughput: a closed loop (the same as the issue-3 measurement: 32 connections, scenario
    `standard`), achieved requests/s.

Prints per-round figures, medians, spreads and the on/off ratios; `--out` also writes JSON.

    deploy/with-kafka.sh .venv/bin/python -m loadtests.logging_cost      # what `make bench-logging` runs
    .venv/bin/python -m loadtests.logging_cost --rounds 1 --cpu-duration 10 --closed-duration 5
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import yaml

from loadtests import host, report, servers
from loadtests.run import RunSettings, execute

SCENARIO = "standard"
PARTS = ("gateway", "workers", "shipper")


def _gateway(kafka_bootstrap: str | None, spool_dir: str, kafka_settings: dict[str, Any],
             source: Path = servers.ROOT) -> servers.Server:
    """The demo gateway with the shadow challenger, logging on or off, its spool in `spool_dir`."""
    return servers.gateway(kafka_bootstrap=kafka_bootstrap, shadow=True,
                           kafka_settings={**kafka_settings, "spool": {"directory": spool_dir}}, source=source)


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


def _measured(server: servers.Server, kafka_pid: int | None, settings: RunSettings) -> tuple[dict[str, Any],
                                                                                          dict[str, float]]:
    """Runs `settings` against the gateway: the harness's result, and the CPU µs per answered
    request of each part of the gateway's tree and of the broker over the measured window."""
    samples: list[dict[str, float]] = []
    snap: Callable[[], None] = lambda: samples.append(_cpu_by_part(server.pid))
    result = execute(settings, watch={"server": server.pid, "kafka": kafka_pid},
                     actions=[(settings.warmup, snap), (settings.warmup + settings.duration, snap)])
    answered = max(result["achieved_rate"] * settings.duration, 1.0)
    us = {part: round((samples[1][part] - samples[0][part]) / answered * 1e6, 1) for part in PARTS}
    us["kafka"] = round(result["cpu"]["kafka"] * settings.duration / answered * 1e6, 1)  # idle when logging is off
    return result, us


def cpu_per_request(server: servers.Server, kafka_pid: int | None, rate: float, duration: float,
                    warmup: float) -> dict[str, Any]:
    """Open loop at `rate`: microseconds of CPU per answered request, by process."""
    result, us = _measured(server, kafka_pid, RunSettings(
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
                warmup: float) -> dict[str, Any]:
    """Closed loop: achieved requests/s, and where the cores went at saturation (CPU µs per
    request by process), which is what decides the ratio."""
    result, us = _measured(server, kafka_pid, RunSettings(
        url=server.url, scenario=SCENARIO, mode="closed", connections=connections, duration=duration,
        warmup=warmup, label="closed"))
    return {"achieved_rate": result["achieved_rate"], "errors": result["errors"], "cpu": result["cpu"],
            "us_per_request": us}


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1), "max": round(max(values), 1)}


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for side in ("off", "on"):
        runs = [r[side] for r in rounds]
        out[side] = {
            "us_per_request": {k: _spread([r["cpu"]["us_per_request"][k] for r in runs])
                               for k in runs[0]["cpu"]["us_per_request"]},
            "closed_req_s": _spread([r["closed"]["achieved_rate"] for r in runs]),
        }
    # When the cores are the limit, requests/s is inversely proportional to the CPU per request
    # of everything sharing them (gateway tree, broker, load generator).
    off, on = out["off"]["us_per_request"]["machine"]["median"], out["on"]["us_per_request"]["machine"]["median"]
    out["cpu_ratio"] = round(off / on, 3)
    out["closed_ratio"] = round(out["on"]["closed_req_s"]["median"] / out["off"]["closed_req_s"]["median"], 3)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    kafka_settings = dict(_setting(s) for s in args.kafka)
    with servers.kafka_broker() as (bootstrap, kafka_pid):
        if kafka_pid is None:
            raise SystemExit("the Kafka broker must run on this machine (its CPU is part of the cost)")
        if args.broker_warmup:  # a fresh JVM compiles its hot paths first: not a cost of logging
            with tempfile.TemporaryDirectory(prefix="logcost-spool-") as spool, \
                    _gateway(bootstrap, spool, kafka_settings) as server:
                cpu_per_request(server, kafka_pid, args.rate, args.broker_warmup, 1.0)
        for k in range(args.rounds):
            entry: dict[str, Any] = {}
            for side in (("off", "on") if k % 2 == 0 else ("on", "off")):
                if args.quiet_wait:
                    entry[f"quiet_{side}"] = host.wait_for_quiet(max_wait_s=args.quiet_wait)
                with tempfile.TemporaryDirectory(prefix="logcost-spool-") as spool, \
                        _gateway(bootstrap if side == "on" else None, spool, kafka_settings) as server:
                    cpu = cpu_per_request(server, kafka_pid, args.rate, args.cpu_duration, args.warmup)
                    closed = closed_loop(server, kafka_pid, args.connections, args.closed_duration, args.warmup)
                entry[side] = {"cpu": cpu, "closed": closed}
                print(f"round {k + 1} logging {side:3}: {cpu['us_per_request']} us/request at "
                      f"{cpu['achieved_rate']:.0f}/s (p99 {cpu['p99_ms']} ms, other {cpu['other_cores']}, "
                      f"steal {cpu['steal_cores']}); closed loop c={args.connections}: "
                      f"{closed['achieved_rate']:,.0f} req/s, {closed['us_per_request']} us/request", flush=True)
            rounds.append(entry)
    return {"settings": vars(args), "machine": host.describe_machine(), "rounds": rounds, "summary": summarise(rounds)}


def _setting(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    return key, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.logging_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="on/off pairs, alternated")
    parser.add_argument("--rate", type=float, default=1200.0, help="open-loop req/s for the CPU measure")
    parser.add_argument("--cpu-duration", type=float, default=20.0)
    parser.add_argument("--closed-duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=32, help="closed-loop connections")
    parser.add_argument("--quiet-wait", type=float, default=0.0,
                        help="wait up to this many seconds for a quiet machine before each side (0: don't)")
    parser.add_argument("--broker-warmup", type=float, default=60.0,
                        help="seconds of logged load before the rounds, so the broker's JIT is warm")
    parser.add_argument("--kafka", action="append", default=[], metavar="KEY=VALUE",
                        help="override a `kafka:` setting of the config (e.g. linger_ms=100), both sides")
    parser.add_argument("--out", help="also write every figure here (JSON)")
    args = parser.parse_args(argv)
    data = run(args)
    s = data["summary"]
    print(f"\nCPU per request (gateway tree + Kafka broker + load generator), median [min-max] over "
          f"{args.rounds} rounds at {args.rate:.0f} req/s open loop:")
    for side in ("off", "on"):
        parts = ", ".join(f"{k} {v['median']}" for k, v in s[side]["us_per_request"].items() if k != "machine")
        total = s[side]["us_per_request"]["machine"]
        print(f"  logging {side:3}: {total['median']} us [{total['min']}-{total['max']}]  ({parts})")
    print(f"  => CPU-bound throughput ratio on/off (off us / on us): {s['cpu_ratio']:.1%}")
    print(f"Closed loop, {args.connections} connections, {args.closed_duration:.0f} s: "
          f"off {s['off']['closed_req_s']['median']:,.0f} req/s [{s['off']['closed_req_s']['min']:,.0f}-"
          f"{s['off']['closed_req_s']['max']:,.0f}], on {s['on']['closed_req_s']['median']:,.0f} req/s "
          f"[{s['on']['closed_req_s']['min']:,.0f}-{s['on']['closed_req_s']['max']:,.0f}] "
          f"=> ratio {s['closed_ratio']:.1%}")
    if args.out:
        report.write_json(args.out, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
