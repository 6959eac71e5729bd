"""The drift pipeline without Kafka: event decoding and skip reasons, windows, checkpoints, config.

Uses a small synthetic "toy/1" model; the helpers here are shared by the other test_drift_* files.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest
from aiokafka.structs import ConsumerRecord

from gateway.config import ConfigError, load_config
from gateway.drift.consumer import DriftSettings, settings_from_config
from gateway.drift.decode import decode_partition
from gateway.drift.monitor import DriftMonitor
from gateway.drift.reference import ReferenceStore, ReferenceUnavailable, compile_reference
from gateway.drift.report import summary
from gateway.models.repository import ModelRepository

FEATURES = ("a", "b", "c")
CLASSES = (3, 7)  # not 0..k-1, so "proba[7]" must map to column 1 through training.classes


@pytest.fixture(scope="module")
def repo_root(tmp_path_factory) -> Path:
    """A "toy/1" model: three N(0, 1) features, a 50/50 label, and a probability per class."""
    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("drift-models")
    directory = root / "toy" / "1"
    directory.mkdir(parents=True)
    x = rng.normal(0.0, 1.0, (500, 3)).astype(np.float32)
    outputs = {"label": rng.choice(CLASSES, 500), "proba[3]": rng.uniform(0.0, 0.5, 500).astype(np.float32),
               "proba[7]": rng.uniform(0.5, 1.0, 500).astype(np.float32)}
    meta = {
        "schema_version": 1, "name": "toy", "version": "1",
        "runtime": "python:toy:Toy", "file": "toy.py",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3], "feature_names": list(FEATURES)}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                    {"name": "proba", "datatype": "FP32", "shape": [-1, 2]}],
        "training": {"classes": list(CLASSES)},
        "reference": compile_reference(x, FEATURES, outputs, classes=list(CLASSES)),
    }
    (directory / "model.json").write_bytes(orjson.dumps(meta))
    return root


def settings(root: Path, **overrides) -> DriftSettings:
    return DriftSettings(model_repository=root, **{"window_size": 200, "classifier_on_drift": False, **overrides})


def toy_event(rows: np.ndarray, ts_ms: int, *, version: str = "1", status: str = "ok",
              proba: np.ndarray | None = None, labels: np.ndarray | None = None) -> bytes:
    n = len(rows)
    rng = np.random.default_rng(n + ts_ms)
    labels = rng.choice(CLASSES, n) if labels is None else labels
    proba = np.column_stack([rng.uniform(0, 0.5, n), rng.uniform(0.5, 1, n)]) if proba is None else proba
    return orjson.dumps({
        "schema_version": 1, "event_id": f"e{ts_ms}", "ts_ms": ts_ms, "request_id": f"r{ts_ms}",
        "model_name": "toy", "model_version": version, "status": status, "role": "some-new-role",
        "arm": "b", "reason": None, "unknown_future_field": {"x": 1},
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [n, 3], "data": rows.astype(np.float32).ravel()}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [n], "data": labels},
                    {"name": "proba", "datatype": "FP32", "shape": [n, 2], "data": proba.astype(np.float32).ravel()}],
    }, option=orjson.OPT_SERIALIZE_NUMPY)


def records(values: list[bytes | None], partition: int = 0, first_offset: int = 0) -> list[ConsumerRecord]:
    return [ConsumerRecord("events", partition, first_offset + i, 0, 0, None, v, None, len(v or b""), 0, [])
            for i, v in enumerate(values)]


def drain(monitor: DriftMonitor) -> list[dict]:
    """Publish everything ready (as the consumer would) and return the records."""
    out = []
    for item in monitor.ready():
        out.extend(item.records())
        monitor.published(item)
    return out


def reports_of(records_out: list[dict]) -> list[dict]:
    return [r for r in records_out if r["type"] == "drift_report"]


def monitor(root: Path, **overrides) -> DriftMonitor:
    s = settings(root, **overrides)
    return DriftMonitor(s, ReferenceStore(ModelRepository(s.model_repository)))


# --- decoding ---------------------------------------------------------------------------------

def test_fast_and_slow_decoding_agree(repo_root):
    """Flat data takes the fast path; nested lists take the checked one; both give the same rows."""
    rows = np.random.default_rng(2).normal(0, 1, (4, 3))
    flat = toy_event(rows, 1)
    nested = orjson.loads(flat)
    nested["inputs"][0]["data"] = rows.astype(np.float32).tolist()
    nested["outputs"][1]["data"] = np.asarray(nested["outputs"][1]["data"]).reshape(4, 2).tolist()
    refs = ReferenceStore(ModelRepository(repo_root))
    [fast] = decode_partition(records([flat]), refs).blocks
    [slow] = decode_partition(records([orjson.dumps(nested)]), refs).blocks
    assert np.array_equal(fast.inputs, slow.inputs)
    assert np.array_equal(fast.inputs, rows.astype(np.float32).astype(np.float64))
    for key in fast.outputs:
        assert np.array_equal(fast.outputs[key], slow.outputs[key])


def gateway_toy_events(n: int, seed: int = 0) -> list[bytes]:
    """toy/1 events exactly as the gateway's event shipper writes them (scoring_event)."""
    from gateway.events.records import scoring_event

    rng = np.random.default_rng(seed)
    values = []
    for i in range(n):
        rows = 1 + i % 3
        x = rng.normal(0, 1, (rows, 3)).astype(np.float32)
        label = rng.choice(CLASSES, rows)
        fields = {"ts_ms": (1_700_000_000 + i) * 1000, "request_id": f"req-{i}", "model_name": "toy",
                  "model_version": "1", "role": "champion", "route": "shadow", "arm": "1", "reason": "shadow",
                  "served": True, "status": "ok", "error": None,
                  "action": {"model_version": "1", "outputs": {"label": label}}, "latency_ms": 0.5,
                  "gateway_instance": "t", "sample_rate": 1.0}
        arrays = {"inputs/x": x, "outputs/label": label, "outputs/proba": rng.uniform(0, 1, (rows, 2)).astype(np.float32)}
        values.append(scoring_event(fields, arrays).value)
    return values


