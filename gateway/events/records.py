"""The scoring event record (schema version 1, documented in docs/events.md).

Records are built as plain dicts holding numpy arrays and serialised by orjson, off the
response path, in the event shipper process. The shipper builds them straight from the frames
the gateway sends (`scoring_event_from_frame`): every line of Python per event is paid twice per
shadowed request, on the same cores that answer requests.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import os
from datetime import datetime, timezone
from typing import Any

import numpy as np
import orjson

from gateway.codecs.datatypes import v2_datatype
from gateway.codecs.v2 import tensor
from gateway.events.spool import WireRecord

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


_SECOND: list = [None, ""]  # the last whole second formatted, reused by the events within it


def _iso_utc(ts: float) -> str:
    second = int(ts)
    if _SECOND[0] != second:
        _SECOND[0] = second
        _SECOND[1] = datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{_SECOND[1]}.{int((ts - second) * 1000):03d}Z"


_KINDS: dict[str, tuple[str, str]] = {}  # "inputs/x" -> ("inputs", "x"): split once per array name


def _kind(key: str) -> tuple[str, str]:
    split = _KINDS.get(key)
    if split is None:
        kind, _, name = key.partition("/")
        split = _KINDS[key] = (kind, name)
    return split


def scoring_event(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The record from `meta` (scalars, `ts` in Unix seconds, `action_version`) and arrays named
    `inputs/<name>`, `outputs/<name>`, `action/<name>`: what the gateway hands the shipper.

    The shipper itself uses `scoring_event_from_frame`, which skips decoding the frame into
    arrays; this is for code that holds arrays (tests, benchmarks). The two must give the same
    record: tests/test_event_encoding.py pins them equal."""
    inputs, outputs, action = [], [], {}
    for key, array in arrays.items():
        kind, name = _kind(key)
        if kind == "inputs":
            inputs.append(tensor(name, array))
        elif kind == "outputs":
            outputs.append(tensor(name, array))
        else:
            action[name] = array
    return _record(meta, inputs, outputs, action)


_DTYPES: dict[str, tuple[np.dtype, str]] = {}  # numpy dtype string -> (dtype, V2 datatype)


def scoring_event_from_frame(meta: dict[str, Any], body: bytes | memoryview) -> dict[str, Any]:
    """The same record as `scoring_event(meta, decode_arrays(meta, body))`, read straight from a
    scorers.protocol frame: tensors get flat views of the body (their `data` is flat anyway)."""
    inputs, outputs, action = [], [], {}
    offset = 0
    for key, dtype_str, shape in meta["arrays"]:
        dtype, datatype = _DTYPES.get(dtype_str) or _DTYPES.setdefault(
            dtype_str, (np.dtype(dtype_str), v2_datatype(np.dtype(dtype_str))))
        count = math.prod(shape)
        flat = np.frombuffer(body, dtype, count, offset)
        offset += count * dtype.itemsize
        kind, name = _kind(key)
        if kind == "action":
            action[name] = flat.reshape(shape)
        else:
            (inputs if kind == "inputs" else outputs).append(
                {"name": name, "datatype": datatype, "shape": shape, "data": flat})
    return _record(meta, inputs, outputs, action)


def _record(meta: dict[str, Any], inputs: list, outputs: list, action: dict[str, np.ndarray]) -> dict[str, Any]:
    ts = meta["ts"]
    action_version = meta.get("action_version")
    return {
        "schema_version": SCHEMA_VERSION,
        "event_id": new_id(),
        "timestamp": _iso_utc(ts),
        "ts_ms": int(ts * 1000),
        "request_id": meta["request_id"],
        "model_name": meta["model_name"],
        "model_version": meta["model_version"],
        "role": meta["role"],
        "route": meta["route"],
        "arm": meta.get("arm"),
        "reason": meta.get("reason"),
        "served": meta["served"],
        "status": meta["status"],
        "error": meta.get("error"),
        "inputs": inputs,
        "outputs": outputs,
        "action": None if action_version is None else {"model_version": action_version, "outputs": action},
        "latency_ms": round(meta["latency_ms"], 3),
        "gateway_instance": meta["instance"],
        "sample_rate": meta.get("sample_rate", 1.0),
    }


# CloudEvents headers that are the same for every record, or for every record of one
# (instance, model, version): built once, shared by reference (aiokafka only reads them).
_SPEC = ("ce_specversion", b"1.0")
_TYPE = ("ce_type", CE_TYPE.encode())
_CONTENT_TYPE = ("content-type", b"application/json")
_SCHEMA = ("schema_version", str(SCHEMA_VERSION).encode())
_PER_SOURCE: dict[tuple[str, str, str], tuple[tuple[str, bytes], ...]] = {}


def _source_headers(instance: str, model: str, version: str) -> tuple[tuple[str, bytes], ...]:
    headers = _PER_SOURCE.get((instance, model, version))
    if headers is None:
        if len(_PER_SOURCE) > 10_000:
            _PER_SOURCE.clear()
        headers = _PER_SOURCE[(instance, model, version)] = (
            ("ce_source", f"/gateway/{instance}".encode()), ("model", model.encode()),
            ("model_version", version.encode()))
    return headers


def to_wire(record: dict[str, Any], topic: str) -> WireRecord:
    """The Kafka record: JSON value, request-id key, CloudEvents binary-mode headers."""
    source, model, version = _source_headers(record["gateway_instance"], record["model_name"],
                                             record["model_version"])
    headers = [
        _SPEC, ("ce_id", record["event_id"].encode()), _TYPE, source,
        ("ce_time", record["timestamp"].encode()), _CONTENT_TYPE, model, version, _SCHEMA,
    ]
    value = orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)
    return WireRecord(topic, record["request_id"].encode(), value, headers)
