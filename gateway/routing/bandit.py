"""Bandit routing: each request goes to the arm the bandit picks; rewards arrive later as
feedback, joined by request id, and land in the experiment's shared state (gateway.experiments)."""
from __future__ import annotations

import numpy as np

from gateway.config import BanditRoute
from gateway.experiments.bandits import BanditState, make_policy
from gateway.routing.base import Policy
from gateway.routing.plan import Plan


def _reason(algorithm: str, reason: dict) -> str:
    details = ",".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in reason.items() if k != "rule")
    return f"{algorithm}:{reason.get('rule', '')}" + (f":{details}" if details else "")


class BanditRoutePolicy(Policy):
    route: BanditRoute

    def __init__(self, route: BanditRoute, state: BanditState, rng: np.random.Generator | None = None):
        super().__init__(route)
        params = {"epsilon": route.epsilon} if route.algorithm == "epsilon_greedy" else {}
        self.bandit = make_policy(route.algorithm, route.arms, state, **params)
        self._rng = rng if rng is not None else np.random.default_rng()

    def plan(self, key: str | None = None) -> Plan:
        arm, reason = self.bandit.choose(self._rng)
        return Plan("bandit", arm, _reason(self.route.algorithm, reason), "arm")

    def state(self) -> dict:
        return self.bandit.snapshot(self._rng)
