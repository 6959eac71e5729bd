"""Stable buckets for sticky assignment: the same key and salt give the same bucket on every
replica and after every restart (Python's hash() is salted per process, so it cannot serve)."""
from __future__ import annotations

import hashlib
import random
from typing import Sequence


def bucket(salt: str, key: str) -> float:
    """A number in [0, 1) from a salted blake2b hash; the salt keeps experiments independent."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, key=salt.encode()[:64]).digest()
    return int.from_bytes(digest, "big") / 2**64


class WeightedChoice:
    """Maps a point in [0, 1) onto arms laid end to end by weight, in the order given, so a key's
    arm changes only when the weights do."""

    def __init__(self, weights: Sequence[tuple[str, float]]):
        total = sum(w for _, w in weights)
        self.arms = [arm for arm, _ in weights]
        self.shares = {arm: w / total for arm, w in weights}
        edges, running = [], 0.0
        for _, w in weights:
            running += w / total
            edges.append(running)
        edges[-1] = 1.0
        self._edges = edges

    def at(self, point: float) -> str:
        for arm, edge in zip(self.arms, self._edges):
            if point < edge:
                return arm
        return self.arms[-1]

    def draw(self, uniform=random.random) -> tuple[str, float]:
        point = uniform()
        return self.at(point), point
