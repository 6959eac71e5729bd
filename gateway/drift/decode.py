"""Scoring events -> numpy blocks, one partition batch at a time.

This is the consumer's hot path, so the common case does no per-value Python work. For a record
laid out as the gateway writes it (docs/events.md: header fields, then `inputs`, then `outputs`),
only the header before `"inputs"` is parsed with orjson; the tensors' `data` lists are located
by byte offsets after their tensor headers have been checked against the version's declared
shapes (once per distinct header, cached), and the numbers of the whole batch are parsed by one
`orjson.loads` per tensor. Anything else (other layouts, nested data, BYTES outputs, values that
are not numbers) takes the slow path: the whole record parsed and checked event by event. An
event that cannot be used at all is counted under a reason and skipped, never raised. Unknown
fields (`arm`, `reason`, ...) and every `role` are accepted.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from itertools import repeat
from operator import attrgetter, itemgetter
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import orjson

from gateway.events.records import SCHEMA_VERSION as EVENT_SCHEMA_VERSION

from .reference import Reference, ReferenceStore, ReferenceUnavailable

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


_MAX_TENSOR_HEADERS = 10_000
INPUTS_KEY = b',"inputs":['
MODEL_KEY = b',"model_name":"'
PREFIX = b'{"schema_version":%d,"event_id":"' % EVENT_SCHEMA_VERSION
PREFIX_KEYS = ["schema_version", "event_id", "timestamp", "ts_ms", "request_id", "gateway_instance"]
TS_KEY, REQUEST_KEY = b',"ts_ms":', b',"request_id":"'
ACTION_KEY = b',"action":'  # what follows `outputs` in the gateway's records
DATA_KEY = b'"data":['
_VALUE, _OFFSET = attrgetter("value"), attrgetter("offset")
_HEADER_FIELDS = itemgetter("schema_version", "status", "model_name", "model_version", "ts_ms")


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
        with np.errstate(over="ignore"):  # too large for the declared type: infinity, which voids the event
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


def _tensor_header(ref: Reference, header: bytes, layouts: Layouts) -> tuple[str, int, int] | None:
    """(name, rows, values per row) of a flat numeric tensor this version knows, else None."""
    key = (ref.key, header)
    if key in layouts.tensor_headers:
        return layouts.tensor_headers[key]
    result = None
    try:
        tensor = orjson.loads(header + b'"data":[]}')
        name, shape = tensor["name"], tensor["shape"]
        if name == ref.input_name:
            width = ref.width
        else:
            dtype, width = ref.output_tensors[name]
            width = width or 1
            if dtype.kind in "US":
                raise KeyError(name)  # strings may hide "]": slow path
        rows = shape[0]
        if (type(rows) is int and rows > 0 and len(tensor) == 4
                and shape == ([rows, width] if name == ref.input_name or len(shape) == 2 else [rows])):
            result = (name, rows, width)
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
        pass
    if len(layouts.tensor_headers) >= _MAX_TENSOR_HEADERS:  # shapes come from events: stay bounded
        layouts.tensor_headers.clear()
    layouts.tensor_headers[key] = result
    return result


@dataclass(frozen=True)
class _Skeleton:
    """The exact bytes around an event's numbers, learned from a checked event of the same
    layout: matching them proves the tensors' names and shapes without parsing them again."""

    head: bytes  # from ',"inputs":[' to the first number of the input data
    separators: tuple[bytes, ...]  # after each data list: up to the next one's numbers, then ']}]'
    tensors: tuple[str, ...]  # the tensor of each data list, the input first
    commas: tuple[int, ...]  # values - 1 of each data list
    rows: int
    missing: tuple[tuple[str, bytes], ...]  # outputs the layout lacks, as nulls
    # From ',"model_name":"' to ',"inputs":[' (model, version, role, route, status, ...) when the
    # fields before it are the gateway's own six (PREFIX ... gateway_instance); None otherwise.
    header: bytes | None = None


_MAX_SKELETONS = 8  # layouts remembered per version (row counts, subsets of outputs)


