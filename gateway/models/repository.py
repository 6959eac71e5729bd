"""The model repository on disk: `<root>/<model>/<version>/model.json` beside the model file.

`model.json` is the one place that says what a model version expects, returns and was trained
on, so serving, logging and drift all read the same facts (see docs/model-repository.md).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

METADATA_FILE = "model.json"
METADATA_SCHEMA_VERSION = 1


class ModelRepositoryError(Exception):
    """A model version that cannot be served; the message names the file and the fix."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # Open Inference Protocol datatype, e.g. "FP32"
    shape: tuple[int, ...]  # -1 for a variable dimension (the batch)
    feature_names: tuple[str, ...] | None = None  # column names of a [batch, n] input


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    directory: Path
    model_file: Path
    sha256: str
    runtime: str  # "onnx", or "python:<module>:<class>" for a custom scorer
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    training: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)  # passed to a custom scorer

    @property
    def key(self) -> str:
        return f"{self.name}/{self.version}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tensor(meta_path: Path, where: str, raw: Any) -> TensorSpec:
    if not isinstance(raw, dict) or "name" not in raw or "datatype" not in raw or "shape" not in raw:
        raise ModelRepositoryError(
            f"{meta_path}: {where} must be an object with 'name', 'datatype' and 'shape'"
        )
    names = raw.get("feature_names")
    return TensorSpec(
        name=str(raw["name"]),
        datatype=str(raw["datatype"]),
        shape=tuple(int(d) for d in raw["shape"]),
        feature_names=tuple(str(n) for n in names) if names else None,
    )


class ModelRepository:
    """Reads model versions from a directory tree; verifies each model file's checksum."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def list(self) -> list[tuple[str, str]]:
        if not self.root.is_dir():
            return []
        return sorted(
            (meta.parent.parent.name, meta.parent.name)
            for meta in self.root.glob(f"*/*/{METADATA_FILE}")
        )

    def load(self, name: str, version: str, verify: bool = True) -> ModelVersion:
        directory = self.root / name / version
        meta_path = directory / METADATA_FILE
        if not meta_path.is_file():
            raise ModelRepositoryError(
                f"{meta_path}: not found; build the demo models with "
                f"'gateway models build-demo --repository {self.root}' or fix the name/version"
            )
        try:
            meta = orjson.loads(meta_path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise ModelRepositoryError(f"{meta_path}: invalid JSON ({exc})") from None
        for key in ("file", "inputs", "outputs"):
            if key not in meta:
                raise ModelRepositoryError(f"{meta_path}: missing key '{key}'")
        model_file = directory / meta["file"]
        runtime = str(meta.get("runtime", "onnx"))
        sha = str(meta.get("sha256", ""))
        if runtime == "onnx":
            if not model_file.is_file():
                raise ModelRepositoryError(f"{meta_path}: model file {model_file} does not exist")
            if verify:
                actual = sha256_of(model_file)
                if actual != sha:
                    raise ModelRepositoryError(
                        f"{meta_path}: sha256 of {model_file.name} is {actual}, metadata says "
                        f"{sha or '(none)'}; the file changed after the metadata was written: rebuild it"
                    )
        return ModelVersion(
            name=name,
            version=version,
            directory=directory,
            model_file=model_file,
            sha256=sha,
            runtime=runtime,
            inputs=tuple(_tensor(meta_path, f"inputs[{i}]", t) for i, t in enumerate(meta["inputs"])),
            outputs=tuple(_tensor(meta_path, f"outputs[{i}]", t) for i, t in enumerate(meta["outputs"])),
            training=dict(meta.get("training", {})),
            reference=dict(meta.get("reference", {})),
            parameters=dict(meta.get("parameters", {})),
        )
