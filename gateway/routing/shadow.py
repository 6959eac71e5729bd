"""Champion/challenger ("shadow") routing: the champion answers, challengers score in the dark.

A challenger may see only a random fraction of requests; which ones is decided here, so the
scoring service just carries out the plan.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from gateway.config import ShadowRoute


@dataclass(frozen=True)
class ShadowCall:
    version: str
    timeout: float  # seconds
    max_in_flight: int


@dataclass(frozen=True)
class Plan:
    policy: str  # recorded in every event as `route`
    serve: str  # the version whose answer the caller gets
    shadows: tuple[ShadowCall, ...] = ()


class ShadowPolicy:
    name = "shadow"

    def __init__(self, route: ShadowRoute, uniform: Callable[[], float] = random.random):
        self.champion = route.champion
        self._challengers = [
            (c.fraction, ShadowCall(c.version, c.timeout_ms / 1000, c.max_in_flight)) for c in route.challengers
        ]
        self._uniform = uniform

    @property
    def versions(self) -> set[str]:
        return {self.champion, *(call.version for _, call in self._challengers)}

    def plan(self) -> Plan:
        shadows = tuple(call for fraction, call in self._challengers if fraction >= 1.0 or self._uniform() < fraction)
        return Plan(self.name, self.champion, shadows)