class Layouts:
    """What decoding has learned about record layouts, per version: kept by its owner (one per
    monitor), since versions and their references belong to one model repository."""

    def __init__(self) -> None:
        self.skeletons: dict[tuple[str, str], list[_Skeleton]] = {}
        # Tensor header (the bytes between "{" and `"data":[`) -> (name, rows, values per row).
        self.tensor_headers: dict[tuple[tuple[str, str], bytes], tuple[str, int, int] | None] = {}


def _learn(value: bytes, start: int, ref: Reference, layouts: Layouts) -> bool:
    """Check the tensors' headers one by one; on success remember the layout as a skeleton.
    True when the layout is new."""
    find = value.find
    spans: list[tuple[str, int, int, int]] = []  # (tensor, data start, data end, values per row)
    pos, expect = start + len(INPUTS_KEY), b"]}]," + b'"outputs":['
    while True:
        data = find(DATA_KEY, pos)
        header = _tensor_header(ref, value[pos:data], layouts) if data > 0 else None
        if header is None or (spans and header[1] != spans[0][3] // ref.width) or (not spans and header[0] != ref.input_name):
            return False
        data += len(DATA_KEY)
        end = find(b"]", data)
        if value[data:end].count(b",") + 1 != header[1] * header[2]:
            return False
        spans.append((header[0], data, end, header[1] * header[2]))
        if not spans[1:]:  # after the input: the outputs array must follow
            if not value.startswith(expect, end):
                return False
            pos = end + len(expect)
            if value.startswith(b"]", pos):
                break
            continue
        if value.startswith(b"},", end + 1):
            pos = end + 3
            continue
        if value.startswith(b"}]", end + 1):
            break
        return False
    names = tuple(name for name, *_ in spans)
    if len(set(names)) != len(names):
        return False
    rows = spans[0][3] // ref.width
    separators = tuple(value[spans[i][2]:spans[i + 1][1]] for i in range(len(spans) - 1)) + (b"]}]",)
    skeleton = _Skeleton(
        head=value[start:spans[0][1]], separators=separators, tensors=names,
        commas=tuple(n - 1 for *_, n in spans), rows=rows,
        missing=tuple((name, b",".join([b"null"] * (rows * (width or 1))))
                      for name, (_, width) in ref.output_tensors.items() if name not in names))
    model_at = value.find(MODEL_KEY)
    if 0 < model_at < start and value.startswith(PREFIX):
        try:
            if list(orjson.loads(value[:model_at] + b"}")) == PREFIX_KEYS:
                skeleton = replace(skeleton, header=value[model_at:start])
        except orjson.JSONDecodeError:
            pass
    known = layouts.skeletons.setdefault(ref.key, [])
    if len(known) >= _MAX_SKELETONS:
        known.pop(0)
    if skeleton in known:
        return False
    known.append(skeleton)
    return True


@dataclass
class _Part:
    """Some events of one version, in offset order, decoded one way (one skeleton, or slowly)."""

    positions: np.ndarray  # index of each event in the partition batch
    ts_ms: np.ndarray
    rows: np.ndarray
    inputs: np.ndarray  # [rows, features], float64
    outputs: dict[str, np.ndarray]  # tensor -> [rows] or [rows, k]


class _Version:
    __slots__ = ("ref", "parts")

    def __init__(self, ref: Reference):
        self.ref = ref
        self.parts: list[_Part] = []


def _pick(values: list, index: np.ndarray) -> list:
    """values[index] for sorted distinct positions (np.flatnonzero's): all of them is `values`."""
    if len(index) == len(values):
        return values
    return list(itemgetter(*index)(values)) if len(index) > 1 else [values[i] for i in index]


def _prefix_parts(values: list, references: ReferenceStore, layouts: Layouts, ts_all: np.ndarray,
                  versions: dict[tuple[str, str], _Version]) -> np.ndarray:
    """The cheapest path, for records laid out exactly as the gateway writes them: no JSON
    parsing at all but of the numbers. The bytes from `"model_name"` to the last number must be
    a learned skeleton (which fixes model, version, status and tensors); before them only the
    gateway's six fields may stand, of which `ts_ms` (digits) is read and the rest unused."""
    handled = np.zeros(len(values), dtype=bool)
    try:
        model_at = np.fromiter(map(bytes.find, values, repeat(MODEL_KEY)), np.int64, len(values))
        prefixed = np.fromiter(map(bytes.startswith, values, repeat(PREFIX)), bool, len(values))
    except TypeError:  # a null value in the batch
        return handled
    for key, skeletons in list(layouts.skeletons.items()):
        try:
            ref = references.get(*key)
        except ReferenceUnavailable:
            continue
        for skeleton in skeletons:
            todo = np.flatnonzero(prefixed & (model_at > 0) & ~handled)
            if skeleton.header is None or not len(todo):
                continue
            vals = _pick(values, todo)
            found = _match_regions(skeleton, ref, vals, model_at[todo])
            matched, part = found if found is not None else \
                _match_skeleton(skeleton, ref, vals, model_at[todo], skeleton.header)
            if part is None:
                continue
            keep = np.flatnonzero(matched)
            mine = _pick(vals, keep)
            ts_at = np.fromiter(map(bytes.find, mine, repeat(TS_KEY)), np.int64, len(mine)) + len(TS_KEY)
            request_at = np.fromiter(map(bytes.find, mine, repeat(REQUEST_KEY), ts_at.tolist()), np.int64, len(mine))
            digits = list(map(bytes.__getitem__, mine, map(slice, ts_at.tolist(), request_at.tolist())))
            if not ((ts_at > len(TS_KEY)) & (request_at < model_at[todo[keep]])).all() or not all(map(bytes.isdigit, digits)):
                continue  # not the gateway's prefix after all: the next path decides
            positions = todo[keep]
            part.positions, part.ts_ms = positions, np.fromiter(map(int, digits), np.int64, len(digits))
            ts_all[positions] = part.ts_ms
            handled[positions] = True
            versions.setdefault(key, _Version(ref)).parts.append(part)
    return handled


def _fast_parts(values: list, where: np.ndarray, references: ReferenceStore, layouts: Layouts,
                ts_all: np.ndarray, versions: dict[tuple[str, str], _Version]) -> np.ndarray:
    """Decode the events that match a learned skeleton, with C-level `map` loops over the batch
    instead of Python per event; `where` is each value's position in the batch. Returns which
    were decoded. Any surprise (a null value, a header that does not parse) leaves them all to
    the per-event path."""
    handled = np.zeros(len(values), dtype=bool)
    try:
        starts = np.array(list(map(bytes.find, values, repeat(INPUTS_KEY))), dtype=np.int64)
        candidates = np.flatnonzero(starts > 0)
        if not len(candidates):
            return handled
        vals = _pick(values, candidates)
        st = starts[candidates].tolist()
        heads = map(orjson.loads, map(bytes.__add__, map(bytes.__getitem__, vals, map(slice, st)), repeat(b"}")))
        schema, status, names, version_names, ts = zip(*map(_HEADER_FIELDS, heads))
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
        return handled
    ts = np.array(ts)
    if ts.dtype.kind != "i":
        return handled
    usable = (np.array(schema, dtype=object) == EVENT_SCHEMA_VERSION) & (np.array(status, dtype=object) == "ok")
    names_a, versions_a = np.array(names, dtype=object), np.array(version_names, dtype=object)
    for name, version in set(zip(names, version_names)):
        if not (isinstance(name, str) and isinstance(version, str)):
            continue
        try:
            ref = references.get(name, version)
        except ReferenceUnavailable:
            continue  # the per-event path counts these under their reason
        todo = np.flatnonzero(usable & (names_a == name) & (versions_a == version))
        for skeleton in layouts.skeletons.get(ref.key, ()):
            if not len(todo):
                break
            matched, part = _match_skeleton(skeleton, ref, _pick(vals, todo), starts[candidates[todo]])
            if part is None:
                continue
            positions = where[candidates[todo[matched]]]
            part.positions, part.ts_ms = positions, ts[todo[matched]]
            ts_all[positions] = part.ts_ms
            handled[candidates[todo[matched]]] = True
            versions.setdefault(ref.key, _Version(ref)).parts.append(part)
            todo = todo[~matched]
    return handled


# Markers among the parsed numbers: after the k-th tensor k * 1e307, after an event's last 1e308.
# An event with a number of magnitude 1e307 or more takes the exact path.
_MARK, _END = 1e307, 1e308


def _match_regions(skeleton: _Skeleton, ref: Reference, vals: list[bytes], model_at: np.ndarray
                   ) -> tuple[np.ndarray, _Part | None] | None:
    """`_match_skeleton` for the gateway's own layout, with half of its per-event work: each
    event's numbers (first number of the input to the last of the outputs, which `"action"`
    follows) are cut out as one slice; the batch's slices are joined, the skeleton's k-th tensor
    separator (quotes and names: never inside a list of numbers) is replaced by the number
    k * 1e307, the end of an event by 1e308, and one `orjson.loads` parses the batch. The
    markers standing exactly where the skeleton puts them, and nowhere else, prove for every
    event that its tensors came in the skeleton's order with the skeleton's shapes. If anything
    is off (or not finite) the batch is None and the per-event `_match_skeleton` decides."""
    lead = skeleton.header + skeleton.head
    matched = np.fromiter(map(bytes.startswith, vals, repeat(lead), model_at.tolist()), bool, len(vals))
    keep = np.flatnonzero(matched)
    mine = _pick(vals, keep)
    data_at = model_at[keep] + len(lead)
    ends = np.fromiter(map(bytes.find, mine, repeat(skeleton.separators[-1] + ACTION_KEY), data_at.tolist()),
                       np.int64, len(mine))
    found = ends > 0
    if not found.all():
        matched[keep[~found]] = False
        keep, data_at, ends = keep[found], data_at[found], ends[found]
        mine = _pick(vals, keep)
    if not len(keep):
        return matched, None
    text = b",1e308,".join(map(bytes.__getitem__, mine, map(slice, data_at.tolist(), ends.tolist())))
    for k, separator in enumerate(skeleton.separators[:-1], start=1):
        text = text.replace(separator, b",%de307," % k)
    try:
        values = np.array(orjson.loads(b"[" + text + b",1e308]"), dtype=np.float64)
    except (orjson.JSONDecodeError, TypeError, ValueError):  # null, strings, nesting
        return None
    n, widths = len(keep), [c + 1 for c in skeleton.commas]
    per_event = sum(widths) + len(widths)
    if values.size != n * per_event:
        return None
    values = values.reshape(n, per_event)
    bounds = np.cumsum([w + 1 for w in widths]) - 1  # where each tensor's marker stands
    expected = np.array([float(b"%de307" % (k + 1)) for k in range(len(widths) - 1)] + [_END])
    markers = np.zeros(per_event, dtype=bool)
    markers[bounds] = True
    if not (values[:, bounds] == expected).all() or not (np.abs(values[:, ~markers]) < _MARK).all():
        return None
    columns = np.split(values[:, ~markers], np.cumsum(widths)[:-1], axis=1)
    rows = n * skeleton.rows
    outputs = {}
    for name, column in zip(skeleton.tensors[1:], columns[1:]):
        dtype, width = ref.output_tensors[name]
        outputs[name] = _as_declared(column, dtype).reshape(rows, *((width,) if width else ()))
    for name, _ in skeleton.missing:
        width = ref.output_tensors[name][1]
        outputs[name] = np.full((rows, width) if width else (rows,), np.nan)
    inputs = _as_declared(columns[0], ref.input_dtype).reshape(rows, ref.width)
    part = _Part(np.empty(0, np.int64), np.empty(0, np.int64), np.full(n, skeleton.rows, dtype=np.int64), inputs,
                 outputs)
    return matched, part


def _match_skeleton(skeleton: _Skeleton, ref: Reference, vals: list[bytes], starts: np.ndarray,
                    lead: bytes = b"") -> tuple[np.ndarray, _Part | None]:
    """Which of `vals` have exactly `lead` + this skeleton at `starts`, and their numbers."""
    head = lead + skeleton.head
    matched = np.fromiter(map(bytes.startswith, vals, repeat(head), starts.tolist()), bool, len(vals))
    candidates = np.flatnonzero(matched)  # the rest of the checks only on these
    if not len(candidates):
        return matched, None
    mine = _pick(vals, candidates)
    n_mine = len(mine)
    ok = np.ones(n_mine, dtype=bool)
    pos = starts[candidates] + len(head)
    chunks = []
    for separator, commas in zip(skeleton.separators, skeleton.commas):
        ends = np.fromiter(map(bytes.find, mine, repeat(b"]"), pos.tolist()), np.int64, n_mine)
        ok &= np.fromiter(map(bytes.startswith, mine, repeat(separator), ends.tolist()), bool, n_mine)
        chunk = list(map(bytes.__getitem__, mine, map(slice, pos.tolist(), ends.tolist())))
        ok &= np.fromiter(map(bytes.count, chunk, repeat(b",")), np.int64, n_mine) == commas
        chunks.append(chunk)
        pos = ends + len(separator)
    matched[candidates[~ok]] = False
    if not ok.any():
        return matched, None
    keep = np.flatnonzero(ok)
    pick = (lambda c: c) if len(keep) == n_mine else (lambda c: _pick(c, keep))
    n = len(keep) * skeleton.rows
    inputs = _as_declared(_numbers(pick(chunks[0])), ref.input_dtype).reshape(n, ref.width)
    outputs = {}
    for name, chunk in zip(skeleton.tensors[1:], chunks[1:]):
        dtype, width = ref.output_tensors[name]
        outputs[name] = _as_declared(_numbers(pick(chunk)), dtype).reshape(n, *((width,) if width else ()))
    for name, _ in skeleton.missing:
        width = ref.output_tensors[name][1]
        outputs[name] = np.full((n, width) if width else (n,), np.nan)
    rows = np.full(len(keep), skeleton.rows, dtype=np.int64)
    return matched, _Part(np.empty(0, np.int64), np.empty(0, np.int64), rows, inputs, outputs)


def decode_partition(records: Sequence[KafkaRecord], references: ReferenceStore,
                     layouts: Layouts | None = None) -> PartitionBatch:
    """Decode one partition's records (in offset order) into one block per model version."""
    skipped: Counter = Counter()
    warnings: list[tuple[str, str]] = []
    ts_all = np.full(len(records), NO_TS, dtype=np.int64)
    versions: dict[tuple[str, str], _Version] = {}
    layouts = Layouts() if layouts is None else layouts
    values = list(map(_VALUE, records))
    rest = np.flatnonzero(~_prefix_parts(values, references, layouts, ts_all, versions))
    pending = rest[~_fast_parts(_pick(values, rest), rest, references, layouts, ts_all, versions)].tolist() \
        if len(rest) else []
    slow: dict[tuple[str, str], list[tuple[int, int, np.ndarray, dict[str, np.ndarray | None]]]] = {}
    i = 0
    while i < len(pending):
        position = pending[i]
        i += 1
        value = values[position]
        try:
            try:
                record = orjson.loads(value)  # type: ignore[arg-type]
            except (orjson.JSONDecodeError, TypeError):
                raise SkipEvent("bad_json", "not valid JSON") from None
            ref, ts_ms = _header(record, references)
            ts_all[position] = ts_ms
            rows, outputs = _slow_event(record, ref)
            start = value.find(INPUTS_KEY)
            if start > 0 and _learn(value, start, ref, layouts) and i < len(pending):
                # A new layout: the rest of the batch may take the fast path already.
                rest = np.array(pending[i:])
                done = _fast_parts([values[j] for j in rest], rest, references, layouts, ts_all, versions)
                pending[i:] = rest[~done].tolist()
            if ref.key not in versions:
                versions[ref.key] = _Version(ref)
            slow.setdefault(ref.key, []).append((position, ts_ms, rows, outputs))
        except SkipEvent as skip:
            skipped[skip.reason] += 1
            if skip.malformed:
                rec = records[position]
                warnings.append((skip.reason, f"partition {rec.partition} offset {rec.offset}: {skip.reason}: {skip}"))
    for key, events in slow.items():
        versions[key].parts.append(_slow_part(versions[key].ref, events))
    offsets = np.fromiter(map(_OFFSET, records), np.int64, len(records))
    blocks = []
    for version in versions.values():
        block = _to_block(version, offsets, skipped, warnings)
        if block is not None:
            blocks.append(block)
    return PartitionBatch(blocks, ts_all, skipped, warnings)


def _slow_part(ref: Reference, events: list[tuple[int, int, np.ndarray, dict[str, np.ndarray | None]]]) -> _Part:
    rows = np.array([len(e[2]) for e in events], dtype=np.int64)
    outputs = {}
    for name, (dtype, width) in ref.output_tensors.items():
        blocks = []
        for _, _, x, outs in events:
            array = outs.get(name)
            if array is None:
                shape = (len(x), width) if width else (len(x),)
                array = np.full(shape, None, dtype=object) if dtype.kind in "US" else np.full(shape, np.nan)
            blocks.append(array)
        outputs[name] = np.concatenate(blocks)
    return _Part(np.array([e[0] for e in events], dtype=np.int64), np.array([e[1] for e in events], dtype=np.int64),
                 rows, np.concatenate([e[2] for e in events]), outputs)


def _numbers(chunks: list[bytes]) -> np.ndarray:
    """The numbers of many events' data slices, parsed by one orjson call. null becomes NaN
    (missing); anything that is not a number becomes infinity, which voids its event."""
    try:
        values = orjson.loads(b"[" + b",".join(chunks) + b"]")
    except orjson.JSONDecodeError:
        values = []
        for chunk in chunks:
            try:
                values.extend(orjson.loads(b"[" + chunk + b"]"))
            except orjson.JSONDecodeError:
                values.extend([np.inf] * (chunk.count(b",") + 1))
    try:
        return np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        return np.array([np.nan if v is None else v if isinstance(v, (int, float)) else np.inf for v in values],
                        dtype=np.float64)


def _to_block(version: _Version, offsets: np.ndarray, skipped: Counter, warnings: list[tuple[str, str]]
              ) -> Block | None:
    """The version's parts merged in offset order; events with a non-finite value dropped."""
    ref, parts = version.ref, version.parts
    positions = np.concatenate([p.positions for p in parts])
    ts_ms = np.concatenate([p.ts_ms for p in parts])
    rows = np.concatenate([p.rows for p in parts])
    inputs = np.concatenate([p.inputs for p in parts])
    outputs = {name: np.concatenate([p.outputs[name] for p in parts]) for name in ref.output_tensors}
    if len(parts) > 1:  # interleaved layouts: restore the order of the partition
        order = np.argsort(positions, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        row_order = np.argsort(rank[np.repeat(np.arange(len(rows)), rows)], kind="stable")
        positions, ts_ms, rows = positions[order], ts_ms[order], rows[order]
        inputs = inputs[row_order]
        outputs = {k: v[row_order] for k, v in outputs.items()}
    starts = np.cumsum(rows) - rows
    # One vectorised check for the whole batch: a non-finite value voids its event.
    bad_rows = ~np.isfinite(inputs).all(axis=1)
    for column in outputs.values():
        if column.dtype != object:
            values = column if column.ndim == 1 else column.sum(axis=1)
            bad_rows |= np.isinf(values)  # missing outputs are NaN, not infinite
            if column.ndim == 2:
                bad_rows |= np.isnan(column).any(axis=1) & ~np.isnan(column).all(axis=1)
    if bad_rows.any():
        bad_events = np.add.reduceat(bad_rows, starts) > 0
        for index in np.flatnonzero(bad_events):
            skipped["non_finite"] += 1
            warnings.append(("non_finite", f"offset {offsets[positions[index]]}: non_finite: NaN, infinity or null"))
        keep_rows = np.repeat(~bad_events, rows)
        inputs, outputs = inputs[keep_rows], {k: v[keep_rows] for k, v in outputs.items()}
        positions, ts_ms, rows = positions[~bad_events], ts_ms[~bad_events], rows[~bad_events]
        if len(positions) == 0:
            return None
    return Block(
        key=ref.key, reference=ref, inputs=inputs,
        outputs={col.key: ref.column_values(col, outputs[col.tensor]) for col in ref.outputs},
        offsets=offsets[positions], ts_ms=ts_ms, rows_per_event=rows, positions=positions,
    )
