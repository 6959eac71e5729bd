"""Champion/challenger ("shadow") routing: the champion answers, challengers score in the dark.

A challenger may see only a random fraction of requests; which ones is decided here, so the
scoring service just carries out the plan.
"""
from __future__ import annotations

import random
from typing import Callable

from gateway.config import ShadowRoute
from gateway.routing.base import Policy
from gateway.routing.plan import Plan, ShadowCall


class ShadowPolicy(Policy):
    def __init__(self, route: ShadowRoute, uniform: Callable[[], float] = random.random):
        super().__init__(route)
        self._challengers = [
            (c.fraction, ShadowCall(c.version, c.timeout_ms / 1000, c.max_in_flight)) for c in route.challengers
        ]
        self._uniform = uniform

    @property
    def default_version(self) -> str:
        return self.route.champion

    def plan(self, key: str | None = None) -> Plan:
        shadows = tuple(call for fraction, call in self._challengers if fraction >= 1.0 or self._uniform() < fraction)
        return Plan("shadow", self.route.champion, "champion", "champion", shadows)
