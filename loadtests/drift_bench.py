"""Drift consumer throughput: fill a topic with N scoring events, then time consumers draining it.

    python -m loadtests.drift_bench --events 1000000 --consumers 1 2 --repeats 3

Events are the gateway's own records (`scoring_event`, real ONNX predictions of both demo
versions, as a shadow deployment logs them), built once as templates and replayed with fresh
event ids and timestamps, written to the topic by kcat (lz4, the gateway's compression). Each
consumer is a separate process running the real DriftConsumer (transactional publish + commit)
in one consumer group; it stops when its partitions are drained. Per run we report events/s
over wall-clock time and events per CPU second of the consumer processes (user + system).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from loadtests import host

if TYPE_CHECKING:
    from gateway.events.spool import WireRecord

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = 2000
# Headers left out by --minimal-headers (to measure what the Kafka client's header work costs).
NOT_MINIMAL = ("ce_id", "ce_time", "model_version")


def kcat_headers(template: WireRecord, minimal: bool = False) -> list[str]:
    """The headers the gateway wrote on a template record, as kcat `-H key=value` arguments; kcat
    sets one value for all records, which costs the consumer the same as per-record values."""
    return [f"{key}={value.decode()}" for key, value in template.headers if not (minimal and key in NOT_MINIMAL)]


def build_templates(repository: Path, n: int, seed: int = 0) -> list[WireRecord]:
    """Champion and challenger events for n/2 requests: 90% training-range rows, 10% drifted."""
    import onnxruntime as ort

    from gateway.events.records import scoring_event
    from gateway.models.demo import sample_wines

    rng = np.random.default_rng(seed)
    rows = np.where(rng.random((n // 2, 1)) < 0.9, sample_wines("train", n // 2, seed=seed),
                    sample_wines("drift", n // 2, seed=seed + 1))
    sessions = {v: ort.InferenceSession(str(repository / "wine" / v / "model.onnx"), providers=["CPUExecutionProvider"])
                for v in ("1", "2")}
    out = []
    for i, x in enumerate(rows):
        x = x[None, :]
        for version, role in (("1", "champion"), ("2", "challenger")):
            label, proba = sessions[version].run(None, {"input": x})
            if version == "1":
                served_label = label
            fields = {"ts_ms": 1_764_000_000_000 + i, "request_id": f"{i:032x}", "model_name": "wine",
                      "model_version": version, "role": role, "route": "shadow", "arm": version,
                      "reason": "shadow", "served": role == "champion", "status": "ok", "error": None,
                      "action": {"model_version": "1", "outputs": {"label": served_label}}, "latency_ms": 0.4,
                      "gateway_instance": "bench", "sample_rate": 1.0}
            arrays = {"inputs/input": x, "outputs/label": label, "outputs/probabilities": proba}
            out.append(scoring_event(fields, arrays))
    return out


def write_events(path: Path, templates: list[bytes], n: int, t0_ms: int) -> None:
    """`key<TAB>value` lines for kcat: template i % len, with its own event id and event time."""
    with path.open("wb", buffering=1 << 22) as f:
        spans = []
        for t in templates:
            record = json.loads(t)
            id_at = t.index(record["event_id"].encode())
            ts_at = t.index(f'"ts_ms":{record["ts_ms"]}'.encode()) + len('"ts_ms":')
            spans.append((bytearray(t), id_at, ts_at, len(str(record["ts_ms"]))))
        for i in range(n):
            buf, id_at, ts_at, ts_len = spans[i % len(spans)]
            buf[id_at:id_at + 32] = f"{i:032x}".encode()
            buf[ts_at:ts_at + ts_len] = str(t0_ms + i // 100).encode().rjust(ts_len, b"0")  # 100k events/s
            f.write(b"%032x\t" % (i // 2))
            f.write(buf)
            f.write(b"\n")


def produce(bootstrap: str, topic: str, partitions: int, path: Path, headers: list[str]) -> None:
    from gateway.events.topics import ensure_topics

    async def create() -> None:
        await ensure_topics(bootstrap, [topic], partitions, replication_factor=1)
        await ensure_topics(bootstrap, [f"{topic}.drift"], 1, replication_factor=1)

    asyncio.run(create())
    headers = [a for h in headers for a in ("-H", h)]
    subprocess.run(["kcat", "-P", "-b", bootstrap, "-t", topic, "-z", "lz4", "-K", "\t", "-l",
                    "-X", "queue.buffering.max.messages=1000000", "-X", "linger.ms=50", "-X", "batch.size=1000000",
                    *headers, str(path)], check=True)


async def _drain_raw(settings, stats_path: Path) -> None:
    """The Kafka client alone: a bare aiokafka consumer touching each record's value."""
    from aiokafka import AIOKafkaConsumer

    from gateway.drift import fetch
    from gateway.drift.consumer import GC_THRESHOLD

    fetch.install()  # as the drift consumer does
    consumer = AIOKafkaConsumer(settings.events_topic, bootstrap_servers=settings.bootstrap_servers,
                                group_id=None, auto_offset_reset="earliest", enable_auto_commit=False,
                                fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=16 * 1024 * 1024)
    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    await consumer.start()
    import gc
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 50, 50)  # as the drift consumer does
    ends = await consumer.end_offsets(list(consumer.assignment()))
    total, n, first = sum(ends.values()), 0, None
    while n < total:
        for records in (await consumer.getmany(timeout_ms=500, max_records=settings.max_batch)).values():
            first = first or time.perf_counter()
            n += len(records)
            for r in records:
                r.value
    wall1, cpu1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    await consumer.stop()
    stats_path.write_text(json.dumps({
        "events": n, "reports": 0, "cpu_s": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
        "wall_s": wall1 - wall0, "busy_s": wall1 - (first or wall0), "skipped": {}}))


