"""Multivariate drift: a domain classifier that tells reference rows from window rows.

Its cross-validated ROC AUC says how separable the two are (0.5: not at all), a permutation
test (`sklearn.model_selection.permutation_test_score`) gives the p-value, and the fitted
forest's impurity importances name the features that separate them. It runs off the hot path
(a worker process, for selected windows only) and its cost is bounded by `max_rows` per side,
`n_permutations` and a small forest: (n_permutations + 1) x folds + 1 fits of at most
2 x max_rows rows. Seeded from the window id, so a re-run gives the same answer.
"""
from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

FOLDS = 3


@dataclass(frozen=True)
class ClassifierSettings:
    max_rows: int = 300  # per side
    n_permutations: int = 19  # p-value resolution 1 / (n_permutations + 1)
    n_estimators: int = 10
    max_depth: int = 3
    top_features: int = 5


def seed_of(window_id: str) -> int:
    return zlib.crc32(window_id.encode())


def domain_classifier(reference_rows: np.ndarray, window_rows: np.ndarray, feature_names: tuple[str, ...],
                      window_id: str, settings: ClassifierSettings) -> dict[str, Any]:
    """AUC, permutation p-value and top features of reference-vs-window; runs in a worker process."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import StratifiedKFold, permutation_test_score

    seed = seed_of(window_id)
    rng = np.random.default_rng(seed)

    def capped(rows: np.ndarray) -> np.ndarray:
        if len(rows) <= settings.max_rows:
            return rows
        return rows[np.sort(rng.choice(len(rows), settings.max_rows, replace=False))]

    ref, win = capped(reference_rows), capped(window_rows)
    x = np.vstack([ref, win])
    y = np.concatenate([np.zeros(len(ref), dtype=int), np.ones(len(win), dtype=int)])
    model = RandomForestClassifier(n_estimators=settings.n_estimators, max_depth=settings.max_depth,
                                   class_weight="balanced", random_state=seed % 2**31, n_jobs=1)
    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=seed % 2**31)
    auc, _, p_value = permutation_test_score(model, x, y, scoring="roc_auc", cv=folds,
                                             n_permutations=settings.n_permutations,
                                             random_state=seed % 2**31, n_jobs=1)
    importances = model.fit(x, y).feature_importances_
    order = sorted(range(len(feature_names)), key=lambda i: (-importances[i], feature_names[i]))
    return {
        "model": f"RandomForestClassifier(n_estimators={settings.n_estimators}, max_depth={settings.max_depth})",
        "auc": float(auc),
        "p_value": float(p_value),
        "n_reference": len(ref),
        "n_window": len(win),
        "settings": asdict(settings),
        "top_features": [{"feature": feature_names[i], "importance": float(importances[i])}
                         for i in order[:settings.top_features]],
    }
