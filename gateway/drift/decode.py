"""Scoring events -> numpy blocks, one partition batch at a time.

This is the consumer's hot path. Per event it does only what cannot be vectorised: one
`orjson.loads`, a few dict lookups and a `list.extend` of the tensor data. Conversion to numpy,
the finiteness check and the split into prediction columns happen once per batch and model
version. An event that does not fit the fast path (several rows with nested lists, say) takes
the slow, fully checked path; an event that cannot be used at all is counted under a reason and
skipped, never raised. Unknown fields (`arm`, `reason`, ...) and every `role` are accepted.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import orjson

from .reference import CategoricalReference, Reference, ReferenceStore, ReferenceUnavailable

EVENT_SCHEMA_VERSION = 1
# The model gave no answer: counted, not warned about (docs/drift.md).
NOT_OK_STATUSES = frozenset(("error", "timeout", "unavailable"))


class KafkaRecord(Protocol):
    partition: int
    offset: int
    value: bytes | None


class SkipEvent(Exception):
    """An event drift cannot use; `reason` is its counter label, `malformed` whether to warn."""

    def __init__(self, reason: str, detail: str, malformed: bool = True):
        super().__init__(detail)
        self.reason = reason
        self.malformed = malformed


@dataclass
class Block:
    """One model version's usable events of one partition batch, in offset order.

    Rows of all events are stacked; `rows_per_event` says which rows came from which event.
    Prediction columns are aligned with the rows: NaN (numeric) or -1 (category code) where an
    event did not carry that output.
    """

    key: tuple[str, str]
    reference: Reference
    inputs: np.ndarray  # [rows, features] float64
    outputs: dict[str, np.ndarray]  # column key -> [rows] float64, or int32 category codes
    offsets: np.ndarray  # [events] int64
    ts_ms: np.ndarray  # [events] int64
    rows_per_event: np.ndarray  # [events] int64
    positions: np.ndarray  # [events] index of the event in its partition batch (for watermarks)


@dataclass
class PartitionBatch:
    """What decoding one partition's records produced."""

    blocks: list[Block]
    ts_ms: np.ndarray  # [records] event time of every record that had one, else the smallest int64
    skipped: Counter = field(default_factory=Counter)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (reason, message) of malformed events


NO_TS = np.iinfo(np.int64).min


class _Accumulator:
    """Python lists for one model version, turned into arrays once per batch."""

    __slots__ = ("ref", "inputs", "events", "outputs", "slow")

    def __init__(self, ref: Reference):
        self.ref = ref
        self.inputs: list[float] = []
        self.events: list[tuple[int, int, int, int]] = []  # (offset, ts_ms, rows, position)
        self.outputs: dict[str, list[Any]] = {t: [] for t in ref.output_tensors}
        self.slow: dict[int, tuple[np.ndarray, dict[str, np.ndarray | None]]] = {}  # event index -> arrays


def _find(tensors: Any, name: str, kind: str) -> dict[str, Any] | None:
    if tensors is None:
        return None
    if not isinstance(tensors, list) or not all(isinstance(t, dict) for t in tensors):
        raise SkipEvent(f"bad_{kind}", f"'{kind}' must be a list of tensor objects")
    for t in tensors:
        if t.get("name") == name:
            return t
    return None


def _array(tensor: dict[str, Any], kind: str) -> np.ndarray:
    """The tensor's data in its declared `shape` (events carry flat, row-major data)."""
    try:
        array = np.asarray(tensor["data"])
    except (KeyError, TypeError, ValueError, OverflowError):
        raise SkipEvent(f"bad_{kind}", f"{kind} '{tensor.get('name')}': data is not a rectangular list") from None
    shape = tensor.get("shape")
    if (array.ndim == 1 and isinstance(shape, list) and len(shape) > 1
            and all(isinstance(d, int) and d >= 0 for d in shape) and math.prod(shape) == array.size):
        array = array.reshape(shape)
    return array


