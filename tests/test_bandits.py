"""Bandit policies: they find the best arm, Thompson's regret matches a reference implementation,
and their state is rebuilt identically from the feedback stream on any replica."""
from __future__ import annotations

import json
import random
import statistics

import numpy as np
import pytest
from scipy import stats as sps

from gateway.experiments.bandits import (
    POLICIES,
    BanditPolicy,
    BanditState,
    ThompsonGaussian,
    make_policy,
    nig_mean_marginal,
    nig_posterior,
)
from gateway.experiments.simulate import OURS, REFERENCE, SCENARIOS, Scenario, evaluate

ARMS = ["v1", "v2", "v3"]
# Small but meaningful: the full 20,000-round, 20-seed run is in docs/experiments/bandit-simulation.md.
SMALL = Scenario("easy-small", SCENARIOS["easy"].rates, rounds=2_000)
SEEDS = range(6)


def feedback(n: int, seed: int, continuous: bool = False) -> list[tuple[str, float]]:
    rng = random.Random(seed)
    return [
        (rng.choice(ARMS), rng.gauss(1.0, 2.0) if continuous else float(rng.random() < 0.3)) for _ in range(n)
    ]


# --- learning the best arm ---------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", sorted(OURS))
def test_each_algorithm_sends_most_traffic_to_the_best_arm(algorithm):
    summary = evaluate(algorithm, OURS[algorithm], SMALL, SEEDS)
    assert min(summary.best_shares) > 0.5, summary.row()


def test_thompson_regret_is_within_the_reference_implementations_range():
    pytest.importorskip("mabwiser")
    ours = evaluate("thompson_beta", OURS["thompson_beta"], SMALL, SEEDS)
    reference = evaluate("mabwiser_thompson", REFERENCE["mabwiser_thompson"], SMALL, SEEDS)
    assert min(reference.regrets) <= statistics.fmean(ours.regrets) <= max(reference.regrets), (
        ours.row(),
        reference.row(),
    )


def test_gaussian_thompson_finds_the_best_arm_with_continuous_rewards():
    scenario = Scenario("gaussian-small", (1.0, 1.2, 1.5), rounds=1_500, reward_sd=1.0)
    factory = lambda s, seed: make_policy("thompson_gaussian", s.arms)  # noqa: E731
    summary = evaluate("thompson_gaussian", factory, scenario, SEEDS)
    assert min(summary.best_shares) > 0.5, summary.row()


# --- state: replay, merge, persistence ---------------------------------------------------------


@pytest.mark.parametrize("continuous", [False, True])
def test_replicas_seeing_feedback_in_any_order_merge_to_the_sequential_state(continuous):
    records = feedback(600, seed=1, continuous=continuous)
    sequential = BanditState()
    for arm, reward in records:
        sequential.record(arm, reward)

    shuffled = records[:]
    random.Random(2).shuffle(shuffled)
    replicas = [BanditState() for _ in range(3)]
    for i, (arm, reward) in enumerate(shuffled):
        replicas[i % 3].record(arm, reward)
    merged = replicas[0].merge(replicas[1]).merge(replicas[2])

    assert merged.arms == sequential.arms
    for arm in ARMS:
        a, b = merged.stats(arm), sequential.stats(arm)
        assert a.count == b.count
        if continuous:  # float sums agree to rounding
            assert a.reward_sum == pytest.approx(b.reward_sum, rel=1e-12)
            assert a.reward_sq_sum == pytest.approx(b.reward_sq_sum, rel=1e-12)
        else:  # 0/1 sums are exact: replicas agree bit for bit
            assert a == b


def test_policy_merge_adds_another_replicas_feedback():
    shared = BanditState()
    left, right = make_policy("thompson_beta", ARMS, shared), make_policy("thompson_beta", ARMS)
    left.update("v1", 1.0)
    right.update("v1", 0.0)
    right.update("v2", 1.0)
    left.merge(right)
    assert shared is left.state  # whoever shares the state (e.g. a feedback tracker) sees the merge
    assert left.posterior()["v1"]["alpha"] == 2.0 and left.posterior()["v1"]["beta"] == 2.0
    assert left.posterior()["v2"]["alpha"] == 2.0


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_state_round_trips_through_json_and_decides_the_same(name):
    policy = make_policy(name, ARMS)
    for arm, reward in feedback(300, seed=3):
        policy.update(arm, reward)
    restored = BanditPolicy.from_dict(json.loads(json.dumps(policy.to_dict())))

    assert type(restored) is type(policy)
    assert restored.state == policy.state and restored.params() == policy.params()
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    assert [policy.choose(rng_a) for _ in range(50)] == [restored.choose(rng_b) for _ in range(50)]


def test_snapshot_is_json_for_every_policy():
    for name in POLICIES:
        policy = make_policy(name, ARMS)
        policy.update("v1", 1.0)
        json.dumps(policy.snapshot(np.random.default_rng(0)), allow_nan=False)


# --- arms added and removed at runtime ---------------------------------------------------------


def test_an_arm_added_at_runtime_starts_at_the_prior_and_is_tried():
    for name in POLICIES:
        policy = make_policy(name, ["v1", "v2"])
        for arm, reward in feedback(200, seed=4):
            if arm != "v3":
                policy.update(arm, reward)
        policy.arms = ["v1", "v2", "v3"]
        if name == "thompson_beta":
            v3 = policy.posterior()["v3"]
            assert (v3["count"], v3["alpha"], v3["beta"]) == (0, 1.0, 1.0)
        if name in ("epsilon_greedy", "ucb1"):  # deterministic rules play an untried arm first
            assert policy.choose(np.random.default_rng(0)) == ("v3", {"rule": "untried"})
        if name.startswith("thompson"):  # a wide prior draws traffic to the newcomer
            assert policy.allocation(np.random.default_rng(0))["v3"] > 0.05


