"""The drift consumer: scoring events from Kafka in, one drift report per closed window out.

Offsets are committed only once the reports covering them are published (acks=all), and never
past an event that still sits in an open window, so a crash or a rebalance loses nothing: the
open windows are rebuilt by re-reading from the committed offsets (at-least-once; see
docs/drift.md).
"""
from __future__ import annotations

import asyncio
import logging
import math
import signal
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from gateway.config import DriftConfig
from gateway.models.repository import ModelRepository

from .reference import CategoricalReference, OutputColumn, Reference, ReferenceStore, ReferenceUnavailable
from .report import build_report, summary
from .tests import Thresholds, evaluate
from .window import EventRows, TumblingWindows, Window

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

log = logging.getLogger("gateway.drift")

EVENT_SCHEMA_VERSION = 1
NOT_OK_STATUSES = ("error", "timeout", "unavailable")  # counted, not warned about: no model answer
WARNING_INTERVAL_S = 10.0


class DriftSettings(DriftConfig):
    """The `drift:` section of the gateway config, plus where to read and write."""

    bootstrap_servers: str | list[str] = "127.0.0.1:9092"
    events_topic: str = "scoring.events"
    reports_topic: str = "scoring.drift"
    model_repository: Path = Path("models")

    def thresholds(self) -> Thresholds:
        return Thresholds(alpha=self.alpha, correction=self.correction, min_effect=self.min_effect)


class SkipEvent(Exception):
    """An event drift cannot use; `reason` is its counter label, `malformed` whether to warn."""

    def __init__(self, reason: str, detail: str, malformed: bool = True):
        super().__init__(detail)
        self.reason = reason
        self.malformed = malformed


class KafkaRecord(Protocol):
    partition: int
    offset: int
    value: bytes | None


def _find_tensor(tensors: Any, name: str, kind: str) -> dict[str, Any] | None:
    if tensors is None:
        return None
    if not isinstance(tensors, list) or not all(isinstance(t, dict) for t in tensors):
        raise SkipEvent(f"bad_{kind}", f"'{kind}' must be a list of tensor objects")
    for t in tensors:
        if t.get("name") == name:
            return t
    return None


def _array(tensor: dict[str, Any], dtype: np.dtype, kind: str) -> np.ndarray:
    """The tensor's data in its declared `shape` (events carry flat, row-major data)."""
    name = tensor.get("name")
    try:
        array = np.asarray(tensor["data"], dtype=dtype)
    except (KeyError, TypeError, ValueError, OverflowError):
        raise SkipEvent(f"bad_{kind}", f"{kind} '{name}': data is not a rectangular list of values") from None
    shape = tensor.get("shape")
    if (array.ndim == 1 and isinstance(shape, list) and len(shape) > 1
            and all(isinstance(d, int) and d >= 0 for d in shape) and math.prod(shape) == array.size):
        array = array.reshape(shape)
    return array


def _input_rows(tensors: Any, ref: Reference) -> np.ndarray:
    tensor = _find_tensor(tensors, ref.input_name, "inputs")
    if tensor is None and isinstance(tensors, list) and len(tensors) == 1:
        tensor = tensors[0]  # a single, differently named input tensor is still the input
    if tensor is None:
        raise SkipEvent("bad_inputs", f"no input tensor '{ref.input_name}'")
    rows = _array(tensor, ref.input_dtype, "inputs").astype(np.float64, copy=False)
    width = len(ref.feature_names)
    if rows.ndim != 2 or rows.shape[1] != width:
        raise SkipEvent("bad_row_length", f"input rows have shape {list(rows.shape)}, the model has {width} features")
    if rows.shape[0] == 0:
        raise SkipEvent("no_rows", "the event carries no rows")
    if not np.isfinite(rows).all():
        raise SkipEvent("non_finite", "input holds NaN, infinity or null")
    return rows


def _output_columns(tensors: Any, ref: Reference, n: int) -> dict[str, np.ndarray]:
    """The reference's prediction columns this event carries (a client may request fewer)."""
    arrays: dict[str, np.ndarray | None] = {}
    columns = {}
    for col in ref.outputs:
        if col.tensor not in arrays:
            tensor = _find_tensor(tensors, col.tensor, "outputs")
            arrays[col.tensor] = None if tensor is None else _output_array(tensor, ref.output_dtypes[col.tensor], n)
        array = arrays[col.tensor]
        if array is None:
            continue
        if col.column is None and array.ndim == 1:
            values = array
        elif col.column is not None and array.ndim == 2 and col.column < array.shape[1]:
            values = array[:, col.column]
        else:
            raise SkipEvent("bad_outputs",
                            f"output '{col.tensor}' has shape {list(array.shape)}; {col.key} is not in it")
        columns[col.key] = _typed(col, values)
    return columns


