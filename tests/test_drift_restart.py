"""Killing the drift consumer (SIGKILL) mid-stream and starting it again yields exactly the window
reports and alerts of an uninterrupted run: same ids, same contents, none missing, none twice.

Against the real broker: three partitions, two model versions interleaved on each, training-range
traffic turning into low-alcohol traffic. The expected records are computed by DriftMonitor over
the same partitions offline; both the uninterrupted `gateway drift` process and the killed and
restarted one must publish exactly those.
"""
from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid

import numpy as np
import orjson
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from gateway.drift.consumer import DriftSettings
from gateway.drift.monitor import DriftMonitor
from gateway.drift.reference import ReferenceStore
from gateway.events.topics import ensure_topics
from gateway.models.demo import sample_wines
from gateway.models.repository import ModelRepository
from tests.conftest import ROOT
from tests.test_drift_wine import wine_events

pytestmark = pytest.mark.integration

PARTITIONS = 3
WINDOWS = {
    "count-sliding": {"window_by": "count", "window_size": 40, "window_slide": 20},
    "time-tumbling-late": {"window_by": "time", "window_size": 2, "lateness_seconds": 0.5},
}


def _traffic(repository, seed: int) -> list[tuple[int, bytes]]:
    """(partition, value): both versions, in-range then drifted, round-robin over partitions.
    Event time advances 50 ms per event; every 40th event arrives 3 s late (beyond lateness)."""
    values = []
    for version in ("1", "2"):
        rows = np.concatenate([sample_wines("train", 600, seed=seed), sample_wines("drift", 600, seed=seed + 1)])
        values.append(wine_events(repository, version, rows))
    events = []
    for i, (a, b) in enumerate(zip(*values)):
        for j, value in enumerate((a, b)):
            record = orjson.loads(value)
            n = 2 * i + j
            record["ts_ms"] = 1_764_000_000_000 + 50 * n - (3000 if n % 40 == 39 else 0)
            events.append((n % PARTITIONS, orjson.dumps(record)))
    return events


async def create_events_topic(bootstrap: str, kind: str) -> str:
    topic = f"test.{kind}.{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [topic], PARTITIONS, replication_factor=1)
    return topic


async def _produce(bootstrap: str, topic: str, events: list[tuple[int, bytes]]) -> list[tuple[int, int, bytes]]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent = [await producer.send(topic, value, partition=p) for p, value in events]
        return [(m.partition, m.offset, value) for m, (_, value) in zip([await f for f in sent], events)]
    finally:
        await producer.stop()


def _expected(settings: DriftSettings, produced: list[tuple[int, int, bytes]]) -> tuple[DriftMonitor, list[dict]]:
    monitor = DriftMonitor(settings, ReferenceStore(ModelRepository(settings.model_repository)))
    out = []
    for p in range(PARTITIONS):
        mine = [ConsumerRecord("t", p, o, 0, 0, None, v, None, len(v), 0, []) for q, o, v in produced if q == p]
        for start in range(0, len(mine), 97):  # batch boundaries must not matter either
            monitor.process(p, mine[start:start + 97])
        for item in monitor.ready():
            out.extend(item.records())
            monitor.published(item)
    return monitor, out


def _comparable(records: list[dict]) -> dict[tuple[str, str], dict]:
    """By (type, window id), without the wall-clock `created`."""
    keyed = {}
    for r in records:
        key = (r["type"], r["window_id"])
        assert key not in keyed, f"published twice: {key}"
        keyed[key] = {k: v for k, v in r.items() if k != "created"}
    return keyed


async def read_committed(bootstrap: str, topic: str, expected: int, timeout: float) -> list[dict]:
    """The topic's committed records from the start, once `expected` arrived, plus any duplicates
    that follow within a second."""
    reader = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                              isolation_level="read_committed")
    await reader.start()
    out: list[dict] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(out) < expected and loop.time() < deadline:
            for messages in (await reader.getmany(timeout_ms=300)).values():
                out.extend(orjson.loads(m.value) for m in messages)
        for messages in (await reader.getmany(timeout_ms=1000)).values():
            out.extend(orjson.loads(m.value) for m in messages)
    finally:
        await reader.stop()
    return out


def _start(config_path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gateway", "--log-level", "warning", "drift", "--config",
                             str(config_path)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.parametrize("windows", list(WINDOWS))
async def test_sigkill_and_restart_publish_the_same_reports_as_an_uninterrupted_run(
        kafka_bootstrap, demo_repository, tmp_path, windows):
    events_topic = await create_events_topic(kafka_bootstrap, "restart")
    drift = {**WINDOWS[windows], "alpha": 0.01, "classifier_on_drift": False, "max_batch": 100,
             "poll_timeout_ms": 100}
    settings = DriftSettings(model_repository=demo_repository, **drift)
    traffic = _traffic(demo_repository, seed=5)
    half = len(traffic) // 2
    produced = await _produce(kafka_bootstrap, events_topic, traffic[:half])

    def config(name: str):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({
            "model_repository": str(demo_repository),
            "models": {"wine": {"versions": {"1": {}, "2": {}}, "route": {"policy": "shadow", "champion": "1"}}},
            "kafka": {"bootstrap_servers": kafka_bootstrap,
                      "topics": {"events": events_topic, "drift": f"{events_topic}.{name}"}},
            "drift": {**drift, "group_id": f"{events_topic}.{name}"},
        }))
        return path

    steady, killed = config("steady"), config("killed")
    steady_process = _start(steady)
    victim = _start(killed)
    try:
        # Kill it once it has published a few reports of the first half: open windows, panes kept
        # for sliding windows and previous-window comparisons, and uncommitted events are lost.
        first = await read_committed(kafka_bootstrap, f"{events_topic}.killed", expected=4, timeout=60)
        assert len(first) >= 4, victim.stderr.read().decode()[-2000:] if victim.poll() is not None else ""
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        produced += await _produce(kafka_bootstrap, events_topic, traffic[half:])
        victim = _start(killed)
        offline, records = _expected(settings, produced)
        expected = _comparable(records)
        assert len(expected) > 20 and any(t == "drift_alert" for t, _ in expected)
        if windows.startswith("time"):
            assert offline.skipped["late"] > 0  # the late events were dropped the same way everywhere
        steady_out = await read_committed(kafka_bootstrap, f"{events_topic}.steady", expected=len(expected), timeout=120)
        killed_out = await read_committed(kafka_bootstrap, f"{events_topic}.killed", expected=len(expected), timeout=120)
    finally:
        for process in (steady_process, victim):
            process.send_signal(signal.SIGTERM)
        for process in (steady_process, victim):
            process.wait(timeout=30)
    assert _comparable(steady_out) == expected
    assert _comparable(killed_out) == expected
