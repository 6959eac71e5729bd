"""What an experiment shows at `GET /experiments/{model}`: per-arm counts, rewards and rates,
and the test that fits its policy (A/B: fixed horizon; shadow: paired losses; bandit: posterior).
Also exported to Prometheus at scrape time."""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
from prometheus_client.core import GaugeMetricFamily

from gateway.config import ABRoute, BanditRoute, ShadowRoute
from gateway.experiments.stats import ArmCounts, ab_result, ab_sample_size, arm_summary, paired_comparison
from gateway.experiments.tracker import Experiment, ExperimentTracker
from gateway.routing import experiment_name


def _arms(experiment: Experiment, versions: list[str]) -> dict[str, Any]:
    out = {}
    for arm in dict.fromkeys([*versions, *experiment.arms]):
        tally = experiment.arms.get(arm)
        if tally is None:
            out[arm] = {"requests": experiment.assigned.get(arm, 0), **arm_summary(0, 0.0)}
            continue
        successes = int(round(tally.reward_sum)) if tally.binary_rewards else None
        out[arm] = {"requests": experiment.assigned.get(arm, 0),
                    **arm_summary(tally.feedback, tally.reward_sum, successes),
                    "rows_with_ground_truth": tally.rows,
                    "accuracy": tally.correct / tally.rows if tally.rows else None,
                    "mean_loss": tally.loss_sum / tally.rows if tally.rows else None}
    return out


def _ab(route: ABRoute, experiment: Experiment) -> dict[str, Any]:
    if route.design is None:
        return {"decision": "no_design", "note": "add route.design (baseline_rate, minimum_effect, alpha, power) "
                "to plan a fixed-horizon test"}
    design = ab_sample_size(route.design.baseline_rate, route.design.minimum_effect,
                            alpha=route.design.alpha, power=route.design.power)
    versions = list(route.weights)
    counts = []
    for arm in versions:
        tally = experiment.arms.get(arm)
        trials = tally.feedback if tally else 0
        counts.append(ArmCounts(arm, int(round(tally.reward_sum)) if tally else 0, trials))
    control, treatments = counts[0], counts[1:]
    return {"design": design.to_dict(), "control": control.name,
            "results": {t.name: ab_result(design, control, t) for t in treatments}}


def _paired(experiment: Experiment) -> dict[str, Any]:
    out = {}
    for (served, challenger), pairs in experiment.pairs.items():
        losses = np.asarray(pairs, dtype=float).reshape(-1, 2)
        out[f"{challenger}_vs_{served}"] = paired_comparison(losses[:, 0], losses[:, 1])
    return out


def experiment_report(tracker: ExperimentTracker, model: str, policy) -> dict[str, Any]:
    route = policy.route
    name = experiment_name(model, route)
    experiment = tracker.experiment(name)
    report: dict[str, Any] = {"model": model, "experiment": name, "policy": route.policy,
                              "arms": _arms(experiment, route.versions())}
    if isinstance(route, ABRoute):
        report["ab_test"] = _ab(route, experiment)
    if isinstance(route, ShadowRoute) or experiment.pairs:
        report["champion_challenger"] = _paired(experiment)
    if isinstance(route, BanditRoute):
        report["bandit"] = policy.state()
    return report


class ExperimentCollector:
    """Prometheus gauges computed at scrape time from the tracker (cheap: sums already kept)."""

    def __init__(self, tracker: ExperimentTracker, models: dict):
        self.tracker = tracker
        self.models = models

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["model", "experiment", "arm"]
        requests = GaugeMetricFamily("gateway_experiment_requests", "Requests routed to each arm (this replica).", labels=labels)
        feedback = GaugeMetricFamily("gateway_experiment_feedback", "Joined feedback records per arm.", labels=labels)
        reward = GaugeMetricFamily("gateway_experiment_reward_mean", "Mean reward per arm.", labels=labels)
        accuracy = GaugeMetricFamily("gateway_experiment_accuracy", "Share of rows the arm got right.", labels=labels)
        allocation = GaugeMetricFamily("gateway_bandit_allocation", "Share of traffic the bandit gives each arm now.",
                                       labels=labels)
        for model, deployed in self.models.items():
            route = deployed.policy.route
            name = experiment_name(model, route)
            experiment = self.tracker.experiments.get(name)
            if experiment is None:
                continue
            for arm in dict.fromkeys([*route.versions(), *experiment.arms]):
                values = [model, name, arm]
                requests.add_metric(values, experiment.assigned.get(arm, 0))
                tally = experiment.arms.get(arm)
                if tally is not None:
                    feedback.add_metric(values, tally.feedback)
                    if tally.feedback:
                        reward.add_metric(values, tally.reward_sum / tally.feedback)
                    if tally.rows:
                        accuracy.add_metric(values, tally.correct / tally.rows)
            if isinstance(route, BanditRoute):
                for arm, share in deployed.policy.bandit.allocation(n_draws=2000).items():
                    allocation.add_metric([model, name, arm], share)
        yield from (requests, feedback, reward, accuracy, allocation)
