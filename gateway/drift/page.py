"""`gateway drift report`: one HTML page (PNG charts embedded) about a model version's drift.

Built only from published drift reports (the `scoring.drift` topic, or a JSON Lines file of
them): each report carries its columns' bins, so no training data and no model repository are
needed. The page shows the chosen window's verdicts, reference-vs-window histograms of the drifted
columns, the domain classifier's answer, and every column's effect size over time.
"""
from __future__ import annotations

import asyncio
import base64
import html
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

MAX_HISTOGRAMS = 6


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Reports from a JSON Lines file (other lines, such as alerts or blanks, are passed over)."""
    out = []
    for line in path.read_bytes().splitlines():
        if line.strip():
            record = orjson.loads(line)
            if isinstance(record, dict) and record.get("type") == "drift_report":
                out.append(record)
    return out


async def read_topic(bootstrap: str | list[str], topic: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Every committed drift report on `topic`, from the start to the end offsets seen at start."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                isolation_level="read_committed", auto_offset_reset="earliest")
    await consumer.start()
    out = []
    try:
        partitions = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or ())]
        if not partitions:  # created after start; aiokafka has no public refresh short of subscribing
            await consumer._client.force_metadata_update()
            partitions = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while any([await consumer.position(tp) < ends[tp] for tp in partitions]):
            if asyncio.get_running_loop().time() > deadline:
                break
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for m in messages:
                    record = orjson.loads(m.value)
                    if record.get("type") == "drift_report":
                        out.append(record)
    finally:
        await consumer.stop()
    return out


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _histogram(name: str, column: dict[str, Any]):
    import matplotlib.pyplot as plt
    import numpy as np

    bins = column["bins"]
    window = np.asarray(bins["window"], dtype=float)
    window = window / max(window.sum(), 1)
    reference = np.asarray(bins["reference"], dtype=float)
    if "edges" in bins:
        edges = bins["edges"]
        labels = [f"< {edges[0]:.3g}"] + [f"{a:.3g}-{b:.3g}" for a, b in zip(edges[:-1], edges[1:])] + [f"> {edges[-1]:.3g}"]
        if len(edges) == 1:
            labels = [f"< {edges[0]:.3g}", f"= {edges[0]:.3g}", f"> {edges[0]:.3g}"]
    else:
        labels = bins["categories"]
    fig, ax = plt.subplots(figsize=(6.5, 2.8))
    x = np.arange(len(labels))
    ax.bar(x - 0.2, reference, width=0.4, label="reference (training)")
    ax.bar(x + 0.2, window, width=0.4, label="window")
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("share")
    ax.set_title(f"{name}: {column['test']} p={column['p_value_corrected']:.2g} effect={column['effect']:.3f} "
                 f"PSI={column['psi']:.2f} JS={column['js']:.2f}", fontsize=9)
    ax.legend(fontsize=7)
    data = _png(fig)
    plt.close(fig)
    return data


def _scores_over_time(reports: list[dict[str, Any]], kind: str, min_effect: float) -> str:
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(9, 3.6))
    names = sorted({n for r in reports for n in r[kind]})
    times = np.array([r["window"]["end_ts_ms"] for r in reports], dtype="datetime64[ms]")
    for name in names:
        values = [r[kind].get(name, {}).get("effect", np.nan) for r in reports]
        line, = ax.plot(times, values, marker=".", linewidth=1, label=name)
        drifted = [i for i, r in enumerate(reports) if r[kind].get(name, {}).get("drifted")]
        ax.scatter(times[drifted], [values[i] for i in drifted], color=line.get_color(), marker="o", s=40, zorder=3)
    ax.axhline(min_effect, color="black", linestyle="--", linewidth=1, label="min_effect")
    ax.set_ylabel("effect size")
    ax.set_title(f"{kind}: effect per window (large dots: drifted)", fontsize=10)
    ax.legend(fontsize=6, ncol=4, loc="upper left", bbox_to_anchor=(0, -0.15))
    data = _png(fig)
    plt.close(fig)
    return data


def _table(rows: Iterable[Iterable[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render(reports: list[dict[str, Any]], model: str, version: str, window_id: str | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    mine = sorted((r for r in reports if r["model_name"] == model and r["model_version"] == version),
                  key=lambda r: (r["window"]["end_ts_ms"], r["window_id"]))
    if not mine:
        raise ValueError(f"no drift reports for {model}/{version}")
    if window_id is not None:
        chosen = next((r for r in mine if r["window_id"] == window_id), None)
        if chosen is None:
            raise ValueError(f"no report with window id {window_id}")
    else:
        drifted = [r for r in mine if r["drift"]]
        chosen = drifted[-1] if drifted else mine[-1]
    columns = {**chosen["features"], **chosen["predictions"]}
    shown = (chosen["drifted_features"] + chosen["drifted_predictions"]) or sorted(
        columns, key=lambda n: -columns[n]["effect"])[:3]
    histograms = "".join(f'<img src="data:image/png;base64,{_histogram(n, columns[n])}">'
                         for n in shown[:MAX_HISTOGRAMS])
    verdicts = _table(((n, c["test"], f"{c['statistic']:.4g}", f"{c['p_value_corrected']:.3g}", f"{c['effect']:.3f}",
                        f"{c['psi']:.3f}", f"{c['js']:.3f}", f"{c['wasserstein']:.3f}", "DRIFT" if c["drifted"] else "")
                       for n, c in sorted(columns.items(), key=lambda kv: -kv[1]["effect"])),
                      ["column", "test", "statistic", "p (corrected)", "effect", "PSI", "JS", "Wasserstein", ""])
    classifier = chosen.get("classifier")
    if classifier and "auc" in classifier:
        top = ", ".join(f"{f['feature']} ({f['importance']:.2f})" for f in classifier["top_features"])
        classifier_html = (f"<p>Domain classifier ({html.escape(classifier['model'])}, {classifier['n_reference']} "
                           f"reference vs {classifier['n_window']} window rows): ROC AUC {classifier['auc']:.3f}, "
                           f"permutation p = {classifier['p_value']:.3g}. Top features: {html.escape(top)}.</p>")
    else:
        classifier_html = "<p>The domain classifier did not run on this window.</p>"
    window = chosen["window"]
    alerts = sum(1 for r in mine if r["alarm"] and r["alarm"]["active"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Drift: {html.escape(model)}/{html.escape(version)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} img{{margin:4px}}</style></head><body>
<h1>Drift of {html.escape(model)}/{html.escape(version)}</h1>
<p>{len(mine)} windows ({sum(r['drift'] for r in mine)} drifted; {alerts} with an active alert).
Settings: {html.escape(chosen['correction'])} correction, alpha {chosen['alpha']}, effect {html.escape(chosen['effect'])}
&gt; {chosen['min_effect']}.</p>
<h2>Window {html.escape(chosen['window_id'])}: {'DRIFT' if chosen['drift'] else 'no drift'}</h2>
<p>{window['n_rows']} rows ({window['n_tested']} tested) from {window['n_events']} events, closed by
{html.escape(window['closed_by'])}; drifted: {html.escape(', '.join(chosen['drifted_features'] + chosen['drifted_predictions']) or 'nothing')}.</p>
{classifier_html}
<h3>Reference vs window</h3>{histograms}
<h3>Every column</h3>{verdicts}
<h2>Over time</h2>
<img src="data:image/png;base64,{_scores_over_time(mine, 'features', chosen['min_effect'])}">
<img src="data:image/png;base64,{_scores_over_time(mine, 'predictions', chosen['min_effect'])}">
</body></html>"""
