"""The experiment report a data scientist reads: built from joined feedback records only."""
from __future__ import annotations

import numpy as np

from gateway.config import ABRoute, BanditRoute
from gateway.experiments.report import experiment_report
from gateway.experiments.stats import ab_sample_size
from gateway.experiments.tracker import ExperimentTracker
from gateway.routing import build_policy


def joined(experiment: str, arm: str, reward: float, outcomes=None) -> dict:
    return {"type": "joined", "experiment": experiment, "arm": arm, "reward": reward, "outcomes": outcomes or {}}


def test_ab_report_says_not_yet_until_the_planned_sample_size_then_names_the_winner():
    route = ABRoute(policy="ab", experiment="checkout", weights={"a": 1, "b": 1},
                    design={"baseline_rate": 0.10, "minimum_effect": 0.05})
    planned = ab_sample_size(0.10, 0.05).n_per_arm
    tracker = ExperimentTracker()
    policy = build_policy(route, tracker.bandit_state)
    rng = np.random.default_rng(0)
    for arm, rate in (("a", 0.10), ("b", 0.20)):
        for reward in (rng.random(planned - 1) < rate):
            tracker.apply(joined("checkout", arm, float(reward)))
    early = experiment_report(tracker, "shop", policy)
    assert early["ab_test"]["results"]["b"]["decision"] == "not_yet"
    assert "p_value" not in early["ab_test"]["results"]["b"] and "better" not in early["ab_test"]["results"]["b"]
    for arm, reward in (("a", 0.0), ("b", 1.0)):
        tracker.apply(joined("checkout", arm, reward))
    report = experiment_report(tracker, "shop", policy)
    result = report["ab_test"]["results"]["b"]
    assert report["ab_test"]["design"]["n_per_arm"] == planned
    assert result["decision"] == "significant" and result["better"] == "b"
    assert report["arms"]["b"]["count"] == planned and 0.15 < report["arms"]["b"]["rate"] < 0.25


def test_bandit_report_shows_the_posterior_of_the_shared_state():
    route = BanditRoute(policy="bandit", experiment="bandit-1", arms=["1", "2"], algorithm="thompson_beta")
    tracker = ExperimentTracker()
    policy = build_policy(route, tracker.bandit_state)
    for _ in range(30):
        tracker.apply(joined("bandit-1", "2", 1.0))
        tracker.apply(joined("bandit-1", "1", 0.0))
    report = experiment_report(tracker, "wine", policy)
    posterior = report["bandit"]["posterior"]
    assert (posterior["2"]["alpha"], posterior["2"]["beta"]) == (31.0, 1.0)
    assert (posterior["1"]["alpha"], posterior["1"]["beta"]) == (1.0, 31.0)
    assert report["bandit"]["allocation"]["2"] > 0.99
    assert sum(policy.plan().serve == "2" for _ in range(200)) > 190  # the policy reads the same state
