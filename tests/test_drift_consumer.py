"""The drift consumer against a real Kafka broker: reports, drift on the wine example, commits.

Events follow docs/events.md (flat FP32 data, serialised with orjson as the gateway logs them)
and carry the demo model's real predictions; the events topic has 3 partitions.
"""
from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from gateway.drift.consumer import DriftConsumer, DriftSettings
from gateway.events.records import scoring_event, to_wire
from gateway.models.demo import sample_wines
from gateway.models.repository import ModelRepository

pytestmark = pytest.mark.integration

PARTITIONS = 3
ROWS_PER_EVENT = 5
WINDOW_ROWS = 200
EVENTS_PER_WINDOW = WINDOW_ROWS // ROWS_PER_EVENT


def _record(request_id: str, status: str, inputs: np.ndarray, outputs: dict[str, np.ndarray]) -> bytes:
    """The record exactly as the gateway's event shipper builds it (gateway.events.records)."""
    arrays = {"inputs/input": inputs, **{f"outputs/{n}": a for n, a in outputs.items()}}
    if outputs:
        arrays["action/label"] = outputs["label"]
    meta = {"ts": time.time(), "request_id": request_id, "model_name": "wine", "model_version": "1",
            "role": "champion", "route": "shadow", "served": True, "status": status,
            "error": None if status == "ok" else "boom", "latency_ms": 0.4, "instance": "test",
            "sample_rate": 1.0, "action_version": "1" if outputs else None}
    return to_wire(scoring_event(meta, arrays), "scoring.events").value


def _events(session: ort.InferenceSession, rows: np.ndarray, tag: str) -> list[tuple[bytes, bytes]]:
    """(key, value) records of the champion wine/1 scoring `rows`, ROWS_PER_EVENT per request."""
    messages = []
    for i in range(0, len(rows), ROWS_PER_EVENT):
        x = rows[i:i + ROWS_PER_EVENT]
        label, proba = session.run(None, {"input": x})
        request_id = f"{tag}-{i // ROWS_PER_EVENT}"
        record = _record(request_id, "ok", x, {"label": label, "probabilities": proba})
        messages.append((request_id.encode(), record))
    return messages


async def _create_topics(bootstrap: str, *names: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, num_partitions=PARTITIONS, replication_factor=1) for n in names])
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> list[tuple[int, int]]:
    """The (partition, offset) each message landed at, in order."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent = [await producer.send(topic, value=value, key=key) for key, value in messages]
        return [(m.partition, m.offset) for m in [await f for f in sent]]
    finally:
        await producer.stop()


async def _run_drift_consumer(settings: DriftSettings, reports: int) -> DriftConsumer:
    consumer = DriftConsumer(settings)
    await consumer.start()
    try:
        await consumer.run(max_reports=reports)
    finally:
        await consumer.stop()
    return consumer


async def _read_reports(bootstrap: str, topic: str, n: int) -> list[tuple[bytes, dict]]:
    reader = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await reader.start()
    reports: list[tuple[bytes, dict]] = []
    try:
        while len(reports) < n:
            for records in (await reader.getmany(timeout_ms=500)).values():
                reports.extend((r.key, orjson.loads(r.value)) for r in records)
    finally:
        await reader.stop()
    return reports


async def _read_uncommitted(bootstrap: str, topic: str, group: str) -> set[tuple[int, int]]:
    """What a new member of `group` receives: everything after the group's committed offsets."""
    member = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                              enable_auto_commit=False, auto_offset_reset="earliest")
    await member.start()
    received: set[tuple[int, int]] = set()
    try:
        while True:
            for records in (await member.getmany(timeout_ms=500)).values():
                received.update((r.partition, r.offset) for r in records)
            assigned = member.assignment()
            if len(assigned) == PARTITIONS:
                ends = await member.end_offsets(list(assigned))
                if all([await member.position(tp) >= ends[tp] for tp in assigned]):
                    return received
    finally:
        await member.stop()