def test_the_byte_level_fast_path_decodes_exactly_what_full_parsing_does(repo_root):
    from gateway.drift import decode

    values = gateway_toy_events(300)
    layouts = decode.Layouts()
    refs = ReferenceStore(ModelRepository(repo_root))
    one_by_one = [decode_partition(records([v]), refs, layouts).blocks[0] for v in values[:3]]  # learns
    assert {s.header is not None for s in layouts.skeletons[("toy", "1")]} == {True}
    [batch] = decode_partition(records(values[:3]), refs, layouts).blocks
    assert np.array_equal(batch.inputs, np.concatenate([b.inputs for b in one_by_one]))
    for key in batch.outputs:
        assert np.array_equal(batch.outputs[key], np.concatenate([b.outputs[key] for b in one_by_one]))
    layouts = decode.Layouts()
    [slow] = decode_partition(records(values), refs, layouts).blocks  # learns in-batch, the rest goes fast
    [fast] = decode_partition(records(values), refs, layouts).blocks  # all known: byte level throughout
    assert np.array_equal(fast.inputs, slow.inputs) and np.array_equal(fast.offsets, np.arange(300))
    assert np.array_equal(fast.ts_ms, 1_700_000_000_000 + 1000 * np.arange(300))
    for key in fast.outputs:
        assert np.array_equal(fast.outputs[key], slow.outputs[key])
    # A bad number or a null among known layouts voids only that event.
    bad = list(values[:6])
    bad[1] = bad[1].replace(b'"data":[', b'"data":[null,', 1)
    bad[4] = bad[4].replace(b'"data":[', b'"data":[1.2.3,', 1)
    batch = decode_partition(records(bad), refs, layouts)
    assert batch.blocks[0].offsets.tolist() == [0, 2, 3, 5]
    assert sum(batch.skipped.values()) == 2


def test_one_parse_per_batch_never_misreads_an_event_that_is_off(repo_root):
    """Known layouts are parsed a batch at a time; an event whose numbers do not sit where its
    layout says (a number moved from one tensor to another, a marker-sized number, a null) must
    come out exactly as reading every event on its own gives: decoded alike, or skipped alike."""
    from gateway.drift import decode

    refs = ReferenceStore(ModelRepository(repo_root))
    values = gateway_toy_events(40)
    event = values[0]  # one row: x has 3 numbers, proba 2; give x one more and proba one fewer
    x_at = event.index(b'"data":[') + len(b'"data":[')
    p_at = event.rindex(b'"data":[', 0, event.index(b',"action"')) + len(b'"data":[')
    shifted = event[:x_at] + b"0.25," + event[x_at:p_at] + event[event.index(b",", p_at) + 1:]
    layouts = decode.Layouts()
    decode_partition(records(values), refs, layouts)  # learns the layouts
    def first_number(value: bytes, replacement: bytes) -> bytes:
        start = value.index(b'"data":[') + len(b'"data":[')
        return value[:start] + replacement + value[value.index(b",", start):]

    for at, odd, skipped in ((0, shifted, 1), (4, first_number(values[4], b"3e307"), 1),
                             (7, first_number(values[7], b"-1e308"), 1), (9, first_number(values[9], b"null"), 1),
                             (12, values[12].replace(b',"action":', b',"action_taken":'), 0)):  # usable, other layout
        batch_values = values[:at] + [odd] + values[at + 1:]
        batch = decode_partition(records(batch_values), refs, layouts)
        alone = [decode_partition(records([v], first_offset=i), refs) for i, v in enumerate(batch_values)]
        [block] = batch.blocks
        assert block.offsets.tolist() == [i for i, a in enumerate(alone) if a.blocks]
        assert np.array_equal(block.inputs, np.concatenate([a.blocks[0].inputs for a in alone if a.blocks]))
        for key in block.outputs:
            expected = np.concatenate([a.blocks[0].outputs[key] for a in alone if a.blocks])
            assert np.array_equal(block.outputs[key], expected, equal_nan=True)
        assert batch.skipped == sum((a.skipped for a in alone), Counter())
        assert sum(batch.skipped.values()) == skipped  # the odd event, never read with its numbers moved


