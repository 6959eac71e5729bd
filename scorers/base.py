"""What every runtime offers the worker loop: named arrays in, named arrays out."""
from __future__ import annotations

from typing import Protocol

import numpy as np


class Scorer(Protocol):
    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Score a batch; every output's first dimension is the batch when `batchable`."""

    @property
    def batchable(self) -> bool:
        """True when requests may be stacked along axis 0 and scored in one call."""
