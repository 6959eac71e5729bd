"""Drift statistics, windows and event decoding, without Kafka, on a small synthetic reference."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import orjson
import pytest
from aiokafka.structs import ConsumerRecord
from scipy import stats

from gateway.drift import tests as drift_tests
from gateway.config import ConfigError, load_config
from gateway.drift.consumer import DriftConsumer, DriftSettings, settings_from_config
from gateway.drift.reference import NumericReference, ReferenceStore, ReferenceUnavailable
from gateway.drift.report import summary
from gateway.drift.window import EventRows, TumblingWindows
from gateway.models.repository import ModelRepository

FEATURES = ("a", "b", "c")
CLASSES = (3, 7)  # not 0..k-1, so "proba[7]" must map to column 1 through training.classes


def _numeric(values: np.ndarray) -> dict:
    return {"kind": "numeric", "sample": sorted(float(v) for v in values.astype(np.float32))}


@pytest.fixture(scope="module")
def repo_root(tmp_path_factory) -> Path:
    """A "toy/1" model: three N(0, 1) features, a 50/50 label, and a probability per class."""
    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("drift-models")
    directory = root / "toy" / "1"
    directory.mkdir(parents=True)
    meta = {
        "schema_version": 1, "name": "toy", "version": "1",
        "runtime": "python:toy:Toy", "file": "toy.py",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3], "feature_names": list(FEATURES)}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                    {"name": "proba", "datatype": "FP32", "shape": [-1, 2]}],
        "training": {"classes": list(CLASSES)},
        "reference": {
            "n": 500,
            "inputs": {f: _numeric(rng.normal(0.0, 1.0, 500)) for f in FEATURES},
            "outputs": {
                "label": {"kind": "categorical", "frequencies": {"3": 0.5, "7": 0.5}},
                "proba[3]": _numeric(rng.uniform(0.0, 0.5, 500)),
                "proba[7]": _numeric(rng.uniform(0.5, 1.0, 500)),
            },
        },
    }
    (directory / "model.json").write_bytes(orjson.dumps(meta))
    return root


def _settings(root: Path, **overrides) -> DriftSettings:
    return DriftSettings(model_repository=root, **{"window_rows": 200, "window_seconds": 60.0, **overrides})


def _event(rows: np.ndarray, ts_ms: int, *, version: str = "1", status: str = "ok",
           proba: np.ndarray | None = None, labels: np.ndarray | None = None) -> bytes:
    n = len(rows)
    rng = np.random.default_rng(n + ts_ms)
    labels = rng.choice(CLASSES, n) if labels is None else labels
    proba = np.column_stack([rng.uniform(0, 0.5, n), rng.uniform(0.5, 1, n)]) if proba is None else proba
    return orjson.dumps({
        "schema_version": 1, "event_id": f"e{ts_ms}", "ts_ms": ts_ms, "request_id": f"r{ts_ms}",
        "model_name": "toy", "model_version": version, "status": status,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [n, 3], "data": rows.astype(np.float32).ravel()}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [n], "data": labels},
                    {"name": "proba", "datatype": "FP32", "shape": [n, 2], "data": proba.astype(np.float32).ravel()}],
    }, option=orjson.OPT_SERIALIZE_NUMPY)


def _records(values: list[bytes], partition: int = 0, first_offset: int = 0) -> list[ConsumerRecord]:
    return [ConsumerRecord("events", partition, first_offset + i, 0, 0, None, v, None, len(v or b""), 0, [])
            for i, v in enumerate(values)]


def _rows(name: str, n: int, ts_ms: int, partition: int, offset: int) -> EventRows:
    return EventRows("toy", name, np.zeros((n, 3)), {}, ts_ms, partition, offset)


# --- statistics -------------------------------------------------------------------------------

def test_ks_equals_scipy_directly():
    rng = np.random.default_rng(7)
    sample = np.sort(rng.normal(0, 1, 300))
    for shift, n in ((0.0, 200), (0.4, 50), (1.5, 1000)):
        window = rng.normal(shift, 1, n)
        result = drift_tests.ks(window, sample)
        expected = stats.ks_2samp(window, sample, method="auto")
        assert result.statistic == pytest.approx(expected.statistic, abs=1e-12)
        assert result.p_value == pytest.approx(expected.pvalue, abs=1e-12, rel=1e-12)
        assert result.effect == result.statistic and result.n == n


def test_report_p_values_equal_scipy_on_the_window_columns(repo_root):
    rng = np.random.default_rng(3)
    consumer = DriftConsumer(_settings(repo_root))
    blocks = [rng.normal(0.3, 1.0, (20, 3)).astype(np.float32) for _ in range(10)]
    [report] = consumer.process(_records([_event(b, 1000 + i) for i, b in enumerate(blocks)]))
    window = np.concatenate(blocks).astype(np.float64)
    reference = consumer.references.get("toy", "1")
    for i, name in enumerate(FEATURES):
        expected = stats.ks_2samp(window[:, i], reference.features[name].sample, method="auto")
        got = report["features"][name]
        assert got["statistic"] == pytest.approx(expected.statistic, abs=1e-12)
        assert got["p_value"] == pytest.approx(expected.pvalue, abs=1e-12, rel=1e-12)
        assert got["p_value_corrected"] == pytest.approx(min(1.0, 3 * expected.pvalue), rel=1e-12)


def test_chi2_unseen_and_zero_frequency_categories_stay_finite():
    frequencies = {"0": 0.5, "1": 0.5, "2": 0.0}
    values = np.array([0] * 40 + [1] * 40 + [2] * 10 + [9] * 10)  # 2: frequency 0; 9: never seen
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = drift_tests.chi2(values, frequencies)
    assert np.isfinite(result.statistic) and np.isfinite(result.p_value)
    assert result.p_value < 1e-10
    assert result.effect == pytest.approx(0.2)  # 20% of the window fell outside the reference


def test_chi2_reference_like_labels_do_not_drift_and_keys_match_across_types():
    result = drift_tests.chi2(np.array([0.0] * 52 + [1.0] * 48), {"0": 0.5, "1": 0.5})
    assert result.p_value > 0.5 and result.effect == pytest.approx(0.02)
    single = drift_tests.chi2(np.array(["red"] * 5), {"red": 1.0})
    assert (single.statistic, single.p_value, single.effect) == (0.0, 1.0, 0.0)


def test_corrections():
    p = np.array([0.001, 0.02, 0.04, 0.3])
    assert np.allclose(drift_tests.correct(p, "bonferroni"), [0.004, 0.08, 0.16, 1.0])
    assert np.allclose(drift_tests.correct(p, "bh"), stats.false_discovery_control(p, method="bh"))
    assert drift_tests.correct(p, "none") is p


def test_min_effect_is_required_beside_significance():
    rng = np.random.default_rng(11)
    sample = np.sort(rng.normal(0, 1, 20_000))
    columns = {"x": rng.normal(0.06, 1, 20_000)}  # significant on this many rows, but tiny
    refs = {"x": NumericReference(sample)}
    [(_, result)] = drift_tests.evaluate_columns(columns, refs, drift_tests.Thresholds()).items()
    assert result.p_value_corrected < 0.01 and result.effect < 0.1 and not result.drifted


# --- windows ----------------------------------------------------------------------------------

def test_window_closes_by_count_with_whole_events():
    windows = TumblingWindows(size=10, max_seconds=60)
    closed = [w for i in range(5) for w in windows.update(_rows("1", 3, 1000 + i, 0, 100 + i))]
    [window] = closed
    assert (window.closed_by, window.n_rows, window.n_events) == ("count", 12, 4)
    assert window.window_id == "toy/1/0-100" and window.offsets == {0: (100, 103)}
    assert window.inputs().shape == (12, 3)
    [still_open] = windows.open_windows()
    assert still_open.window_id == "toy/1/0-104" and windows.open_offsets() == {0: 104}


def test_window_closes_by_event_time_and_idle_windows_expire():
    windows = TumblingWindows(size=1000, max_seconds=1.0)
    assert windows.update(_rows("1", 2, 10_000, 0, 0)) == []
    assert windows.update(_rows("2", 2, 10_400, 1, 0)) == []
    assert windows.update(_rows("1", 2, 10_999, 0, 1)) == []
    [by_time] = windows.update(_rows("1", 2, 11_000, 0, 2))  # 1 s after the window's first event
    assert (by_time.window_id, by_time.closed_by, by_time.n_rows) == ("toy/1/0-0", "time", 4)
    assert (by_time.start_ts_ms, by_time.end_ts_ms) == (10_000, 10_999)
    assert windows.expire() == []
    windows.update(_rows("1", 2, 11_400, 0, 3))  # the watermark passes version 2's deadline
    [idle] = windows.expire()
    assert (idle.window_id, idle.closed_by) == ("toy/2/1-0", "time")
    assert windows.open_offsets() == {0: 2}


# --- the consumer pipeline without Kafka ------------------------------------------------------

def test_reference_like_window_is_not_flagged_and_shifted_one_is(repo_root):
    rng = np.random.default_rng(5)
    consumer = DriftConsumer(_settings(repo_root))
    same = [_event(rng.normal(0, 1, (10, 3)), 1000 + i) for i in range(20)]
    shifted_rows = rng.normal(0, 1, (200, 3))
    shifted_rows[:, 1] += 1.0
    shifted = [_event(shifted_rows[i * 10:(i + 1) * 10], 2000 + i) for i in range(20)]
    quiet, loud = consumer.process(_records(same + shifted))
    assert not quiet["drift"] and quiet["drifted_features"] == [] and quiet["drifted_predictions"] == []
    assert loud["drift"] and loud["drifted_features"] == ["b"]
    assert loud["features"]["b"]["statistic"] > 0.3 and loud["features"]["b"]["drifted"]
    assert summary(loud).startswith(
        f"drift toy/1 window={loud['window_id']} n=200 closed_by=count drift=YES drifted=b(")


def test_prediction_columns_map_through_training_classes(repo_root):
    consumer = DriftConsumer(_settings(repo_root, window_rows=100))
    rng = np.random.default_rng(9)
    proba = np.column_stack([rng.uniform(0, 0.5, 100), rng.uniform(0.5, 1, 100)])
    labels = np.array([7] * 100)  # every prediction is class 7: label drift
    [report] = consumer.process(_records([_event(rng.normal(0, 1, (100, 3)), 1, proba=proba, labels=labels)]))
    assert not report["predictions"]["proba[3]"]["drifted"] and not report["predictions"]["proba[7]"]["drifted"]
    assert report["predictions"]["label"]["test"] == "chi2"
    assert report["drifted_predictions"] == ["label"] and report["drift"]
    assert report["predictions"]["label"]["effect"] == pytest.approx(0.5)


def test_malformed_and_unusable_events_are_counted_and_skipped(repo_root, caplog):
    consumer = DriftConsumer(_settings(repo_root, window_rows=4))
    good = np.zeros((2, 3))
    record = orjson.loads(_event(good, 5))
    bad_rows = {**record, "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]}
    ragged = {**record, "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [[1, 2, 3], [4]]}]}
    with_null = {**record, "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [[1, None, 3]]}]}
    short_out = {**record, "outputs": [{"name": "label", "datatype": "INT64", "shape": [1], "data": [3]}]}
    no_outputs = {**record, "outputs": None}  # still usable for input drift
    values = [
        b"{not json", b"[1, 2]", None,
        orjson.dumps({**record, "schema_version": 2}),
        _event(good, 1, status="error"), _event(good, 2, status="timeout"),
        orjson.dumps({**record, "status": "weird"}),
        orjson.dumps({k: v for k, v in record.items() if k != "ts_ms"}),
        _event(good, 3, version="9"), _event(good, 4, version="../1"),
        orjson.dumps(bad_rows), orjson.dumps(ragged), orjson.dumps(with_null), orjson.dumps(short_out),
        _event(good, 5), orjson.dumps(no_outputs),
    ]
    with caplog.at_level(logging.WARNING, logger="gateway.drift"):
        [report] = consumer.process(_records(values))
    assert dict(consumer.skipped) == {
        "bad_json": 3, "unsupported_schema_version": 1, "status_error": 1, "status_timeout": 1,
        "bad_status": 1, "missing_field": 1, "unknown_model_version": 2, "bad_row_length": 1,
        "bad_inputs": 1, "non_finite": 1, "bad_outputs": 1,
    }
    assert report["window"]["n_events"] == 2 and report["window"]["offsets"] == {"0": [14, 15]}
    assert report["predictions"]["label"]["n"] == 2  # the event without outputs adds inputs only
    assert consumer.commit_offsets() == {0: len(values)}
    bad_json_warnings = [r for r in caplog.records if "bad_json" in r.getMessage()]
    assert len(bad_json_warnings) == 1  # rate-limited: the other two are held back
    assert not any("status_error" in r.getMessage() for r in caplog.records)  # counted, not malformed


def test_commit_offsets_stay_below_open_windows(repo_root):
    consumer = DriftConsumer(_settings(repo_root, window_rows=6))
    rows = np.zeros((2, 3))
    p0 = _records([_event(rows, 1), _event(rows, 2), b"junk", _event(rows, 3), _event(rows, 4)], partition=0)
    p1 = _records([_event(rows, 5)], partition=1, first_offset=40)
    reports = consumer.process(p0[:3])
    assert reports == [] and consumer.commit_offsets() == {0: 0}
    [report] = consumer.process(p0[3:4])  # 6 rows: closes toy/1/0-0
    assert report["window"]["offsets"] == {"0": [0, 3]}
    assert consumer.commit_offsets() == {0: 4}
    consumer.process(p0[4:] + p1)
    assert consumer.commit_offsets() == {0: 4, 1: 40}


def test_reference_store_errors_are_reasons_and_cached(repo_root):
    store = ReferenceStore(ModelRepository(repo_root))
    assert store.get("toy", "1") is store.get("toy", "1")
    with pytest.raises(ReferenceUnavailable) as missing:
        store.get("toy", "2")
    assert missing.value.reason == "unknown_model_version" and "not found" in str(missing.value)
    with pytest.raises(ReferenceUnavailable) as again:
        store.get("toy", "2")
    assert again.value is missing.value  # remembered, not re-read from disk


def test_settings_reject_unknown_keys(tmp_path):
    with pytest.raises(ValueError):
        DriftSettings(model_repository=tmp_path, windows=3)
    with pytest.raises(ValueError):
        DriftSettings(correction="holm")


def test_a_window_whose_report_fails_is_logged_and_passed_over(repo_root, monkeypatch, caplog):
    from gateway.drift import consumer as consumer_module

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(consumer_module, "evaluate", broken)
    consumer = DriftConsumer(_settings(repo_root, window_rows=2))
    with caplog.at_level(logging.ERROR, logger="gateway.drift"):
        assert consumer.process(_records([_event(np.zeros((2, 3)), 1)])) == []
    assert consumer.report_errors == 1 and consumer.commit_offsets() == {0: 1}
    assert "no report for window toy/1/0-0" in caplog.text


def test_settings_from_the_gateway_config(tmp_path):
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(
        "models: {wine: {versions: {'1': {}}, route: {champion: '1'}}}\n"
        "kafka: {bootstrap_servers: 'k:9092', topics: {events: ev, drift: dr}}\n"
        "drift: {window_rows: 50, correction: bh}\n")
    settings = settings_from_config(load_config(config_file))
    assert (settings.bootstrap_servers, settings.events_topic, settings.reports_topic) == ("k:9092", "ev", "dr")
    assert (settings.window_rows, settings.correction) == (50, "bh")
    assert settings.model_repository == (tmp_path / "models").resolve()
    config_file.write_text(
        "models: {wine: {versions: {'1': {}}, route: {champion: '1'}}}\n"
        "drift: {window_rows: 0, colour: red}\n")
    with pytest.raises(ConfigError) as err:
        load_config(config_file)
    assert "drift.window_rows" in str(err.value) and "drift.colour" in str(err.value)
    assert str(config_file) in str(err.value)