async def _drain(settings, stats_path: Path, profile: str | None, share: int) -> None:
    """One consumer process: run the real DriftConsumer until its partitions are drained."""
    from gateway.drift.consumer import DriftConsumer

    consumer = DriftConsumer(settings)
    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    await consumer.start()
    stop = asyncio.Event()
    first: list[float] = []

    async def watch() -> None:
        kafka = consumer._consumer
        while not stop.is_set():
            await asyncio.sleep(0.05)
            if consumer.metrics.events and not first:
                first.append(time.perf_counter())
            assigned = kafka.assignment()
            if not assigned or not consumer.metrics.events:
                continue
            ends = await kafka.end_offsets(list(assigned))
            if all(consumer.monitor.partitions.get(tp.partition) is not None
                   and consumer.monitor.partitions[tp.partition].position == ends[tp] for tp in assigned):
                stop.set()

    # Steady state of the group: start once this member holds its share of the partitions
    # (records prefetched meanwhile wait in the fetcher, unprocessed).
    deadline = time.perf_counter() + 30
    while time.perf_counter() < deadline:
        held = len(consumer._consumer.assignment())
        if 0 < held <= share:
            break
        await asyncio.sleep(0.05)
    watcher = asyncio.ensure_future(watch())
    if profile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    await consumer.run(stop)
    if profile:
        profiler.disable()
        profiler.dump_stats(profile)
    wall1 = time.perf_counter()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    await watcher
    await consumer.stop()
    stats_path.write_text(json.dumps({
        "events": consumer.metrics.events, "reports": consumer.reports_published,
        "cpu_s": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
        "wall_s": wall1 - wall0, "busy_s": wall1 - (first[0] if first else wall0),
        "skipped": dict(consumer.skipped),
    }))