def _as_declared(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float64 values as the model saw them: rounded through a declared float type (FP32 "13.03"
    is 13.029999732971191); integers are exact in float64 and NaN (missing) must stay NaN."""
    if dtype.kind == "f":
        return array.astype(dtype).astype(np.float64)
    return array.astype(np.float64)


def _numeric(array: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        if array.dtype.kind == "O" and any(v is None for v in array.ravel()):
            raise SkipEvent("non_finite", f"{what} holds null")
        raise SkipEvent("bad_inputs" if what == "input" else "bad_outputs", f"{what} is not numeric")
    values = _as_declared(array, dtype)
    if not np.isfinite(values).all():
        raise SkipEvent("non_finite", f"{what} holds NaN or infinity")
    return values


def _slow_event(record: dict[str, Any], ref: Reference) -> tuple[np.ndarray, dict[str, np.ndarray | None]]:
    """Fully checked decoding of one event's input rows and output tensors."""
    tensors = record.get("inputs")
    tensor = _find(tensors, ref.input_name, "inputs")
    if tensor is None and isinstance(tensors, list) and len(tensors) == 1:
        tensor = tensors[0]  # a single, differently named input tensor is still the input
    if tensor is None:
        raise SkipEvent("bad_inputs", f"no input tensor '{ref.input_name}'")
    rows = _numeric(_array(tensor, "inputs"), ref.input_dtype, "input")
    width = len(ref.feature_names)
    if rows.ndim != 2 or rows.shape[1] != width:
        raise SkipEvent("bad_row_length", f"input rows have shape {list(rows.shape)}, the model has {width} features")
    if rows.shape[0] == 0:
        raise SkipEvent("no_rows", "the event carries no rows")
    outputs: dict[str, np.ndarray | None] = {}
    for name, (dtype, width_out) in ref.output_tensors.items():
        tensor = _find(record.get("outputs"), name, "outputs")
        if tensor is None:
            outputs[name] = None
            continue
        array = _array(tensor, "outputs")
        expected = (len(rows),) if width_out is None else (len(rows), width_out)
        if array.shape != expected:
            raise SkipEvent("bad_outputs", f"output '{name}' has shape {list(array.shape)}, expected {list(expected)}")
        outputs[name] = array if dtype.kind in "US" else _numeric(array, dtype, f"output '{name}'")
    return rows, outputs


def _header(record: Any, references: ReferenceStore) -> tuple[Reference, int]:
    """Checks every event gets; returns the version's reference and the event time."""
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
        return references.get(name, version), ts_ms
    except ReferenceUnavailable as exc:
        raise SkipEvent(exc.reason, str(exc)) from None


def _fast(record: dict[str, Any], acc: _Accumulator) -> int:
    """Append one event by `list.extend`; 0 when it needs the slow path (checked later anyway)."""
    ref = acc.ref
    try:
        tensor = record["inputs"][0]
        data = tensor["data"]
        rows = tensor["shape"][0]
        if (tensor["name"] != ref.input_name or len(record["inputs"]) != 1 or type(data) is not list
                or type(rows) is not int or rows <= 0 or len(data) != rows * ref.width):
            return 0
        outputs = record["outputs"]
        found = {}
        for t in outputs:
            name = t["name"]
            if name in acc.outputs:
                out = t["data"]
                spec_width = ref.output_tensors[name][1]
                if type(out) is not list or len(out) != rows * (spec_width or 1):
                    return 0
                found[name] = out
    except (KeyError, IndexError, TypeError):
        return 0
    acc.inputs.extend(data)
    for name, values in acc.outputs.items():
        out = found.get(name)
        if out is None:
            values.extend([None] * (rows * (ref.output_tensors[name][1] or 1)))
        else:
            values.extend(out)
    return rows


def decode_partition(records: Sequence[KafkaRecord], references: ReferenceStore) -> PartitionBatch:
    """Decode one partition's records (in offset order) into one block per model version."""
    skipped: Counter = Counter()
    warnings: list[tuple[str, str]] = []
    ts_all = np.full(len(records), NO_TS, dtype=np.int64)
    accs: dict[tuple[str, str], _Accumulator] = {}
    loads = orjson.loads
    for position, rec in enumerate(records):
        try:
            try:
                record = loads(rec.value)
            except (orjson.JSONDecodeError, TypeError):
                raise SkipEvent("bad_json", "not valid JSON") from None
            ref, ts_ms = _header(record, references)
            ts_all[position] = ts_ms
            acc = accs.get(ref.key)
            if acc is None:
                acc = accs[ref.key] = _Accumulator(ref)
            rows = _fast(record, acc)
            if rows == 0:
                slow = _slow_event(record, ref)
                acc.slow[len(acc.events)] = slow
                rows = len(slow[0])
            acc.events.append((rec.offset, ts_ms, rows, position))
        except SkipEvent as skip:
            skipped[skip.reason] += 1
            if skip.malformed:
                warnings.append((skip.reason, f"partition {rec.partition} offset {rec.offset}: {skip.reason}: {skip}"))
    blocks = []
    for acc in accs.values():
        block = _to_block(acc, skipped, warnings)
        if block is not None:
            blocks.append(block)
    return PartitionBatch(blocks, ts_all, skipped, warnings)


def _to_block(acc: _Accumulator, skipped: Counter, warnings: list[tuple[str, str]]) -> Block | None:
    ref = acc.ref
    events = np.array(acc.events, dtype=np.int64).reshape(-1, 4)
    rows_per_event = events[:, 2]
    n_rows = int(rows_per_event.sum())
    if n_rows == 0:
        return None
    fast_rows = np.ones(len(events), dtype=bool)
    fast_rows[list(acc.slow)] = False
    row_is_fast = np.repeat(fast_rows, rows_per_event)
    inputs = np.empty((n_rows, ref.width), dtype=np.float64)
    good_event = np.ones(len(events), dtype=bool)
    if acc.inputs:
        flat = np.array(acc.inputs)
        if flat.dtype.kind not in "biuf":  # null or a string among the values: find the events
            flat = np.array([v if isinstance(v, (int, float)) else np.nan for v in acc.inputs], dtype=np.float64)
        fast = _as_declared(flat, ref.input_dtype).reshape(-1, ref.width)
        inputs[row_is_fast] = fast
    outputs_tensors: dict[str, np.ndarray] = {}
    for name, values in acc.outputs.items():
        dtype, width = ref.output_tensors[name]
        shape = (n_rows,) if width is None else (n_rows, width)
        if dtype.kind in "US":
            column = np.full(shape, None, dtype=object)
            if values:
                column[row_is_fast] = np.array(values, dtype=object).reshape(-1, *shape[1:])
        else:
            column = np.full(shape, np.nan, dtype=np.float64)
            if values:
                array = np.array(values)
                if array.dtype.kind not in "biuf":  # missing outputs (None) or junk (voids the event)
                    array = np.array([np.nan if v is None else v if isinstance(v, (int, float)) else np.inf
                                      for v in values], dtype=np.float64)
                column[row_is_fast] = _as_declared(array, dtype).reshape(-1, *shape[1:])
        outputs_tensors[name] = column
    starts = np.concatenate(([0], np.cumsum(rows_per_event)[:-1]))
    for index, (rows, outs) in acc.slow.items():
        s = starts[index]
        inputs[s:s + len(rows)] = rows
        for name, array in outs.items():
            if array is not None:
                outputs_tensors[name][s:s + len(rows)] = array
    # One vectorised check for the whole batch: a non-finite value voids its event.
    bad_rows = ~np.isfinite(inputs).all(axis=1)
    for name, column in outputs_tensors.items():
        if column.dtype != object:
            values = column if column.ndim == 1 else column.sum(axis=1)
            bad_rows |= np.isinf(values)  # missing outputs are NaN, not infinite
            if column.ndim == 2:
                bad_rows |= np.isnan(column).any(axis=1) & ~np.isnan(column).all(axis=1)
    if bad_rows.any():
        bad_events = np.add.reduceat(bad_rows, starts) > 0
        for index in np.flatnonzero(bad_events):
            skipped["non_finite"] += 1
            warnings.append(("non_finite", f"offset {events[index, 0]}: non_finite: NaN, infinity or null in the event"))
        good_event &= ~bad_events
        keep_rows = np.repeat(good_event, rows_per_event)
        inputs = inputs[keep_rows]
        outputs_tensors = {k: v[keep_rows] for k, v in outputs_tensors.items()}
        events = events[good_event]
        if len(events) == 0:
            return None
    return Block(
        key=ref.key, reference=ref, inputs=inputs,
        outputs={col.key: ref.column_values(col, outputs_tensors[col.tensor]) for col in ref.outputs},
        offsets=events[:, 0], ts_ms=events[:, 1], rows_per_event=events[:, 2], positions=events[:, 3],
    )
