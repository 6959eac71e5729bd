"""The records the drift consumer publishes on `scoring.drift` (schema version 2, docs/drift.md):
one `drift_report` per window, and a `drift_alert` when a version starts or stops drifting."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from .reference import CategoricalReference, Reference
from .scores import ColumnResult, Thresholds
from .window import ClosedWindow

SCHEMA_VERSION = 2


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _bins(ref: Any) -> dict[str, Any]:
    if isinstance(ref, CategoricalReference):
        return {"categories": list(ref.categories), "reference": ref.frequencies.tolist()}
    # PSI bins: below the reference minimum, between consecutive edges, above the maximum.
    return {"edges": ref.edges.tolist(), "reference": ref.proportions.tolist()}


def _column(r: ColumnResult, ref: Any) -> dict[str, Any]:
    return {
        "test": r.test, "n": r.n, "statistic": r.statistic, "p_value": r.p_value,
        "p_value_corrected": r.p_value_corrected, "effect": r.effect,
        "psi": r.psi, "js": r.js, "wasserstein": r.wasserstein, "drifted": r.drifted,
        "bins": {**_bins(ref), "window": list(r.window_counts)},
    }


def _compact(r: ColumnResult) -> dict[str, Any]:
    return {"test": r.test, "statistic": r.statistic, "p_value_corrected": r.p_value_corrected,
            "effect": r.effect, "psi": r.psi, "js": r.js, "changed": r.drifted}


def ranked(results: dict[str, ColumnResult]) -> list[str]:
    """The drifted names, largest effect first: the column that moved most is where to look."""
    return sorted((n for n, r in results.items() if r.drifted), key=lambda n: (-results[n].effect, n))


def build_report(window: ClosedWindow, ref: Reference, settings: dict[str, Any], thresholds: Thresholds,
                 features: dict[str, ColumnResult], predictions: dict[str, ColumnResult],
                 previous: tuple[str, dict[str, ColumnResult]] | None, n_tested: int) -> dict[str, Any]:
    drifted_features, drifted_predictions = ranked(features), ranked(predictions)
    refs = {**ref.features, **{c.key: c.reference for c in ref.outputs}}
    panes = window.panes
    return {
        "schema_version": SCHEMA_VERSION,
        "type": "drift_report",
        "window_id": window.window_id,
        "model_name": window.key[0],
        "model_version": window.key[1],
        "partition": window.partition,
        "window": {
            **settings,
            "closed_by": window.closed_by,
            "n_rows": window.n_rows,
            "n_tested": n_tested,
            "n_events": window.n_events,
            "start_ts_ms": min(p.start_ts_ms for p in panes),
            "end_ts_ms": max(p.end_ts_ms for p in panes),
            "bounds_ms": None if window.start_ms is None else [window.start_ms, window.end_ms],
            "offsets": [panes[0].first_offset, panes[-1].last_offset],
        },
        "alpha": thresholds.alpha,
        "correction": thresholds.correction,
        "effect": thresholds.effect,
        "min_effect": thresholds.min_effect,
        "features": {n: _column(r, refs[n]) for n, r in features.items()},
        "predictions": {n: _column(r, refs[n]) for n, r in predictions.items()},
        "drifted_features": drifted_features,
        "drifted_predictions": drifted_predictions,
        "drift": bool(drifted_features or drifted_predictions),
        "previous": None if previous is None else {
            "window_id": previous[0],
            "columns": {n: _compact(r) for n, r in previous[1].items()},
            "changed": ranked(previous[1]),
        },
        "alarm": None,
        "classifier": None,
        "created": _now_iso(),
    }


def build_alert(report: dict[str, Any], state: str) -> dict[str, Any]:
    alarm = report["alarm"]
    return {
        "schema_version": SCHEMA_VERSION,
        "type": "drift_alert",
        "state": state,  # "drifting" | "recovered"
        "model_name": report["model_name"],
        "model_version": report["model_version"],
        "partition": report["partition"],
        "window_id": report["window_id"],
        "drifted_windows": alarm["drifted_in_last_n"],
        "k": alarm["k"],
        "n": alarm["n"],
        "drifted_features": report["drifted_features"],
        "drifted_predictions": report["drifted_predictions"],
        "created": report["created"],
    }


def summary(report: dict[str, Any]) -> str:
    """One log line: what drifted, by how much (effect), without opening the record."""
    def listed(kind: str, results: str) -> str:
        return ",".join(f"{n}({report[results][n]['effect']:.2f})" for n in report[kind]) or "-"

    window = report["window"]
    classifier = report["classifier"]
    auc = "" if classifier is None else f" classifier_auc={classifier['auc']:.2f}"
    return (
        f"drift {report['model_name']}/{report['model_version']} window={report['window_id']} "
        f"n={window['n_rows']} closed_by={window['closed_by']} "
        f"drift={'YES' if report['drift'] else 'no'} "
        f"drifted={listed('drifted_features', 'features')} "
        f"predictions={listed('drifted_predictions', 'predictions')}{auc}"
    )
