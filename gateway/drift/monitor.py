"""The drift pipeline without any I/O: records of a partition in, reports and alerts out, and the
checkpoint (offset + metadata) that lets a restart resume exactly where the reports left off.

Per partition it keeps the window panes (window.py) and, per model version, its progress: the
marker of the last published window, the verdicts of the last `alarm_n` windows, whether an
alert is active, and how many windows were published. The checkpoint committed with the offset
carries that progress, the first offset each version must re-read, and the partition's event
time before the committed offset, so re-reading rebuilds the same panes, suppresses windows
already published and counts nothing twice (docs/drift.md, "Restarts").
"""
from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import orjson

from gateway.config import DriftConfig

from .classifier import ClassifierSettings
from .decode import NO_TS, Block, KafkaRecord, Layouts, decode_partition
from .reference import Reference, ReferenceStore
from .report import build_alert, build_report
from .scores import Thresholds, evaluate_columns
from .window import ClosedWindow, PartitionWindows

log = logging.getLogger("gateway.drift")

CHECKPOINT_VERSION = 1
MAX_CHECKPOINT_BYTES = 4000  # Kafka's default offset.metadata.max.bytes is 4096
KEY_SEPARATOR = "\x1f"  # joins model name and version in checkpoint keys (neither may contain it)

ClassifierRunner = Callable[[np.ndarray, np.ndarray, tuple[str, ...], str, ClassifierSettings], "Future[dict]"]


@dataclass(frozen=True)
class Progress:
    """A model version's progress on one partition, as of its last published window."""

    published: int = -1  # ClosedWindow.marker of the last published window
    history: str = ""  # "1" drifted / "0" not, for the last alarm_n windows
    active: bool = False  # an alert is raised and not yet recovered
    count: int = 0  # windows published


@dataclass
class Outgoing:
    """A report (and maybe an alert) waiting for its classifier and then for publication."""

    partition: int
    key: tuple[str, str]
    report: dict[str, Any] | None  # None: the window is passed over, only its checkpoint moves
    alert: dict[str, Any] | None
    progress: Progress  # the version's progress once this is published
    first_offset: int  # re-read from here to rebuild the window if it is not published
    max_ts_before: int
    classifier: Future | None = None

    def ready(self) -> bool:
        return self.classifier is None or self.classifier.done()

    def records(self) -> list[dict[str, Any]]:
        """The report, with the classifier's verdict if it ran, then the alert if any."""
        if self.report is None:  # a window too small to test, or one whose tests failed
            return []
        if self.classifier is not None:
            try:
                self.report["classifier"] = self.classifier.result()
            except Exception as exc:  # a failed classifier must not lose the report
                self.report["classifier"] = {"error": f"{type(exc).__name__}: {exc}"}
            self.classifier = None
        return [self.report] + ([self.alert] if self.alert else [])


@dataclass
class _Partition:
    windows: PartitionWindows
    skip_below: dict[tuple[str, str], int]  # restored: events of a version below this were handled
    live: dict[tuple[str, str], Progress]  # as of the last window built
    published: dict[tuple[str, str], Progress]  # as of the last window published
    position: int | None = None
    outbox: deque[Outgoing] = field(default_factory=deque)


def window_settings(config: DriftConfig) -> dict[str, Any]:
    return {"by": config.window_by, "size": config.window_size,
            "slide": config.window_slide or config.window_size,
            "lateness_seconds": config.lateness_seconds if config.window_by == "time" else None}


