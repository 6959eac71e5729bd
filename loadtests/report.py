"""Reports: the JSON with every figure, a console summary, and PNG plots (matplotlib, no display)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import orjson

PLOTTED = ("p50", "p90", "p99", "p99.9")


def write_json(path: str | Path, data: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n")
    return path


def png_beside(path: str | Path) -> Path:
    return Path(path).with_suffix(".png")


def _ms(summary: dict[str, Any], keys: Iterable[str] = ("p50", "p90", "p99", "p99.9", "max")) -> str:
    if not summary.get("count"):
        return "no requests"
    return "  ".join(f"{k} {summary[k]:g}" for k in keys) + " ms"


def format_run(r: dict[str, Any]) -> str:
    s = r["settings"]
    offered = f"{s['mode']} {r['offered_rate']:g} req/s offered" if r["offered_rate"] else \
        f"closed loop, {s['connections']} clients"
    cpu = r["cpu"]
    watched = "  ".join(f"{k} {v:g}" for k, v in cpu.items()
                        if k not in ("cores", "machine_busy", "steal", "generator", "generator_per_process", "other"))
    lines = [
        f"{r['label'] or 'run'}: {offered}; scenario {r['scenario']['name']}; {s['processes']} processes, "
        f"{s['connections']} connections; {s['duration']:g} s measured after {s['warmup']:g} s warm-up",
        f"  achieved   {r['achieved_rate']:g} req/s, {r['rows_per_s']:g} rows/s; {r['measured_requests']} measured, "
        f"errors {sum(r['errors'].values())} ({(r['error_rate'] or 0):.3%}) {r['errors'] or ''}".rstrip(),
        f"  latency    {_ms(r['latency_ms'])}   (from intended send time)",
        f"  response   {_ms(r['response_time_ms'])}   (from actual send)",
    ]
    if r["offered_rate"]:
        lines.append(f"  disp. lag  {_ms(r['dispatch_lag_ms'], ('p50', 'p99', 'max'))}   (generator lateness)")
    per = " ".join(f"{c:g}" for c in cpu["generator_per_process"] if c is not None)
    lines.append(f"  cpu cores  generator {cpu['generator']:g} [{per}]  {watched}  machine {cpu['machine_busy']:g}"
                 f"/{cpu['cores']}  other {cpu['other']:g}  steal {cpu['steal']:g}")
    for name, kind in r["by_kind"].items():
        lines.append(f"  {name:<22} {kind['latency_ms'].get('count', 0):>8} req {kind['rows']:>9} rows  "
                     f"{_ms(kind['latency_ms'], ('p50', 'p99', 'max'))}")
    if r["feedback"]:
        lines.append(f"  feedback   {r['feedback']}")
    lines += [f"  warning: {w}" for w in r["warnings"]]
    lines += [f"  note: {d}" for d in r["diagnosis"]]
    return "\n".join(lines)


def format_search(search: dict[str, Any]) -> str:
    c = search["criteria"]
    lines = [f"{search['label']}: highest {search['mode']} rate with {c['percentile']} <= {c['objective_ms']:g} ms "
             f"and < {c['max_error_rate']:.1%} errors"]
    if search["probe"]:
        p = search["probe"]
        lines.append(f"  probe: closed loop, {p['settings']['connections']} clients: {p['achieved_rate']:g} req/s, "
                     f"p99 {p['latency_ms'].get('p99')} ms")
    for t in search["trials"]:
        r = t["result"]
        lines.append(f"  {'pass' if t['passed'] else 'FAIL'} {t['rate']:>8g}/s  achieved {r['achieved_rate']:>9g}/s  "
                     f"{_ms(r['latency_ms'], ('p50', 'p99', 'p99.9'))}  server {r['cpu'].get('server', '-')} "
                     f"gen {r['cpu']['generator']:g} machine {r['cpu']['machine_busy']:g} "
                     f"steal {r['cpu']['steal']:g}  ({t['why']})"
                     + (f" [disturbed; {len(t['discarded_attempts'])} earlier attempt(s) discarded]"
                        if t["disturbed"] or t["discarded_attempts"] else ""))
    best = search["at_max"]
    if best:
        lines.append(f"  => {search['max_rate']:g} req/s ({best['rows_per_s']:g} rows/s), "
                     f"{_ms(best['latency_ms'], ('p50', 'p99', 'p99.9'))}")
        lines += [f"     note: {d}" for d in best["diagnosis"]]
    else:
        lines.append("  => no trial passed")
    if search["disturbed_failures"]:
        lines.append(f"  caution: failures at {search['disturbed_failures']} req/s were disturbed by other jobs or "
                     "the hypervisor even after retries; the figure may be low")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_searches(searches: dict[str, dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Latency percentiles against offered rate, one panel per configuration, objective marked."""
    plt = _pyplot()
    n = len(searches)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.2), squeeze=False)
    for ax, (label, search) in zip(axes[0], searches.items()):
        trials = [t for t in search["trials"] if t["result"]["latency_ms"].get("count")]
        rates = [t["rate"] for t in trials]
        for key in PLOTTED:
            ax.plot(rates, [t["result"]["latency_ms"][key] for t in trials], marker="o", ms=3, label=key)
        c = search["criteria"]
        ax.axhline(c["objective_ms"], color="red", ls="--", lw=1, label=f"objective ({c['percentile']})")
        if search["max_rate"]:
            ax.axvline(search["max_rate"], color="green", ls=":", lw=1,
                       label=f"max {search['max_rate']:g}/s")
        ax.set_yscale("log")
        ax.set_xlabel("offered rate (req/s)")
        ax.set_ylabel("latency from intended send (ms)")
        ax.set_title(label, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(plt, fig, path)


def plot_timelines(runs: dict[str, dict[str, Any]], path: str | Path, title: str = "",
                   spans: Iterable[tuple[float, float, str]] = ()) -> Path:
    """Per-bucket p99 and max latency over the run, one line pair per run; `spans` shade intervals."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for label, run in runs.items():
        points = [p for p in run["timeline"] if p["requests"]]
        t = [p["t_s"] for p in points]
        line, = ax.plot(t, [p["p99"] for p in points], marker="o", ms=3, label=f"{label}: p99")
        ax.plot(t, [p["max"] for p in points], ls="--", color=line.get_color(), lw=1, label=f"{label}: max")
    for start, end, text in spans:
        ax.axvspan(start, end, color="grey", alpha=0.2, label=text)
    ax.set_yscale("log")
    ax.set_xlabel("seconds since start (warm-up included)")
    ax.set_ylabel("latency (ms)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
