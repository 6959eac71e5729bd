"""What a routing policy decides for one request: who answers, who scores in the dark, and why."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ShadowCall:
    version: str
    timeout: float  # seconds
    max_in_flight: int


@dataclass(frozen=True)
class Plan:
    policy: str  # recorded in every event as `route`
    serve: str  # the version whose answer the caller gets
    reason: str  # why `serve` was chosen, recorded in every event
    role: str = "champion"  # champion (shadow), arm (ab, canary, blue_green, bandit) or direct
    shadows: tuple[ShadowCall, ...] = ()
