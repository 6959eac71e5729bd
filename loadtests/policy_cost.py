"""What routing adds to each request: `plan()` of every policy and remembering the prediction for
the feedback join, timed in process (`python -m loadtests.policy_cost`). Microseconds per call."""
from __future__ import annotations

import timeit

import numpy as np

from gateway.config import ROUTE
from gateway.events.records import new_id
from gateway.experiments.tracker import ExperimentTracker
from gateway.feedback.hub import FeedbackHub
from gateway.feedback.store import PredictionStore
from gateway.routing import build_policy

ROUTES = {
    "shadow": {"policy": "shadow", "champion": "1", "challengers": [{"version": "2"}]},
    "ab (random)": {"policy": "ab", "experiment": "e", "weights": {"1": 1, "2": 1}},
    "ab (sticky)": {"policy": "ab", "experiment": "e", "weights": {"1": 1, "2": 1}, "sticky": {}},
    "canary": {"policy": "canary", "stable": "1", "canary": "2"},
    "bandit (thompson_beta)": {"policy": "bandit", "experiment": "b", "arms": ["1", "2"]},
}


def main(calls: int = 100_000) -> None:
    tracker = ExperimentTracker()
    for name, route in ROUTES.items():
        policy = build_policy(ROUTE.validate_python(route), tracker.bandit_state)
        print(f"plan, {name}: {timeit.timeit(lambda: policy.plan('customer-1'), number=calls) / calls * 1e6:.2f} us")
    hub = FeedbackHub(PredictionStore(100_000, 3600), tracker, "bench")
    label = np.array([1])
    plan = build_policy(ROUTE.validate_python(ROUTES["shadow"]), tracker.bandit_state).plan()
    remember = lambda: hub.remember(new_id(), "wine", "wine:shadow", plan.policy, plan.serve, plan.reason, label.copy())
    print(f"remember a prediction: {timeit.timeit(remember, number=calls) / calls * 1e6:.2f} us")


if __name__ == "__main__":
    main()