def test_a_removed_arm_is_never_chosen_but_its_feedback_is_kept():
    for name in POLICIES:
        policy = make_policy(name, ARMS)
        for _ in range(50):
            policy.update("v3", 1.0)
            policy.update("v1", 0.0)
        policy.arms = ["v1", "v2"]
        policy.update("v3", 1.0)  # late feedback for the removed arm
        rng = np.random.default_rng(0)
        assert {policy.choose(rng)[0] for _ in range(200)} <= {"v1", "v2"}
        assert set(policy.allocation(rng)) == {"v1", "v2"}
        assert policy.state.stats("v3").count == 51


# --- reasons and allocation ---------------------------------------------------------------------


def test_epsilon_greedy_explores_at_rate_epsilon_and_says_so():
    policy = make_policy("epsilon_greedy", ARMS, epsilon=0.2)
    for arm, reward in [("v1", 1.0), ("v2", 0.0), ("v3", 0.0)]:
        policy.update(arm, reward)
    rng = np.random.default_rng(0)
    reasons = [policy.choose(rng)[1]["rule"] for _ in range(5_000)]
    assert reasons.count("explore") / len(reasons) == pytest.approx(0.2, abs=0.02)
    assert policy.allocation() == pytest.approx({"v1": 0.8 + 0.2 / 3, "v2": 0.2 / 3, "v3": 0.2 / 3})


def test_ucb1_picks_the_highest_upper_bound_and_reports_it():
    policy = make_policy("ucb1", ["a", "b"])
    for _ in range(10):
        policy.update("a", 0.6)
    policy.update("b", 0.5)  # lower mean, but one observation: a much larger bonus
    arm, reason = policy.choose(np.random.default_rng(0))
    expected_b = 0.5 + np.sqrt(2 * np.log(11) / 1)
    assert (arm, reason["rule"]) == ("b", "ucb") and reason["score"] == pytest.approx(expected_b)
    assert policy.allocation() == {"a": 0.0, "b": 1.0}


@pytest.mark.parametrize("name", ["thompson_beta", "thompson_gaussian"])
def test_thompson_allocation_predicts_how_often_each_arm_is_chosen(name):
    policy = make_policy(name, ARMS)
    for arm, n_success in [("v1", 4), ("v2", 6), ("v3", 5)]:
        for i in range(10):
            policy.update(arm, float(i < n_success))
    rng = np.random.default_rng(1)
    allocation = policy.allocation(rng, n_draws=20_000)
    chosen = [policy.choose(rng)[0] for _ in range(4_000)]
    for arm in ARMS:
        assert chosen.count(arm) / len(chosen) == pytest.approx(allocation[arm], abs=0.03)
    assert sum(allocation.values()) == pytest.approx(1.0)


def test_beta_bernoulli_rejects_rewards_outside_zero_one():
    policy = make_policy("thompson_beta", ARMS)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            policy.update("v1", bad)


def test_unknown_policy_name_is_refused():
    with pytest.raises(ValueError, match="unknown bandit policy"):
        make_policy("softmax", ARMS)


# --- Gaussian posterior against closed forms in scipy -------------------------------------------


def _state_of(values) -> BanditState:
    state = BanditState()
    for v in values:
        state.record("a", float(v))
    return state


def test_gaussian_posterior_under_the_reference_prior_is_the_classical_t_interval():
    values = np.random.default_rng(5).normal(3.0, 2.0, size=25)
    df, loc, scale = nig_mean_marginal(*nig_posterior(_state_of(values).stats("a"), 0.0, 0.0, -0.5, 0.0))
    mean_interval = sps.bayes_mvs(values, alpha=0.95)[0].minmax
    assert sps.t.interval(0.95, df, loc=loc, scale=scale) == pytest.approx(mean_interval, rel=1e-10)


def test_gaussian_posterior_with_the_default_weak_prior_matches_the_t_interval_closely():
    values = np.random.default_rng(6).normal(-1.0, 0.5, size=200)
    policy = ThompsonGaussian(["a"], _state_of(values))
    ci = policy.posterior()["a"]["ci95"]
    assert ci == pytest.approx(sps.bayes_mvs(values, alpha=0.95)[0].minmax, abs=0.01)


def test_gaussian_posterior_updated_in_two_batches_equals_one_batch():
    values = np.random.default_rng(7).normal(10.0, 3.0, size=40)
    prior = dict(mu0=2.0, kappa0=0.5, alpha0=2.0, beta0=3.0)
    once = ThompsonGaussian(["a"], _state_of(values), **prior).nig_params(_state_of(values).stats("a"))
    first = ThompsonGaussian(["a"], **prior).nig_params(_state_of(values[:15]).stats("a"))
    mu, kappa, alpha, beta = first
    twice = ThompsonGaussian(["a"], mu0=mu, kappa0=kappa, alpha0=alpha, beta0=beta).nig_params(
        _state_of(values[15:]).stats("a")
    )
    assert twice == pytest.approx(once, rel=1e-9)


def test_gaussian_thompson_draws_follow_the_posterior_t_distribution():
    values = np.random.default_rng(8).normal(0.3, 1.0, size=12)
    policy = ThompsonGaussian(["a"], _state_of(values))
    rng = np.random.default_rng(9)
    thetas = [policy.choose(rng)[1]["theta"] for _ in range(3_000)]
    df, loc, scale = policy.mean_marginal(policy.state.stats("a"))
    assert sps.kstest(thetas, sps.t(df, loc=loc, scale=scale).cdf).pvalue > 0.01
