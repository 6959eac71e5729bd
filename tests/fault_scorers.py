"""Custom scorers that misbehave on purpose, loaded by worker processes in the fault tests."""
from __future__ import annotations

import time

import numpy as np


class Raising:
    batchable = False

    def __init__(self, directory, message: str = "challenger exploded"):
        self.message = message

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError(self.message)


class Slow:
    batchable = False

    def __init__(self, directory, seconds: float = 2.0):
        self.seconds = seconds

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(self.seconds)
        rows = next(iter(inputs.values())).shape[0]
        return {"label": np.zeros(rows, dtype=np.int64)}
