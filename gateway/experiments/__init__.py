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

__all__ = [
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
