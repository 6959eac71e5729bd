"""Every number in a drift report equals the library computation on the same window, to 1e-9.

The window's rows are known (the test sends them), the reference is read back from model.json,
and each statistic is recomputed here directly with scipy/numpy, not through gateway code.
"""
from __future__ import annotations

import warnings

import numpy as np
import orjson
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from gateway.drift import scores
from gateway.drift.reference import UNSEEN, CategoricalReference, NumericReference
from tests.test_drift_unit import FEATURES, drain, monitor, records, repo_root, reports_of, toy_event  # noqa: F401 (fixture)

TOL = dict(rel=1e-9, abs=1e-12)


def _direct_bins(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Below the minimum, np.histogram over the distinct deciles, above the maximum."""
    edges = np.unique(edges)
    inner = np.histogram(values, bins=edges)[0]
    return np.concatenate(([np.sum(values < edges[0])], inner, [np.sum(values > edges[-1])]))


def _direct_psi(p: np.ndarray, q: np.ndarray, eps: float = 1e-4) -> float:
    p, q = np.where(p > 0, p, eps), np.where(q > 0, q, eps)
    return float(np.sum((p - q) * np.log(p / q)))


@pytest.mark.parametrize("correction", ["bonferroni", "bh"])
def test_report_statistics_equal_scipy_and_numpy_on_the_window(repo_root, correction):
    rng = np.random.default_rng(3)
    m = monitor(repo_root, window_size=200, correction=correction)
    blocks = [rng.normal(0.3, 1.2, (20, 3)).astype(np.float32) for _ in range(10)]
    labels = [rng.choice([3, 3, 7, 9], 20) for _ in range(10)]  # 9: a class training never saw
    m.process(0, records([toy_event(b, 1000 + i, labels=lab) for i, (b, lab) in enumerate(zip(blocks, labels))]))
    [report] = reports_of(drain(m))
    window = np.concatenate(blocks).astype(np.float64)
    reference = orjson.loads((repo_root / "toy" / "1" / "model.json").read_bytes())["reference"]

    p_values = []
    for i, name in enumerate(FEATURES):
        got, ref = report["features"][name], reference["inputs"][name]
        sample = np.asarray(ref["sample"])
        ks = stats.ks_2samp(window[:, i], sample, method="auto")
        assert got["statistic"] == pytest.approx(ks.statistic, **TOL)
        assert got["p_value"] == pytest.approx(ks.pvalue, **TOL)
        w, r = _direct_bins(window[:, i], ref["quantile_edges"]), _direct_bins(sample, ref["quantile_edges"])
        assert got["bins"]["window"] == w.tolist()
        assert got["psi"] == pytest.approx(_direct_psi(w / w.sum(), r / r.sum()), **TOL)
        assert got["js"] == pytest.approx(jensenshannon(w / w.sum(), r / r.sum(), base=2), **TOL)
        assert got["wasserstein"] == pytest.approx(stats.wasserstein_distance(window[:, i], sample) / sample.std(), **TOL)
        assert got["effect"] == got["statistic"]  # effect: ks (the default)
        p_values.append(ks.pvalue)
    expected = (np.minimum(np.array(p_values) * 3, 1.0) if correction == "bonferroni"
                else stats.false_discovery_control(p_values, method="bh"))
    assert [report["features"][n]["p_value_corrected"] for n in FEATURES] == pytest.approx(expected, **TOL)

    # The label: a two-sample chi-squared test of the window's counts against the reference's.
    label = reference["outputs"]["label"]
    observed = np.concatenate(labels)
    cats = sorted(label["frequencies"])  # "3", "7"; then the unseen bucket (9 goes there)
    window_counts = np.array([np.sum(observed == int(c)) for c in cats] + [np.sum(observed == 9)])
    ref_counts = np.array([label["frequencies"][c] * label["n"] for c in cats] + [0.0])
    chi2 = stats.chi2_contingency(np.vstack([window_counts, ref_counts]), correction=False)
    got = report["predictions"]["label"]
    assert got["bins"]["categories"] == [*cats, UNSEEN] and got["bins"]["window"] == window_counts.tolist()
    assert got["statistic"] == pytest.approx(chi2.statistic, **TOL)
    assert got["p_value"] == pytest.approx(chi2.pvalue, **TOL)
    w, r = window_counts / window_counts.sum(), ref_counts / ref_counts.sum()
    assert got["psi"] == pytest.approx(_direct_psi(w, r), **TOL)
    assert got["js"] == pytest.approx(jensenshannon(w, r, base=2), **TOL)
    assert got["effect"] == pytest.approx(0.5 * np.abs(w - r).sum(), **TOL)  # total variation
    assert np.isfinite([got["statistic"], got["p_value"], got["psi"], got["js"]]).all()


def test_window_against_previous_window_equals_scipy(repo_root):
    rng = np.random.default_rng(8)
    m = monitor(repo_root, window_size=100)
    first, second = rng.normal(0, 1, (100, 3)), rng.normal(0.5, 1, (100, 3))
    m.process(0, records([toy_event(first, 1), toy_event(second, 2)]))
    _, report = reports_of(drain(m))
    a = first.astype(np.float32).astype(np.float64)
    b = second.astype(np.float32).astype(np.float64)
    for i, name in enumerate(FEATURES):
        got = report["previous"]["columns"][name]
        assert got["statistic"] == pytest.approx(stats.ks_2samp(b[:, i], a[:, i], method="auto").statistic, **TOL)


def test_constant_columns_and_unseen_categories_stay_finite():
    constant = NumericReference.from_sample(np.full(50, 2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = scores.numeric(np.full(30, 2.0), constant)
        moved = scores.numeric(np.array([2.0] * 20 + [3.0] * 10), constant)
        labels = CategoricalReference.from_frequencies({"red": 1.0}, n=100)
        only_red = scores.categorical(labels.codes(np.array(["red"] * 5, dtype=object)), labels)
        new = scores.categorical(labels.codes(np.array(["red"] * 5 + ["blue"] * 5, dtype=object)), labels)
    assert (same.statistic, same.psi, same.js, same.wasserstein) == (0.0, 0.0, 0.0, 0.0)
    assert moved.window_counts == (0, 20, 10) and moved.psi > 1 and 0 < moved.js <= 1
    assert moved.wasserstein == pytest.approx(10 / 30)  # std 0: W1 not scaled (divided by 1)
    assert (only_red.statistic, only_red.p_value, only_red.effect) == (0.0, 1.0, 0.0)
    assert np.isfinite([new.statistic, new.p_value, new.psi, new.js]).all() and new.p_value < 1e-3
    assert new.effect == pytest.approx(0.5)  # half the window fell in the unseen bucket


def test_top_k_cap_sends_rare_categories_to_the_unseen_bucket():
    from gateway.drift.reference import compile_categorical

    values = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 15 + ["d"] * 5, dtype=object)
    block = compile_categorical(values, top_k=2)
    assert block["frequencies"] == {"a": 0.5, "b": 0.3} and block["unseen"] == pytest.approx(0.2)
    ref = CategoricalReference.from_frequencies(block["frequencies"], block["unseen"], block["n"])
    assert ref.codes(np.array(["a", "c", "zzz", "b"], dtype=object)).tolist() == [0, 2, 2, 1]


def test_min_effect_is_required_beside_significance():
    rng = np.random.default_rng(11)
    refs = {"x": NumericReference.from_sample(rng.normal(0, 1, 20_000))}
    columns = {"x": rng.normal(0.06, 1, 20_000)}  # significant on this many rows, but tiny
    [(_, result)] = scores.evaluate_columns(columns, refs, scores.Thresholds()).items()
    assert result.p_value_corrected < 0.01 and result.effect < 0.1 and not result.drifted

