"""A model version's training-time reference statistics, as arrays ready for the drift tests.

Parsed once per (name, version) from the `reference` block of `model.json`
(docs/model-repository.md), so no window ever re-parses JSON or re-sorts a sample.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.codecs.datatypes import V2_TO_NUMPY
from gateway.models.repository import ModelRepository, ModelRepositoryError, ModelVersion

_COLUMN_KEY = re.compile(r"(.+)\[([^\[\]]+)\]")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_MAX_FAILED = 1024


class ReferenceUnavailable(Exception):
    """No usable reference; `reason` is the label the consumer counts the skipped event under."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


PREDICTION_DECIMALS = 5


def quantize_prediction(values: np.ndarray) -> np.ndarray:
    """Numeric predictions compared at 1e-5: a tree ensemble's float32 sums differ by a few ulps
    with the batch size the worker happened to use (1.0000001 vs 0.99999994), and on a column
    with many ties at exact values (0, 1, k/n_trees) that jitter alone makes KS flag drift."""
    return np.round(values, PREDICTION_DECIMALS)


@dataclass(frozen=True)
class NumericReference:
    sample: np.ndarray  # float64, sorted ascending


@dataclass(frozen=True)
class CategoricalReference:
    frequencies: dict[str, float]  # normalised to sum to 1


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
    # Declared dtypes (strings for BYTES), so every event's blocks of one column concatenate.
    output_dtypes: dict[str, np.dtype]
    outputs: tuple[OutputColumn, ...]


def _distribution(where: str, raw: Any) -> Distribution:
    kind = raw.get("kind") if isinstance(raw, dict) else None
    if kind == "numeric":
        sample = np.sort(np.asarray(raw["sample"], dtype=np.float64))
        if sample.ndim != 1 or sample.size == 0 or not np.isfinite(sample).all():
            raise ValueError(f"{where}.sample must be a non-empty list of finite numbers")
        return NumericReference(sample)
    if kind == "categorical":
        freqs = {str(k): float(v) for k, v in dict(raw["frequencies"]).items()}
        total = sum(freqs.values())
        if not freqs or min(freqs.values()) < 0 or not total > 0:
            raise ValueError(f"{where}.frequencies must be non-negative and sum to more than 0")
        return CategoricalReference({k: v / total for k, v in freqs.items()})
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
            distribution = _distribution(f"{where}.outputs.{key}", raw)
            if isinstance(distribution, NumericReference):
                distribution = NumericReference(quantize_prediction(distribution.sample))
            outputs.append(OutputColumn(key, tensor, column, distribution))
    except (KeyError, TypeError, ValueError) as exc:
        raise ReferenceUnavailable("bad_reference", f"{mv.key}: {exc}") from None
    if not features:
        raise ReferenceUnavailable("no_reference", f"{where} covers none of the input's feature_names")
    return Reference(
        model_name=mv.name,
        model_version=mv.version,
        input_name=spec.name,
        input_dtype=V2_TO_NUMPY.get(spec.datatype, np.dtype(np.float64)),
        feature_names=spec.feature_names,
        features=features,
        output_dtypes={
            t: V2_TO_NUMPY.get(output_specs[t].datatype, np.dtype(np.str_)) for t in {c.tensor for c in outputs}
        },
        outputs=tuple(outputs),
    )


class ReferenceStore:
    """Loads each version's reference once; remembers failures for `retry_seconds`.

    Remembering failures keeps a stream of events for an unknown version from hitting the disk
    once per event, while a version deployed later is still picked up.
    """

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
