"""Experiment statistics: A/B design and fixed-horizon test, champion/challenger paired comparison,
per-arm summaries.

Every number comes from statsmodels or scipy; this module only chooses the right call, guards the
degenerate cases (no data, no variance) that would otherwise give NaN, and returns plain
JSON-serialisable dicts for the stats endpoint.

The A/B sample size uses Cohen's arcsine effect size h = 2 asin(sqrt(p1)) - 2 asin(sqrt(p2)) with
a normal power model, as statsmodels, R's `pwr.2p.test` and G*Power do (see
docs/experiments/ab-sample-size.md for the published examples it matches).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, Sequence

import numpy as np

Alternative = Literal["two-sided", "larger", "smaller"]
_ALTERNATIVES = ("two-sided", "larger", "smaller")


def _check_probability(name: str, value: float, *, open_interval: bool = True) -> None:
    ok = 0.0 < value < 1.0 if open_interval else 0.0 <= value <= 1.0
    if not ok:
        raise ValueError(f"{name} must be in {'(0, 1)' if open_interval else '[0, 1]'}, got {value!r}")


def _check_alternative(alternative: str) -> None:
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative must be one of {_ALTERNATIVES}, got {alternative!r}")


# --- A/B design -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ABDesign:
    """A fixed-horizon A/B test planned up front: how many observations each arm needs.

    `alternative` is about the treatment relative to the control: "larger" plans a one-sided
    test that the treatment's rate is higher.
    """

    baseline: float  # control's expected conversion rate (or mean, for a means design)
    target: float  # treatment's rate (or mean) at the minimum detectable effect
    mde: float  # as given by the caller
    mde_type: Literal["absolute", "relative"]
    alpha: float
    power: float
    alternative: Alternative
    effect_size: float  # Cohen's h for proportions, Cohen's d for means
    n_per_arm: int
    metric: Literal["proportion", "mean"] = "proportion"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ab_sample_size(
    baseline: float,
    mde: float,
    *,
    mde_type: Literal["absolute", "relative"] = "absolute",
    alpha: float = 0.05,
    power: float = 0.8,
    alternative: Alternative = "two-sided",
) -> ABDesign:
    """Observations needed per arm to detect a change of `mde` in a conversion rate.

    The MDE is absolute by default (0.02 means 10% -> 12%); `mde_type="relative"` reads it as a
    fraction of the baseline (0.2 means 10% -> 12%). Rounded up: a fraction of a request does
    not exist and rounding down would fall short of the planned power.
    """
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    _check_probability("baseline", baseline)
    target = _shifted(baseline, mde, mde_type)
    if not 0.0 < target < 1.0:
        raise ValueError(f"baseline {baseline} with mde {mde} ({mde_type}) gives target rate {target}, not in (0, 1)")
    h = float(proportion_effectsize(target, baseline))
    n = _solve_n(NormalIndPower(), h, alpha, power, alternative)
    return ABDesign(baseline, target, mde, mde_type, alpha, power, alternative, h, n)


def ab_sample_size_means(
    baseline_mean: float,
    mde: float,
    sd: float,
    *,
    mde_type: Literal["absolute", "relative"] = "absolute",
    alpha: float = 0.05,
    power: float = 0.8,
    alternative: Alternative = "two-sided",
) -> ABDesign:
    """Observations per arm for a continuous metric (two-sample t-test, common `sd`)."""
    from statsmodels.stats.power import TTestIndPower

    if sd <= 0:
        raise ValueError(f"sd must be > 0, got {sd}")
    target = _shifted(baseline_mean, mde, mde_type)
    d = (target - baseline_mean) / sd
    n = _solve_n(TTestIndPower(), d, alpha, power, alternative)
    return ABDesign(baseline_mean, target, mde, mde_type, alpha, power, alternative, d, n, "mean")


def _shifted(baseline: float, mde: float, mde_type: str) -> float:
    """The treatment's value at the minimum detectable effect."""
    if mde_type not in ("absolute", "relative"):
        raise ValueError(f"mde_type must be 'absolute' or 'relative', got {mde_type!r}")
    target = baseline * (1.0 + mde) if mde_type == "relative" else baseline + mde
    if target == baseline:
        raise ValueError("the minimum detectable effect must not be zero")
    return target


