"""Univariate drift tests of a window's columns against the reference, with a multiple-testing
correction across the columns of one family (the input features, or the prediction columns).

Numeric columns: two-sample Kolmogorov-Smirnov (`scipy.stats.ks_2samp`, two-sided,
method="auto": exact p-values while both samples have fewer than 10,000 values, asymptotic
beyond). Categorical columns: chi-squared goodness of fit (`scipy.stats.chisquare`) against the
reference frequencies. A column drifts only when its corrected p-value is below `alpha` AND
its effect size exceeds `min_effect`: on large windows tiny, harmless shifts are significant.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
import numpy as np
from scipy import stats

from gateway.config import Correction

from .reference import CategoricalReference, Distribution, NumericReference, Reference, quantize_prediction


# Expected-frequency floor for categories the reference gives 0 (or never saw): keeps chi-squared
# finite while a new category still yields a huge statistic and a p-value of ~0.
CHI2_EPSILON = 1e-4


@dataclass(frozen=True)
class Thresholds:
    alpha: float = 0.01
    correction: Correction = "bonferroni"
    min_effect: float = 0.1


@dataclass(frozen=True)
class ColumnResult:
    test: str  # "ks" | "chi2"
    n: int  # window values tested
    statistic: float
    p_value: float
    # KS: the statistic D itself. Chi-squared: total variation distance between the window's
    # and the reference's category frequencies. Both lie in [0, 1], so one `min_effect` fits both.
    effect: float
    p_value_corrected: float = float("nan")
    drifted: bool = False


def ks(values: np.ndarray, sample: np.ndarray) -> ColumnResult:
    result = stats.ks_2samp(values, sample, alternative="two-sided", method="auto")
    statistic = float(result.statistic)
    return ColumnResult("ks", len(values), statistic, float(result.pvalue), statistic)


def _category_key(value: object) -> str:
    """Reference keys are strings; 1, 1.0 and "1" are the same category."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def chi2(values: np.ndarray, frequencies: Mapping[str, float]) -> ColumnResult:
    uniques, counts = np.unique(values, return_counts=True)
    observed_by_key: dict[str, int] = {}
    for value, count in zip(uniques.tolist(), counts.tolist()):
        key = _category_key(value)
        observed_by_key[key] = observed_by_key.get(key, 0) + count
    categories = sorted(set(frequencies) | set(observed_by_key))
    n = len(values)
    observed = np.array([observed_by_key.get(c, 0) for c in categories], dtype=np.float64)
    reference = np.array([frequencies.get(c, 0.0) for c in categories], dtype=np.float64)
    effect = float(0.5 * np.abs(observed / n - reference).sum())
    if len(categories) < 2:  # one category on both sides: nothing to test, no drift
        return ColumnResult("chi2", n, 0.0, 1.0, effect)
    expected = n * (reference + CHI2_EPSILON) / (1.0 + CHI2_EPSILON * len(categories))
    result = stats.chisquare(observed, expected)
    return ColumnResult("chi2", n, float(result.statistic), float(result.pvalue), effect)


def correct(p_values: np.ndarray, method: Correction) -> np.ndarray:
    if method == "none" or p_values.size == 0:
        return p_values
    if method == "bonferroni":
        return np.minimum(p_values * p_values.size, 1.0)
    if method == "bh":
        return stats.false_discovery_control(p_values, method="bh")
    raise ValueError(f"correction must be 'bonferroni', 'bh' or 'none', not {method!r}")


def evaluate_columns(
    columns: Mapping[str, np.ndarray], references: Mapping[str, Distribution], thresholds: Thresholds
) -> dict[str, ColumnResult]:
    """Test every column that has both values and a reference; correct across them as one family."""
    raw = {}
    for name, ref in references.items():
        values = columns.get(name)
        if values is None or len(values) == 0:
            continue
        if isinstance(ref, CategoricalReference):
            raw[name] = chi2(values, ref.frequencies)
        else:
            raw[name] = ks(values, ref.sample)
    corrected = correct(np.array([r.p_value for r in raw.values()]), thresholds.correction)
    return {
        name: replace(
            r,
            p_value_corrected=float(p),
            drifted=bool(p < thresholds.alpha and r.effect > thresholds.min_effect),
        )
        for (name, r), p in zip(raw.items(), corrected)
    }


def evaluate(
    inputs: np.ndarray, outputs: Mapping[str, np.ndarray], reference: Reference, thresholds: Thresholds
) -> tuple[dict[str, ColumnResult], dict[str, ColumnResult]]:
    """(feature results, prediction results) of one window; each family corrected on its own."""
    columns = {name: inputs[:, i] for i, name in enumerate(reference.feature_names)}
    features = evaluate_columns(columns, reference.features, thresholds)
    predictions = evaluate_columns(
        {c.key: quantize_prediction(outputs[c.key]) if isinstance(c.reference, NumericReference) else outputs[c.key]
         for c in reference.outputs if c.key in outputs},
        {c.key: c.reference for c in reference.outputs}, thresholds)
    return features, predictions
