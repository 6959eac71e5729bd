"""Routing policies without a gateway: sticky buckets, weight splits, canary judgement and
schedule, route validation messages, the prediction store's bounds and the feedback join."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from gateway.config import ROUTE, ABRoute, CanaryRoute, ModelConfig
from gateway.errors import BadRequest
from gateway.feedback.join import Feedback, JoinError, join, parse_feedback_body
from gateway.feedback.store import PredictionStore
from gateway.routing.canary import CanaryPolicy
from gateway.routing.hashing import WeightedChoice, bucket
from gateway.routing.split import ABPolicy


def test_buckets_are_stable_salted_and_uniform():
    assert bucket("exp-1", "customer-42") == bucket("exp-1", "customer-42")
    assert bucket("exp-1", "customer-42") != bucket("exp-2", "customer-42")
    points = np.array([bucket("exp-1", f"k{i}") for i in range(20_000)])
    assert points.min() >= 0 and points.max() < 1
    counts, _ = np.histogram(points, bins=10, range=(0, 1))
    assert counts.min() > 1800 and counts.max() < 2200  # about 2,000 per decile


def test_weighted_choice_lays_arms_end_to_end_and_skips_zero_weights():
    choice = WeightedChoice([("a", 1), ("b", 0), ("c", 3)])
    assert [choice.at(p) for p in (0.0, 0.2499, 0.25, 0.99999)] == ["a", "a", "c", "c"]
    assert choice.shares == {"a": 0.25, "b": 0.0, "c": 0.75}


def test_sticky_key_keeps_its_arm_and_random_draws_follow_the_weights():
    policy = ABPolicy(ABRoute(policy="ab", experiment="e", weights={"1": 20, "2": 80}, sticky={}))
    assert {policy.plan("customer-7").serve for _ in range(50)} == {policy.plan("customer-7").serve}
    draws = iter(np.random.default_rng(1).random(10_000))
    random_policy = ABPolicy(ABRoute(policy="ab", experiment="e", weights={"1": 20, "2": 80}),
                             uniform=lambda: next(draws))
    counts = Counter(random_policy.plan(None).serve for _ in range(10_000))
    assert abs(counts["1"] / 10_000 - 0.2) < 0.015


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def canary(**overrides) -> tuple[CanaryPolicy, list]:
    route = CanaryRoute(**{"policy": "canary", "stable": "1", "canary": "2", "steps": [10, 50, 100],
                           "objectives": {"max_error_rate": 0.1, "max_p99_ms": 100, "min_requests": 20},
                           **overrides})
    clock = Clock()
    policy = CanaryPolicy(route, uniform=lambda: 0.05, clock=clock)  # 0.05 < 10%: every draw hits the canary
    changes = []
    policy.on_change = lambda action, before, after: changes.append((action, before.step, after.step))
    policy.clock = clock
    return policy, changes


def test_canary_is_judged_only_after_min_requests_and_rolls_back_on_errors():
    policy, changes = canary()
    for _ in range(19):
        policy.observe("2", ok=False, latency_ms=1.0)
    assert policy.plan().serve == "2" and not changes  # 19 < min_requests: not judged yet
    policy.observe("2", ok=False, latency_ms=1.0)
    assert policy.plan().serve == "1" and policy.plan().reason == "canary:rolled_back"
    assert changes == [("canary_rollback:objective", 0, 0)]
    assert policy.route.rolled_back.startswith("error rate 1.000")


def test_canary_rolls_back_on_latency_and_ignores_the_stable_versions_calls():
    policy, changes = canary()
    for _ in range(100):
        policy.observe("1", ok=False, latency_ms=500.0)  # the stable version's trouble is not the canary's
    assert not changes
    for i in range(30):
        policy.observe("2", ok=True, latency_ms=500.0 if i % 10 == 0 else 5.0)
    assert changes and policy.route.rolled_back.startswith("latency p99")


def test_canary_advances_on_schedule_only_when_healthy():
    policy, changes = canary(step_seconds=60)
    policy.clock.now = 59
    assert policy.plan().reason.startswith("canary:step=1/3")
    policy.clock.now = 60
    assert policy.plan().reason.startswith("canary:step=2/3") and policy.share == 0.5
    assert changes == [("canary_advance:schedule", 0, 1)]
    for _ in range(20):
        policy.observe("2", ok=False, latency_ms=1.0)  # breaks the objective: rolled back, no more steps
    policy.clock.now = 1000
    assert policy.plan().serve == "1" and policy.advance(by="admin") is False


@pytest.mark.parametrize("route, message", [
    ({"policy": "ab", "experiment": "e", "weights": {"1": 1}}, "at least two versions"),
    ({"policy": "ab", "experiment": "e", "weights": {"1": 0, "2": 0}}, "not all zero"),
    ({"policy": "canary", "stable": "1", "canary": "2", "steps": [50, 10]}, "increasing order"),
    ({"policy": "canary", "stable": "1", "canary": "1"}, "different versions"),
    ({"policy": "blue_green", "active": "2", "standby": "2"}, "different versions"),
    ({"policy": "bandit", "experiment": "b", "arms": ["1", "1"]}, "distinct"),
    ({"policy": "bandit", "experiment": "b", "arms": ["1", "2"], "algorithm": "ucb2"}, "ucb1"),
    ({"policy": "lottery"}, "shadow"),
])
def test_invalid_routes_are_refused_with_the_reason(route, message):
    with pytest.raises(ValidationError, match=message):
        ROUTE.validate_python(route)


def test_a_route_naming_an_undeployed_version_names_the_key():
    with pytest.raises(ValidationError, match=r"route.weights.3 '3' is not one of the deployed versions: 1, 2"):
        ModelConfig(versions={"1": {}, "2": {}}, route={"policy": "ab", "experiment": "e", "weights": {"1": 1, "3": 1}})


def test_prediction_store_is_bounded_by_count_and_age():
    clock = Clock()
    store = PredictionStore(max_pending=3, ttl_seconds=10, clock=clock)
    for i in range(4):
        store.remember(f"r{i}", "wine", "wine:shadow", "shadow", "1", "champion", np.array([i]))
    assert len(store) == 3 and store.take("r0") is None and store.evicted == 1
    clock.now = 11
    assert store.take("r1") is None and store.evicted == 2  # too old to join
    clock.now = 0
    assert store.take("r2").predictions["1"].tolist() == [2]
    assert store.take("r2") is None  # joined once


def test_join_scores_each_version_and_refuses_the_wrong_row_count():
    store = PredictionStore(10, 60)
    store.remember("r", "wine", "wine:shadow", "shadow", "1", "champion", np.array([0, 2], dtype=np.int64))
    store.add_prediction("r", "2", np.array([0, 1], dtype=np.int64))
    pending = store.take("r")
    joined = join(pending, Feedback("r", (0.0, 1.0), None), "test")
    assert joined["outcomes"] == {"1": {"prediction": [0, 2], "loss": [0.0, 1.0]},
                                  "2": {"prediction": [0, 1], "loss": [0.0, 0.0]}}
    assert joined["reward"] == 0.5 and joined["arm"] == "1"
    with pytest.raises(JoinError, match="3 values but the request scored 2 rows"):
        join(pending, Feedback("r", (0.0, 1.0, 1.0), None), "test")


@pytest.mark.parametrize("payload, message", [
    ([], "no feedback records"),
    ({"id": "r"}, "exactly one of"),
    ({"id": "r", "reward": 1, "ground_truth": 1}, "exactly one of"),
    ({"id": 3, "reward": 1}, "request id"),
    ({"id": "r", "reward": float("nan")}, "finite"),
    ({"id": "r", "ground_truth": ["a"]}, "list of numbers"),
    ([{"id": "r", "reward": 1}] * 11, "limit is 10"),
])
def test_bad_feedback_is_a_400_with_the_reason(payload, message):
    with pytest.raises(BadRequest, match=message):
        parse_feedback_body(payload, max_records=10)