def _solve_n(analysis: Any, effect: float, alpha: float, power: float, alternative: str) -> int:
    _check_probability("alpha", alpha)
    _check_probability("power", power)
    _check_alternative(alternative)
    # statsmodels' one-sided "larger" needs a positive effect; a two-sided test is symmetric.
    effect = abs(effect) if alternative == "two-sided" else effect
    if alternative == "smaller":
        effect, alternative = -effect, "larger"
    if effect <= 0:
        raise ValueError("the one-sided alternative points away from the minimum detectable effect")
    n = analysis.solve_power(effect_size=effect, alpha=alpha, power=power, ratio=1.0, alternative=alternative)
    return int(math.ceil(float(np.squeeze(n)) - 1e-9))  # the tolerance keeps 64.0000000001 at 64


# --- fixed-horizon test ----------------------------------------------------------------------


@dataclass(frozen=True)
class ArmCounts:
    name: str
    successes: int
    trials: int

    def __post_init__(self) -> None:
        if not 0 <= self.successes <= self.trials:
            raise ValueError(f"arm {self.name!r}: need 0 <= successes <= trials, got {self.successes}/{self.trials}")

    @property
    def rate(self) -> float | None:
        return self.successes / self.trials if self.trials else None


def ab_result(design: ABDesign, control: ArmCounts, treatment: ArmCounts) -> dict[str, Any]:
    """The fixed-horizon verdict. Before both arms reach the planned size the answer is "not_yet"
    with progress only (no p-value, no leader), because peeking and stopping early inflates the
    false-positive rate far above alpha."""
    arms = (control, treatment)
    progress = {a.name: {"trials": a.trials, "needed": design.n_per_arm, "fraction": min(1.0, a.trials / design.n_per_arm)} for a in arms}
    if any(a.trials < design.n_per_arm for a in arms):
        return {"decision": "not_yet", "n_per_arm": design.n_per_arm, "progress": progress}

    from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

    pooled = (control.successes + treatment.successes) / (control.trials + treatment.trials)
    if pooled in (0.0, 1.0):  # both arms all-failure or all-success: no evidence of a difference
        z, p = 0.0, 1.0
    else:
        z, p = proportions_ztest(
            [treatment.successes, control.successes], [treatment.trials, control.trials], alternative=design.alternative
        )
    lo, hi = confint_proportions_2indep(
        treatment.successes, treatment.trials, control.successes, control.trials, compare="diff", alpha=design.alpha
    )
    significant = bool(p < design.alpha)
    better = None
    if significant:
        better = treatment.name if treatment.rate > control.rate else control.name
    return {
        "decision": "significant" if significant else "not_significant",
        "better": better,
        "n_per_arm": design.n_per_arm,
        "progress": progress,
        "rates": {a.name: a.rate for a in arms},
        "difference": treatment.rate - control.rate,  # treatment - control
        "ci": [float(lo), float(hi)],
        "confidence": 1.0 - design.alpha,
        "z": float(z),
        "p_value": float(p),
        "alpha": design.alpha,
        "alternative": design.alternative,
        "test": "two-proportion z-test (statsmodels proportions_ztest); CI: confint_proportions_2indep",
    }


# --- champion / challenger -------------------------------------------------------------------


