"""The book's drift example end to end: gateway -> scoring.events -> `gateway drift` -> scoring.drift."""
from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from gateway.models.demo import sample_wines
from tests.conftest import ROOT, gateway_config
from tests.test_gateway_e2e import infer_body, post_all

pytestmark = pytest.mark.integration


async def collect_reports(consumer: AIOKafkaConsumer, reports: list[dict], expected: int, timeout: float = 90) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(reports) < expected and loop.time() < deadline:
        for messages in (await consumer.getmany(timeout_ms=500)).values():
            reports.extend(orjson.loads(m.value) for m in messages)


async def test_low_alcohol_traffic_drifts_on_alcohol_and_training_traffic_does_not(
        demo_repository, kafka_bootstrap, unique_topic, start_gateway, tmp_path):
    config = gateway_config(demo_repository, kafka_bootstrap, unique_topic)
    drift_topic = f"{unique_topic}.drift"
    config["kafka"]["topics"]["drift"] = drift_topic
    config["drift"] = {"group_id": f"drift-{uuid.uuid4().hex[:8]}", "window_rows": 200, "window_seconds": 600}
    gateway = start_gateway(config)
    log = (tmp_path / "drift.log").open("wb")
    drift = subprocess.Popen([sys.executable, "-m", "gateway", "drift", "--config", str(gateway.config_path)],
                             cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    reports_consumer = AIOKafkaConsumer(drift_topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    await reports_consumer.start()
    reports: list[dict] = []
    try:
        url = f"{gateway.url}/v2/models/wine/infer"
        # 400 training-range rows: two windows per model version (champion and challenger) ...
        answers = await post_all(url, [infer_body(sample_wines("train", 1, seed=i), f"in-{i}") for i in range(400)])
        assert all(s == 200 for s, _ in answers)
        await collect_reports(reports_consumer, reports, expected=4)
        assert len(reports) == 4, (tmp_path / "drift.log").read_text()[-3000:]
        # ... then 400 low-alcohol rows: two more windows each.
        answers = await post_all(url, [infer_body(sample_wines("drift", 1, seed=i), f"out-{i}") for i in range(400)])
        assert all(s == 200 for s, _ in answers)
        await collect_reports(reports_consumer, reports, expected=8)
    finally:
        await reports_consumer.stop()
        drift.send_signal(signal.SIGTERM)
        drift.wait(timeout=30)
        log.close()
    assert drift.returncode == 0
    assert len(reports) == 8
    for version in ("1", "2"):
        mine = [r for r in reports if r["model_version"] == version]
        assert [r["window"]["n_rows"] for r in mine] == [200, 200, 200, 200]
        training, drifted = mine[:2], mine[2:]
        assert not any(r["drift"] for r in training), [(r["model_version"], r["predictions"]["probabilities[0]"]) for r in training]
        for report in drifted:
            assert report["drift"] and report["drifted_features"][0] == "alcohol", report["drifted_features"]
            alcohol = report["features"]["alcohol"]
            assert alcohol["drifted"] and alcohol["p_value"] < 1e-6