def test_malformed_and_unusable_events_are_counted_and_skipped(repo_root):
    m = monitor(repo_root, window_size=4, compare_previous=False)  # nothing retained once reported
    warnings = []
    m.on_warning = lambda reason, message: warnings.append(reason)
    good = np.zeros((2, 3))
    record = orjson.loads(toy_event(good, 5))
    bad_rows = {**record, "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]}
    ragged = {**record, "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [[1, 2, 3], [4]]}]}
    with_null = {**record, "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, None, 3]}],
                 "outputs": []}
    short_out = {**record, "outputs": [{"name": "label", "datatype": "INT64", "shape": [1], "data": [3]}]}
    no_outputs = {**record, "outputs": None}  # still usable for input drift
    values = [
        b"{not json", b"[1, 2]", None,
        orjson.dumps({**record, "schema_version": 2}),
        toy_event(good, 1, status="error"), toy_event(good, 2, status="timeout"),
        orjson.dumps({**record, "status": "weird"}),
        orjson.dumps({k: v for k, v in record.items() if k != "ts_ms"}),
        toy_event(good, 3, version="9"), toy_event(good, 4, version="../1"),
        orjson.dumps(bad_rows), orjson.dumps(ragged), orjson.dumps(with_null), orjson.dumps(short_out),
        toy_event(good, 5), orjson.dumps(no_outputs),
    ]
    m.process(0, records(values))
    [report] = reports_of(drain(m))
    assert dict(m.skipped) == {
        "bad_json": 3, "unsupported_schema_version": 1, "status_error": 1, "status_timeout": 1,
        "bad_status": 1, "missing_field": 1, "unknown_model_version": 2, "bad_row_length": 1,
        "bad_inputs": 1, "non_finite": 1, "bad_outputs": 1,
    }
    assert report["window"]["n_events"] == 2 and report["window"]["offsets"] == [14, 15]
    assert report["predictions"]["label"]["n"] == 2  # the event without outputs adds inputs only
    assert "status_error" not in warnings and warnings.count("bad_json") == 3
    assert m.checkpoint(0)[0] == len(values)


def test_a_window_whose_report_fails_is_logged_and_passed_over(repo_root, monkeypatch, caplog):
    from gateway.drift import monitor as monitor_module

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(monitor_module, "evaluate_columns", broken)
    m = monitor(repo_root, window_size=2, compare_previous=False)
    with caplog.at_level(logging.ERROR, logger="gateway.drift"):
        m.process(0, records([toy_event(np.zeros((2, 3)), 1)]))
    assert drain(m) == [] and m.report_errors == 1 and m.checkpoint(0)[0] == 1
    assert "no report for window toy/1/p0/0-0" in caplog.text


# --- the pipeline -----------------------------------------------------------------------------

def test_reference_like_window_is_quiet_and_a_shifted_one_drifts_on_its_feature(repo_root):
    rng = np.random.default_rng(5)
    m = monitor(repo_root)
    same = [toy_event(rng.normal(0, 1, (10, 3)), 1000 + i) for i in range(20)]
    shifted_rows = rng.normal(0, 1, (200, 3))
    shifted_rows[:, 1] += 1.0
    shifted = [toy_event(shifted_rows[i * 10:(i + 1) * 10], 2000 + i) for i in range(20)]
    m.process(0, records(same + shifted))
    quiet, loud = reports_of(drain(m))
    assert not quiet["drift"] and quiet["drifted_features"] == [] and quiet["drifted_predictions"] == []
    assert loud["drift"] and loud["drifted_features"] == ["b"]
    assert loud["features"]["b"]["statistic"] > 0.3 and loud["features"]["b"]["drifted"]
    assert loud["previous"]["window_id"] == quiet["window_id"] and loud["previous"]["changed"] == ["b"]
    assert summary(loud).startswith(f"drift toy/1 window={loud['window_id']} n=200 closed_by=count drift=YES drifted=b(")


def test_prediction_columns_map_through_training_classes(repo_root):
    m = monitor(repo_root, window_size=100)
    rng = np.random.default_rng(9)
    proba = np.column_stack([rng.uniform(0, 0.5, 100), rng.uniform(0.5, 1, 100)])
    labels = np.array([7] * 100)  # every prediction is class 7: label drift
    m.process(0, records([toy_event(rng.normal(0, 1, (100, 3)), 1, proba=proba, labels=labels)]))
    [report] = reports_of(drain(m))
    assert not report["predictions"]["proba[3]"]["drifted"] and not report["predictions"]["proba[7]"]["drifted"]
    assert report["predictions"]["label"]["test"] == "chi2"
    assert report["drifted_predictions"] == ["label"] and report["drift"]
    assert report["predictions"]["label"]["bins"]["window"][report["predictions"]["label"]["bins"]["categories"].index("7")] == 100


def test_alert_after_k_of_n_drifted_windows_and_recovery(repo_root):
    m = monitor(repo_root, window_size=50, alarm_k=2, alarm_n=3)
    rng = np.random.default_rng(4)
    # Windows 1 and 3 drift: 2 of the last 3 at window 3 raise the alert; it clears at window 6,
    # the first with none of the last 3 drifted.
    shifts = [0, 3, 0, 3, 0, 0, 0]
    values = [toy_event(rng.normal(s, 1, (50, 3)), 10 * i) for i, s in enumerate(shifts)]
    m.process(0, records(values))
    out = drain(m)
    alerts = [(r["state"], r["window_id"]) for r in out if r["type"] == "drift_alert"]
    assert alerts == [("drifting", "toy/1/p0/3-3"), ("recovered", "toy/1/p0/6-6")]
    assert [r["alarm"]["active"] for r in reports_of(out)] == [False, False, False, True, True, True, False]


def test_commit_stays_below_open_and_retained_panes_and_carries_progress(repo_root):
    m = monitor(repo_root, window_size=6, compare_previous=False)
    rows = np.zeros((2, 3))
    p0 = records([toy_event(rows, 1), toy_event(rows, 2), b"junk", toy_event(rows, 3), toy_event(rows, 4)])
    m.process(0, p0[:3])
    assert drain(m) == [] and m.checkpoint(0)[0] == 0
    m.process(0, p0[3:4])  # 6 rows: closes toy/1/p0/0-3
    [report] = reports_of(drain(m))
    assert report["window_id"] == "toy/1/p0/0-3" and report["window"]["offsets"] == [0, 3]
    offset, metadata = m.checkpoint(0)
    assert offset == 4 and orjson.loads(metadata)["keys"] == {"toy\x1f1": [None, 3, "0", False, 1]}
    m.process(0, p0[4:])
    assert m.checkpoint(0)[0] == 4  # the open window holds offset 4


def test_reference_store_errors_are_reasons_and_cached(repo_root):
    store = ReferenceStore(ModelRepository(repo_root))
    assert store.get("toy", "1") is store.get("toy", "1")
    with pytest.raises(ReferenceUnavailable) as missing:
        store.get("toy", "2")
    assert missing.value.reason == "unknown_model_version" and "not found" in str(missing.value)
    with pytest.raises(ReferenceUnavailable) as again:
        store.get("toy", "2")
    assert again.value is missing.value  # remembered, not re-read from disk


# --- configuration ----------------------------------------------------------------------------

def test_settings_reject_unknown_keys_and_inconsistent_windows(tmp_path):
    with pytest.raises(ValueError):
        DriftSettings(model_repository=tmp_path, windows=3)
    with pytest.raises(ValueError):
        DriftSettings(correction="holm")
    with pytest.raises(ValueError, match="divide"):
        DriftSettings(window_size=200, window_slide=70)
    with pytest.raises(ValueError, match="whole number"):
        DriftSettings(window_size=20.5)
    with pytest.raises(ValueError, match="alarm_k"):
        DriftSettings(alarm_k=4, alarm_n=3)


def test_settings_from_the_gateway_config(tmp_path):
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(
        "models: {wine: {versions: {'1': {}}, route: {policy: shadow, champion: '1'}}}\n"
        "kafka: {bootstrap_servers: 'k:9092', topics: {events: ev, drift: dr}}\n"
        "drift: {window_size: 50, correction: bh, window_by: time, window_slide: 10}\n")
    s = settings_from_config(load_config(config_file))
    assert (s.bootstrap_servers, s.events_topic, s.reports_topic) == ("k:9092", "ev", "dr")
    assert (s.window_size, s.window_slide, s.window_by, s.correction) == (50, 10, "time", "bh")
    assert s.model_repository == (tmp_path / "models").resolve()
    config_file.write_text(
        "models: {wine: {versions: {'1': {}}, route: {policy: shadow, champion: '1'}}}\n"
        "drift: {window_size: 0, colour: red}\n")
    with pytest.raises(ConfigError) as err:
        load_config(config_file)
    assert "drift.window_size" in str(err.value) and "drift.colour" in str(err.value)
    assert str(config_file) in str(err.value)
