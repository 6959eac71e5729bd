"""The demo wine models: what the gateway, the drift detector and the load tests rely on."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import pytest

from gateway.models.demo import (
    FEATURE_NAMES,
    build_demo_repository,
    main,
    sample_wines,
    train_demo_models,
    wine_rows,
)
from gateway.models.repository import ModelRepository, ModelRepositoryError

THRESHOLD = 13.0


def session(repo: Path, version: str) -> ort.InferenceSession:
    model = ModelRepository(repo).load("wine", version)
    return ort.InferenceSession(str(model.model_file), providers=["CPUExecutionProvider"])


def test_two_versions_with_different_algorithms(demo_repository: Path) -> None:
    repo = ModelRepository(demo_repository)
    assert repo.list() == [("wine", "1"), ("wine", "2")]
    v1, v2 = repo.load("wine", "1"), repo.load("wine", "2")
    assert v1.training["algorithm"] == "StandardScaler+LogisticRegression"
    assert v2.training["algorithm"] == "RandomForestClassifier"
    for v in (v1, v2):
        assert v.runtime == "onnx"
        assert v.inputs[0].feature_names == FEATURE_NAMES
        assert v.training["selection"] == f"alcohol >= {THRESHOLD}"
        assert v.training["n_train"] == len(wine_rows("train")) == v.reference["n"]
        assert v.training["train_accuracy"] > 0.9


def test_metadata_matches_the_onnx_graph(demo_repository: Path) -> None:
    """Clients are told names, types and shapes by model.json; the model must agree."""
    onnx_to_v2 = {"tensor(float)": "FP32", "tensor(int64)": "INT64"}
    for version in ("1", "2"):
        model = ModelRepository(demo_repository).load("wine", version)
        sess = session(demo_repository, version)
        inputs = [(i.name, i.datatype, i.shape) for i in model.inputs]
        assert inputs == [("input", "FP32", (-1, 13))]
        assert [i.name for i in sess.get_inputs()] == ["input"]
        assert [(o.name, onnx_to_v2[o.type]) for o in sess.get_outputs()] == [
            (o.name, o.datatype) for o in model.outputs
        ]
        n_classes = len(model.training["classes"])
        assert [(o.name, o.shape) for o in model.outputs] == [
            ("label", (-1,)), ("probabilities", (-1, n_classes))
        ]


def test_tampered_model_file_is_refused(demo_repository: Path, tmp_path: Path) -> None:
    repo_root = tmp_path / "models"
    shutil.copytree(demo_repository, repo_root)
    model_file = repo_root / "wine" / "2" / "model.onnx"
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    with pytest.raises(ModelRepositoryError, match="model.onnx"):
        ModelRepository(repo_root).load("wine", "2")
    ModelRepository(repo_root).load("wine", "1")  # the untouched version still loads


@pytest.mark.parametrize("rows", ["train", "drift"])
def test_onnx_predictions_equal_sklearn(demo_repository: Path, rows: str) -> None:
    """Drift rows too: the converted model must also be faithful on data it never saw."""
    x = wine_rows(rows)
    for model in train_demo_models(THRESHOLD, seed=0):
        label, proba = session(demo_repository, model.version).run(None, {"input": x})
        np.testing.assert_array_equal(label, model.estimator.predict(x))
        np.testing.assert_allclose(proba, model.estimator.predict_proba(x), atol=1e-5)


def test_reference_statistics(demo_repository: Path) -> None:
    for version in ("1", "2"):
        model = ModelRepository(demo_repository).load("wine", version)
        ref = model.reference
        assert set(ref["inputs"]) == set(FEATURE_NAMES)
        numeric = [s for s in ref["outputs"].values() if s["kind"] == "numeric"]
        for stats in [*ref["inputs"].values(), *numeric]:
            assert len(stats["sample"]) == ref["n"]
            assert stats["sample"] == sorted(stats["sample"])
            edges = stats["quantile_edges"]
            assert len(edges) == 11 and np.all(np.diff(edges) >= 0)
            assert (edges[0], edges[-1]) == (stats["min"], stats["max"])
        assert min(ref["inputs"]["alcohol"]["sample"]) >= THRESHOLD
        classes = model.training["classes"]
        freqs = ref["outputs"]["label"]["frequencies"]
        assert list(freqs) == [str(c) for c in classes]
        assert sum(freqs.values()) == pytest.approx(1.0)
        assert set(ref["outputs"]) == {"label", *(f"probabilities[{c}]" for c in classes)}


def test_same_seed_rebuilds_identical_models(demo_repository: Path, tmp_path: Path) -> None:
    rebuilt = build_demo_repository(tmp_path)
    x = wine_rows("drift")
    for version in rebuilt:
        original = ModelRepository(demo_repository).load("wine", version.version)
        assert version.sha256 == original.sha256
        assert (version.directory / "model.json").read_bytes() == (
            original.directory / "model.json"
        ).read_bytes()
        for a, b in zip(session(tmp_path, version.version).run(None, {"input": x}),
                        session(demo_repository, version.version).run(None, {"input": x})):
            np.testing.assert_array_equal(a, b)


def test_rows_split_on_alcohol() -> None:
    train, drift = wine_rows("train"), wine_rows("drift")
    assert train.dtype == drift.dtype == np.float32
    assert train.shape[1] == drift.shape[1] == len(FEATURE_NAMES) == 13
    assert len(train) + len(drift) == 178
    assert (train[:, 0] >= THRESHOLD).all() and (drift[:, 0] < THRESHOLD).all()


def test_sample_wines_is_reproducible_and_stays_in_range() -> None:
    a = sample_wines("drift", 500, seed=7)
    assert a.shape == (500, 13) and a.dtype == np.float32
    np.testing.assert_array_equal(a, sample_wines("drift", 500, seed=7))
    assert not np.array_equal(a, sample_wines("drift", 500, seed=8))
    assert (a[:, 0] < THRESHOLD).all()
    assert {r.tobytes() for r in a} <= {r.tobytes() for r in wine_rows("drift")}


def test_cli_builds_with_another_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--repository", str(tmp_path), "--alcohol-threshold", "12.5", "--seed", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("wine/1") and lines[1].startswith("wine/2")
    meta = orjson.loads((tmp_path / "wine" / "2" / "model.json").read_bytes())
    assert meta["training"]["selection"] == "alcohol >= 12.5"
    assert meta["training"]["seed"] == meta["training"]["params"]["random_state"] == 3
    assert meta["training"]["n_train"] == len(wine_rows("train", alcohol_threshold=12.5))
    assert min(meta["reference"]["inputs"]["alcohol"]["sample"]) >= 12.5
