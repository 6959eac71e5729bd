"""Multi-armed bandit policies over named arms (model versions), built on mergeable sums.

Every policy decides from one thing only: per-arm sufficient statistics (count, sum of rewards,
sum of squared rewards), plus a random generator. Those sums are commutative, so any replica
that replays the same feedback records, in any order or split across processes and then
merged, reaches the same state; the state is plain JSON, so it also survives restarts.

An arm that has no statistics yet starts at the prior; statistics of arms no longer offered are
kept (so feedback that arrives late is not lost) but never chosen.

`choose(rng)` is on the request path: it uses Python arithmetic and scalar draws from a numpy
`Generator`, never scipy. scipy appears only in `posterior()`, which is for the stats endpoint.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Mapping

import numpy as np

Reason = dict[str, Any]


@dataclass(frozen=True)
class ArmStats:
    """Sufficient statistics of one arm's rewards: enough for every policy here, and addable."""

    count: int = 0
    reward_sum: float = 0.0
    reward_sq_sum: float = 0.0

    def plus(self, reward: float) -> ArmStats:
        return ArmStats(self.count + 1, self.reward_sum + reward, self.reward_sq_sum + reward * reward)

    def __add__(self, other: ArmStats) -> ArmStats:
        return ArmStats(
            self.count + other.count,
            self.reward_sum + other.reward_sum,
            self.reward_sq_sum + other.reward_sq_sum,
        )

    @property
    def mean(self) -> float:
        return self.reward_sum / self.count if self.count else 0.0

    @property
    def centred_sq_sum(self) -> float:
        """Sum of squared deviations from the mean; clamped because the subtraction can dip below 0."""
        if not self.count:
            return 0.0
        return max(0.0, self.reward_sq_sum - self.reward_sum * self.reward_sum / self.count)

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "reward_sum": self.reward_sum, "reward_sq_sum": self.reward_sq_sum}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ArmStats:
        return cls(int(d["count"]), float(d["reward_sum"]), float(d["reward_sq_sum"]))


_EMPTY = ArmStats()


class BanditState:
    """Per-arm sums, keyed by arm name. Updates and merges are additions, so order does not matter.

    With 0/1 (or any small-integer) rewards the float sums are exact, so replicas agree bit for
    bit; with arbitrary continuous rewards they agree up to float rounding (about 1e-15 relative).
    """

    def __init__(self, arms: Mapping[str, ArmStats] | None = None):
        self._arms: dict[str, ArmStats] = dict(arms or {})

    def record(self, arm: str, reward: float) -> None:
        self._arms[arm] = self._arms.get(arm, _EMPTY).plus(float(reward))

    def stats(self, arm: str) -> ArmStats:
        return self._arms.get(arm, _EMPTY)

    @property
    def arms(self) -> list[str]:
        return sorted(self._arms)

    def add(self, other: BanditState) -> None:
        """Absorb another state's feedback in place (objects sharing this state see it)."""
        for arm, stats in other._arms.items():
            self._arms[arm] = self._arms.get(arm, _EMPTY) + stats

    def merge(self, other: BanditState) -> BanditState:
        """A new state holding both states' feedback (for replicas that each saw part of it)."""
        merged = self.copy()
        merged.add(other)
        return merged

    def copy(self) -> BanditState:
        return BanditState(self._arms)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {arm: self._arms[arm].to_dict() for arm in sorted(self._arms)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Mapping[str, Any]]) -> BanditState:
        return cls({arm: ArmStats.from_dict(s) for arm, s in d.items()})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BanditState) and self._arms == other._arms

    def __repr__(self) -> str:
        return f"BanditState({self.to_dict()!r})"


