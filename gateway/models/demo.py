"""The worked example: two versions of a "wine" classifier trained on high-alcohol wines only.

The low-alcohol wines are never seen in training, so replaying them is drifted traffic with a
known cause (see docs/model-repository.md). scikit-learn and skl2onnx are imported inside the
functions that need them: serving and the CLI must start without the training extras.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson

from gateway.codecs.datatypes import ONNX_TO_V2
from gateway.models.repository import (
    METADATA_FILE,
    METADATA_SCHEMA_VERSION,
    ModelRepository,
    ModelVersion,
    sha256_of,
)

MODEL_NAME = "wine"
MODEL_FILE = "model.onnx"
INPUT_NAME = "input"
DEFAULT_THRESHOLD = 13.0
# Fixed by the data set (checked in _wine()); spelled out so importing this module is cheap.
FEATURE_NAMES: tuple[str, ...] = (
    "alcohol", "malic_acid", "ash", "alcalinity_of_ash", "magnesium", "total_phenols",
    "flavanoids", "nonflavanoid_phenols", "proanthocyanins", "color_intensity", "hue",
    "od280/od315_of_diluted_wines", "proline",
)
Range = Literal["train", "drift"]


@dataclass(frozen=True)
class DemoModel:
    version: str
    algorithm: str
    estimator: Any  # the fitted scikit-learn estimator the ONNX file was converted from


def _wine(alcohol_threshold: float, range: Range) -> tuple[np.ndarray, np.ndarray]:
    """Rows are selected on the float64 source values, then cast to the model's FP32 input."""
    from sklearn.datasets import load_wine

    data = load_wine(as_frame=False)
    if tuple(data.feature_names) != FEATURE_NAMES:
        raise RuntimeError(f"load_wine feature names changed: {data.feature_names}")
    if range not in ("train", "drift"):
        raise ValueError(f"range must be 'train' or 'drift', not {range!r}")
    in_range = data.data[:, 0] >= alcohol_threshold
    mask = in_range if range == "train" else ~in_range
    return data.data[mask].astype(np.float32), data.target[mask].astype(np.int64)