def paired_comparison(
    champion_loss: Sequence[float],
    challenger_loss: Sequence[float],
    *,
    alpha: float = 0.05,
    min_n: int = 30,
) -> dict[str, Any]:
    """Compare per-request losses of champion and challenger on the same requests (lower is better).

    The difference is challenger - champion, so a negative mean favours the challenger. 0/1
    losses (errors) are tested with McNemar's exact/chi-squared test on the discordant pairs;
    other losses with the Wilcoxon signed-rank test (robust to log-loss outliers); the paired
    t-test and its confidence interval for the mean difference are reported for both.
    """
    champ = np.asarray(champion_loss, dtype=float)
    chall = np.asarray(challenger_loss, dtype=float)
    if champ.shape != chall.shape or champ.ndim != 1:
        raise ValueError("champion and challenger losses must be 1-d and paired (same length)")
    if not (np.isfinite(champ).all() and np.isfinite(chall).all()):
        raise ValueError("losses must be finite")
    n = int(champ.size)
    if n < min_n:
        return {"decision": "not_yet", "n": n, "min_n": min_n}

    from scipy import stats as sps

    diff = chall - champ
    mean_diff = float(diff.mean())
    binary = bool(np.isin(champ, (0.0, 1.0)).all() and np.isin(chall, (0.0, 1.0)).all())
    if not diff.any():  # identical losses on every request: nothing to test, and scipy would give NaN
        t_p, ci, primary_p = 1.0, [0.0, 0.0], 1.0
        primary = {"test": "mcnemar" if binary else "wilcoxon", "statistic": 0.0, "p_value": 1.0}
    else:
        if np.ptp(diff) <= 1e-12 * max(1.0, abs(mean_diff)):  # constant shift: no variance, the sign is certain
            t_p, ci = 0.0, [mean_diff, mean_diff]
        else:
            ttest = sps.ttest_rel(chall, champ)
            t_p, ci = float(ttest.pvalue), [float(x) for x in ttest.confidence_interval(1.0 - alpha)]
        primary = _mcnemar(champ, chall) if binary else _wilcoxon(diff)
        primary_p = primary["p_value"]
    if primary_p >= alpha:
        decision = "no_difference"
    else:
        decision = "challenger_better" if mean_diff < 0 else "champion_better"
    return {
        "decision": decision,
        "n": n,
        "mean_champion_loss": float(champ.mean()),
        "mean_challenger_loss": float(chall.mean()),
        "mean_difference": mean_diff,
        "ci": ci,
        "confidence": 1.0 - alpha,
        "p_value": primary_p,
        "primary_test": primary,
        "ttest_rel_p_value": t_p,
        "alpha": alpha,
    }


def _mcnemar(champ_err: np.ndarray, chall_err: np.ndarray) -> dict[str, Any]:
    from statsmodels.stats.contingency_tables import mcnemar

    champ_right, chall_right = champ_err == 0, chall_err == 0
    table = [
        [int(np.sum(champ_right & chall_right)), int(np.sum(champ_right & ~chall_right))],
        [int(np.sum(~champ_right & chall_right)), int(np.sum(~champ_right & ~chall_right))],
    ]
    discordant = table[0][1] + table[1][0]
    exact = discordant < 25  # the usual threshold below which the chi-squared approximation is poor
    result = mcnemar(table, exact=exact, correction=True)
    return {
        "test": "mcnemar_exact" if exact else "mcnemar_chi2",
        "statistic": float(result.statistic),
        "p_value": float(result.pvalue),
        "table": table,
    }


def _wilcoxon(diff: np.ndarray) -> dict[str, Any]:
    from scipy import stats as sps

    # "zsplit" keeps zero differences (ties between the models) in the ranks instead of dropping them.
    result = sps.wilcoxon(diff, zero_method="zsplit")
    return {"test": "wilcoxon", "statistic": float(result.statistic), "p_value": float(result.pvalue)}


# --- per-arm summaries -----------------------------------------------------------------------


def arm_summary(count: int, reward_sum: float, successes: int | None = None, *, alpha: float = 0.05) -> dict[str, Any]:
    """Counts and mean reward of one arm; with 0/1 outcomes also the rate and its Wilson interval
    (which, unlike the normal interval, stays inside [0, 1] and behaves at small counts)."""
    summary: dict[str, Any] = {"count": int(count), "reward_sum": float(reward_sum), "mean_reward": reward_sum / count if count else None}
    if successes is not None:
        if not 0 <= successes <= count:
            raise ValueError(f"need 0 <= successes <= count, got {successes}/{count}")
        summary["successes"] = int(successes)
        summary["rate"] = successes / count if count else None
        summary["rate_ci"] = None
        if count:
            from statsmodels.stats.proportion import proportion_confint

            lo, hi = proportion_confint(successes, count, alpha=alpha, method="wilson")
            summary["rate_ci"] = [float(lo), float(hi)]
        summary["confidence"] = 1.0 - alpha
    return summary