def _typed(col: OutputColumn, values: np.ndarray) -> np.ndarray:
    """Categories as declared; finite float64 for a numeric (KS) column."""
    if isinstance(col.reference, CategoricalReference):
        return values
    if values.dtype.kind not in "biuf":
        raise SkipEvent("bad_outputs", f"output {col.key} is not numeric")
    values = values.astype(np.float64, copy=False)
    if not np.isfinite(values).all():
        raise SkipEvent("non_finite", f"output {col.key} holds NaN, infinity or null")
    return values


def _output_array(tensor: dict[str, Any], dtype: np.dtype, n: int) -> np.ndarray:
    array = _array(tensor, dtype, "outputs")
    if array.ndim not in (1, 2) or array.shape[0] != n:
        raise SkipEvent("bad_outputs",
                        f"output '{tensor.get('name')}' has shape {list(array.shape)}, the input has {n} rows")
    return array


def decode_event(value: bytes | None, references: ReferenceStore, partition: int, offset: int) -> EventRows:
    """Parse and validate one record; raise SkipEvent with a countable reason if unusable."""
    try:
        record = orjson.loads(value)  # type: ignore[arg-type]
    except (orjson.JSONDecodeError, TypeError):
        raise SkipEvent("bad_json", "not valid JSON") from None
    if not isinstance(record, dict):
        raise SkipEvent("bad_json", "not a JSON object")
    if record.get("schema_version") != EVENT_SCHEMA_VERSION:
        raise SkipEvent("unsupported_schema_version", f"schema_version {record.get('schema_version')!r}")
    status = record.get("status")
    if status != "ok":
        if status in NOT_OK_STATUSES:
            raise SkipEvent(f"status_{status}", f"status {status}", malformed=False)
        raise SkipEvent("bad_status", f"status {status!r}")
    name, version, ts_ms = record.get("model_name"), record.get("model_version"), record.get("ts_ms")
    if not isinstance(name, str) or not isinstance(version, str):
        raise SkipEvent("missing_field", "model_name and model_version must be strings")
    if not isinstance(ts_ms, int) or isinstance(ts_ms, bool):
        raise SkipEvent("missing_field", "ts_ms must be an integer")
    try:
        ref = references.get(name, version)
    except ReferenceUnavailable as exc:
        raise SkipEvent(exc.reason, str(exc)) from None
    inputs = _input_rows(record.get("inputs"), ref)
    outputs = _output_columns(record.get("outputs"), ref, len(inputs))
    return EventRows(name, version, inputs, outputs, ts_ms, partition, offset)