def topic_size(bootstrap: str, topic: str) -> tuple[int, int]:
    """(events, partitions) in the topic."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def size() -> tuple[int, int]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap)  # subscribing fetches its metadata
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            ends = await consumer.end_offsets(partitions)
            return sum(ends.values()), len(partitions)
        finally:
            await consumer.stop()

    return asyncio.run(size())


def consume(bootstrap: str, topic: str, repository: Path, consumers: int, window_size: int,
            workdir: Path, profile: bool, raw: bool = False) -> dict:
    group = f"bench-{uuid.uuid4().hex[:8]}"
    events, partitions = topic_size(bootstrap, topic)
    procs = []
    before = host.sample_cpu({})
    wall0 = time.perf_counter()
    for i in range(consumers):
        args = [sys.executable, "-m", "loadtests.drift_bench", "--worker", str(workdir / f"stats-{group}-{i}.json"),
                "--bootstrap", bootstrap, "--topic", topic, "--repository", str(repository),
                "--group", group, "--window-size", str(window_size), "--share", str(-(-partitions // consumers))]
        if profile:
            args += ["--profile", str(workdir / f"profile-{i}.pstats")]
        if raw:
            args.append("--raw")
        procs.append(subprocess.Popen(args, cwd=ROOT))
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"consumer process failed ({p.returncode})")
    elapsed = time.perf_counter() - wall0
    machine_busy = host.cpu_between(before, host.sample_cpu({}), elapsed)["machine_busy"] * elapsed
    stats = [json.loads((workdir / f"stats-{group}-{i}.json").read_text()) for i in range(consumers)]
    read = sum(s["events"] for s in stats)  # more than `events` if a rebalance made a member re-read
    cpu = sum(s["cpu_s"] for s in stats)
    busy = max(s["busy_s"] for s in stats)
    return {"consumers": consumers, "events": events, "records_read": read, "reports": sum(s["reports"] for s in stats),
            "cpu_s": cpu, "busy_s": busy, "events_per_cpu_s": events / cpu, "events_per_s": events / busy,
            # Cores the rest of the machine kept busy meanwhile (other jobs, Kafka, this script).
            "other_cores": max(0.0, machine_busy - cpu) / elapsed,
            "skipped": [s["skipped"] for s in stats]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.drift_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--consumers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window-size", type=int, default=50_000, help="rows per window (count), per version and partition")
    parser.add_argument("--repository", type=Path, default=None, help="demo models (built into a temp dir if unset)")
    parser.add_argument("--topic", default=None, help="drain this already filled topic instead of producing one")
    parser.add_argument("--minimal-headers", action="store_true",
                        help="records with 6 of the gateway's 9 headers (shows the client's per-header cost)")
    parser.add_argument("--raw", action="store_true",
                        help="time a bare aiokafka consumer instead of the drift consumer (the client's own cost)")
    parser.add_argument("--quiet-wait", type=float, default=120.0,
                        help="seconds to wait at most for an idle machine before each run")
    parser.add_argument("--profile", default=None, help="write cProfile stats of the consumer(s)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--group", help=argparse.SUPPRESS)
    parser.add_argument("--share", type=int, default=1 << 30, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        from gateway.drift.consumer import DriftSettings

        settings = DriftSettings(bootstrap_servers=args.bootstrap, events_topic=args.topic,
                                 reports_topic=f"{args.topic}.drift", group_id=args.group,
                                 model_repository=args.repository, window_size=args.window_size,
                                 classifier_on_drift=False, poll_timeout_ms=200)
        if args.raw:
            asyncio.run(_drain_raw(settings, args.worker))
        else:
            asyncio.run(_drain(settings, args.worker, args.profile, args.share))
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="drift-bench-"))
    repository = args.repository
    if repository is None:
        from gateway.models.demo import build_demo_repository

        repository = workdir / "models"
        build_demo_repository(repository)
    topic = args.topic
    if topic is None:  # a fresh topic; --topic reuses one a previous run filled
        topic = f"bench.drift.{uuid.uuid4().hex[:8]}"
        t = time.perf_counter()
        templates = build_templates(repository, TEMPLATES)
        events_file = workdir / "events.txt"
        write_events(events_file, [t.value for t in templates], args.events, t0_ms=1_764_000_000_000)
        produce(args.bootstrap, topic, args.partitions, events_file, kcat_headers(templates[0], args.minimal_headers))
        events_file.unlink()
        print(f"produced {args.events:,} events ({len(templates[0].value)} bytes each) into {topic} "
              f"({args.partitions} partitions) in {time.perf_counter() - t:.1f} s", flush=True)
    results = []
    for consumers in args.consumers:
        for repeat in range(args.repeats):
            quiet = host.wait_for_quiet(max_wait_s=args.quiet_wait)
            waited, before = quiet["waited_s"], quiet["busy_cores"]
            speed = host.python_speed()
            r = consume(args.bootstrap, topic, repository, consumers, args.window_size, workdir,
                        bool(args.profile) and repeat == 0, args.raw)
            r["waited_for_quiet_s"], r["busy_cores_before"], r["python_speed_ms"] = waited, before, speed
            results.append(r)
            print(f"consumers={consumers} run={repeat + 1}: {r['events']:,} events ({r['records_read']:,} read), {r['reports']} reports, "
                  f"{r['events_per_s']:,.0f} events/s wall, {r['events_per_cpu_s']:,.0f} events per CPU second "
                  f"(cpu {r['cpu_s']:.2f} s, busy {r['busy_s']:.2f} s; other load {r['other_cores']:.2f} cores, "
                  f"{r['busy_cores_before']:.2f} before, after waiting {r['waited_for_quiet_s']:.0f} s; "
                  f"host speed probe {speed} ms)",
                  flush=True)
    summary = {}
    for consumers in args.consumers:
        mine = [r for r in results if r["consumers"] == consumers]
        for metric in ("events_per_s", "events_per_cpu_s"):
            values = [r[metric] for r in mine]
            summary[f"{consumers}:{metric}"] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
            print(f"consumers={consumers} {metric}: median {statistics.median(values):,.0f} "
                  f"(min {min(values):,.0f}, max {max(values):,.0f}, {len(values)} runs)")
    if args.json:
        args.json.write_text(json.dumps({"events": args.events, "partitions": args.partitions,
                                         "window_size": args.window_size, "runs": results, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
