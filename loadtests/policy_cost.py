"""What routing and logging add to each request in the gateway's loop: `plan()` of every policy,
remembering the prediction for the feedback join, and building and framing the two event records
of a shadowed request (what the loop does at each flush to the event shipper); timed in process
(`python -m loadtests.policy_cost`). Microseconds per call."""
from __future__ import annotations

import timeit

import numpy as np

import time

from gateway.codecs.v2 import InferRequest
from gateway.config import ROUTE
from gateway.events.records import event_from, new_id, to_frame
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

    rng = np.random.default_rng(0)
    row = rng.random((1, 13), dtype=np.float32)
    outputs = {v: {"label": np.array([i]), "probabilities": rng.random((1, 3), dtype=np.float32)} for i, v in
               enumerate(("1", "2"))}
    action = {"probabilities": outputs["1"]["probabilities"]}

    def log_shadowed_request() -> bytes:
        request = InferRequest(new_id(), {"input": row}, 1)  # a new request: its inputs serialised once
        frames = b""
        for version, role in (("1", "champion"), ("2", "challenger")):
            meta = {"ts": time.time(), "request_id": request.id, "model_name": "wine", "model_version": version,
                    "role": role, "route": "shadow", "arm": version, "reason": plan.reason,
                    "served": role == "champion", "status": "ok", "error": None, "latency_ms": 1.234,
                    "instance": "bench", "sample_rate": 1.0, "action_version": "1"}
            frames += to_frame(event_from(meta, request, outputs[version], action))
        return frames

    print(f"log a shadowed request (2 records): {timeit.timeit(log_shadowed_request, number=calls) / calls * 1e6:.2f} us")


if __name__ == "__main__":
    main()
