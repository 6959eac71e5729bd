"""A model version's reference: compiled once from the training rows when the model is built,
stored in `model.json` (docs/model-repository.md), loaded once per (name, version) at run time.

Nothing here ever reads training data at run time: the compiled block holds everything the
tests need (a sorted sample per numeric column, quantile edges and the sample's share of each
bin, capped category frequencies, and a joint sample of rows for the domain classifier).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.codecs.datatypes import V2_TO_NUMPY
from gateway.models.repository import ModelRepository, ModelRepositoryError, ModelVersion

REFERENCE_FORMAT = 2
UNSEEN = "__unseen__"  # the bucket of every category outside the reference's top K
MAX_SAMPLE = 10_000  # values kept per numeric column; more are subsampled (error: docs/drift.md)
TOP_K = 50  # categories kept per categorical column
MAX_ROWS = 1_000  # joint rows kept for the domain classifier
QUANTILES = 10  # decile bins for PSI and Jensen-Shannon
PREDICTION_DECIMALS = 5

_COLUMN_KEY = re.compile(r"(.+)\[([^\[\]]+)\]")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_MAX_FAILED = 1024


def quantize_prediction(values: np.ndarray) -> np.ndarray:
    """Numeric predictions compared at 1e-5: a tree ensemble's float32 sums differ by a few ulps
    with the batch size the worker happened to use (1.0000001 vs 0.99999994), and on a column
    with many ties at exact values (0, 1, k/n_trees) that jitter alone makes KS flag drift."""
    return np.round(values, PREDICTION_DECIMALS)


def category_key(value: object) -> str:
    """Reference keys are strings; 1, 1.0 and "1" are the same category."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


# --- compiling (model build time) ---------------------------------------------------------------

def compile_numeric(values: np.ndarray, *, max_sample: int = MAX_SAMPLE, seed: int = 0) -> dict[str, Any]:
    """Sorted sample (all values up to `max_sample`, else a seeded uniform subsample) and deciles."""
    values = np.asarray(values, dtype=np.float64)
    full = np.sort(values)
    sample = full
    if len(full) > max_sample:
        sample = np.sort(np.random.default_rng(seed).choice(full, size=max_sample, replace=False))
    return {
        "kind": "numeric",
        "n": len(full),
        "sample": sample.tolist(),
        "quantile_edges": np.quantile(full, np.linspace(0.0, 1.0, QUANTILES + 1)).tolist(),
        "mean": float(full.mean()),
        "std": float(full.std()),
        "min": float(full[0]),
        "max": float(full[-1]),
    }


def compile_categorical(values: np.ndarray, *, top_k: int = TOP_K, classes: list | None = None) -> dict[str, Any]:
    """The `top_k` most frequent categories; the rest of the mass goes to the unseen bucket.
    `classes` lists categories that must appear even at frequency 0 (a classifier's labels)."""
    keys, counts = np.unique(np.array([category_key(v) for v in values], dtype=object), return_counts=True)
    freq = {str(k): int(c) for k, c in zip(keys, counts)}
    for c in classes or []:
        freq.setdefault(category_key(c), 0)
    ranked = sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))
    n = max(len(values), 1)
    kept = dict(ranked[:top_k])
    return {
        "kind": "categorical",
        "n": len(values),
        "top_k": top_k,
        "frequencies": {k: c / n for k, c in sorted(kept.items())},
        "unseen": sum(c for _, c in ranked[top_k:]) / n,
    }


def compile_reference(inputs: np.ndarray, feature_names: list[str] | tuple[str, ...],
                      outputs: dict[str, np.ndarray], *, categorical: set[str] = frozenset(),
                      classes: list | None = None, seed: int = 0, max_sample: int = MAX_SAMPLE,
                      top_k: int = TOP_K, max_rows: int = MAX_ROWS) -> dict[str, Any]:
    """The `reference` block of model.json, from the training rows and the model's predictions on
    them. `outputs` maps a column key (`label`, `probabilities[0]`) to its values; integer and
    string outputs and the features named in `categorical` are categorical, the rest numeric."""
    inputs = np.asarray(inputs)
    rng = np.random.default_rng(seed)
    rows = inputs if len(inputs) <= max_rows else inputs[np.sort(rng.choice(len(inputs), max_rows, replace=False))]

    def column(values: np.ndarray, is_categorical: bool) -> dict[str, Any]:
        if is_categorical:
            return compile_categorical(values, top_k=top_k, classes=classes)
        return compile_numeric(values, max_sample=max_sample, seed=seed)

    return {
        "format": REFERENCE_FORMAT,
        "n": len(inputs),
        "inputs": {name: column(inputs[:, i], name in categorical) for i, name in enumerate(feature_names)},
        "outputs": {key: column(values, np.asarray(values).dtype.kind in "iuUSOb")
                    for key, values in outputs.items()},
        "rows": {"columns": list(feature_names), "data": rows.astype(np.float64).tolist()},
    }


# --- loading (run time) -------------------------------------------------------------------------

