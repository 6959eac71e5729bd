"""One load-test run: spread over generator processes, started together, merged into one result.

    python -m loadtests.run --scenario standard --mode constant --rate 2000 --duration 20
    python -m loadtests.run --mode closed --connections 32 --duration 10
    python -m loadtests.run --search --objective-ms 10 --server-pid $(pgrep -o -f 'gateway serve')
    python -m loadtests.run --help

Traffic goes to http://127.0.0.1:$GATEWAY_PORT (default 8080) unless --url names another server.
The parent process only coordinates: it waits until every generator is ready, gives them one
common start time, samples CPU (/proc) at the window's edges, and merges the histograms.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from loadtests import histograms, host
from loadtests.generator import Mode, WorkerSpec, worker_main
from loadtests.httpclient import parse_url
from loadtests.scenario import load_scenario

Action = tuple[float, Callable[[], None]]  # (seconds after the run's start, warm-up included; what to do)
LAG_WARNING_MS = 3.0  # open-loop dispatch lag p99 above this: the generator, not the server, fell behind
SATURATED = 0.9  # share of a core (or of the machine) counted as saturated
DISTURBED = 0.25  # cores used by processes outside the test that make a run suspect


def default_url() -> str:
    return f"http://127.0.0.1:{os.environ.get('GATEWAY_PORT', '8080')}"


@dataclass(frozen=True)
class RunSettings:
    url: str = ""  # empty: default_url()
    scenario: str = "standard"
    mode: Mode = "constant"
    rate: float | None = None  # requests/s offered, open loop only
    duration: float = 10.0  # measured seconds, after the warm-up
    warmup: float = 2.0
    connections: int = 64  # over all processes
    processes: int = 2
    timeout: float = 5.0  # per request, from its intended send time
    seed: int = 0
    max_requests: int = 5_000_000  # over all processes, warm-up included
    max_in_flight: int = 50_000  # per process; beyond it a due request is recorded as `overflow`
    bucket_s: float = 1.0  # timeline resolution
    label: str = ""

    def validated(self) -> "RunSettings":
        settings = replace(self, url=self.url or default_url())
        parse_url(settings.url)
        if settings.mode not in ("constant", "poisson", "closed"):
            raise ValueError(f"mode must be constant, poisson or closed, not {settings.mode!r}")
        if settings.mode != "closed" and not (settings.rate and settings.rate > 0):
            raise ValueError(f"{settings.mode} arrivals need a positive --rate")
        if not (0 < settings.duration <= 3600 and 0 <= settings.warmup <= 600 and 0 < settings.timeout <= 120):
            raise ValueError("duration must be in (0, 3600] s, warmup in [0, 600] s, timeout in (0, 120] s")
        if not 1 <= settings.processes <= 64 or settings.connections < settings.processes:
            raise ValueError("processes must be in [1, 64] and connections >= processes")
        if settings.max_requests < settings.processes:
            raise ValueError("max_requests must be at least one per process")
        load_scenario(settings.scenario)  # fail here, not in every worker
        return settings


def _split(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


def _start_workers(settings: RunSettings, run_id: str) -> list[tuple[Any, Any]]:
    ctx = multiprocessing.get_context("spawn")  # no inherited event loops, threads or sockets
    workers = []
    for k in range(settings.processes):
        spec = WorkerSpec(
            url=settings.url, scenario=settings.scenario, mode=settings.mode, rate=settings.rate,
            warmup=settings.warmup, duration=settings.duration,
            connections=_split(settings.connections, settings.processes, k), process=k,
            processes=settings.processes, seed=settings.seed, timeout=settings.timeout,
            max_requests=_split(settings.max_requests, settings.processes, k),
            max_in_flight=settings.max_in_flight, run_id=run_id, bucket_s=settings.bucket_s,
        )
        parent, child = ctx.Pipe()
        process = ctx.Process(target=worker_main, args=(spec, child), name=f"loadgen-{k}", daemon=True)
        process.start()
        child.close()
        workers.append((process, parent))
    return workers


def _receive(conn: Any, until: float, what: str) -> Any:
    if not conn.poll(max(0.0, until - time.monotonic())):
        raise TimeoutError(f"a generator process sent no {what} in time")
    try:
        message, payload = conn.recv()
    except EOFError:
        raise RuntimeError(f"a generator process exited before sending its {what} (see its stderr)") from None
    if message == "error":
        raise RuntimeError(f"a generator process failed:\n{payload}")
    return payload


def execute(settings: RunSettings, *, watch: dict[str, int] | None = None,
            actions: Sequence[Action] = ()) -> dict[str, Any]:
    """Runs the load and returns the merged result (see merge()).

    `watch` names process trees whose CPU use is reported (e.g. {"server": pid}); `actions` run in
    this process at given times after the start, e.g. pausing the server for an experiment.
    """
    settings = settings.validated()
    watch = {name: pid for name, pid in (watch or {}).items() if pid}
    run_id = uuid.uuid4().hex[:8]
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    workers = _start_workers(settings, run_id)
    try:
        for _, conn in workers:
            _receive(conn, time.monotonic() + 120, "ready message")
        start_at = time.monotonic() + 0.3
        for _, conn in workers:
            conn.send(("start", start_at))
        samples: list[host.CpuSample] = []
        window = (settings.warmup, settings.warmup + settings.duration)
        events = sorted([*actions, *((t, lambda: samples.append(host.sample_cpu(watch))) for t in window)],
                        key=lambda e: e[0])
        for at, action in events:
            time.sleep(max(0.0, start_at + at - time.monotonic()))
            action()
        until = start_at + window[1] + settings.timeout + 60
        results = [_receive(conn, until, "result") for _, conn in workers]
        for process, _ in workers:
            process.join(10)
    finally:
        for process, conn in workers:
            if process.is_alive():
                process.terminate()
                process.join(5)
            conn.close()
    cpu = host.cpu_between(samples[0], samples[1], settings.duration)
    return merge(settings, results, cpu, started)


def merge(settings: RunSettings, results: list[dict[str, Any]], cpu: dict[str, float], started: str) -> dict[str, Any]:
    """Every figure of the run; histograms are kept encoded so any percentile can be recomputed."""
    duration = settings.duration
    scenario = load_scenario(settings.scenario)
    overall = histograms.merge(k["histogram"] for r in results for k in r["kinds"].values())
    outcomes: dict[str, int] = {}
    for r in results:
        for name, n in r["outcomes"].items():
            outcomes[name] = outcomes.get(name, 0) + n
    measured = sum(outcomes.values())
    errors = {name: n for name, n in outcomes.items() if not name.isdigit() or not 200 <= int(name) < 300}
    by_kind = {}
    for kind in scenario.requests:
        parts = [r["kinds"][kind.name] for r in results]
        h = histograms.merge(p["histogram"] for p in parts)
        by_kind[kind.name] = {"path": kind.path, "rows": sum(p["rows"] for p in parts),
                              "errors": sum(p["errors"] for p in parts), "latency_ms": histograms.summary_ms(h)}
    timeline = []
    for bucket in sorted({int(b) for r in results for b in r["timeline"]}):
        parts = [r["timeline"][bucket] for r in results if bucket in r["timeline"]]
        summary = histograms.summary_ms(histograms.merge(p["histogram"] for p in parts))
        timeline.append({"t_s": round(bucket * settings.bucket_s, 3), "requests": summary.pop("count"),
                         "errors": sum(p["errors"] for p in parts), **summary})
    generator_cpu = [r["cpu_s"] / duration if r["cpu_s"] is not None else None for r in results]
    generator_cores = round(sum(c for c in generator_cpu if c is not None), 3)
    watched = sum(v for k, v in cpu.items() if k not in ("machine_busy", "steal") and "." not in k)
    feedback: dict[str, int] = {}
    for r in results:
        for name, n in r["feedback"].items():
            feedback[name] = feedback.get(name, 0) + n
    result = {
        "label": settings.label,
        "started_at": started,
        "settings": asdict(settings),
        "scenario": scenario.to_json(),
        "offered_rate": settings.rate if settings.mode != "closed" else None,
        "scheduled": sum(r["scheduled"] for r in results) if settings.mode != "closed" else None,
        "measured_requests": measured,
        "warmup_requests": sum(r["warmup_requests"] for r in results),
        "achieved_rate": round(sum(r["ok_in_window"] for r in results) / duration, 1),
        "responses_rate": round(sum(r["responses_in_window"] for r in results) / duration, 1),
        "rows_per_s": round(sum(r["rows_in_window"] for r in results) / duration, 1),
        "outcomes": outcomes,
        "errors": errors,
        "error_rate": round(sum(errors.values()) / measured, 6) if measured else None,
        "latency_ms": histograms.summary_ms(overall),
        "latency_histogram": histograms.encode(overall),
        "response_time_ms": histograms.summary_ms(histograms.merge(r["response"] for r in results)),
        "dispatch_lag_ms": histograms.summary_ms(histograms.merge(r["lag"] for r in results)),
        "by_kind": by_kind,
        "timeline": timeline,
        "cpu": {"cores": os.cpu_count(), "generator": generator_cores,
                "generator_per_process": [round(c, 3) if c is not None else None for c in generator_cpu],
                **cpu, "other": round(max(0.0, cpu["machine_busy"] - generator_cores - watched), 3)},
        "generator": {"max_in_flight": max(r["max_in_flight"] for r in results),
                      "connections_opened": sum(r["connections_opened"] for r in results)},
        "feedback": feedback,
        "warnings": sorted({w for r in results for w in r["warnings"]}),
    }
    result["diagnosis"] = diagnose(result)
    return result


def disturbed(cpu: dict[str, float]) -> bool:
    """Did something outside the test (other jobs, the hypervisor) take enough CPU to skew it?"""
    return cpu.get("other", 0.0) >= DISTURBED or cpu.get("steal", 0.0) >= DISTURBED


def diagnose(result: dict[str, Any]) -> list[str]:
    """Plain statements of what limited this run, from the CPU and lag figures."""
    notes = []
    cpu, cores = result["cpu"], result["cpu"]["cores"] or 1
    lag = result["dispatch_lag_ms"].get("p99")
    if result["offered_rate"] and lag is not None and lag > LAG_WARNING_MS:
        notes.append(f"generator fell behind its schedule (dispatch lag p99 {lag} ms): "
                     "latencies include the generator's own delay")
    busy = [c for c in cpu["generator_per_process"] if c is not None and c >= SATURATED]
    if busy:
        notes.append(f"{len(busy)} generator process(es) used >= {SATURATED:.0%} of a core: add --processes")
    for name, value in cpu.items():
        if name.endswith(".main") and value >= SATURATED:
            notes.append(f"{name[:-5]}'s main process used {value} cores: its event loop is saturated")
    if cpu["machine_busy"] >= SATURATED * cores:
        parts = ", ".join(f"{k} {v}" for k, v in cpu.items() if k not in ("cores", "machine_busy", "steal",
                          "generator_per_process") and "." not in k)
        notes.append(f"machine CPU saturated ({cpu['machine_busy']} of {cores} cores busy: {parts})")
    if cpu["steal"] >= DISTURBED:
        notes.append(f"the hypervisor took {cpu['steal']} cores (steal time): figures may be disturbed")
    if cpu["other"] >= DISTURBED:
        notes.append(f"other processes used {cpu['other']} cores during the run: figures may be disturbed")
    if result["offered_rate"] and result["achieved_rate"] < 0.95 * result["offered_rate"]:
        notes.append(f"achieved {result['achieved_rate']}/s of {result['offered_rate']}/s offered")
    notes.append(_closest_to_saturation(cpu, cores))
    return notes


def _closest_to_saturation(cpu: dict[str, Any], cores: int) -> str:
    """Which resource ran closest to its limit: an event-loop process (1 core each) or the machine."""
    loads = {f"{name[:-5]}'s main process": value for name, value in cpu.items() if name.endswith(".main")}
    for i, value in enumerate(cpu["generator_per_process"]):
        if value is not None:
            loads[f"generator process {i}"] = value
    loads["the machine"] = cpu["machine_busy"] / cores
    name, share = max(loads.items(), key=lambda item: item[1])
    return f"closest to saturation: {name} at {share:.0%} of {'its cores' if name == 'the machine' else 'a core'}"


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    d = RunSettings()
    parser.add_argument("--url", default="", help="server base URL (default http://127.0.0.1:$GATEWAY_PORT or :8080)")
    parser.add_argument("--scenario", default=d.scenario, help="scenario name in loadtests/scenarios or a YAML path")
    parser.add_argument("--mode", default=d.mode, choices=["constant", "poisson", "closed"])
    parser.add_argument("--rate", type=float, help="offered requests/s (open loop)")
    parser.add_argument("--duration", type=float, default=d.duration, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=d.warmup, help="seconds sent but not measured")
    parser.add_argument("--connections", type=int, default=d.connections, help="over all processes")
    parser.add_argument("--processes", type=int, default=d.processes, help="generator processes")
    parser.add_argument("--timeout", type=float, default=d.timeout, help="per request, seconds")
    parser.add_argument("--max-requests", type=int, default=d.max_requests)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--bucket", type=float, default=d.bucket_s, help="timeline resolution, seconds")
    parser.add_argument("--label", default="")


def settings_from(args: argparse.Namespace) -> RunSettings:
    return RunSettings(url=args.url, scenario=args.scenario, mode=args.mode, rate=args.rate,
                       duration=args.duration, warmup=args.warmup, connections=args.connections,
                       processes=args.processes, timeout=args.timeout, seed=args.seed,
                       max_requests=args.max_requests, bucket_s=args.bucket, label=args.label)


def main(argv: list[str] | None = None) -> int:
    from loadtests import report, search

    parser = argparse.ArgumentParser(prog="python -m loadtests.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--server-pid", type=int, help="report this process tree's CPU as the server's")
    parser.add_argument("--out", help="write the JSON report here (and a PNG beside it with --search)")
    search.add_search_arguments(parser)
    args = parser.parse_args(argv)
    settings = settings_from(args)
    try:  # a search chooses the rates itself; validate the rest with a stand-in rate
        (replace(settings, rate=settings.rate or 1.0) if args.search else settings).validated()
    except ValueError as exc:
        parser.error(str(exc))
    watch = {"server": args.server_pid} if args.server_pid else {}
    if args.search:
        outcome = search.run_search(settings, search.criteria_from(args), watch=watch)
        print(report.format_search(outcome))
        if args.out:
            report.write_json(args.out, outcome)
            report.plot_searches({settings.label or "server": outcome}, report.png_beside(args.out))
    else:
        outcome = execute(settings, watch=watch)
        print(report.format_run(outcome))
        if args.out:
            report.write_json(args.out, outcome)
    return 0


if __name__ == "__main__":
    sys.exit(main())
