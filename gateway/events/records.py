"""The scoring event record (schema version 1, documented in docs/events.md) and its Kafka
form (`wire_of`): JSON value, request-id key, CloudEvents binary-mode headers.

Three processes write a record's value, each its own part, so that none of them parses or
re-writes another's: the worker that scored the request writes its inputs and outputs as V2
tensors (scorers.protocol.scoring_log: `{"inputs":[...],"outputs":[...]}`); the gateway's
loop writes the event's fields (`FIELDS`, a JSON object, gateway.events.handover); the event
shipper reads the fields, adds the schema version, an event id and the ISO timestamp, and
joins the three (`wire_of`). Tests and benchmarks build records from arrays (`scoring_event`).
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


# What the gateway's loop writes of each record, in this order (the loop writes them as a dict
# literal, gateway.service; the JSON Schema says what each means): `ts_ms` is when the model
# answered, `action` what the caller was served ({"model_version", "outputs"}, or null). The
# record has them in this order too, with `inputs` and `outputs` inserted before `action`. The
# ones the shipper reads for the key and headers come first, up to `role` (`wire_of`).
FIELDS = ("ts_ms", "request_id", "gateway_instance", "model_name", "model_version", "role", "route", "arm", "reason",
          "served", "status", "error", "action", "latency_ms", "sample_rate")
_FIELD_SET = frozenset(FIELDS)


def event_fields(**values: Any) -> dict[str, Any]:
    """An event's `FIELDS` in their order, from code off the request path (benchmarks, tools),
    so that it takes the shipper's fast path as the loop's events do; the loop writes them as a
    dict literal (gateway.service), whose order a test pins. Raises TypeError for a missing or
    unknown name."""
    if values.keys() != _FIELD_SET:
        missing, unknown = sorted(_FIELD_SET - values.keys()), sorted(values.keys() - _FIELD_SET)
        raise TypeError(f"event fields: missing {missing}, unknown {unknown}")
    return {name: values[name] for name in FIELDS}


def by_kind(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Arrays named `inputs/<name>`, `outputs/<name>`, split by kind."""
    split: dict[str, dict[str, np.ndarray]] = {"inputs": {}, "outputs": {}}
    for key, array in arrays.items():
        kind, _, name = key.partition("/")
        split[kind][name] = array
    return split


def fields_json(fields: dict[str, Any]) -> bytes:
    """The loop's part of a record: its `FIELDS` as a JSON object (the action's arrays as
    nested lists). Raises TypeError for a value JSON cannot hold."""
    return orjson.dumps(fields, option=orjson.OPT_SERIALIZE_NUMPY, default=contiguous)


def scoring_event(fields: dict[str, Any], arrays: dict[str, np.ndarray], topic: str = "scoring.events") -> WireRecord:
    """The Kafka record of `fields` (`FIELDS`) and the model's arrays, named as `by_kind` takes
    them: for code that holds them (tests, benchmarks); the gateway's parts go the same way."""
    split = by_kind(arrays)
    return wire_of(fields_json(fields), scoring_log(split["inputs"], split["outputs"]), topic)


_VALUE_START = b'{"schema_version":%d,"event_id":"' % SCHEMA_VERSION
_ACTION = b',"action":'
_HEAD_END = "role"  # the first field after those the key and headers need (FIELDS)
_HEAD = frozenset(FIELDS[:FIELDS.index(_HEAD_END)])
_AFTER_HEAD = b',"%s":' % _HEAD_END.encode()


def wire_of(written_fields: bytes, log: bytes, topic: str) -> WireRecord:
    """The Kafka record of one event: the loop's `written_fields` (`fields_json`) and the worker's
    scoring `log` joined into the value, unread but for the fields before `role`, which the key
    and headers need (the rest, the action's arrays above all, cost more to parse than these).
    The log goes before `action`, where the drift consumer's fast path expects the tensors. A
    JSON string cannot hold `,"role":` or `,"action":` unescaped, so the first of each is the key."""
    fields = orjson.loads(written_fields[:written_fields.index(_AFTER_HEAD)] + b"}")
    if not _HEAD <= fields.keys():  # written in another order than FIELDS: slower, still right
        fields = orjson.loads(written_fields)
    cut = written_fields.index(_ACTION)
    event_id = new_id().encode()
    timestamp = _iso_utc(fields["ts_ms"])
    value = b"".join((_VALUE_START, event_id, b'","timestamp":"', timestamp, b'",', written_fields[1:cut], b",",
                      log[1:-1], written_fields[cut:]))
    return WireRecord(topic, fields["request_id"].encode(), value, _headers(event_id, timestamp, fields))


# CloudEvents headers that are the same for every record, or for every record of one
# (instance, model, version): built once, shared by reference (aiokafka only reads them).
_SPEC = ("ce_specversion", b"1.0")
_TYPE = ("ce_type", CE_TYPE.encode())
_CONTENT_TYPE = ("content-type", b"application/json")
_SCHEMA = ("schema_version", str(SCHEMA_VERSION).encode())
_SOURCE_HEADERS: dict[tuple[str, str, str], tuple[tuple[str, bytes], ...]] = {}


def _headers(event_id: bytes, timestamp: bytes, fields: dict[str, Any]) -> list[tuple[str, bytes]]:
    triple = (fields["gateway_instance"], fields["model_name"], fields["model_version"])
    source = _SOURCE_HEADERS.get(triple)
    if source is None:
        if len(_SOURCE_HEADERS) > 10_000:
            _SOURCE_HEADERS.clear()
        instance, model, version = (part.encode() for part in triple)
        source = _SOURCE_HEADERS[triple] = (
            ("ce_source", b"/gateway/" + instance), ("model", model), ("model_version", version))
    return [_SPEC, ("ce_id", event_id), _TYPE, source[0], ("ce_time", timestamp), _CONTENT_TYPE, source[1], source[2],
            _SCHEMA]