class ReferenceUnavailable(Exception):
    """No usable reference; `reason` is the label the consumer counts the skipped event under."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts in the PSI bins: below the reference minimum, the quantile bins (np.histogram's:
    half-open, the last one closed; one [min, max] bin for a constant reference), above the max."""
    below = int(np.count_nonzero(values < edges[0]))
    above = int(np.count_nonzero(values > edges[-1]))
    if len(edges) == 1:
        inner = np.array([np.count_nonzero(values == edges[0])])
    else:
        inner = np.histogram(values, bins=edges)[0]
    return np.concatenate(([below], inner, [above])).astype(np.int64)


@dataclass(frozen=True)
class NumericReference:
    sample: np.ndarray  # float64, sorted ascending
    edges: np.ndarray  # the distinct quantile edges
    proportions: np.ndarray  # the sample's share of each PSI bin (bin_counts / n)
    scale: float  # Wasserstein normaliser: the sample's standard deviation, 1 if it is 0

    @classmethod
    def from_sample(cls, sample: np.ndarray, edges: np.ndarray | None = None, scale: float | None = None) -> NumericReference:
        sample = np.sort(np.asarray(sample, dtype=np.float64))
        if edges is None:
            edges = np.quantile(sample, np.linspace(0.0, 1.0, QUANTILES + 1))
        edges = np.unique(np.asarray(edges, dtype=np.float64))
        if scale is None:
            std = float(sample.std())
            scale = std if std > 0 else 1.0
        return cls(sample, edges, bin_counts(sample, edges) / len(sample), scale)


@dataclass(frozen=True)
class CategoricalReference:
    categories: tuple[str, ...]  # the top-K categories, then UNSEEN last
    frequencies: np.ndarray  # the share of each, summing to 1
    n: int  # training rows the frequencies came from; 0 if unknown (then taken as exact)
    index: dict[str, int] = field(default_factory=dict)  # category -> position (UNSEEN: last)

    @classmethod
    def from_frequencies(cls, frequencies: dict[str, float], unseen: float = 0.0, n: int = 0) -> CategoricalReference:
        cats = tuple(sorted(k for k in frequencies if k != UNSEEN)) + (UNSEEN,)
        freq = np.array([frequencies.get(c, 0.0) for c in cats[:-1]] + [unseen + frequencies.get(UNSEEN, 0.0)])
        total = freq.sum()
        if not len(freq) or freq.min() < 0 or not total > 0:
            raise ValueError("frequencies must be non-negative and sum to more than 0")
        return cls(cats, freq / total, n, {c: i for i, c in enumerate(cats)})

    def codes(self, values: np.ndarray) -> np.ndarray:
        """int32 bucket per value; categories outside the top K go to UNSEEN; None (missing) -1."""
        uniques, inverse = np.unique(values.astype(object), return_inverse=True) if values.dtype == object \
            else np.unique(values, return_inverse=True)
        unseen = len(self.categories) - 1
        lookup = np.array([-1 if (u is None or (isinstance(u, float) and np.isnan(u)))
                           else self.index.get(category_key(u), unseen) for u in uniques.tolist()], dtype=np.int32)
        return lookup[inverse.ravel()] if len(uniques) else np.empty(0, dtype=np.int32)


Distribution = NumericReference | CategoricalReference


@dataclass(frozen=True)
class OutputColumn:
    """One tested prediction column: a `[batch]` output, or one column of a `[batch, k]` one."""

    key: str  # the reference/report name, e.g. "label" or "probabilities[0]"
    tensor: str
    column: int | None  # None for a `[batch]` output
    reference: Distribution


@dataclass(frozen=True)
class Reference:
    model_name: str
    model_version: str
    input_name: str
    # Live values are cast through the declared dtype before widening to float64, so an FP32
    # value logged as "13.03" equals the reference's 13.029999732971191 (KS ties stay ties).
    input_dtype: np.dtype
    feature_names: tuple[str, ...]  # every column of the input, in order
    features: dict[str, Distribution]  # the columns that have a reference
    output_tensors: dict[str, tuple[np.dtype, int | None]]  # name -> (declared dtype, columns or None)
    outputs: tuple[OutputColumn, ...]
    rows: np.ndarray  # [n, features] joint training sample for the domain classifier (may be empty)

    @property
    def key(self) -> tuple[str, str]:
        return (self.model_name, self.model_version)

    @property
    def width(self) -> int:
        return len(self.feature_names)

    def column_values(self, col: OutputColumn, tensor: np.ndarray) -> np.ndarray:
        """A prediction column as tested: quantised float64 (NaN = missing) or category codes."""
        values = tensor if col.column is None else tensor[:, col.column]
        if isinstance(col.reference, CategoricalReference):
            return col.reference.codes(values)
        return quantize_prediction(values.astype(np.float64))


