"""The book's drift example end to end: gateway -> scoring.events -> `gateway drift` -> scoring.drift.

Training-range wines, then low-alcohol wines, through the real gateway (champion and shadow
challenger). Windows are per version and partition; windows wholly before the switch must stay
quiet (no alert), windows wholly after it must drift on alcohol and raise an alert per version.
"""
from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from gateway.models.demo import sample_wines
from tests.conftest import ROOT, gateway_config
from tests.test_drift_restart import read_committed
from tests.test_gateway_e2e import infer_body, post_all

pytestmark = pytest.mark.integration


async def _end_offsets(bootstrap: str, topic: str, expected_events: int, timeout: float = 60) -> dict[int, int]:
    """Per partition end offsets, once the topic holds `expected_events` (the gateway ships asynchronously)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            ends = await consumer.end_offsets(partitions) if partitions else {}
            if sum(ends.values()) >= expected_events or loop.time() > deadline:
                return {tp.partition: offset for tp, offset in ends.items()}
            await asyncio.sleep(0.2)
    finally:
        await consumer.stop()


async def test_low_alcohol_traffic_drifts_on_alcohol_and_training_traffic_does_not(
        demo_repository, kafka_bootstrap, unique_topic, start_gateway, tmp_path):
    config = gateway_config(demo_repository, kafka_bootstrap, unique_topic)
    drift_topic = f"{unique_topic}.drift"
    config["kafka"]["topics"]["drift"] = drift_topic
    config["drift"] = {"group_id": f"drift-{uuid.uuid4().hex[:8]}", "window_size": 30,
                       "classifier_on_drift": False, "poll_timeout_ms": 200}
    gateway = start_gateway(config)
    log = (tmp_path / "drift.log").open("wb")
    drift = subprocess.Popen([sys.executable, "-m", "gateway", "drift", "--config", str(gateway.config_path)],
                             cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"{gateway.url}/v2/models/wine/infer"
        answers = await post_all(url, [infer_body(sample_wines("train", 1, seed=i), f"in-{i}") for i in range(400)])
        assert all(s == 200 for s, _ in answers)
        switch = await _end_offsets(kafka_bootstrap, unique_topic, expected_events=800)  # champion + shadow
        assert sum(switch.values()) == 800
        answers = await post_all(url, [infer_body(sample_wines("drift", 1, seed=i), f"out-{i}") for i in range(400)])
        assert all(s == 200 for s, _ in answers)
        await _end_offsets(kafka_bootstrap, unique_topic, expected_events=1600)
        # 1600 events over the partitions in 30-row windows: at least 40 full windows.
        records = await read_committed(kafka_bootstrap, drift_topic, expected=46, timeout=90)
    finally:
        drift.send_signal(signal.SIGTERM)
        drift.wait(timeout=30)
        log.close()
    assert drift.returncode == 0, (tmp_path / "drift.log").read_text()[-3000:]
    reports = [r for r in records if r["type"] == "drift_report"]
    before = [r for r in reports if r["window"]["offsets"][1] < switch[r["partition"]]]
    after = [r for r in reports if r["window"]["offsets"][0] >= switch[r["partition"]]]
    assert len(before) >= 10 and len(after) >= 10
    assert sum(r["drift"] for r in before) <= len(before) // 10, [r["drifted_features"] for r in before if r["drift"]]
    for report in after:
        assert report["drift"] and "alcohol" in report["drifted_features"][:3], report["drifted_features"]
        assert report["features"]["alcohol"]["p_value"] < 1e-6
    alerts = [r for r in records if r["type"] == "drift_alert"]
    assert {r["model_version"] for r in alerts if r["state"] == "drifting"} == {"1", "2"}
    first_alert = {(a["model_version"], a["partition"]): a["window_id"] for a in reversed(alerts)}
    for (version, partition), window_id in first_alert.items():
        [report] = [r for r in reports if r["window_id"] == window_id]
        assert report["window"]["offsets"][1] >= switch[partition]  # no alert on training traffic
