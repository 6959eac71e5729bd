"""The scoring event record (schema version 1, documented in docs/events.md) and its Kafka
form (`to_wire`): JSON value, request-id key, CloudEvents binary-mode headers. The event
shipper builds them (from what the gateway hands it, gateway.events.handover); tests and
benchmarks build them from arrays (`scoring_event`)."""
from __future__ import annotations

import hashlib
import itertools
import os
from datetime import datetime, timezone
from typing import Any, Mapping

import numpy as np
import orjson

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


def tensors(arrays: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    return [tensor(name, array) for name, array in arrays.items()]


def by_kind(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Arrays named `inputs/<name>`, `outputs/<name>`, `action/<name>`, split by kind."""
    split: dict[str, dict[str, np.ndarray]] = {"inputs": {}, "outputs": {}, "action": {}}
    for key, array in arrays.items():
        kind, _, name = key.partition("/")
        split[kind][name] = array
    return split


def scoring_event(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """`event_record` from arrays named as `by_kind` takes them: for code that holds a model's
    arrays (tests, benchmarks)."""
    split = by_kind(arrays)
    return event_record(meta, tensors(split["inputs"]), tensors(split["outputs"]), split["action"])


def event_record(meta: dict[str, Any], inputs: list, outputs: list, action: Mapping[str, Any]) -> dict[str, Any]:
    """The record from `meta` (scalars, `ts` in Unix seconds, `action_version`), the inputs and
    outputs as V2 tensors (`tensors`) and the served action's arrays (or nested lists)."""
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
_SOURCE_HEADERS: dict[tuple[str, str, str], tuple[tuple[str, bytes], ...]] = {}


def _headers(record: dict[str, Any]) -> list[tuple[str, bytes]]:
    triple = (record["gateway_instance"], record["model_name"], record["model_version"])
    source = _SOURCE_HEADERS.get(triple)
    if source is None:
        if len(_SOURCE_HEADERS) > 10_000:
            _SOURCE_HEADERS.clear()
        instance, model, version = (part.encode() for part in triple)
        source = _SOURCE_HEADERS[triple] = (
            ("ce_source", b"/gateway/" + instance), ("model", model), ("model_version", version))
    return [_SPEC, ("ce_id", record["event_id"].encode()), _TYPE, source[0], ("ce_time", record["timestamp"].encode()),
            _CONTENT_TYPE, source[1], source[2], _SCHEMA]


def to_wire(record: dict[str, Any], topic: str) -> WireRecord:
    """The Kafka record: JSON value, request-id key, CloudEvents binary-mode headers."""
    return WireRecord(topic, record["request_id"].encode(), orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY),
                      _headers(record))
