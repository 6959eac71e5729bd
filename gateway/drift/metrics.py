"""Prometheus metrics of the drift consumer, per model, version and column (docs/drift.md).

Gauges hold the latest published window's values; counters are read from the monitor at scrape
time, so the hot path never touches a metric object.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from .monitor import DriftMonitor

SCORES = ("effect", "p_value_corrected", "statistic", "psi", "js", "wasserstein")


class DriftMetrics:
    def __init__(self, monitor: DriftMonitor):
        self.monitor = monitor
        self.registry = CollectorRegistry()
        self.events = 0
        self._columns: dict[tuple[str, str, str, str], dict[str, Any]] = {}  # (model, version, kind, column)
        self._versions: dict[tuple[str, str], dict[str, float]] = {}
        self.registry.register(self)

    def observe(self, report: dict[str, Any]) -> None:
        key = (report["model_name"], report["model_version"])
        for kind in ("features", "predictions"):
            for column, result in report[kind].items():
                self._columns[(*key, kind, column)] = result
        version = self._versions.setdefault(key, {"windows": 0.0})
        version["windows"] += 1
        version["drift"] = float(report["drift"])
        version["alert_active"] = float(bool(report["alarm"] and report["alarm"]["active"]))
        version["rows"] = float(report["window"]["n_rows"])
        classifier = report.get("classifier") or {}
        if "auc" in classifier:
            version["classifier_auc"] = classifier["auc"]
            version["classifier_p_value"] = classifier["p_value"]

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        start_http_server(port, addr=addr, registry=self.registry)

    def collect(self):
        score = GaugeMetricFamily("gateway_drift_score", "Latest window's drift score of a column",
                                  labels=["model", "version", "kind", "column", "score"])
        drifted = GaugeMetricFamily("gateway_drift_column_drifted", "1 if the column drifted in the latest window",
                                    labels=["model", "version", "kind", "column"])
        for (model, version, kind, column), result in sorted(self._columns.items()):
            for name in SCORES:
                value = result.get(name)
                if value is not None:
                    score.add_metric([model, version, kind, column, name], float(value))
            drifted.add_metric([model, version, kind, column], float(result["drifted"]))
        yield score
        yield drifted
        families = {
            "drift": GaugeMetricFamily("gateway_drift_window_drifted", "1 if the latest window drifted", labels=["model", "version"]),
            "alert_active": GaugeMetricFamily("gateway_drift_alert_active", "1 while a drift alert is active", labels=["model", "version"]),
            "rows": GaugeMetricFamily("gateway_drift_window_rows", "Rows in the latest window", labels=["model", "version"]),
            "classifier_auc": GaugeMetricFamily("gateway_drift_classifier_auc", "Domain classifier ROC AUC, latest run", labels=["model", "version"]),
            "classifier_p_value": GaugeMetricFamily("gateway_drift_classifier_p_value", "Domain classifier permutation p-value", labels=["model", "version"]),
        }
        windows = CounterMetricFamily("gateway_drift_windows", "Windows reported", labels=["model", "version"])
        for (model, version), values in sorted(self._versions.items()):
            windows.add_metric([model, version], values["windows"])
            for name, family in families.items():
                if name in values:
                    family.add_metric([model, version], values[name])
        yield windows
        yield from families.values()
        skipped = CounterMetricFamily("gateway_drift_events_skipped", "Events not used, by reason", labels=["reason"])
        for reason, count in sorted(self.monitor.skipped.items()):
            skipped.add_metric([reason], count)
        yield skipped
        yield CounterMetricFamily("gateway_drift_events", "Events read", value=self.events)
