"""Windows of scored rows per model version and Kafka partition: tumbling or sliding, by row count
or by event time with a lateness bound.

A window is a run of consecutive panes (`size / slide` of them; one for a tumbling window). A
pane is `slide` rows of whole events (count) or the events whose `ts_ms` falls in one
`slide`-long interval aligned to the Unix epoch (time). Windows are kept per partition because
only there is the order of events fixed: re-reading a partition from any offset rebuilds the
same panes, so window ids and contents do not depend on fetch timing, restarts or rebalances.

Time: the watermark of a partition is the largest `ts_ms` read from it minus the lateness bound.
A pane closes when the watermark passes its end; an event whose pane has closed is late (counted,
dropped). Both depend only on the partition's own order, so they too are reproducible.

State is bounded: a pane keeps at most `max_rows` rows, the rows with the smallest pseudo-random
priority (a hash of partition, offset and row), so any window's rows are a uniform sample without
replacement of its traffic ("bottom-k" sampling; the error this adds is in docs/drift.md).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .decode import Block

WindowBy = Literal["count", "time"]
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def row_priorities(partition: int, offsets: np.ndarray, rows_per_event: np.ndarray) -> np.ndarray:
    """A deterministic pseudo-random uint64 per row (splitmix64 of partition, offset, row)."""
    starts = np.cumsum(rows_per_event) - rows_per_event
    row_in_event = np.arange(int(rows_per_event.sum())) - np.repeat(starts, rows_per_event)
    x = (np.repeat(offsets.astype(np.uint64), rows_per_event) << np.uint64(16)) \
        ^ row_in_event.astype(np.uint64) ^ (np.uint64(partition) << np.uint64(56))
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


@dataclass
class Pane:
    index: int  # time: ts_ms // slide_ms; count: sequence number within this run of the consumer
    first_offset: int
    max_ts_before: int  # the partition's largest ts_ms before this pane's first event
    last_offset: int = -1
    n_events: int = 0
    n_rows: int = 0  # rows of traffic, before any sampling
    start_ts_ms: int = np.iinfo(np.int64).max
    end_ts_ms: int = np.iinfo(np.int64).min
    _inputs: list[np.ndarray] = field(default_factory=list)
    _outputs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    _priorities: list[np.ndarray] = field(default_factory=list)
    _kept: int = 0

    def add(self, block: Block, events: slice, rows: slice, priorities: np.ndarray | None, cap: int) -> None:
        if rows.stop > rows.start:
            self._inputs.append(block.inputs[rows])
            for key, values in block.outputs.items():
                self._outputs.setdefault(key, []).append(values[rows])
            if priorities is not None:
                self._priorities.append(priorities[rows])
            self._kept += rows.stop - rows.start
        ts = block.ts_ms[events]
        self.last_offset = int(block.offsets[events.stop - 1])
        self.n_events += events.stop - events.start
        self.n_rows += rows.stop - rows.start
        self.start_ts_ms = min(self.start_ts_ms, int(ts.min()))
        self.end_ts_ms = max(self.end_ts_ms, int(ts.max()))
        if priorities is not None and self._kept > 2 * cap:
            self._compact(cap)

    def _compact(self, cap: int) -> None:
        """Keep the `cap` rows of smallest priority (amortised: only when twice over the cap)."""
        inputs, outputs, priorities = self.arrays()
        keep = _smallest(priorities, cap) if len(priorities) > cap else slice(None)
        self._inputs = [inputs[keep]]
        self._outputs = {k: [v[keep]] for k, v in outputs.items()}
        self._priorities = [priorities[keep]]
        self._kept = len(self._priorities[0])

    def arrays(self) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        inputs = np.concatenate(self._inputs)
        outputs = {k: np.concatenate(v) for k, v in self._outputs.items()}
        priorities = np.concatenate(self._priorities) if self._priorities else np.empty(0, np.uint64)
        return inputs, outputs, priorities


@dataclass(frozen=True)
class ClosedWindow:
    """A window ready to test: its panes, and the adjacent earlier window's panes (may be empty)."""

    key: tuple[str, str]
    partition: int
    window_id: str
    marker: int  # grows with every window of (key, partition): its last offset, or last pane index
    panes: tuple[Pane, ...]
    previous: tuple[Pane, ...]
    closed_by: str
    start_ms: int | None  # time windows: the window's bounds, else None
    end_ms: int | None

    @property
    def n_rows(self) -> int:
        return sum(p.n_rows for p in self.panes)

    @property
    def previous_id(self) -> str | None:
        if not self.previous:
            return None
        prefix = self.window_id.rsplit("/", 1)[0]
        if self.start_ms is None:
            return f"{prefix}/{self.previous[0].first_offset}-{self.previous[-1].last_offset}"
        return f"{prefix}/t{2 * self.start_ms - self.end_ms}-{self.start_ms}"

    @property
    def n_events(self) -> int:
        return sum(p.n_events for p in self.panes)

    def sample(self, cap: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return _union(self.panes, cap)

    def previous_sample(self, cap: int) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
        return _union(self.previous, cap) if self.previous else None


def _smallest(priorities: np.ndarray, cap: int) -> np.ndarray:
    """Indices of the `cap` smallest priorities, in row order (the bottom-k sample)."""
    return np.sort(np.argpartition(priorities, cap - 1)[:cap])


def _union(panes: tuple[Pane, ...], cap: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """All rows of the panes, or, past `cap`, the `cap` of smallest priority: a uniform sample."""
    parts = [p.arrays() for p in panes if p._inputs]
    inputs = np.concatenate([p[0] for p in parts])
    outputs = {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]}
    priorities = np.concatenate([p[2] for p in parts])
    if len(priorities) == len(inputs) and len(inputs) > cap:
        keep = _smallest(priorities, cap)
        inputs, outputs = inputs[keep], {k: v[keep] for k, v in outputs.items()}
    return inputs, outputs


class _KeyPanes:
    """Open and retained panes of one model version on one partition."""

    def __init__(self) -> None:
        self.open: dict[int, Pane] = {}
        self.closed: deque[Pane] = deque()
        self.next_index = 0  # count mode

    def oldest(self) -> Pane | None:
        """The pane a restart must start rebuilding from (smallest first offset)."""
        panes = list(self.open.values()) + list(self.closed)
        return min(panes, key=lambda p: p.first_offset) if panes else None


class PartitionWindows:
    """The windows of every model version on one partition; `add` then `close` per batch."""

    def __init__(self, partition: int, by: WindowBy, size: float, slide: float | None, *,
                 lateness_ms: int = 0, max_rows: int = 20_000, keep_previous: bool = True,
                 max_ts: int | None = None):
        self.partition = partition
        self.by = by
        slide = slide or size
        self.panes_per_window = int(round(size / slide))
        self.slide = int(slide if by == "count" else slide * 1000)  # rows, or ms
        self.lateness_ms = lateness_ms
        self.max_rows = max_rows
        self.retain = (2 * self.panes_per_window if keep_previous else self.panes_per_window) - 1
        # Sampling can only bind when a window may hold more than max_rows rows.
        self.sampling = by == "time" or size > max_rows
        self.max_ts = np.iinfo(np.int64).min if max_ts is None else max_ts
        self.keys: dict[tuple[str, str], _KeyPanes] = {}
        self.late_events = 0

    @property
    def watermark(self) -> int:
        return self.max_ts - self.lateness_ms

    def add(self, block: Block, max_ts_before: np.ndarray) -> list[ClosedWindow]:
        """Add one decoded block; `max_ts_before[i]` is the partition's largest ts_ms before event i.
        Count windows close here; time windows close in `close`."""
        state = self.keys.setdefault(block.key, _KeyPanes())
        priorities = row_priorities(self.partition, block.offsets, block.rows_per_event) if self.sampling else None
        row_ends = np.cumsum(block.rows_per_event)
        if self.by == "count":
            return self._add_by_count(block, state, row_ends, priorities, max_ts_before)
        self._add_by_time(block, state, row_ends, priorities, max_ts_before)
        return []

    def _add_by_count(self, block, state, row_ends, priorities, max_ts_before) -> list[ClosedWindow]:
        closed = []
        start_event, n_events = 0, len(block.offsets)
        while start_event < n_events:
            pane = state.open.get(0)
            if pane is None:
                pane = state.open[0] = Pane(state.next_index, int(block.offsets[start_event]),
                                            int(max_ts_before[start_event]))
                state.next_index += 1
            row_start = int(row_ends[start_event - 1]) if start_event else 0
            # The event that brings the pane to `slide` rows is its last one.
            end_event = int(np.searchsorted(row_ends, row_start + self.slide - pane.n_rows)) + 1
            end_event = min(end_event, n_events)
            pane.add(block, slice(start_event, end_event), slice(row_start, int(row_ends[end_event - 1])),
                     priorities, self.max_rows)
            start_event = end_event
            if pane.n_rows >= self.slide:
                del state.open[0]
                window = self._close_pane(block.key, state, pane, "count")
                if window is not None:
                    closed.append(window)
        return closed

    def _add_by_time(self, block, state, row_ends, priorities, max_ts_before) -> None:
        index = block.ts_ms // self.slide
        late = (index + 1) * self.slide + self.lateness_ms <= max_ts_before  # no overflow at NO_TS
        self.late_events += int(late.sum())
        row_starts = row_ends - block.rows_per_event
        # Runs of consecutive on-time events in one pane are added as one slice.
        boundaries = np.flatnonzero((np.diff(index) != 0) | (np.diff(late) != 0)) + 1
        for s, e in zip(np.concatenate(([0], boundaries)), np.concatenate((boundaries, [len(index)]))):
            if late[s]:
                continue
            k = int(index[s])
            pane = state.open.get(k)
            if pane is None:
                pane = state.open[k] = Pane(k, int(block.offsets[s]), int(max_ts_before[s]))
            pane.add(block, slice(int(s), int(e)), slice(int(row_starts[s]), int(row_ends[e - 1])),
                     priorities, self.max_rows)

    def observe(self, max_ts: int) -> None:
        self.max_ts = max(self.max_ts, max_ts)

    def close(self) -> list[ClosedWindow]:
        """Time windows whose last pane the watermark has passed, oldest first."""
        if self.by != "time":
            return []
        due = sorted((k, key) for key, state in self.keys.items() for k in state.open
                     if (k + 1) * self.slide <= self.watermark)
        closed = []
        for k, key in due:
            state = self.keys[key]
            window = self._close_pane(key, state, state.open.pop(k), "time")
            if window is not None:
                closed.append(window)
        return closed

    def _close_pane(self, key, state: _KeyPanes, pane: Pane, closed_by: str) -> ClosedWindow | None:
        state.closed.append(pane)
        n = self.panes_per_window
        if self.by == "count":
            panes = list(state.closed)
            window = tuple(panes[-n:]) if len(panes) >= n else None
            previous = tuple(panes[-2 * n:-n]) if len(panes) >= 2 * n else ()
            while len(state.closed) > self.retain:
                state.closed.popleft()
            if window is None:
                return None
            first, last = window[0].first_offset, window[-1].last_offset
            window_id = f"{key[0]}/{key[1]}/p{self.partition}/{first}-{last}"
            return ClosedWindow(key, self.partition, window_id, last, window, previous, closed_by, None, None)
        k = pane.index
        by_index = {p.index: p for p in state.closed}
        window = tuple(by_index[j] for j in range(k - n + 1, k + 1) if j in by_index)
        previous = tuple(by_index[j] for j in range(k - 2 * n + 1, k - n + 1) if j in by_index)
        while state.closed and state.closed[0].index <= k - self.retain:
            state.closed.popleft()
        start_ms, end_ms = (k - n + 1) * self.slide, (k + 1) * self.slide
        window_id = f"{key[0]}/{key[1]}/p{self.partition}/t{start_ms}-{end_ms}"
        return ClosedWindow(key, self.partition, window_id, k, window, previous, closed_by, start_ms, end_ms)

    def resume_offsets(self) -> dict[tuple[str, str], int]:
        """Per model version, the first offset a restart must re-read to rebuild its panes."""
        return {key: pane.first_offset for key, state in self.keys.items() if (pane := state.oldest()) is not None}

    def max_ts_before(self, key: tuple[str, str]) -> int | None:
        pane = self.keys[key].oldest() if key in self.keys else None
        return None if pane is None else pane.max_ts_before