def _distribution(where: str, raw: Any, quantize: bool = False) -> Distribution:
    kind = raw.get("kind") if isinstance(raw, dict) else None
    if kind == "numeric":
        sample = np.asarray(raw["sample"], dtype=np.float64)
        if sample.ndim != 1 or sample.size == 0 or not np.isfinite(sample).all():
            raise ValueError(f"{where}.sample must be a non-empty list of finite numbers")
        if quantize:
            return NumericReference.from_sample(quantize_prediction(sample))
        return NumericReference.from_sample(sample, raw.get("quantile_edges"))
    if kind == "categorical":
        freqs = {str(k): float(v) for k, v in dict(raw["frequencies"]).items()}
        try:
            return CategoricalReference.from_frequencies(freqs, float(raw.get("unseen", 0.0)), int(raw.get("n", 0)))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    raise ValueError(f"{where}.kind must be 'numeric' or 'categorical', not {kind!r}")


def _split_key(key: str, classes: list[str]) -> tuple[str, int | None]:
    """`probabilities[<class>]` names a column by class label, mapped through `training.classes`."""
    match = _COLUMN_KEY.fullmatch(key)
    if match is None:
        return key, None
    tensor, label = match.groups()
    return tensor, classes.index(label) if label in classes else int(label)


def build_reference(mv: ModelVersion) -> Reference:
    where = f"{mv.directory}/model.json: reference"
    ref = mv.reference
    if not ref or not mv.inputs or not mv.inputs[0].feature_names:
        raise ReferenceUnavailable(
            "no_reference", f"{mv.key} has no reference statistics or no input feature_names; rebuild it"
        )
    spec = mv.inputs[0]
    try:
        ref_inputs = dict(ref.get("inputs", {}))
        features = {
            name: _distribution(f"{where}.inputs.{name}", ref_inputs[name])
            for name in spec.feature_names
            if name in ref_inputs
        }
        output_specs = {s.name: s for s in mv.outputs}
        classes = [str(c) for c in mv.training.get("classes", [])]
        outputs = []
        for key, raw in dict(ref.get("outputs", {})).items():
            tensor, column = _split_key(key, classes)
            if tensor not in output_specs:
                raise ValueError(f"{where}.outputs.{key} names no output of the model")
            outputs.append(OutputColumn(key, tensor, column, _distribution(f"{where}.outputs.{key}", raw, quantize=True)))
        rows = np.asarray(dict(ref.get("rows") or {}).get("data", []), dtype=np.float64)
        if rows.size and (rows.ndim != 2 or rows.shape[1] != len(spec.feature_names)):
            raise ValueError(f"{where}.rows.data must have one value per feature name")
    except (KeyError, TypeError, ValueError) as exc:
        raise ReferenceUnavailable("bad_reference", f"{mv.key}: {exc}") from None
    if not features:
        raise ReferenceUnavailable("no_reference", f"{where} covers none of the input's feature_names")
    tensors: dict[str, tuple[np.dtype, int | None]] = {}
    for col in outputs:
        spec_out = output_specs[col.tensor]
        width = None if col.column is None else _columns(spec_out.shape, col.column)
        tensors[col.tensor] = (V2_TO_NUMPY.get(spec_out.datatype, np.dtype(np.str_)), width)
    return Reference(
        model_name=mv.name, model_version=mv.version, input_name=spec.name,
        input_dtype=V2_TO_NUMPY.get(spec.datatype, np.dtype(np.float64)),
        feature_names=tuple(spec.feature_names), features=features,
        output_tensors=tensors, outputs=tuple(outputs),
        rows=rows.reshape(-1, len(spec.feature_names)),
    )


def _columns(shape: Any, column: int) -> int:
    """A `[batch, k]` output's k from its declared shape (at least column + 1 if undeclared)."""
    if isinstance(shape, (list, tuple)) and len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 0:
        return shape[1]
    return column + 1


class ReferenceStore:
    """Loads each version's reference once; remembers failures for `retry_seconds`."""

    def __init__(self, repository: ModelRepository, retry_seconds: float = 30.0):
        self.repository = repository
        self.retry_seconds = retry_seconds
        self._loaded: dict[tuple[str, str], Reference] = {}
        self._failed: dict[tuple[str, str], tuple[float, ReferenceUnavailable]] = {}

    def get(self, name: str, version: str) -> Reference:
        key = (name, version)
        ref = self._loaded.get(key)
        if ref is not None:
            return ref
        failed = self._failed.get(key)
        if failed is not None and time.monotonic() - failed[0] < self.retry_seconds:
            raise failed[1]
        try:
            ref = self._load(name, version)
        except ReferenceUnavailable as exc:
            if len(self._failed) >= _MAX_FAILED:  # event fields are untrusted: stay bounded
                self._failed.clear()
            self._failed[key] = (time.monotonic(), exc)
            raise
        self._failed.pop(key, None)
        self._loaded[key] = ref
        return ref

    def _load(self, name: str, version: str) -> Reference:
        if not (_SAFE_NAME.fullmatch(name) and _SAFE_NAME.fullmatch(version)):
            raise ReferenceUnavailable("unknown_model_version", f"{name!r}/{version!r} is not a model name/version")
        try:
            # verify=False: drift reads only model.json, never the model file
            mv = self.repository.load(name, version, verify=False)
        except ModelRepositoryError as exc:
            raise ReferenceUnavailable("unknown_model_version", str(exc)) from None
        return build_reference(mv)
