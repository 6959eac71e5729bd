"""Windows: count and event time, tumbling and sliding, lateness, bounded sampled state."""
from __future__ import annotations

import numpy as np

from gateway.drift.decode import Block
from gateway.drift.window import PartitionWindows
from tests.test_drift_unit import drain, monitor, records, repo_root, reports_of, toy_event  # noqa: F401 (fixture)

KEY = ("toy", "1")


def _block(offsets, ts_ms, rows_per_event, first_value: int = 0) -> Block:
    """Rows holding first_value, first_value + 1, ... in every column."""
    rows = np.asarray(rows_per_event)
    n = int(rows.sum())
    inputs = np.arange(first_value, first_value + n, dtype=np.float64)[:, None].repeat(3, 1)
    return Block(KEY, None, inputs, {}, np.asarray(offsets), np.asarray(ts_ms), rows, np.arange(len(rows)))


def test_count_windows_tumble_and_slide_over_whole_events():
    tumbling = PartitionWindows(0, "count", 10, None)
    closed = tumbling.add(_block(range(5), [0] * 5, [3] * 5), np.zeros(5, dtype=np.int64))
    [window] = closed
    assert (window.window_id, window.n_rows, window.n_events) == ("toy/1/p0/0-3", 12, 4)
    assert tumbling.resume_offsets() == {KEY: 0}  # kept as the next window's "previous"
    sliding = PartitionWindows(0, "count", 4, 2, keep_previous=False)
    closed = sliding.add(_block(range(8), [0] * 8, [1] * 8), np.zeros(8, dtype=np.int64))
    assert [w.window_id for w in closed] == ["toy/1/p0/0-3", "toy/1/p0/2-5", "toy/1/p0/4-7"]
    assert sliding.resume_offsets() == {KEY: 6}  # the last pane opens the next window


def test_time_windows_are_epoch_aligned_close_on_the_watermark_and_drop_late_events():
    w = PartitionWindows(3, "time", 1.0, None, lateness_ms=200)
    ts = np.array([1000, 1500, 1999, 2100, 1900, 2250, 1300])  # 1900: on time (watermark 1900); 1300: late
    before = np.maximum.accumulate(np.concatenate(([np.iinfo(np.int64).min], ts)))[:-1]
    assert w.add(_block(range(7), ts, [1] * 7), before) == []
    w.observe(int(ts.max()))
    [window] = w.close()  # the watermark 2250 - 200 passed 2000, the end of [1000, 2000)
    assert window.window_id == "toy/1/p3/t1000-2000" and window.n_events == 4 and window.closed_by == "time"
    assert w.late_events == 1
    assert w.close() == []  # [2000, 3000) stays open until the watermark reaches 3000


def test_time_sliding_windows_cover_the_last_size_seconds():
    w = PartitionWindows(0, "time", 2.0, 1.0, keep_previous=False)
    ts = np.array([500, 1500, 2500, 3500])
    w.add(_block(range(4), ts, [1] * 4), np.maximum.accumulate(ts))
    w.observe(5000)
    ids = [(x.window_id, x.n_events) for x in w.close()]
    assert ids == [("toy/1/p0/t-1000-1000", 1), ("toy/1/p0/t0-2000", 2), ("toy/1/p0/t1000-3000", 2),
                   ("toy/1/p0/t2000-4000", 2)]


def test_state_is_bounded_by_a_uniform_sample_of_max_rows():
    w = PartitionWindows(0, "time", 60.0, None, max_rows=100)
    for batch in range(50):  # 50 events of 40 rows each: 2,000 rows, values 0..1999
        w.add(_block([batch], [1000], [40], first_value=40 * batch), np.array([0]))
        [pane] = w.keys[KEY].open.values()
        assert pane._kept <= 2 * 100  # compacted whenever it passes twice the cap
    w.observe(10**9)
    [window] = w.close()
    inputs, _ = window.sample(100)
    assert window.n_rows == 2000 and len(inputs) == 100 and len(np.unique(inputs[:, 0])) == 100
    # Uniform: the sample's mean is near the population's (999.5; sd of the mean ~ 58).
    assert abs(inputs[:, 0].mean() - 999.5) < 4 * 577 / np.sqrt(100)
    again = PartitionWindows(0, "time", 60.0, None, max_rows=100)
    for batch in range(50):
        again.add(_block([batch], [1000], [40], first_value=40 * batch), np.array([0]))
    again.observe(10**9)
    assert np.array_equal(again.close()[0].sample(100)[0], inputs)  # deterministic: same rows


def test_time_windows_through_the_monitor_report_their_bounds(repo_root):
    m = monitor(repo_root, window_by="time", window_size=1, lateness_seconds=0, min_window_rows=5)
    rows = np.zeros((5, 3))
    m.process(0, records([toy_event(rows, 1000), toy_event(rows, 1500), toy_event(rows[:2], 2100),
                          toy_event(rows, 3000)]))
    reports = reports_of(drain(m))
    assert [r["window"]["bounds_ms"] for r in reports] == [[1000, 2000]]
    assert m.windows_too_small == 1  # [2000, 3000) held 2 rows
