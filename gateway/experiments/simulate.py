"""Bandit simulation: do the policies find the best arm, and is Thompson's regret in line with a reference?

Run: `.venv/bin/python -m gateway.experiments.simulate` (add `--help` for sizes). Each seed draws
one stream of uniforms that every algorithm shares (common random numbers), so differences
between algorithms are not differences of luck in the reward stream. The reference is
MABWiser's Thompson sampling (optional: `pip install mabwiser`), driven one round at a time
through its public API exactly like ours.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

from gateway.experiments.bandits import make_policy


class Chooser(Protocol):
    def choose(self, rng: np.random.Generator) -> tuple[str, object]: ...

    def update(self, arm: str, reward: float) -> None: ...


@dataclass(frozen=True)
class Scenario:
    name: str
    rates: tuple[float, ...]  # Bernoulli reward rate (or Normal mean) of each arm
    rounds: int
    reward_sd: float | None = None  # None: 0/1 rewards; otherwise Normal rewards with this sd

    @property
    def arms(self) -> list[str]:
        return [f"arm{i}" for i in range(len(self.rates))]

    @property
    def best(self) -> str:
        return self.arms[int(np.argmax(self.rates))]


@dataclass(frozen=True)
class Run:
    pulls: dict[str, int]
    regret: float  # expected (pseudo-)regret: sum over rounds of best rate - rate of the chosen arm

    def share(self, arm: str) -> float:
        return self.pulls[arm] / sum(self.pulls.values())


def run_once(chooser: Chooser, scenario: Scenario, seed: int) -> Run:
    rates = dict(zip(scenario.arms, scenario.rates))
    stream = np.random.default_rng([seed, 0])  # the rewards: identical for every algorithm
    if scenario.reward_sd is None:
        uniforms = stream.random(scenario.rounds)
        reward = lambda t, arm: float(uniforms[t] < rates[arm])  # noqa: E731
    else:
        noise = stream.normal(0.0, scenario.reward_sd, scenario.rounds)
        reward = lambda t, arm: rates[arm] + float(noise[t])  # noqa: E731
    decide = np.random.default_rng([seed, 1])  # the policy's own randomness
    pulls = dict.fromkeys(scenario.arms, 0)
    for t in range(scenario.rounds):
        arm, _ = chooser.choose(decide)
        chooser.update(arm, reward(t, arm))
        pulls[arm] += 1
    top = max(scenario.rates)
    return Run(pulls, sum(n * (top - rates[arm]) for arm, n in pulls.items()))


class MabwiserThompson:
    """The reference: mabwiser.MAB with LearningPolicy.ThompsonSampling (Beta(1, 1) priors)."""

    def __init__(self, arms: Sequence[str], seed: int):
        from mabwiser.mab import MAB, LearningPolicy

        self._mab = MAB(list(arms), LearningPolicy.ThompsonSampling(), seed=seed)
        self._mab.fit(np.array([], dtype=object), np.array([], dtype=float))

    def choose(self, rng: np.random.Generator) -> tuple[str, object]:
        return self._mab.predict(), None

    def update(self, arm: str, reward: float) -> None:
        self._mab.partial_fit([arm], [reward])


def reference_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mabwiser")
    except PackageNotFoundError:
        return None


Factory = Callable[[Scenario, int], Chooser]

OURS: dict[str, Factory] = {
    "epsilon_greedy": lambda s, seed: make_policy("epsilon_greedy", s.arms, epsilon=0.1),
    "ucb1": lambda s, seed: make_policy("ucb1", s.arms),
    "thompson_beta": lambda s, seed: make_policy("thompson_beta", s.arms),
}
REFERENCE: dict[str, Factory] = {"mabwiser_thompson": lambda s, seed: MabwiserThompson(s.arms, seed)}
GAUSSIAN: dict[str, Factory] = {"thompson_gaussian": lambda s, seed: make_policy("thompson_gaussian", s.arms)}


@dataclass(frozen=True)
class Summary:
    algorithm: str
    runs: tuple[Run, ...]
    best: str

    @property
    def regrets(self) -> list[float]:
        return [r.regret for r in self.runs]

    @property
    def best_shares(self) -> list[float]:
        return [r.share(self.best) for r in self.runs]

    def row(self) -> dict[str, float | str]:
        regrets = self.regrets
        return {
            "algorithm": self.algorithm,
            "best_share_mean": statistics.fmean(self.best_shares),
            "best_share_min": min(self.best_shares),
            "regret_mean": statistics.fmean(regrets),
            "regret_sd": statistics.stdev(regrets) if len(regrets) > 1 else 0.0,
            "regret_min": min(regrets),
            "regret_max": max(regrets),
        }


def evaluate(algorithm: str, factory: Factory, scenario: Scenario, seeds: Sequence[int]) -> Summary:
    return Summary(algorithm, tuple(run_once(factory(scenario, s), scenario, s) for s in seeds), scenario.best)


def lai_robbins_bound(rates: Sequence[float], rounds: int) -> float:
    """Asymptotic lower bound on Bernoulli regret: sum over worse arms of gap / KL(p_i, p*) * ln T."""
    top = max(rates)

    def kl(p: float, q: float) -> float:
        return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))

    return sum((top - p) / kl(p, top) for p in rates if p < top) * math.log(rounds)


SCENARIOS = {
    "easy": Scenario("easy", (0.3, 0.5, 0.7), 20_000),
    "conversion": Scenario("conversion", (0.05, 0.04, 0.03), 20_000),
}
GAUSSIAN_SCENARIO = Scenario("gaussian", (1.0, 1.2, 1.5), 5_000, reward_sd=1.0)


def compare_with_reference(ours: Summary, reference: Summary) -> str:
    mean = statistics.fmean(ours.regrets)
    ref = reference.row()
    in_range = ref["regret_min"] <= mean <= ref["regret_max"]
    in_2sd = abs(mean - ref["regret_mean"]) <= 2 * ref["regret_sd"]
    return (
        f"Thompson regret {mean:.1f} vs reference {ref['regret_mean']:.1f}: "
        f"{'within' if in_range else 'OUTSIDE'} the reference's min–max, "
        f"{'within' if in_2sd else 'OUTSIDE'} its mean ± 2 sd"
    )


def _table(rows: list[dict[str, float | str]]) -> str:
    head = "| algorithm | best-arm share mean (min) | regret mean ± sd | regret min–max |\n|---|---|---|---|\n"
    return head + "".join(
        f"| {r['algorithm']} | {r['best_share_mean']:.3f} ({r['best_share_min']:.3f}) | "
        f"{r['regret_mean']:.1f} ± {r['regret_sd']:.1f} | {r['regret_min']:.1f}–{r['regret_max']:.1f} |\n"
        for r in rows
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20, help="independent runs per algorithm (default 20)")
    ap.add_argument("--rounds", type=int, default=20_000, help="rounds per Bernoulli run (default 20000)")
    ap.add_argument("--no-reference", action="store_true", help="skip the MABWiser reference")
    args = ap.parse_args(argv)
    seeds = range(args.seeds)
    ref = None if args.no_reference else reference_version()
    for base in SCENARIOS.values():
        scenario = Scenario(base.name, base.rates, args.rounds)
        algorithms = dict(OURS) | (REFERENCE if ref else {})
        summaries = {name: evaluate(name, f, scenario, seeds) for name, f in algorithms.items()}
        rows = [s.row() for s in summaries.values()]
        print(f"## {scenario.name}: Bernoulli rates {scenario.rates}, {scenario.rounds} rounds, {args.seeds} seeds")
        print(f"Lai-Robbins asymptotic regret bound: {lai_robbins_bound(scenario.rates, scenario.rounds):.1f}")
        if ref:
            print(f"Reference: mabwiser {ref}, MAB(LearningPolicy.ThompsonSampling())")
        print()
        print(_table(rows))
        if ref:
            print(compare_with_reference(summaries["thompson_beta"], summaries["mabwiser_thompson"]) + "\n")
    g = GAUSSIAN_SCENARIO
    print(f"## {g.name}: Normal means {g.rates}, sd {g.reward_sd}, {g.rounds} rounds, {args.seeds} seeds\n")
    print(_table([evaluate(n, f, g, seeds).row() for n, f in GAUSSIAN.items()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
