"""The drift report record (schema version 1, documented in docs/drift.md) and its log line."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from .tests import ColumnResult, Thresholds
from .window import Window

SCHEMA_VERSION = 1


def _results(results: dict[str, ColumnResult]) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "test": r.test,
            "n": r.n,
            "statistic": r.statistic,
            "p_value": r.p_value,
            "p_value_corrected": r.p_value_corrected,
            "effect": r.effect,
            "drifted": r.drifted,
        }
        for name, r in results.items()
    }


def _drifted(results: dict[str, ColumnResult]) -> list[str]:
    """Largest effect first: the feature that moved most is the first place to look."""
    return sorted((n for n, r in results.items() if r.drifted), key=lambda n: (-results[n].effect, n))


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_report(
    window: Window,
    features: dict[str, ColumnResult],
    predictions: dict[str, ColumnResult],
    thresholds: Thresholds,
) -> dict[str, Any]:
    drifted_features = _drifted(features)
    drifted_predictions = _drifted(predictions)
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "drift_report",
        "window_id": window.window_id,
        "model_name": window.model_name,
        "model_version": window.model_version,
        "window": {
            "n_rows": window.n_rows,
            "n_events": window.n_events,
            "start_ts_ms": window.start_ts_ms,
            "end_ts_ms": window.end_ts_ms,
            "closed_by": window.closed_by,
            "offsets": {str(p): list(span) for p, span in sorted(window.offsets.items())},
        },
        "test": "ks",
        "alpha": thresholds.alpha,
        "correction": thresholds.correction,
        "min_effect": thresholds.min_effect,
        "features": _results(features),
        "predictions": _results(predictions),
        "drifted_features": drifted_features,
        "drifted_predictions": drifted_predictions,
        "drift": bool(drifted_features or drifted_predictions),
        "created": _now_iso(),
    }


def summary(report: dict[str, Any]) -> str:
    """One log line: what drifted, by how much (effect), without opening the record."""
    def listed(kind: str, results: str) -> str:
        names = report[kind]
        return ",".join(f"{n}({report[results][n]['effect']:.2f})" for n in names) or "-"

    window = report["window"]
    return (
        f"drift {report['model_name']}/{report['model_version']} window={report['window_id']} "
        f"n={window['n_rows']} closed_by={window['closed_by']} "
        f"drift={'YES' if report['drift'] else 'no'} "
        f"drifted={listed('drifted_features', 'features')} "
        f"predictions={listed('drifted_predictions', 'predictions')}"
    )
