"""Routing policies: which version answers a request, which score it in the dark, and why.

One module per policy; `build_policy` turns a route from the config (or the admin API) into
the policy object the scoring service asks for a plan on every request.
"""
from __future__ import annotations

from typing import Callable

from gateway.config import ABRoute, BanditRoute, BlueGreenRoute, CanaryRoute, ShadowRoute
from gateway.experiments.bandits import BanditState
from gateway.routing.bandit import BanditRoutePolicy
from gateway.routing.base import Policy
from gateway.routing.bluegreen import BlueGreenPolicy
from gateway.routing.canary import CanaryPolicy
from gateway.routing.plan import Plan, ShadowCall
from gateway.routing.shadow import ShadowPolicy
from gateway.routing.split import ABPolicy


def experiment_name(model: str, route) -> str:
    """Experiments are named by config (ab, bandit) or after the model and policy."""
    return getattr(route, "experiment", None) or f"{model}:{route.policy}"


def build_policy(route, bandit_state: Callable[[str], BanditState]) -> Policy:
    if isinstance(route, ShadowRoute):
        return ShadowPolicy(route)
    if isinstance(route, ABRoute):
        return ABPolicy(route)
    if isinstance(route, CanaryRoute):
        return CanaryPolicy(route)
    if isinstance(route, BlueGreenRoute):
        return BlueGreenPolicy(route)
    if isinstance(route, BanditRoute):
        return BanditRoutePolicy(route, bandit_state(route.experiment))
    raise TypeError(f"no policy for route {route!r}")


__all__ = ["Plan", "Policy", "ShadowCall", "build_policy", "experiment_name"]