class BanditPolicy:
    """Base: a set of offered arms, the learned state, and a rule to choose among the arms."""

    name: ClassVar[str]

    def __init__(self, arms: Iterable[str], state: BanditState | None = None):
        self.arms = arms
        self.state = state if state is not None else BanditState()

    @property
    def arms(self) -> list[str]:
        return list(self._arms)

    @arms.setter
    def arms(self, arms: Iterable[str]) -> None:
        offered = list(dict.fromkeys(arms))
        if not offered:
            raise ValueError("a bandit needs at least one arm")
        self._arms = tuple(offered)

    # --- learning -------------------------------------------------------------------------
    def update(self, arm: str, reward: float) -> None:
        self._check_reward(reward)
        self.state.record(arm, reward)

    def merge(self, other: BanditPolicy | BanditState) -> None:
        """Add another replica's feedback to this policy's state, in place."""
        self.state.add(other.state if isinstance(other, BanditPolicy) else other)

    def _check_reward(self, reward: float) -> None:
        if not math.isfinite(reward):
            raise ValueError(f"reward must be finite, got {reward!r}")

    # --- deciding -------------------------------------------------------------------------
    def choose(self, rng: np.random.Generator) -> tuple[str, Reason]:
        raise NotImplementedError

    def allocation(self, rng: np.random.Generator | None = None, n_draws: int = 10_000) -> dict[str, float]:
        """The share of traffic each offered arm gets under the current state."""
        raise NotImplementedError

    def posterior(self) -> dict[str, dict[str, Any]]:
        """Per-arm estimates for the stats endpoint; Bayesian policies override with their posterior."""
        return {arm: {"count": s.count, "mean": s.mean} for arm, s in self._offered_stats()}

    # --- reporting and persistence --------------------------------------------------------
    def params(self) -> dict[str, Any]:
        return {}

    def snapshot(self, rng: np.random.Generator | None = None) -> dict[str, Any]:
        return {
            "policy": self.name,
            "params": self.params(),
            "arms": self.arms,
            "allocation": self.allocation(rng),
            "posterior": self.posterior(),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.name, "params": self.params(), "arms": self.arms, "state": self.state.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BanditPolicy:
        return make_policy(d["policy"], d["arms"], state=BanditState.from_dict(d.get("state", {})), **d.get("params", {}))

    # --- helpers --------------------------------------------------------------------------
    def _offered_stats(self) -> list[tuple[str, ArmStats]]:
        return [(arm, self.state.stats(arm)) for arm in self._arms]

    def _untried(self) -> list[str]:
        return [arm for arm in self._arms if not self.state.stats(arm).count]


def _best(scores: list[tuple[str, float]]) -> list[str]:
    top = max(score for _, score in scores)
    return [arm for arm, score in scores if score == top]


def _pick(arms: list[str], rng: np.random.Generator) -> str:
    return arms[0] if len(arms) == 1 else arms[int(rng.integers(len(arms)))]


def _split(arms: list[str], share: float, into: dict[str, float]) -> None:
    for arm in arms:
        into[arm] += share / len(arms)


class EpsilonGreedy(BanditPolicy):
    """With probability epsilon a uniformly random arm, otherwise the best mean (ties at random).

    Arms without feedback are played first, so a new version is not judged on a mean of zero.
    """

    name = "epsilon_greedy"

    def __init__(self, arms: Iterable[str], state: BanditState | None = None, epsilon: float = 0.1):
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        super().__init__(arms, state)
        self.epsilon = float(epsilon)

    def params(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon}

    def choose(self, rng: np.random.Generator) -> tuple[str, Reason]:
        untried = self._untried()
        if untried:
            return _pick(untried, rng), {"rule": "untried"}
        if rng.random() < self.epsilon:
            return _pick(list(self._arms), rng), {"rule": "explore", "epsilon": self.epsilon}
        best = _best([(arm, s.mean) for arm, s in self._offered_stats()])
        arm = _pick(best, rng)
        return arm, {"rule": "exploit", "mean": self.state.stats(arm).mean}

    def allocation(self, rng: np.random.Generator | None = None, n_draws: int = 10_000) -> dict[str, float]:
        shares = dict.fromkeys(self._arms, 0.0)
        untried = self._untried()
        if untried:
            _split(untried, 1.0, shares)
            return shares
        _split(list(self._arms), self.epsilon, shares)
        _split(_best([(arm, s.mean) for arm, s in self._offered_stats()]), 1.0 - self.epsilon, shares)
        return shares


class UCB1(BanditPolicy):
    """Auer et al. (2002) UCB1: the arm with the highest mean + c * sqrt(2 ln N / n_arm).

    The bonus assumes rewards in [0, 1]; for other ranges scale `c` by the range. Deterministic
    given the state, so with delayed feedback every request between two updates goes to the same
    arm: Thompson sampling spreads traffic better when rewards arrive late.
    """

    name = "ucb1"

    def __init__(self, arms: Iterable[str], state: BanditState | None = None, c: float = 1.0):
        if c < 0:
            raise ValueError(f"c must be >= 0, got {c}")
        super().__init__(arms, state)
        self.c = float(c)

    def params(self) -> dict[str, Any]:
        return {"c": self.c}

    def scores(self) -> list[tuple[str, float]]:
        offered = self._offered_stats()
        log_total = math.log(sum(s.count for _, s in offered))
        return [(arm, s.mean + self.c * math.sqrt(2.0 * log_total / s.count)) for arm, s in offered]

    def choose(self, rng: np.random.Generator) -> tuple[str, Reason]:
        untried = self._untried()
        if untried:
            return _pick(untried, rng), {"rule": "untried"}
        scores = self.scores()
        arm = _pick(_best(scores), rng)
        return arm, {"rule": "ucb", "score": dict(scores)[arm]}

    def allocation(self, rng: np.random.Generator | None = None, n_draws: int = 10_000) -> dict[str, float]:
        shares = dict.fromkeys(self._arms, 0.0)
        untried = self._untried()
        _split(untried or _best(self.scores()), 1.0, shares)
        return shares

    def posterior(self) -> dict[str, dict[str, Any]]:
        untried = set(self._untried())
        scores = {} if untried else dict(self.scores())
        return {
            arm: {"count": s.count, "mean": s.mean, "ucb": scores.get(arm)} for arm, s in self._offered_stats()
        }


class _Thompson(BanditPolicy):
    """Thompson sampling: draw one plausible mean per arm from its posterior, play the largest."""

    def _draw(self, stats: ArmStats, rng: np.random.Generator) -> float:
        raise NotImplementedError

    def _draw_many(self, stats: ArmStats, rng: np.random.Generator, n: int) -> np.ndarray:
        raise NotImplementedError

    def choose(self, rng: np.random.Generator) -> tuple[str, Reason]:
        best_arm, best_theta = self._arms[0], -math.inf
        for arm in self._arms:
            theta = self._draw(self.state.stats(arm), rng)
            if theta > best_theta:
                best_arm, best_theta = arm, theta
        return best_arm, {"rule": "thompson", "theta": best_theta}

    def allocation(self, rng: np.random.Generator | None = None, n_draws: int = 10_000) -> dict[str, float]:
        """Monte-Carlo probability that each arm is the best: the share Thompson sampling sends it."""
        rng = rng if rng is not None else np.random.default_rng()
        draws = np.stack([self._draw_many(self.state.stats(arm), rng, n_draws) for arm in self._arms])
        wins = np.bincount(np.argmax(draws, axis=0), minlength=len(self._arms))
        return {arm: float(w) / n_draws for arm, w in zip(self._arms, wins)}


class ThompsonBeta(_Thompson):
    """Beta-Bernoulli Thompson sampling for rewards in [0, 1] (0/1 conversions or correctness).

    Posterior Beta(alpha0 + sum r, beta0 + n - sum r); a fractional reward counts as a partial
    success, which keeps the update a plain sum.
    """

    name = "thompson_beta"

    def __init__(
        self, arms: Iterable[str], state: BanditState | None = None, alpha0: float = 1.0, beta0: float = 1.0
    ):
        if alpha0 <= 0 or beta0 <= 0:
            raise ValueError("alpha0 and beta0 must be > 0")
        super().__init__(arms, state)
        self.alpha0, self.beta0 = float(alpha0), float(beta0)

    def params(self) -> dict[str, Any]:
        return {"alpha0": self.alpha0, "beta0": self.beta0}

    def _check_reward(self, reward: float) -> None:
        if not 0.0 <= reward <= 1.0:
            raise ValueError(f"Beta-Bernoulli rewards must be in [0, 1], got {reward!r}")

    def beta_params(self, stats: ArmStats) -> tuple[float, float]:
        return self.alpha0 + stats.reward_sum, self.beta0 + stats.count - stats.reward_sum

    def _draw(self, stats: ArmStats, rng: np.random.Generator) -> float:
        return float(rng.beta(*self.beta_params(stats)))

    def _draw_many(self, stats: ArmStats, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.beta(*self.beta_params(stats), size=n)

    def posterior(self) -> dict[str, dict[str, Any]]:
        from scipy import stats as sps

        out = {}
        for arm, s in self._offered_stats():
            a, b = self.beta_params(s)
            lo, hi = sps.beta.ppf([0.025, 0.975], a, b)
            out[arm] = {"count": s.count, "alpha": a, "beta": b, "mean": a / (a + b), "ci95": [float(lo), float(hi)]}
        return out


class ThompsonGaussian(_Thompson):
    """Thompson sampling for continuous rewards: Normal with unknown mean and unknown variance.

    Conjugate Normal-Inverse-Gamma prior NIG(mu0, kappa0, alpha0, beta0). After n rewards with
    mean m and centred sum of squares S:
        kappa_n = kappa0 + n,  mu_n = (kappa0 mu0 + n m) / kappa_n,  alpha_n = alpha0 + n / 2,
        beta_n = beta0 + S / 2 + kappa0 n (m - mu0)^2 / (2 kappa_n).
    The arm's mean then has a Student-t marginal: df = 2 alpha_n, loc = mu_n,
    scale = sqrt(beta_n / (alpha_n kappa_n)); that is what `choose` samples from (one t draw).
    The defaults are weak (kappa0 = 1e-3 pseudo-observations); beta0 / alpha0 is the prior guess
    of the reward variance, so set it to the scale of your rewards.
    """

    name = "thompson_gaussian"

    def __init__(
        self,
        arms: Iterable[str],
        state: BanditState | None = None,
        mu0: float = 0.0,
        kappa0: float = 1e-3,
        alpha0: float = 1.0,
        beta0: float = 1.0,
    ):
        if kappa0 <= 0 or alpha0 <= 0 or beta0 <= 0:
            raise ValueError("kappa0, alpha0 and beta0 must be > 0")
        super().__init__(arms, state)
        self.mu0, self.kappa0, self.alpha0, self.beta0 = float(mu0), float(kappa0), float(alpha0), float(beta0)

    def params(self) -> dict[str, Any]:
        return {"mu0": self.mu0, "kappa0": self.kappa0, "alpha0": self.alpha0, "beta0": self.beta0}

    def nig_params(self, stats: ArmStats) -> tuple[float, float, float, float]:
        """Posterior (mu_n, kappa_n, alpha_n, beta_n)."""
        return nig_posterior(stats, self.mu0, self.kappa0, self.alpha0, self.beta0)

    def mean_marginal(self, stats: ArmStats) -> tuple[float, float, float]:
        """(df, loc, scale) of the Student-t posterior of the arm's mean reward."""
        return nig_mean_marginal(*self.nig_params(stats))

    def _draw(self, stats: ArmStats, rng: np.random.Generator) -> float:
        df, loc, scale = self.mean_marginal(stats)
        return loc + scale * float(rng.standard_t(df))

    def _draw_many(self, stats: ArmStats, rng: np.random.Generator, n: int) -> np.ndarray:
        df, loc, scale = self.mean_marginal(stats)
        return loc + scale * rng.standard_t(df, size=n)

    def posterior(self) -> dict[str, dict[str, Any]]:
        from scipy import stats as sps

        out = {}
        for arm, s in self._offered_stats():
            mu, kappa, alpha, beta = self.nig_params(s)
            df, loc, scale = self.mean_marginal(s)
            lo, hi = sps.t.ppf([0.025, 0.975], df, loc=loc, scale=scale)
            out[arm] = {
                "count": s.count,
                "mu": mu,
                "kappa": kappa,
                "alpha": alpha,
                "beta": beta,
                "mean": mu,
                "ci95": [float(lo), float(hi)],
            }
        return out


def nig_posterior(
    stats: ArmStats, mu0: float, kappa0: float, alpha0: float, beta0: float
) -> tuple[float, float, float, float]:
    """Normal-Inverse-Gamma conjugate update from sums; accepts the improper reference prior
    (kappa0 = 0, alpha0 = -1/2, beta0 = 0), under which the mean's posterior is the classical t."""
    n, m = stats.count, stats.mean
    kappa = kappa0 + n
    mu = (kappa0 * mu0 + n * m) / kappa
    alpha = alpha0 + n / 2.0
    beta = beta0 + stats.centred_sq_sum / 2.0 + kappa0 * n * (m - mu0) ** 2 / (2.0 * kappa)
    return mu, kappa, alpha, beta


def nig_mean_marginal(mu: float, kappa: float, alpha: float, beta: float) -> tuple[float, float, float]:
    """(df, loc, scale) of the Student-t marginal of the mean under NIG(mu, kappa, alpha, beta)."""
    return 2.0 * alpha, mu, math.sqrt(beta / (alpha * kappa))


POLICIES: dict[str, type[BanditPolicy]] = {
    cls.name: cls for cls in (EpsilonGreedy, UCB1, ThompsonBeta, ThompsonGaussian)
}


def make_policy(name: str, arms: Iterable[str], state: BanditState | None = None, **params: Any) -> BanditPolicy:
    """Build a policy by its config name (`epsilon_greedy`, `ucb1`, `thompson_beta`, `thompson_gaussian`)."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown bandit policy {name!r}; known: {sorted(POLICIES)}") from None
    return cls(arms, state, **params)