class DriftMonitor:
    """`process(partition, records)`, then publish `ready()` in order, `published()` each, and
    commit `checkpoint(partition)`; `assign`/`revoke` follow the consumer group."""

    def __init__(self, config: DriftConfig, references: ReferenceStore,
                 classifier: ClassifierRunner | None = None):
        self.config = config
        self.references = references
        self.thresholds = Thresholds(config.alpha, config.correction, config.min_effect, config.effect)
        self.classifier_settings = ClassifierSettings(max_rows=config.classifier_max_rows,
                                                      n_permutations=config.classifier_permutations)
        self.classifier = classifier
        self.skipped: Counter[str] = Counter()
        self.windows_built = 0
        self.windows_suppressed = 0  # rebuilt after a restart, already published before it
        self.windows_too_small = 0
        self.report_errors = 0
        self.partitions: dict[int, _Partition] = {}
        self.layouts = Layouts()  # learned record layouts: the fast decoding path
        self.on_warning: Callable[[str, str], None] = lambda reason, message: log.warning("drift: skipped %s", message)
        self._window_settings = window_settings(config)

    # --- group membership ----------------------------------------------------------------------

    def assign(self, partition: int, checkpoint: str | None = None) -> None:
        """Start a partition, from the metadata committed with its offset (None: from scratch)."""
        c = self.config
        state = _decode_checkpoint(checkpoint)
        windows = PartitionWindows(
            partition, c.window_by, c.window_size, c.window_slide,
            lateness_ms=int(c.lateness_seconds * 1000), max_rows=c.window_max_rows,
            keep_previous=c.compare_previous, max_ts=state.get("ts"))
        keys = {tuple(k.split(KEY_SEPARATOR, 1)): v for k, v in state.get("keys", {}).items()}
        progress = {key: Progress(*v[1:]) for key, v in keys.items()}
        skip = {key: v[0] for key, v in keys.items() if v[0] is not None}
        self.partitions[partition] = _Partition(windows, skip, dict(progress), dict(progress))

    def revoke(self, partition: int) -> None:
        """Drop everything: whoever gets the partition rebuilds it from the committed checkpoint."""
        self.partitions.pop(partition, None)

    # --- the pipeline --------------------------------------------------------------------------

    def process(self, partition: int, records: Sequence[KafkaRecord]) -> int:
        """Feed one partition's records in offset order; returns the windows built."""
        if partition not in self.partitions:
            self.assign(partition)
        part = self.partitions[partition]
        if not records:
            return 0
        batch = decode_partition(records, self.references, self.layouts)
        self.skipped.update(batch.skipped)
        for reason, message in batch.warnings:
            self.on_warning(reason, message)
        windows = part.windows
        # running[i]: the partition's largest ts_ms before record i (the windows' watermark input).
        running = np.maximum.accumulate(np.concatenate(([windows.max_ts], batch.ts_ms)))
        closed: list[ClosedWindow] = []
        late_before = windows.late_events
        for block in batch.blocks:
            block = _from_offset(block, part.skip_below.get(block.key))
            if block is not None:
                closed.extend(windows.add(block, running[block.positions]))
        if windows.late_events > late_before:
            self.skipped["late"] += windows.late_events - late_before
        windows.observe(int(running[-1]))
        closed.extend(windows.close())
        part.position = records[-1].offset + 1
        return sum(self._window(part, window) for window in closed)

    def _window(self, part: _Partition, window: ClosedWindow) -> int:
        progress = part.live.get(window.key, Progress())
        if window.marker <= progress.published:
            self.windows_suppressed += 1
            return 0
        if window.start_ms is not None and window.n_rows < self.config.min_window_rows:
            self.windows_too_small += 1
            self._pass_over(part, window, progress)
            return 0
        ref = self.references.get(*window.key)  # cached since decoding
        try:
            report = self._report(window, ref)
        except Exception:  # a poison window must not crash-loop the consumer on re-read
            self.report_errors += 1
            log.exception("drift: no report for window %s (%d rows)", window.window_id, window.n_rows)
            self._pass_over(part, window, progress)
            return 0
        history = (progress.history + ("1" if report["drift"] else "0"))[-self.config.alarm_n:]
        drifted = history.count("1")
        # Raised at k of the last n; cleared only when none of the last n drifted (no flapping).
        active = drifted >= self.config.alarm_k or (progress.active and drifted > 0)
        report["alarm"] = {"k": self.config.alarm_k, "n": self.config.alarm_n,
                           "drifted_in_last_n": drifted, "active": active}
        alert = None
        if active != progress.active:
            alert = build_alert(report, "drifting" if active else "recovered")
        future = None
        every = self.config.classifier_every
        if (self.classifier is not None and len(ref.rows)
                and ((every and progress.count % every == 0) or (self.config.classifier_on_drift and report["drift"]))):
            rows, _ = window.sample(self.config.window_max_rows)
            future = self.classifier(ref.rows, rows, ref.feature_names, window.window_id, self.classifier_settings)
        part.live[window.key] = Progress(window.marker, history, active, progress.count + 1)
        self._queue(part, window, report, alert, part.live[window.key], future)
        self.windows_built += 1
        return 1

    def _pass_over(self, part: _Partition, window: ClosedWindow, progress: Progress) -> None:
        """No report, but queued all the same: the checkpoint must not move past the window's
        events before the windows ahead of it are published."""
        part.live[window.key] = replace(progress, published=window.marker)
        self._queue(part, window, None, None, part.live[window.key])

    def _queue(self, part: _Partition, window: ClosedWindow, report: dict | None, alert: dict | None,
               progress: Progress, future: Future | None = None) -> None:
        first = min(window.panes, key=lambda p: p.first_offset)
        part.outbox.append(Outgoing(window.partition, window.key, report, alert, progress,
                                    first.first_offset, first.max_ts_before, future))

    def _report(self, window: ClosedWindow, ref: Reference) -> dict[str, Any]:
        cap = self.config.window_max_rows
        inputs, outputs = window.sample(cap)
        columns = _feature_columns(ref, inputs)
        features = evaluate_columns(columns, ref.features, self.thresholds)
        output_refs = {c.key: c.reference for c in ref.outputs}
        predictions = evaluate_columns(outputs, output_refs, self.thresholds)
        previous = None
        earlier = window.previous_sample(cap) if self.config.compare_previous else None
        if earlier is not None:
            prev_columns = {**_feature_columns(ref, earlier[0]), **earlier[1]}
            changes = evaluate_columns({**columns, **outputs}, {**ref.features, **output_refs},
                                       self.thresholds, against=prev_columns)
            previous = (window.previous_id, changes)
        return build_report(window, ref, self._window_settings, self.thresholds, features, predictions,
                            previous, len(inputs))

    # --- publication and commits ---------------------------------------------------------------

    def ready(self) -> list[Outgoing]:
        """Per partition, the finished head of its queue, in order (a window waiting for its
        classifier holds back the ones after it, so reports of a version stay in order)."""
        out = []
        for part in self.partitions.values():
            for item in part.outbox:
                if not item.ready():
                    break
                out.append(item)
        return out

    def pending(self) -> list[Outgoing]:
        return [item for part in self.partitions.values() for item in part.outbox if not item.ready()]

    def published(self, item: Outgoing) -> None:
        part = self.partitions.get(item.partition)
        if part is None or not part.outbox or part.outbox[0] is not item:
            return  # revoked meanwhile: the new owner rebuilds it
        part.outbox.popleft()
        part.published[item.key] = item.progress

    def checkpoint(self, partition: int) -> tuple[int, str] | None:
        """The offset to commit and its metadata: everything below it is reported or skipped."""
        part = self.partitions.get(partition)
        if part is None or part.position is None:
            return None
        windows = part.windows
        # version -> (offset, max ts before it)
        resume = {key: (off, _or_no_ts(windows.max_ts_before(key))) for key, off in windows.resume_offsets().items()}
        for item in part.outbox:  # built but unpublished: rebuild it after a restart
            if item.key not in resume or item.first_offset < resume[item.key][0]:
                resume[item.key] = (item.first_offset, item.max_ts_before)
        offset, max_ts = part.position, windows.max_ts
        for off, ts in resume.values():
            if off < offset:
                offset, max_ts = off, ts
        keys = {}
        for key in set(part.published) | set(resume) | set(part.skip_below):
            skip = resume[key][0] if key in resume else max(part.position, part.skip_below.get(key, 0))
            p = part.published.get(key, Progress())
            keys[KEY_SEPARATOR.join(key)] = [skip if skip > offset else None, p.published, p.history, p.active, p.count]
        metadata = orjson.dumps({"v": CHECKPOINT_VERSION, "ts": None if max_ts == NO_TS else max_ts,
                                 "keys": keys}).decode()
        if len(metadata) > MAX_CHECKPOINT_BYTES:
            log.warning("drift: partition %d checkpoint is %d bytes; restarts may re-count events",
                        partition, len(metadata))
            metadata = orjson.dumps({"v": CHECKPOINT_VERSION, "ts": None if max_ts == NO_TS else max_ts}).decode()
        return offset, metadata


