"""The scoring event record (schema version 1, documented in docs/events.md).

Records are built as plain dicts holding numpy arrays and serialised later, off the response
path, by the event logger.
"""
from __future__ import annotations

import hashlib
import itertools
import os
from datetime import datetime, timezone
from typing import Any

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


def scoring_event(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The record, from what the gateway handed over: `meta` (scalars, `ts` in Unix seconds,
    `action_version`) and arrays named `inputs/<name>`, `outputs/<name>`, `action/<name>`."""
    ts = meta["ts"]
    inputs, outputs, action = [], [], {}
    for key, array in arrays.items():
        kind, _, name = key.partition("/")
        if kind == "inputs":
            inputs.append(tensor(name, array))
        elif kind == "outputs":
            outputs.append(tensor(name, array))
        else:
            action[name] = array
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


def to_wire(record: dict[str, Any], topic: str) -> WireRecord:
    """The Kafka record: JSON value, request-id key, CloudEvents binary-mode headers."""
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", record["event_id"].encode()),
        ("ce_type", CE_TYPE.encode()),
        ("ce_source", f"/gateway/{record['gateway_instance']}".encode()),
        ("ce_time", record["timestamp"].encode()),
        ("content-type", b"application/json"),
        ("model", record["model_name"].encode()),
        ("model_version", record["model_version"].encode()),
        ("schema_version", str(record["schema_version"]).encode()),
    ]
    value = orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)
    return WireRecord(topic, record["request_id"].encode(), value, headers)