def wine_rows(range: Range, *, alcohol_threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """FP32 [n, 13] rows inside ("train") or outside ("drift") the training alcohol range."""
    return _wine(alcohol_threshold, range)[0]


def labelled_wine_rows(range: Range, *, alcohol_threshold: float = DEFAULT_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """The same rows with their true classes (ground truth for feedback traffic)."""
    return _wine(alcohol_threshold, range)


def sample_wines(
    range: Range, n: int, seed: int = 0, *, alcohol_threshold: float = DEFAULT_THRESHOLD
) -> np.ndarray:
    """n rows drawn with replacement, so load tests can send more rows than the data set has."""
    rows = wine_rows(range, alcohol_threshold=alcohol_threshold)
    return rows[np.random.default_rng(seed).integers(0, len(rows), size=n)]


def train_demo_models(
    alcohol_threshold: float = DEFAULT_THRESHOLD, seed: int = 0
) -> list[DemoModel]:
    """Champion and challenger use different algorithms so an experiment has something to find."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _wine(alcohol_threshold, "train")
    champion = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    challenger = RandomForestClassifier(n_estimators=50, max_depth=6, random_state=seed)
    return [
        DemoModel("1", "StandardScaler+LogisticRegression", champion.fit(x, y)),
        DemoModel("2", "RandomForestClassifier", challenger.fit(x, y)),
    ]


def _reference(x: np.ndarray, label: np.ndarray, proba: np.ndarray, classes: list[int],
               label_name: str, proba_name: str, seed: int) -> dict[str, Any]:
    """Compiled once here, so drift detection never rescans the training data (docs/drift.md)."""
    from gateway.drift.reference import compile_reference

    outputs: dict[str, np.ndarray] = {label_name: label}
    for column, c in enumerate(classes):
        outputs[f"{proba_name}[{c}]"] = proba[:, column]
    # FP32 values exactly as the model saw them, widened to float64 for JSON.
    return compile_reference(x.astype(np.float32), FEATURE_NAMES, outputs, classes=classes, seed=seed)


def _json_params(estimator: Any) -> dict[str, Any]:
    return {
        k: v for k, v in estimator.get_params(deep=True).items()
        if v is None or isinstance(v, (bool, int, float, str))
    }


def _write_atomic(path: Path, data: bytes) -> None:
    """A gateway reloading the repository must never see a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build_demo_repository(
    root: str | Path, *, alcohol_threshold: float = DEFAULT_THRESHOLD, seed: int = 0
) -> list[ModelVersion]:
    """Train, export and describe both versions; the same seed gives byte-identical files."""
    import onnxruntime as ort
    import sklearn
    import skl2onnx
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from skl2onnx.common.data_types import FloatTensorType
    from skl2onnx.proto import get_latest_tested_opset_version

    root = Path(root)
    x, y = _wine(alcohol_threshold, "train")
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    opset = get_latest_tested_opset_version()
    built: list[str] = []
    for model in train_demo_models(alcohol_threshold, seed):
        classes = [int(c) for c in model.estimator.classes_]
        onx = skl2onnx.to_onnx(
            model.estimator,
            initial_types=[(INPUT_NAME, FloatTensorType([None, len(FEATURE_NAMES)]))],
            options={"zipmap": False},
            target_opset=opset,
        )
        blob = onx.SerializeToString()
        session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
        label_out, proba_out = session.get_outputs()  # skl2onnx classifiers: label, then scores
        label, proba = session.run(None, {INPUT_NAME: x})

        directory = root / MODEL_NAME / model.version
        directory.mkdir(parents=True, exist_ok=True)
        _write_atomic(directory / MODEL_FILE, blob)
        cv = cross_val_score(sklearn.clone(model.estimator), x, y, cv=folds)
        meta = {
            "schema_version": METADATA_SCHEMA_VERSION,
            "name": MODEL_NAME,
            "version": model.version,
            "runtime": "onnx",
            "file": MODEL_FILE,
            "sha256": sha256_of(directory / MODEL_FILE),
            "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, len(FEATURE_NAMES)],
                        "feature_names": list(FEATURE_NAMES)}],
            "outputs": [
                {"name": out.name, "datatype": ONNX_TO_V2[out.type], "shape": [-1, *arr.shape[1:]]}
                for out, arr in ((label_out, label), (proba_out, proba))
            ],
            "training": {
                "algorithm": model.algorithm,
                "dataset": "sklearn.datasets.load_wine",
                "selection": f"alcohol >= {alcohol_threshold}",
                "n_train": len(x),
                "classes": classes,
                "seed": seed,
                "params": _json_params(model.estimator),
                "sklearn_version": sklearn.__version__,
                "skl2onnx_version": skl2onnx.__version__,
                "onnx_opset": opset,
                "train_accuracy": float(np.mean(label == y)),
                "cv5_accuracy": float(cv.mean()),
            },
            "reference": _reference(x, label, proba, classes, label_out.name, proba_out.name, seed),
        }
        _write_atomic(directory / METADATA_FILE, orjson.dumps(meta, option=orjson.OPT_INDENT_2))
        built.append(model.version)
    repository = ModelRepository(root)
    return [repository.load(MODEL_NAME, version) for version in built]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repository", type=Path, default=Path("models"),
                        help="model repository root (default: ./models)")
    parser.add_argument("--alcohol-threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="train on wines with alcohol >= this; the rest is drifted traffic")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    versions = build_demo_repository(
        args.repository, alcohol_threshold=args.alcohol_threshold, seed=args.seed
    )
    for v in versions:
        t = v.training
        print(f"{v.key}  {t['algorithm']}  n_train={t['n_train']}  "
              f"train_acc={t['train_accuracy']:.3f}  cv5_acc={t['cv5_accuracy']:.3f}  "
              f"sha256={v.sha256[:12]}  {v.model_file}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway models build-demo", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
