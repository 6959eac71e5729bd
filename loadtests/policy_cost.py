"""What routing and logging add to each request in the gateway's loop: `plan()` of every policy,
remembering the prediction for the feedback join, and handing the two scoring events of a
shadowed request to the event shipper (what `_log` and the 2 ms flush do: a row of fields per
event kept beside the workers' scoring logs, the rows of 100 requests serialised in one call
and framed; with hot caches, so a floor); and what the shipper then spends
building their Kafka records. Timed in process (`python -m loadtests.policy_cost`), microseconds
per call."""
from __future__ import annotations

import time
import timeit

import numpy as np

from gateway.codecs.v2 import InferRequest
from gateway.config import ROUTE
from gateway.events.handover import frame, log_of, wires_from_batches
from gateway.events.records import event_row, new_id, rows_json
from gateway.experiments.tracker import ExperimentTracker
from gateway.feedback.hub import FeedbackHub
from gateway.feedback.store import PredictionStore
from gateway.parallel.pool import Prediction
from gateway.routing import build_policy
from scorers.protocol import scoring_log

ROUTES = {
    "shadow": {"policy": "shadow", "champion": "1", "challengers": [{"version": "2"}]},
    "ab (random)": {"policy": "ab", "experiment": "e", "weights": {"1": 1, "2": 1}},
    "ab (sticky)": {"policy": "ab", "experiment": "e", "weights": {"1": 1, "2": 1}, "sticky": {}},
    "canary": {"policy": "canary", "stable": "1", "canary": "2"},
    "bandit (thompson_beta)": {"policy": "bandit", "experiment": "b", "arms": ["1", "2"]},
}


def shadowed_events(request_id: str, action: dict) -> list[tuple[str, tuple]]:
    """(version, row) of a shadowed request's two events on the demo wine route, the rows (records.FIELDS'
    values) as gateway.service._log writes them."""
    return [(version, event_row(
        ts_ms=time.time_ns() // 1_000_000, request_id=request_id, gateway_instance="bench", model_name="wine",
        model_version=version, role=role, route="shadow", arm=version, reason="shadow", served=role == "champion",
        status="ok", error=None, action=action, latency_ms=int(1.2345 * 1000) / 1000, sample_rate=1.0))
            for version, role in (("1", "champion"), ("2", "challenger"))]


def shadowed_request() -> tuple[np.ndarray, dict[str, Prediction], dict]:
    """A shadowed request on the demo wine route: its input row, each version's prediction with
    the scoring log its worker writes, and the action served (version 1's probabilities)."""
    rng = np.random.default_rng(0)
    return _shadowed(rng.random((1, 13), dtype=np.float32), {"1": np.array([0]), "2": np.array([1])}, rng)


def standard_mix(count: int = 512, seed: int = 1) -> list[tuple[np.ndarray, dict[str, Prediction], dict]]:
    """`count` shadowed requests as `shadowed_request` gives one, with the `standard` scenario's
    mix of rows (90% one row, 10% 2-20) of demo wines from the train range."""
    from gateway.models.demo import sample_wines

    rng = np.random.default_rng(seed)
    sizes = [1 if rng.random() < 0.9 else int(rng.integers(2, 21)) for _ in range(count)]
    wines = sample_wines("train", sum(sizes), seed=seed).astype(np.float32)
    starts = np.cumsum([0, *sizes[:-1]]).tolist()
    return [_shadowed(wines[start:start + size], {v: rng.integers(0, 3, size=size) for v in ("1", "2")}, rng)
            for start, size in zip(starts, sizes)]


def _shadowed(rows: np.ndarray, labels: dict[str, np.ndarray],
              rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Prediction], dict]:
    outputs = {v: {"label": labels[v], "probabilities": rng.random((len(rows), 3), dtype=np.float32)} for v in ("1", "2")}
    predictions = {v: Prediction(o, 1.0, len(rows), scoring_log({"input": rows}, o)) for v, o in outputs.items()}
    return rows, predictions, {"model_version": "1", "outputs": {"probabilities": outputs["1"]["probabilities"]}}


def handed_over(count: int, row: np.ndarray, predictions: dict[str, Prediction], action: dict) -> bytes:
    """What the gateway's loop hands the shipper for `count` such requests (new ids): one frame."""
    rows: list[tuple] = []
    logs: list[bytes] = []
    for _ in range(count):
        request = InferRequest(new_id(), {"input": row}, 1)
        for version, event in shadowed_events(request.id, action):
            rows.append(event)
            logs.append(log_of(request, predictions[version]))
    return frame(rows_json(rows), logs)


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
    gateway_us = timeit.timeit(lambda: handed_over(batch, *request), number=rounds) / (rounds * batch) * 1e6
    print(f"log a shadowed request (2 events), gateway loop: {gateway_us:.2f} us")
    one_frame = handed_over(batch, *request)
    shipper_us = timeit.timeit(lambda: wires_from_batches(one_frame, "scoring.events"), number=rounds) / (rounds * batch) * 1e6
    print(f"build its 2 Kafka records, event shipper: {shipper_us:.2f} us")


if __name__ == "__main__":
    main()
