"""Canary: the new version takes a growing share of traffic, and is rolled back by itself
when it breaks its error-rate or latency objective.

Each step is judged on its own calls only (at least `min_requests` of them), so a bad step is
caught even after good ones. Advancing happens by admin call, or after `step_seconds` when the
step has been judged healthy; a rollback sends all traffic to the stable version at once.
"""
from __future__ import annotations

import random
import time
from collections import deque
from typing import Callable

import numpy as np

from gateway.config import CanaryRoute
from gateway.routing.base import Policy
from gateway.routing.hashing import bucket
from gateway.routing.plan import Plan

LATENCY_SAMPLE = 2048  # latest canary latencies kept per step for the p99 check


class CanaryPolicy(Policy):
    route: CanaryRoute

    def __init__(self, route: CanaryRoute, uniform: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(route)
        self._uniform = uniform
        self._clock = clock
        self._start_step()

    def _start_step(self) -> None:
        self.calls = 0
        self.failures = 0
        self.latencies: deque[float] = deque(maxlen=LATENCY_SAMPLE)
        self._share = 0.0 if self.route.rolled_back else self.route.steps[self.route.step] / 100
        self._deadline = (self._clock() + self.route.step_seconds) if self.route.step_seconds else None

    @property
    def share(self) -> float:
        return self._share

    def plan(self, key: str | None = None) -> Plan:
        if self._deadline is not None and self._clock() >= self._deadline:
            self._deadline = None
            self.advance(by="schedule")
        step = f"canary:step={self.route.step + 1}/{len(self.route.steps)}"
        if self.route.rolled_back:
            return Plan("canary", self.route.stable, "canary:rolled_back", "arm")
        if key is not None and self.route.sticky is not None:
            point = bucket(f"canary:{self.route.canary}", key)
            how = "sticky"
        else:
            point = self._uniform()
            how = "random"
        version = self.route.canary if point < self._share else self.route.stable
        return Plan("canary", version, f"{step}:{how}={point:.4f}", "arm")

    def observe(self, version: str, ok: bool, latency_ms: float) -> None:
        if version != self.route.canary or self.route.rolled_back:
            return
        self.calls += 1
        self.failures += not ok
        self.latencies.append(latency_ms)
        broken = self.broken_objective()
        if broken:
            self.rollback(broken, by="objective")

    def broken_objective(self) -> str | None:
        objectives = self.route.objectives
        if self.calls < objectives.min_requests:
            return None
        error_rate = self.failures / self.calls
        if error_rate > objectives.max_error_rate:
            return f"error rate {error_rate:.3f} over {self.calls} calls > {objectives.max_error_rate}"
        if objectives.max_p99_ms is not None:
            p99 = float(np.percentile(np.fromiter(self.latencies, float), 99))
            if p99 > objectives.max_p99_ms:
                return f"latency p99 {p99:.1f} ms over {len(self.latencies)} calls > {objectives.max_p99_ms} ms"
        return None

    def advance(self, by: str) -> bool:
        """Next step; refused (False) when rolled back, at the last step, or the step is unhealthy."""
        if self.route.rolled_back or self.route.step + 1 >= len(self.route.steps) or self.broken_objective():
            return False
        before = self.route
        self.route = before.model_copy(update={"step": before.step + 1})
        self._start_step()
        self._changed(f"canary_advance:{by}", before, self.route)
        return True

    def rollback(self, why: str, by: str) -> None:
        before = self.route
        self.route = before.model_copy(update={"rolled_back": why})
        self._start_step()
        self._changed(f"canary_rollback:{by}", before, self.route)

    def state(self) -> dict:
        return {"share": self._share, "step_calls": self.calls, "step_failures": self.failures,
                "rolled_back": self.route.rolled_back}
