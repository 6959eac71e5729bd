"""The scoring event record (schema version 1, documented in docs/events.md) and its Kafka
form (`wire_of`): JSON value, request-id key, CloudEvents binary-mode headers.

Three processes write a record's value, each its own part, so that none of them re-writes
another's: the worker that scored the request writes its inputs and outputs as V2 tensors
(scorers.protocol.scoring_log: `{"inputs":[...],"outputs":[...]}`); the gateway's loop hands
over the event's fields as a tuple (`FIELDS`' values, in order), the events of each 2 ms flush
serialised together in one orjson call (`rows_json`, gateway.events.handover); the event
shipper writes each event's fields as JSON objects, adds the schema version, an event id and
the ISO timestamp, and joins them with the scoring log (`wire_of`). Tests and benchmarks build
records from arrays (`scoring_event`).
"""
from __future__ import annotations

import hashlib
import itertools
import os
from datetime import datetime, timezone
from typing import Any

import numpy as np
import orjson

from gateway.codecs.json_tensors import contiguous
from gateway.events.spool import WireRecord
from scorers.protocol import scoring_log

SCHEMA_VERSION = 1
CE_TYPE = "dev.scoring-gateway.scoring.v1"


_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


def new_id() -> str:
    """A 32-hex-digit id unique across processes: random per process, then a counter
    (a uuid4 per event costs a getrandom syscall on the request path)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def sampled(request_id: str, rate: float) -> bool:
    """Whether a request is logged: a hash of its id, so champion and shadows agree, everywhere."""
    if rate >= 1.0:
        return True
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < rate * 2**64


_SECOND: list = [None, b""]  # the last whole second formatted, reused by the events within it


def _iso_utc(ts_ms: int) -> bytes:
    second, ms = divmod(ts_ms, 1000)
    if _SECOND[0] != second:
        _SECOND[0] = second
        _SECOND[1] = datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.").encode()
    return b"%s%03dZ" % (_SECOND[1], ms)


# What the gateway's loop hands over of each record, a tuple in this order (gateway.service; the
# JSON Schema says what each means): `ts_ms` is when the model answered, `action` what the
# caller was served ({"model_version", "outputs"}, or null). The record has them in this order
# too, with `inputs` and `outputs` inserted before `action`, where the drift consumer's fast
# path expects the tensors.
FIELDS = ("ts_ms", "request_id", "gateway_instance", "model_name", "model_version", "role", "route", "arm", "reason",
          "served", "status", "error", "action", "latency_ms", "sample_rate")
_FIELD_SET = frozenset(FIELDS)
_ACTION_AT = FIELDS.index("action")
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_BEFORE_ACTION, _FROM_ACTION = FIELDS[:_ACTION_AT], FIELDS[_ACTION_AT:]


def event_row(**values: Any) -> tuple:
    """An event's `FIELDS` values in their order, by name: for code off the request path
    (benchmarks, tools, tests); the loop writes the tuple itself (gateway.service), whose order a
    test pins. Raises TypeError for a missing or unknown name."""
    if values.keys() != _FIELD_SET:
        missing, unknown = sorted(_FIELD_SET - values.keys()), sorted(values.keys() - _FIELD_SET)
        raise TypeError(f"event fields: missing {missing}, unknown {unknown}")
    return tuple(values[name] for name in FIELDS)


def by_kind(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Arrays named `inputs/<name>`, `outputs/<name>`, split by kind."""
    split: dict[str, dict[str, np.ndarray]] = {"inputs": {}, "outputs": {}}
    for key, array in arrays.items():
        kind, _, name = key.partition("/")
        split[kind][name] = array
    return split


def rows_json(rows: list[tuple]) -> bytes:
    """The loop's part of a hand-over: its events' rows (`FIELDS` values) as one JSON array of
    arrays, the action's arrays as nested lists; one orjson call for them all, not one per event.
    Raises TypeError if any value cannot be JSON."""
    return orjson.dumps(rows, option=_NUMPY, default=contiguous)


def scoring_event(fields: dict[str, Any], arrays: dict[str, np.ndarray], topic: str = "scoring.events") -> WireRecord:
    """The Kafka record of `fields` (`FIELDS` by name) and the model's arrays, named as `by_kind`
    takes them: for code that holds them (tests, benchmarks); the gateway's parts go the same way."""
    split = by_kind(arrays)
    return wire_of(event_row(**fields), scoring_log(split["inputs"], split["outputs"]), topic)


_VALUE_START = b'{"schema_version":%d,"event_id":"' % SCHEMA_VERSION


def wire_of(row: list | tuple, log: bytes, topic: str) -> WireRecord:
    """The Kafka record of one event: its `row` (`FIELDS` values, as the shipper reads them back
    from `rows_json`) written as the record's fields, and the worker's scoring `log` inserted
    unread before `action`. Raises ValueError for a row of another length."""
    if len(row) != len(FIELDS):
        raise ValueError(f"an event row has {len(row)} values, not the {len(FIELDS)} of records.FIELDS")
    before = orjson.dumps(dict(zip(_BEFORE_ACTION, row)), option=_NUMPY, default=contiguous)
    after = orjson.dumps(dict(zip(_FROM_ACTION, row[_ACTION_AT:])), option=_NUMPY, default=contiguous)
    event_id = new_id().encode()
    timestamp = _iso_utc(row[0])
    value = b"".join((_VALUE_START, event_id, b'","timestamp":"', timestamp, b'",', before[1:-1], b",",
                      log[1:-1], b",", after[1:]))
    return WireRecord(topic, row[1].encode(), value, _headers(event_id, timestamp, row[2], row[3], row[4]))


# CloudEvents headers that are the same for every record, or for every record of one
# (instance, model, version): built once, shared by reference (aiokafka only reads them).
_SPEC = ("ce_specversion", b"1.0")
_TYPE = ("ce_type", CE_TYPE.encode())
_CONTENT_TYPE = ("content-type", b"application/json")
_SCHEMA = ("schema_version", str(SCHEMA_VERSION).encode())
_SOURCE_HEADERS: dict[tuple[str, str, str], tuple[tuple[str, bytes], ...]] = {}


def _headers(event_id: bytes, timestamp: bytes, instance: str, model: str, version: str) -> list[tuple[str, bytes]]:
    triple = (instance, model, version)
    source = _SOURCE_HEADERS.get(triple)
    if source is None:
        if len(_SOURCE_HEADERS) > 10_000:
            _SOURCE_HEADERS.clear()
        instance, model, version = (part.encode() for part in triple)
        source = _SOURCE_HEADERS[triple] = (
            ("ce_source", b"/gateway/" + instance), ("model", model), ("model_version", version))
    return [_SPEC, ("ce_id", event_id), _TYPE, source[0], ("ce_time", timestamp), _CONTENT_TYPE, source[1], source[2],
            _SCHEMA]
