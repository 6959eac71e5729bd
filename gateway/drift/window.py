"""Tumbling windows of scored rows per model version, closed by row count or by event time.

An event is never split between windows: its rows and its Kafka offset belong to exactly one
window, which keeps the commit rule exact (see docs/drift.md). A window therefore closes with
`size` rows or a little more, when its last event carried several rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class EventRows:
    """The usable part of one scoring event, and where in Kafka it came from."""

    model_name: str
    model_version: str
    inputs: np.ndarray  # [n, n_features] float64
    outputs: dict[str, np.ndarray]  # prediction column -> [n]; only the columns the event carried
    ts_ms: int
    partition: int
    offset: int


class Window:
    """The row blocks of one model version's window and the Kafka offsets they cover.

    Blocks are kept as the events delivered them and concatenated once, when the window is
    read, so filling a window does no per-row Python work.
    """

    def __init__(self, first: EventRows):
        self.model_name = first.model_name
        self.model_version = first.model_version
        # From the data, not from a counter: re-reading the same events rebuilds the same id.
        self.window_id = f"{first.model_name}/{first.model_version}/{first.partition}-{first.offset}"
        self.n_rows = 0
        self.n_events = 0
        self.start_ts_ms = first.ts_ms
        self.end_ts_ms = first.ts_ms
        self.offsets: dict[int, tuple[int, int]] = {}  # partition -> (first, last) offset
        self.closed_by: str | None = None  # "count" | "time" once closed
        self._inputs: list[np.ndarray] = []
        self._outputs: dict[str, list[np.ndarray]] = {}
        self.update(first)

    def update(self, rows: EventRows) -> None:
        self._inputs.append(rows.inputs)
        for key, values in rows.outputs.items():
            self._outputs.setdefault(key, []).append(values)
        self.n_rows += len(rows.inputs)
        self.n_events += 1
        self.start_ts_ms = min(self.start_ts_ms, rows.ts_ms)
        self.end_ts_ms = max(self.end_ts_ms, rows.ts_ms)
        span = self.offsets.get(rows.partition)
        # Offsets only grow within a partition, so the first one seen stays the smallest.
        self.offsets[rows.partition] = (rows.offset if span is None else span[0], rows.offset)

    def inputs(self) -> np.ndarray:
        return np.concatenate(self._inputs)

    def outputs(self) -> dict[str, np.ndarray]:
        return {key: np.concatenate(blocks) for key, blocks in self._outputs.items()}


class TumblingWindows:
    """One open window per (model_name, model_version); `update` returns the windows it closed.

    Time is event time: the watermark is the largest `ts_ms` seen on any event, so traffic for
    one model also closes another, idle model's window once its `max_seconds` have passed.
    """

    def __init__(self, size: int, max_seconds: float):
        self.size = size
        self.max_ms = max_seconds * 1000.0
        self.watermark_ms: int | None = None
        self._open: dict[tuple[str, str], Window] = {}

    def update(self, rows: EventRows) -> list[Window]:
        if self.watermark_ms is None or rows.ts_ms > self.watermark_ms:
            self.watermark_ms = rows.ts_ms
        closed = []
        key = (rows.model_name, rows.model_version)
        window = self._open.get(key)
        if window is not None and self._expired(window):
            closed.append(self._close(key, "time"))
            window = None
        if window is None:
            window = self._open[key] = Window(rows)
        else:
            window.update(rows)
        if window.n_rows >= self.size:
            closed.append(self._close(key, "count"))
        return closed

    def expire(self) -> list[Window]:
        """Close every window whose time is up, oldest first."""
        keys = sorted(
            (k for k, w in self._open.items() if self._expired(w)),
            key=lambda k: (self._open[k].start_ts_ms, self._open[k].window_id),
        )
        return [self._close(k, "time") for k in keys]

    def open_offsets(self) -> dict[int, int]:
        """Per partition, the smallest offset an open window holds: commits must stay below it."""
        held: dict[int, int] = {}
        for window in self._open.values():
            for partition, (first, _) in window.offsets.items():
                if first < held.get(partition, first + 1):
                    held[partition] = first
        return held

    def open_windows(self) -> list[Window]:
        return list(self._open.values())

    def clear(self) -> None:
        self._open.clear()

    def _expired(self, window: Window) -> bool:
        return self.watermark_ms is not None and self.watermark_ms - window.start_ts_ms >= self.max_ms

    def _close(self, key: tuple[str, str], closed_by: str) -> Window:
        window = self._open.pop(key)
        window.closed_by = closed_by
        return window
