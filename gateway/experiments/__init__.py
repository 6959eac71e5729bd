"""The computational core of experiments: bandit policies and experiment statistics.

Pure functions and small classes with no I/O, so routing, the feedback endpoint and the stats
endpoint can call them, and tests and simulations can exercise them without a gateway.
"""
from gateway.experiments.bandits import (
    POLICIES,
    ArmStats,
    BanditPolicy,
    BanditState,
    EpsilonGreedy,
    ThompsonBeta,
    ThompsonGaussian,
    UCB1,
    make_policy,
)
from gateway.experiments.stats import (
    ABDesign,
    ArmCounts,
    ab_result,
    ab_sample_size,
    ab_sample_size_means,
    arm_summary,
    paired_comparison,
)

__all__ = [
    "ABDesign",
    "ArmCounts",
    "ab_result",
    "ab_sample_size",
    "ab_sample_size_means",
    "arm_summary",
    "paired_comparison",
    "POLICIES",
    "ArmStats",
    "BanditPolicy",
    "BanditState",
    "EpsilonGreedy",
    "ThompsonBeta",
    "ThompsonGaussian",
    "UCB1",
    "make_policy",
]
