"""Custom scorers written in Python (`runtime: python:<module>:<Class>` in model.json).

The class is built with the model version's directory and its metadata `parameters`, and must
offer `predict(inputs) -> outputs` over named numpy arrays (see scorers.base.Scorer).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from .base import Scorer


def load_python_scorer(spec: str, directory: Path, parameters: dict[str, Any]) -> Scorer:
    try:
        _, module_name, class_name = spec.split(":")
    except ValueError:
        raise ValueError(f"runtime '{spec}' must look like python:<module>:<Class>") from None
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(directory=directory, **parameters)
