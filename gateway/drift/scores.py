"""Univariate drift tests and scores of a window's columns, with p-value and effect size together.

Each is the library function applied to the window's values (docs/drift.md states every choice):
numeric columns get `scipy.stats.ks_2samp` (method="auto"), PSI and Jensen-Shannon on the
reference's quantile bins, and `scipy.stats.wasserstein_distance` over the reference's standard
deviation; categorical columns get chi-squared (`scipy.stats.chisquare` against reference
frequencies, `scipy.stats.chi2_contingency` against another window), PSI and Jensen-Shannon.
A column drifts when its p-value, corrected across its family, is below `alpha` AND its chosen
effect size passes `min_effect`: huge windows make harmless shifts significant.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from scipy import stats
from scipy.spatial.distance import jensenshannon

from gateway.config import Correction

from .reference import CategoricalReference, Distribution, NumericReference, bin_counts

Effect = Literal["ks", "psi", "js", "wasserstein"]
# Stands in for an empty bin's share in PSI (a log of 0 is infinite); documented in docs/drift.md.
PSI_EPSILON = 1e-4
# Expected-frequency floor for categories the reference gives 0: keeps chi-squared finite while a
# new category still yields a huge statistic and a p-value of ~0.
CHI2_EPSILON = 1e-4
JS_BASE = 2  # Jensen-Shannon distance in [0, 1]


@dataclass(frozen=True)
class Thresholds:
    alpha: float = 0.01
    correction: Correction = "bonferroni"
    min_effect: float = 0.1
    effect: Effect = "ks"


@dataclass(frozen=True)
class ColumnResult:
    test: str  # "ks" | "chi2"
    n: int  # window values tested
    statistic: float  # KS D, or the chi-squared statistic
    p_value: float
    psi: float
    js: float
    # KS columns: W1 / reference std. Categorical: total variation distance (the categorical
    # analogue of D), so every effect lies on a comparable scale.
    wasserstein: float
    effect: float  # the configured effect: ks (D, or total variation), psi, js or wasserstein
    window_counts: tuple[int, ...]  # per bin (numeric) or category (categorical), for the report
    p_value_corrected: float = float("nan")
    drifted: bool = False


def psi(window: np.ndarray, reference: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins; an empty bin counts
    as PSI_EPSILON (no renormalisation)."""
    w = np.where(window > 0, window, PSI_EPSILON)
    r = np.where(reference > 0, reference, PSI_EPSILON)
    return float(np.sum((w - r) * np.log(w / r)))


def _effect(kind: Effect, ks_or_tv: float, psi_value: float, js_value: float, w: float) -> float:
    return {"ks": ks_or_tv, "psi": psi_value, "js": js_value, "wasserstein": w}[kind]


def numeric(values: np.ndarray, ref: NumericReference, effect: Effect = "ks", *,
            against: np.ndarray | None = None) -> ColumnResult:
    """`values` against the reference sample, or, with `against`, against another window's values
    (binned on the reference's edges and scaled by the reference's std, so scores compare)."""
    other = ref.sample if against is None else against
    result = stats.ks_2samp(values, other, alternative="two-sided", method="auto")
    counts = bin_counts(values, ref.edges)
    shares = counts / len(values)
    other_shares = ref.proportions if against is None else bin_counts(against, ref.edges) / len(against)
    psi_value = psi(shares, other_shares)
    js_value = float(jensenshannon(shares, other_shares, base=JS_BASE))
    w = float(stats.wasserstein_distance(values, other)) / ref.scale
    d = float(result.statistic)
    return ColumnResult("ks", len(values), d, float(result.pvalue), psi_value, js_value, w,
                        _effect(effect, d, psi_value, js_value, w), tuple(counts.tolist()))


def categorical(codes: np.ndarray, ref: CategoricalReference, effect: Effect = "ks", *,
                against: np.ndarray | None = None) -> ColumnResult:
    """Category codes (CategoricalReference.codes) against the reference, or, with `against`,
    against another window's codes. Both are two-sample tests of homogeneity
    (`chi2_contingency` on the 2 x k table of counts; the reference's counts are its
    frequencies times its row count); a reference without a row count is taken as exact
    (`chisquare` goodness of fit, CHI2_EPSILON floor on its frequencies)."""
    k = len(ref.categories)
    observed = np.bincount(codes, minlength=k).astype(np.float64)
    n = int(observed.sum())
    shares = observed / n
    if against is not None:
        other = np.bincount(against, minlength=k).astype(np.float64)
    else:
        other = ref.frequencies * ref.n if ref.n else None
    other_shares = ref.frequencies if other is None else other / other.sum()
    informative = (observed > 0) | (other_shares > 0)  # a category neither side has is no evidence
    if np.count_nonzero(informative) < 2:
        statistic, p = 0.0, 1.0  # one category on both sides: nothing to test
    elif other is None:
        f = ref.frequencies[informative]
        expected = n * (f + CHI2_EPSILON) / (f.sum() + CHI2_EPSILON * len(f))
        result = stats.chisquare(observed[informative], expected)
        statistic, p = float(result.statistic), float(result.pvalue)
    else:
        table = np.vstack([observed[informative], other[informative]])
        result = stats.chi2_contingency(table, correction=False)
        statistic, p = float(result.statistic), float(result.pvalue)
    tv = float(0.5 * np.abs(shares - other_shares).sum())
    psi_value = psi(shares, other_shares)
    js_value = float(jensenshannon(shares, other_shares, base=JS_BASE))
    return ColumnResult("chi2", n, statistic, p, psi_value, js_value, tv,
                        _effect(effect, tv, psi_value, js_value, tv), tuple(int(c) for c in observed))


def correct(p_values: np.ndarray, method: Correction) -> np.ndarray:
    if method == "none" or p_values.size == 0:
        return p_values
    if method == "bonferroni":
        return np.minimum(p_values * p_values.size, 1.0)
    if method == "bh":
        return stats.false_discovery_control(p_values, method="bh")
    raise ValueError(f"correction must be 'bonferroni', 'bh' or 'none', not {method!r}")


def _present(values: np.ndarray, ref: Distribution) -> np.ndarray:
    """Drop the rows whose event did not carry this prediction column."""
    if isinstance(ref, CategoricalReference):
        return values[values >= 0]
    return values[~np.isnan(values)]


def evaluate_columns(columns: Mapping[str, np.ndarray], references: Mapping[str, Distribution],
                     thresholds: Thresholds, against: Mapping[str, np.ndarray] | None = None
                     ) -> dict[str, ColumnResult]:
    """Test every column that has values and a reference; correct across them as one family."""
    raw = {}
    for name, ref in references.items():
        values = columns.get(name)
        if values is None:
            continue
        values = _present(values, ref)
        other = None if against is None else against.get(name)
        if other is not None:
            other = _present(other, ref)
            if len(other) == 0:
                continue
        if len(values) == 0:
            continue
        test = categorical if isinstance(ref, CategoricalReference) else numeric
        raw[name] = test(values, ref, thresholds.effect, against=other)
    corrected = correct(np.array([r.p_value for r in raw.values()]), thresholds.correction)
    return {
        name: replace(r, p_value_corrected=float(p),
                      drifted=bool(p < thresholds.alpha and r.effect > thresholds.min_effect))
        for (name, r), p in zip(raw.items(), corrected)
    }
