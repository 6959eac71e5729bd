"""Experiment statistics: sample sizes equal published reference calculations to the integer,
the fixed-horizon test never names a winner early, paired comparisons and summaries stay finite."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gateway.experiments.stats import (
    ABDesign,
    ArmCounts,
    ab_result,
    ab_sample_size,
    ab_sample_size_means,
    arm_summary,
    paired_comparison,
)


def strict_json(obj) -> str:
    return json.dumps(obj, allow_nan=False)  # NaN is not JSON: the stats endpoint must never emit it


# --- sample size against published examples (sources in docs/experiments/ab-sample-size.md) -----


def test_cohens_h_matches_the_pwr_documentation():
    # pwr ES.h help page: ES.h(0.5, 0.4) = 0.2013579
    assert ab_sample_size(0.4, 0.1).effect_size == pytest.approx(0.2013579, abs=5e-8)


@pytest.mark.parametrize(
    "baseline, target, power, published_n",
    [
        # UVA StatLab "PASS in R": pwr.2p.test(h = ES.h(0.05, 0.10), power = 0.9) -> n = 567.2579, 568 per group
        (0.05, 0.10, 0.9, 568),
        # Cross Validated q. 83700: pwr.2p.test(h = ES.h(0.50, 0.75), power = .90) -> n = 76.65, so 77
        (0.50, 0.75, 0.9, 77),
    ],
)
def test_proportion_sample_size_equals_published_pwr_examples(baseline, target, power, published_n):
    design = ab_sample_size(baseline, target - baseline, power=power, alpha=0.05)
    assert design.n_per_arm == published_n
    # the arcsine effect size is symmetric, so the direction of the change does not matter
    assert ab_sample_size(target, baseline - target, power=power).n_per_arm == published_n


def test_relative_mde_is_a_fraction_of_the_baseline():
    # +100% of 5% is 10%: the same design as the absolute +0.05 published example above
    design = ab_sample_size(0.05, 1.0, mde_type="relative", power=0.9)
    assert design.target == pytest.approx(0.10) and design.n_per_arm == 568


def test_means_sample_size_equals_published_pwr_t_test_example():
    # Cross Validated "Power calculations": pwr.t.test(d = 2/3, power = 0.9) -> n = 48.26427, so 49
    assert ab_sample_size_means(0.0, 2.0, sd=3.0, power=0.9).n_per_arm == 49


def test_one_sided_design_needs_fewer_observations_and_must_point_the_right_way():
    two_sided = ab_sample_size(0.10, 0.02).n_per_arm
    assert ab_sample_size(0.10, 0.02, alternative="larger").n_per_arm < two_sided
    assert ab_sample_size(0.10, -0.02, alternative="smaller").n_per_arm < two_sided
    with pytest.raises(ValueError):
        ab_sample_size(0.10, -0.02, alternative="larger")


@pytest.mark.parametrize("baseline, mde", [(0.0, 0.1), (0.5, 0.0), (0.95, 0.1), (1.2, 0.1)])
def test_impossible_designs_are_refused(baseline, mde):
    with pytest.raises(ValueError):
        ab_sample_size(baseline, mde)


# --- fixed-horizon test ---------------------------------------------------------------------------


@pytest.fixture
def design() -> ABDesign:
    return ab_sample_size(0.10, 0.05)  # 10% -> 15%


def test_before_the_horizon_the_answer_is_not_yet_with_no_winner(design):
    n = design.n_per_arm
    # even a huge observed gap must not produce a verdict before both arms reach the horizon
    result = ab_result(design, ArmCounts("A", 0, n - 1), ArmCounts("B", n - 1, n - 1))
    assert result["decision"] == "not_yet"
    assert not {"better", "p_value", "ci", "rates"} & set(result)
    assert result["progress"]["A"]["fraction"] == pytest.approx((n - 1) / n)
    strict_json(result)


def test_at_the_horizon_a_real_difference_is_significant_and_names_the_better_arm(design):
    n = design.n_per_arm
    result = ab_result(design, ArmCounts("A", round(0.10 * n), n), ArmCounts("B", round(0.20 * n), n))
    assert result["decision"] == "significant" and result["better"] == "B"
    lo, hi = result["ci"]
    assert 0 < lo < result["difference"] < hi
    strict_json(result)


def test_at_the_horizon_equal_rates_are_not_significant(design):
    n = design.n_per_arm
    result = ab_result(design, ArmCounts("A", round(0.12 * n), n), ArmCounts("B", round(0.12 * n), n))
    assert result["decision"] == "not_significant" and result["better"] is None
    assert result["p_value"] > 0.5


def test_arms_without_any_conversion_give_a_finite_not_significant_answer(design):
    n = design.n_per_arm
    result = ab_result(design, ArmCounts("A", 0, n), ArmCounts("B", 0, n))
    assert result["decision"] == "not_significant" and result["p_value"] == 1.0
    strict_json(result)


def test_the_fixed_horizon_test_keeps_false_positives_near_alpha():
    """Under no difference, the share of 'significant' verdicts at the horizon is about alpha."""
    design = ab_sample_size(0.10, 0.05)
    n = design.n_per_arm
    rng = np.random.default_rng(11)
    successes = rng.binomial(n, 0.10, size=(2_000, 2))
    verdicts = [ab_result(design, ArmCounts("A", a, n), ArmCounts("B", b, n))["decision"] for a, b in successes]
    assert verdicts.count("significant") / len(verdicts) == pytest.approx(0.05, abs=0.015)


# --- champion / challenger paired comparison -------------------------------------------------------


def test_paired_comparison_waits_for_enough_pairs():
    assert paired_comparison([0.1] * 10, [0.2] * 10, min_n=30) == {"decision": "not_yet", "n": 10, "min_n": 30}


def test_a_challenger_making_fewer_errors_is_detected_with_mcnemar():
    rng = np.random.default_rng(3)
    champion = (rng.random(400) < 0.30).astype(float)  # 30% error
    challenger = np.where(rng.random(400) < 0.5, 0.0, champion)  # fixes about half of them
    result = paired_comparison(champion, challenger)
    assert result["decision"] == "challenger_better"
    assert result["primary_test"]["test"].startswith("mcnemar") and result["mean_difference"] < 0
    assert result["ci"][1] < 0
    strict_json(result)


def test_continuous_losses_use_wilcoxon_and_detect_a_worse_challenger():
    rng = np.random.default_rng(4)
    champion = rng.exponential(0.5, 300)
    challenger = champion + rng.normal(0.1, 0.2, 300)
    result = paired_comparison(champion, challenger)
    assert result["decision"] == "champion_better" and result["primary_test"]["test"] == "wilcoxon"


def test_identical_losses_give_no_difference_without_nan():
    losses = [0.0, 1.0] * 20
    result = paired_comparison(losses, losses)
    assert result["decision"] == "no_difference" and result["p_value"] == 1.0 and result["ci"] == [0.0, 0.0]
    strict_json(result)


def test_many_ties_and_a_constant_shift_stay_finite():
    champion = np.full(50, 0.7)
    result = paired_comparison(champion, champion - 0.1)
    assert result["decision"] == "challenger_better"
    strict_json(result)


def test_unpaired_or_non_finite_losses_are_refused():
    with pytest.raises(ValueError):
        paired_comparison([0.1] * 40, [0.1] * 39)
    with pytest.raises(ValueError):
        paired_comparison([0.1] * 39 + [float("nan")], [0.1] * 40)


# --- per-arm summaries -----------------------------------------------------------------------------


def test_arm_summary_reports_rate_with_a_wilson_interval_inside_zero_one():
    summary = arm_summary(10, 0.0, successes=0)
    assert summary["rate"] == 0.0 and summary["rate_ci"][0] == pytest.approx(0.0, abs=1e-12)
    # Wilson 95% upper bound for 0/10 is 0.2775 (a Wald interval would collapse to [0, 0])
    assert summary["rate_ci"][1] == pytest.approx(0.2775, abs=1e-4)
    strict_json(summary)


def test_arm_summary_of_an_arm_without_traffic_is_empty_not_nan():
    summary = arm_summary(0, 0.0, successes=0)
    assert summary["mean_reward"] is None and summary["rate"] is None and summary["rate_ci"] is None
    strict_json(summary)