def _feature_columns(ref: Reference, inputs: np.ndarray) -> dict[str, np.ndarray]:
    return {name: inputs[:, i] for i, name in enumerate(ref.feature_names)}


def _decode_checkpoint(metadata: str | None) -> dict[str, Any]:
    if not metadata:
        return {}
    try:
        state = orjson.loads(metadata)
    except orjson.JSONDecodeError:
        log.warning("drift: ignoring unreadable checkpoint metadata %r", metadata[:100])
        return {}
    if not isinstance(state, dict) or state.get("v") != CHECKPOINT_VERSION:
        log.warning("drift: ignoring checkpoint metadata of another version: %r", metadata[:100])
        return {}
    return state


def _from_offset(block: Block, first: int | None) -> Block | None:
    """The block's events at or after `first` (all of them if None)."""
    if first is None or block.offsets[0] >= first:
        return block
    start = int(np.searchsorted(block.offsets, first))
    if start == len(block.offsets):
        return None
    row = int(block.rows_per_event[:start].sum())
    return replace(block, inputs=block.inputs[row:], outputs={k: v[row:] for k, v in block.outputs.items()},
                   offsets=block.offsets[start:], ts_ms=block.ts_ms[start:],
                   rows_per_event=block.rows_per_event[start:], positions=block.positions[start:])


def _or_no_ts(ts: int | None) -> int:
    """None means no event yet; 0 is a real (if unlikely) event time and must stay 0."""
    return NO_TS if ts is None else ts
