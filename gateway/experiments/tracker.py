"""Experiment state, built only from joined feedback records (and local assignment counts).

Every replica applies the same joined records from the feedback topic, so the per-arm tallies,
the paired champion/challenger losses and the bandit sums agree across replicas and are rebuilt
after a restart. Assignment counts (requests routed to each arm) are this replica's own.
"""
from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any

from gateway.experiments.bandits import BanditState

MAX_PAIRS = 100_000  # paired losses kept per (experiment, challenger): the newest


@dataclass
class ArmTally:
    feedback: int = 0  # joined feedback records
    reward_sum: float = 0.0
    rows: int = 0  # rows with ground truth
    correct: float = 0.0  # rows answered right (integer outputs) - accuracy = correct / rows
    loss_sum: float = 0.0
    binary_rewards: bool = True  # every reward 0 or 1: a conversion rate


class Experiment:
    def __init__(self, name: str):
        self.name = name
        self.assigned: dict[str, int] = defaultdict(int)
        self.arms: dict[str, ArmTally] = defaultdict(ArmTally)
        self.bandit = BanditState()
        # (served arm, challenger) -> (served loss, challenger loss) per row, for the paired test
        self.pairs: dict[tuple[str, str], deque[tuple[float, float]]] = {}

    def apply(self, joined: dict[str, Any]) -> None:
        arm, reward, outcomes = joined["arm"], joined.get("reward"), joined.get("outcomes") or {}
        tally = self.arms[arm]
        tally.feedback += 1
        if reward is not None:
            tally.reward_sum += reward
            tally.binary_rewards &= reward in (0.0, 1.0)
            self.bandit.record(arm, reward)
        served = outcomes.get(arm)
        if served is not None:
            losses = served["loss"]
            tally.rows += len(losses)
            tally.loss_sum += sum(losses)
            tally.correct += sum(1 for loss in losses if loss == 0)
            for version, other in outcomes.items():
                if version != arm:
                    pairs = self.pairs.setdefault((arm, version), deque(maxlen=MAX_PAIRS))
                    pairs.extend(zip(losses, other["loss"]))


class ExperimentTracker:
    def __init__(self):
        self.experiments: dict[str, Experiment] = {}
        self.applied = 0

    def experiment(self, name: str) -> Experiment:
        found = self.experiments.get(name)
        if found is None:
            found = self.experiments[name] = Experiment(name)
        return found

    def bandit_state(self, name: str) -> BanditState:
        return self.experiment(name).bandit

    def assigned(self, name: str, arm: str) -> None:
        self.experiment(name).assigned[arm] += 1

    def apply(self, joined: dict[str, Any]) -> None:
        self.experiment(joined["experiment"]).apply(joined)
        self.applied += 1
