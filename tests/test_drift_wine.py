"""The book's example on the demo models, without Kafka: low-alcohol wines drift on alcohol (and the
domain classifier says so), while 50 windows of training-range wines raise nothing.

Events are built with the gateway's own `scoring_event` and carry the ONNX models'
real predictions; sampling is seeded, so the verdicts are the same on every run.
"""
from __future__ import annotations

import time
from concurrent.futures import Future

import numpy as np
import onnxruntime as ort
import pytest
from aiokafka.structs import ConsumerRecord

from gateway.drift.classifier import domain_classifier
from gateway.drift.consumer import DriftSettings
from gateway.drift.monitor import DriftMonitor
from gateway.drift.reference import ReferenceStore
from gateway.events.records import scoring_event
from gateway.models.demo import sample_wines
from gateway.models.repository import ModelRepository

ROWS_PER_EVENT = 5


def inline_classifier(*args) -> Future:
    future: Future = Future()
    future.set_result(domain_classifier(*args))
    return future


def wine_events(repository, version: str, rows: np.ndarray, t0: float = 1_764_000_000.0) -> list[bytes]:
    """Scoring events of `version` as the gateway logs them, ROWS_PER_EVENT rows each."""
    session = ort.InferenceSession(str(ModelRepository(repository).load("wine", version).model_file),
                                   providers=["CPUExecutionProvider"])
    values = []
    for i in range(0, len(rows), ROWS_PER_EVENT):
        x = rows[i:i + ROWS_PER_EVENT]
        label, proba = session.run(None, {"input": x})
        fields = {"ts_ms": int((t0 + i / 100) * 1000), "request_id": f"r{i}", "model_name": "wine",
                  "model_version": version, "role": "champion", "route": "shadow", "arm": version, "reason": "shadow",
                  "served": True, "status": "ok", "error": None,
                  "action": {"model_version": version, "outputs": {"label": label}}, "latency_ms": 0.4,
                  "gateway_instance": "test", "sample_rate": 1.0}
        arrays = {"inputs/input": x, "outputs/label": label, "outputs/probabilities": proba}
        values.append(scoring_event(fields, arrays).value)
    return values


def as_records(values: list[bytes]) -> list[ConsumerRecord]:
    return [ConsumerRecord("scoring.events", 0, i, 0, 0, None, v, None, len(v), 0, []) for i, v in enumerate(values)]


def run(repository, values: list[bytes], **overrides) -> tuple[DriftMonitor, list[dict]]:
    settings = DriftSettings(model_repository=repository, **overrides)  # the defaults of config/demo.yaml
    monitor = DriftMonitor(settings, ReferenceStore(ModelRepository(repository)), inline_classifier)
    out = []
    batch = 1000
    for start in range(0, len(values), batch):
        monitor.process(0, as_records(values)[start:start + batch])
        for item in monitor.ready():
            out.extend(item.records())
            monitor.published(item)
    return monitor, out


@pytest.mark.parametrize("version", ["1", "2"])
def test_low_alcohol_traffic_drifts_on_alcohol_and_the_classifier_names_it(demo_repository, version):
    rows = np.concatenate([sample_wines("train", 200, seed=21), sample_wines("drift", 400, seed=22)])
    _, out = run(demo_repository, wine_events(demo_repository, version, rows))
    reports = [r for r in out if r["type"] == "drift_report"]
    assert [r["drift"] for r in reports] == [False, True, True]
    for report in reports[1:]:
        assert "alcohol" in report["drifted_features"][:3], report["drifted_features"]
        assert report["features"]["alcohol"]["p_value_corrected"] < 1e-6
        classifier = report["classifier"]  # runs on every drifted window (classifier_on_drift)
        assert classifier["auc"] > 0.9 and classifier["p_value"] <= 0.05
        assert "alcohol" in [f["feature"] for f in classifier["top_features"][:3]], classifier["top_features"]
    assert reports[0]["classifier"] is None
    [alert] = [r for r in out if r["type"] == "drift_alert"]
    assert alert["state"] == "drifting" and alert["window_id"] == reports[2]["window_id"]


def test_fifty_windows_of_training_range_traffic_raise_nothing(demo_repository):
    rows = sample_wines("train", 50 * 200, seed=2024)
    monitor, out = run(demo_repository, wine_events(demo_repository, "1", rows))
    reports = [r for r in out if r["type"] == "drift_report"]
    assert len(reports) == 50 and monitor.skipped == {}
    flagged = [(r["window_id"], r["drifted_features"], r["drifted_predictions"]) for r in reports if r["drift"]]
    assert flagged == []
    assert not [r for r in out if r["type"] == "drift_alert"]
    # Not vacuous: the same settings do see a one-standard-deviation shift in alcohol.
    shifted = rows[:200].copy()
    shifted[:, 0] += np.float32(rows[:, 0].std())
    _, out = run(demo_repository, wine_events(demo_repository, "1", shifted, t0=time.time()))
    assert out[0]["drift"] and out[0]["drifted_features"][0] == "alcohol"
