"""A/B split: every request goes to exactly one version, by weight.

Random, or sticky: the key's salted hash picks a point in [0, 1) and the weights lay the arms
end to end over that interval, so a key keeps its arm on every replica for as long as the
weights stay the same.
"""
from __future__ import annotations

import random
from typing import Callable

from gateway.config import ABRoute
from gateway.routing.base import Policy
from gateway.routing.hashing import WeightedChoice, bucket
from gateway.routing.plan import Plan


class ABPolicy(Policy):
    def __init__(self, route: ABRoute, uniform: Callable[[], float] = random.random):
        super().__init__(route)
        self.choice = WeightedChoice(list(route.weights.items()))
        self._uniform = uniform

    def plan(self, key: str | None = None) -> Plan:
        if key is not None and self.route.sticky is not None:
            point = bucket(self.route.experiment, key)
            return Plan("ab", self.choice.at(point), f"sticky:bucket={point:.4f}", "arm")
        arm, point = self.choice.draw(self._uniform)
        return Plan("ab", arm, f"random:draw={point:.4f}", "arm")
