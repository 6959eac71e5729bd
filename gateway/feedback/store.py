"""Predictions remembered until their ground truth arrives, bounded in count and age.

Only what the join needs is kept (who answered, under which policy and arm, and each scored
version's first output); the event log holds everything else. When full, the oldest go first.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass(slots=True)
class Pending:
    model: str
    experiment: str
    policy: str
    arm: str  # the version whose answer the caller got
    reason: str
    at: float  # monotonic seconds, for the age limit
    predictions: dict[str, np.ndarray] = field(default_factory=dict)  # version -> first output


class PredictionStore:
    def __init__(self, max_pending: int, ttl_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.max_pending = max_pending
        self.ttl = ttl_seconds
        self._clock = clock
        self._pending: OrderedDict[str, Pending] = OrderedDict()
        self.evicted = 0  # forgotten before any feedback came: full, or too old

    def __len__(self) -> int:
        return len(self._pending)

    def remember(self, request_id: str, model: str, experiment: str, policy: str, arm: str, reason: str,
                 prediction: np.ndarray) -> None:
        pending = self._pending
        if len(pending) >= self.max_pending:
            pending.popitem(last=False)
            self.evicted += 1
        pending[request_id] = Pending(model, experiment, policy, arm, reason, self._clock(), {arm: prediction})

    def add_prediction(self, request_id: str, version: str, prediction: np.ndarray) -> None:
        """A challenger's answer, which arrives after the champion's."""
        pending = self._pending.get(request_id)
        if pending is not None:
            pending.predictions[version] = prediction

    def take(self, request_id: str) -> Pending | None:
        """The prediction, removed (feedback is joined once); None if unknown here or too old."""
        pending = self._pending.pop(request_id, None)
        if pending is not None and self._clock() - pending.at > self.ttl:
            self.evicted += 1
            return None
        return pending

    def restore(self, request_id: str, pending: Pending) -> None:
        """Puts back a prediction whose feedback was refused, so corrected feedback can still join."""
        self._pending[request_id] = pending

    def holds(self, request_id: str) -> bool:
        return request_id in self._pending
