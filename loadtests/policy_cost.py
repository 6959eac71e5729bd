"""What routing and logging add to each request in the gateway's loop: `plan()` of every policy,
remembering the prediction for the feedback join, and framing the two scoring events of a
shadowed request for the event shipper, as their workers wrote them (the 2 ms flush, 100
requests a frame; with hot caches, so a floor); what the workers spend writing those events;
and what the shipper then spends building their Kafka records. Timed in process (`python -m loadtests.policy_cost`), microseconds
per call."""
from __future__ import annotations

import time
import timeit

import numpy as np
import orjson

from gateway.config import ROUTE
from gateway.events.handover import answered_event, context, frame, wires_from_batches
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


# The demo wine route's two calls of a shadowed request, as the gateway's loop describes their
# events to the workers (handover.context): the champion's and the shadow challenger's.
_CONTEXTS = {version: context("bench", "wine", version, role, "shadow", role == "champion", 1.0, "probabilities")
             for version, role in (("1", "champion"), ("2", "challenger"))}
Outputs = dict[str, dict[str, np.ndarray]]  # each version's outputs of one request


def shadowed_request() -> tuple[np.ndarray, Outputs]:
    """A shadowed request on the demo wine route: its input row and each version's outputs."""
    rng = np.random.default_rng(0)
    return _shadowed(rng.random((1, 13), dtype=np.float32), {"1": np.array([0]), "2": np.array([1])}, rng)


def standard_mix(count: int = 512, seed: int = 1) -> list[tuple[np.ndarray, Outputs]]:
    """`count` shadowed requests as `shadowed_request` gives one, with the `standard` scenario's
    mix of rows (90% one row, 10% 2-20) of demo wines from the train range."""
    from gateway.models.demo import sample_wines

    rng = np.random.default_rng(seed)
    sizes = [1 if rng.random() < 0.9 else int(rng.integers(2, 21)) for _ in range(count)]
    wines = sample_wines("train", sum(sizes), seed=seed).astype(np.float32)
    starts = np.cumsum([0, *sizes[:-1]]).tolist()
    return [_shadowed(wines[start:start + size], {v: rng.integers(0, 3, size=size) for v in ("1", "2")}, rng)
            for start, size in zip(starts, sizes)]


def _shadowed(rows: np.ndarray, labels: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, Outputs]:
    return rows, {v: {"label": labels[v], "probabilities": rng.random((len(rows), 3), dtype=np.float32)}
                  for v in ("1", "2")}


def worker_events(request_id: str, row: np.ndarray, outputs: Outputs) -> list[bytes]:
    """The parts of a shadowed request's two events as its workers write them
    (handover.answered_event, from what the loop sent them, read back from JSON as a worker
    reads it): the champion's, then the challenger's, which holds the champion's action."""
    sent, inputs = time.monotonic(), {"input": row}
    fields, log, action = answered_event([_CONTEXTS["1"].values, request_id, "champion", None, sent], inputs,
                                         outputs["1"])
    shadow = answered_event([_CONTEXTS["2"].values, request_id, "shadow", orjson.loads(action), sent], inputs,
                            outputs["2"])
    return [fields, log, *shadow[:2]]


def handed_over(count: int, row: np.ndarray, outputs: Outputs) -> bytes:
    """What the gateway's loop hands the shipper for `count` such requests (new ids): one frame."""
    return frame([part for _ in range(count) for part in worker_events(new_id(), row, outputs)])


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

    request = shadowed_request()
    batch = 100
    rounds = calls // batch
    workers_us = timeit.timeit(lambda: worker_events(new_id(), *request), number=calls) / calls * 1e6
    print(f"write a shadowed request's 2 events, its workers: {workers_us:.2f} us")
    written = [worker_events(new_id(), *request) for _ in range(batch)]
    loop_us = timeit.timeit(lambda: frame([part for parts in written for part in parts]),
                            number=rounds) / (rounds * batch) * 1e6
    print(f"frame a shadowed request's 2 events for the shipper, gateway loop: {loop_us:.2f} us")
    one_frame = handed_over(batch, *request)
    shipper_us = timeit.timeit(lambda: wires_from_batches(one_frame, "scoring.events"), number=rounds) / (rounds * batch) * 1e6
    print(f"build its 2 Kafka records, event shipper: {shipper_us:.2f} us")


if __name__ == "__main__":
    main()