async def test_drift_consumer_reports_drift_and_commits_behind_reports(
    kafka_bootstrap, demo_repository, unique_topic
):
    events_topic, reports_topic, group = unique_topic, f"{unique_topic}.drift", f"{unique_topic}.group"
    await _create_topics(kafka_bootstrap, events_topic, reports_topic)
    model = ModelRepository(demo_repository).load("wine", "1")
    session = ort.InferenceSession(str(model.model_file), providers=["CPUExecutionProvider"])
    settings = DriftSettings(
        bootstrap_servers=kafka_bootstrap, events_topic=events_topic, reports_topic=reports_topic,
        group_id=group, model_repository=demo_repository, window_rows=WINDOW_ROWS,
        window_seconds=3600.0, poll_timeout_ms=200,
    )

    # Phase 1: a bad record and a failed call first, then two windows of training-range traffic.
    # Every valid event must be read to fill two windows, so the junk is read (and skipped) too.
    junk = [(b"junk", b"{not json"), (b"failed", _record("failed", "error", sample_wines("train", 1), {}))]
    train = _events(session, sample_wines("train", 2 * WINDOW_ROWS, seed=1), "train")
    train_positions = (await _produce(kafka_bootstrap, events_topic, junk + train))[len(junk):]
    first = await _run_drift_consumer(settings, reports=2)
    assert dict(first.skipped) == {"bad_json": 1, "status_error": 1}

    # Phase 2, read by a new member of the group: two drifted windows and half a window more.
    drift = _events(session, sample_wines("drift", 2 * WINDOW_ROWS + WINDOW_ROWS // 2, seed=2), "drift")
    drift_positions = await _produce(kafka_bootstrap, events_topic, drift)
    second = await _run_drift_consumer(settings, reports=2)
    assert second.skipped == {}

    reports = await _read_reports(kafka_bootstrap, reports_topic, 4)
    assert [key for key, _ in reports] == [b"wine/1"] * 4
    bodies = [body for _, body in reports]
    for body in bodies:
        assert body["schema_version"] == 1 and body["kind"] == "drift_report"
        assert body["window"]["n_rows"] == WINDOW_ROWS and body["window"]["n_events"] == EVENTS_PER_WINDOW
        assert body["window"]["closed_by"] == "count" and body["window_id"].startswith("wine/1/")
    assert len({b["window_id"] for b in bodies}) == 4
    assert [b["drift"] for b in bodies] == [False, False, True, True]
    assert all(b["drifted_features"] == [] for b in bodies[:2])
    for body in bodies[2:]:
        assert body["drifted_features"][0] == "alcohol"  # the largest effect: a disjoint range
        assert body["features"]["alcohol"]["statistic"] == 1.0
    assert {p for p, _ in train_positions} == set(range(PARTITIONS))

    # The first member read exactly the training events and the second exactly the drifted
    # ones: nothing reported was read twice. Per partition, a window covers a contiguous run of
    # this single model's events, so "reported" is "at or below a report's last offset".
    last_reported: dict[int, int] = {}
    for body in bodies:
        for partition, (_, last) in body["window"]["offsets"].items():
            last_reported[int(partition)] = max(last, last_reported.get(int(partition), -1))
    valid = set(train_positions) | set(drift_positions)
    reported = {(p, o) for p, o in valid if o <= last_reported.get(p, -1)}
    assert len(reported) == 4 * EVENTS_PER_WINDOW
    assert set(train_positions) <= reported
    leftover = valid - reported
    assert len(leftover) == len(drift) - 2 * EVENTS_PER_WINDOW

    # Committed offsets: a new member gets the leftover (still in an open window, or never
    # read) and nothing that was reported.
    received = await _read_uncommitted(kafka_bootstrap, events_topic, group)
    assert received & valid == leftover

    # A restarted drift consumer rebuilds that window from the leftover plus new traffic.
    more = _events(session, sample_wines("drift", WINDOW_ROWS // 2, seed=3), "more")
    more_positions = await _produce(kafka_bootstrap, events_topic, more)
    third = await _run_drift_consumer(settings, reports=1)
    [(_, rebuilt)] = (await _read_reports(kafka_bootstrap, reports_topic, 5))[4:]
    assert third.reports_published == 1
    assert rebuilt["window"]["n_events"] == EVENTS_PER_WINDOW and rebuilt["drift"]
    expected = leftover | set(more_positions)
    assert rebuilt["window"]["offsets"] == {
        str(p): [min(o for q, o in expected if q == p), max(o for q, o in expected if q == p)]
        for p in sorted({q for q, _ in expected})
    }
    assert await _read_uncommitted(kafka_bootstrap, events_topic, group) == set()