class _WarningLimiter:
    """At most one warning per reason per interval, saying how many were held back."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def warn(self, reason: str, message: str) -> None:
        now = time.monotonic()
        last = self._last.get(reason)
        if last is not None and now - last < self.interval_s:
            self._held[reason] += 1
            return
        held = self._held.pop(reason, 0)
        self._last[reason] = now
        log.warning("%s%s", message, f" ({held} more '{reason}' skips since the last warning)" if held else "")


class _DropOpenWindows(ConsumerRebalanceListener):
    def __init__(self, owner: DriftConsumer):
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._owner._on_revoked()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("drift consumer assigned %s", sorted(tp.partition for tp in assigned))


class DriftConsumer:
    """Reads scoring events, publishes one drift report per closed window, commits behind them.

    `process()` is the whole event -> window -> report pipeline without any I/O; `run()` feeds
    it Kafka batches, publishes what it returns, then commits.
    """

    def __init__(self, settings: DriftSettings, references: ReferenceStore | None = None):
        self.settings = settings
        self.references = references or ReferenceStore(ModelRepository(settings.model_repository))
        self.thresholds = settings.thresholds()
        self.windows = TumblingWindows(settings.window_rows, settings.window_seconds)
        self.skipped: Counter[str] = Counter()
        self.reports_published = 0
        self.report_errors = 0
        self._positions: dict[int, int] = {}  # partition -> offset after the last record processed
        self._committed: dict[int, int] = {}
        self._warnings = _WarningLimiter(WARNING_INTERVAL_S)
        # Serialises batch handling with the rebalance callback, which runs in aiokafka's task.
        self._lock = asyncio.Lock()
        self._generation = 0  # bumped on revocation: batches fetched before it are stale
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None

    def process(self, records: Iterable[KafkaRecord]) -> list[dict[str, Any]]:
        """Feed records in offset order per partition; return the reports of the windows closed."""
        closed: list[Window] = []
        for record in records:
            self._positions[record.partition] = record.offset + 1
            try:
                rows = decode_event(record.value, self.references, record.partition, record.offset)
            except SkipEvent as skip:
                self.skipped[skip.reason] += 1
                if skip.malformed:
                    self._warnings.warn(
                        skip.reason,
                        f"drift: skipped event at partition {record.partition} offset {record.offset}: "
                        f"{skip.reason}: {skip}",
                    )
                continue
            closed.extend(self.windows.update(rows))
        closed.extend(self.windows.expire())
        reports = []
        for window in closed:
            try:
                reports.append(self._report(window))
            except Exception:  # a poison window must not crash-loop the consumer on re-read
                self.report_errors += 1
                log.exception("drift: no report for window %s (%d rows)", window.window_id, window.n_rows)
        return reports

    def commit_offsets(self) -> dict[int, int]:
        """Per partition: everything processed, except what an open window still holds."""
        held = self.windows.open_offsets()
        return {p: min(pos, held.get(p, pos)) for p, pos in self._positions.items()}

    def _report(self, window: Window) -> dict[str, Any]:
        ref = self.references.get(window.model_name, window.model_version)  # cached since decode
        features, predictions = evaluate(window.inputs(), window.outputs(), ref, self.thresholds)
        report = build_report(window, features, predictions, self.thresholds)
        log.info("%s", summary(report))
        return report

    async def start(self) -> None:
        s = self.settings
        log.info("drift consumer: %s -> %s, group %s, models %s, window %d rows / %.0f s",
                 s.events_topic, s.reports_topic, s.group_id,
                 ",".join(f"{n}/{v}" for n, v in self.references.repository.list()) or "(none)",
                 s.window_rows, s.window_seconds)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap_servers, acks="all", enable_idempotence=True
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers,
            group_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        self._consumer.subscribe([s.events_topic], listener=_DropOpenWindows(self))
        await self._producer.start()
        try:
            await self._consumer.start()
        except BaseException:
            await self._producer.stop()
            raise

    async def run(self, stop: asyncio.Event | None = None, max_reports: int | None = None) -> None:
        """Until `stop` is set, or `max_reports` reports are published and their offsets committed.

        A report that cannot be published raises: nothing it covers has been committed.
        """
        assert self._consumer is not None, "call start() first"
        while not (stop is not None and stop.is_set()):
            if max_reports is not None and self.reports_published >= max_reports:
                return
            batch = await self._consumer.getmany(
                timeout_ms=self.settings.poll_timeout_ms, max_records=self.settings.max_batch
            )
            generation = self._generation
            async with self._lock:
                if generation != self._generation:
                    continue  # fetched before a revocation: re-read from the committed offsets
                reports = self.process(r for records in batch.values() for r in records)
                await self._publish(reports)
                await self._commit()

    async def stop(self) -> None:
        """Open windows are dropped, not reported: their events were not committed."""
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        if self.skipped:
            log.info("drift consumer skipped events: %s", dict(sorted(self.skipped.items())))

    async def _publish(self, reports: list[dict[str, Any]]) -> None:
        assert self._producer is not None
        futures = [
            await self._producer.send(
                self.settings.reports_topic,
                value=orjson.dumps(r),
                key=f"{r['model_name']}/{r['model_version']}".encode(),
            )
            for r in reports
        ]
        await asyncio.gather(*futures)
        self.reports_published += len(reports)

    async def _commit(self) -> None:
        assert self._consumer is not None
        changed = {p: o for p, o in self.commit_offsets().items() if self._committed.get(p) != o}
        if not changed:
            return
        topic = self.settings.events_topic
        try:
            await self._consumer.commit({TopicPartition(topic, p): o for p, o in changed.items()})
        except (CommitFailedError, IllegalStateError) as exc:
            # The group is rebalancing: the revocation drops the open windows, and whoever gets
            # these partitions re-reads from the last successful commit (at-least-once).
            log.warning("drift: offset commit failed (%s); events since the last commit will be re-read", exc)
            return
        self._committed.update(changed)

    async def _on_revoked(self) -> None:
        async with self._lock:
            self._generation += 1
            if self._positions:
                await self._commit()
            dropped = len(self.windows.open_windows())
            self.windows.clear()
            self._positions.clear()
            self._committed.clear()
            if dropped:
                log.info("drift: partitions revoked; dropped %d open windows, to be re-read", dropped)


def settings_from_config(config: GatewayConfig) -> DriftSettings:
    """Kafka and the repository come from their own sections of the (already validated) config."""
    return DriftSettings(
        **config.drift.model_dump(),
        bootstrap_servers=config.kafka.bootstrap_servers,
        events_topic=config.kafka.topics.events,
        reports_topic=config.kafka.topics.drift,
        model_repository=config.model_repository,
    )


async def run_drift(settings: DriftSettings, stop: asyncio.Event | None = None) -> None:
    """`gateway drift`: run until `stop` is set; without one, until SIGINT or SIGTERM.

    Stopping on a signal (rather than dying) leaves the consumer group at once, so the
    partitions move to another member without waiting for the session timeout.
    """
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    consumer = DriftConsumer(settings)
    await consumer.start()
    try:
        await consumer.run(stop)
    finally:
        await consumer.stop()
