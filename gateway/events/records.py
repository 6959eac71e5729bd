"""The scoring event record (schema version 1, documented in docs/events.md).

Records are built as plain dicts holding numpy arrays and serialised later, off the response
path, by the event logger.
"""
from __future__ import annotations

import hashlib
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import numpy as np
import orjson

from gateway.codecs.v2 import tensor
from gateway.events.spool import WireRecord

SCHEMA_VERSION = 1
CE_TYPE = "dev.scoring-gateway.scoring.v1"


def sampled(request_id: str, rate: float) -> bool:
    """Whether a request is logged: a hash of its id, so champion and shadows agree, everywhere."""
    if rate >= 1.0:
        return True
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < rate * 2**64


def _tensors(arrays: dict[str, np.ndarray] | None) -> list[dict[str, Any]]:
    return [tensor(n, a) for n, a in (arrays or {}).items()]


def scoring_event(
    *,
    request_id: str,
    model_name: str,
    model_version: str,
    role: str,
    route: str,
    served: bool,
    status: str,
    inputs: dict[str, np.ndarray],
    outputs: dict[str, np.ndarray] | None,
    action: dict[str, Any] | None,
    latency_ms: float,
    instance: str,
    error: str | None = None,
    sample_rate: float = 1.0,
) -> dict[str, Any]:
    now = time.time()
    return {
        "schema_version": SCHEMA_VERSION,
        "event_id": uuid.uuid4().hex,
        "timestamp": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "ts_ms": int(now * 1000),
        "request_id": request_id,
        "model_name": model_name,
        "model_version": model_version,
        "role": role,
        "route": route,
        "served": served,
        "status": status,
        "error": error,
        "inputs": _tensors(inputs),
        "outputs": _tensors(outputs),
        "action": action,
        "latency_ms": round(latency_ms, 3),
        "gateway_instance": instance,
        "sample_rate": sample_rate,
    }


def to_wire(record: dict[str, Any], topic: str) -> WireRecord:
    """The Kafka record: JSON value, request-id key, CloudEvents binary-mode headers."""
    headers = (
        ("ce_specversion", b"1.0"),
        ("ce_id", record["event_id"].encode()),
        ("ce_type", CE_TYPE.encode()),
        ("ce_source", f"/gateway/{record['gateway_instance']}".encode()),
        ("ce_time", record["timestamp"].encode()),
        ("content-type", b"application/json"),
        ("model", record["model_name"].encode()),
        ("model_version", record["model_version"].encode()),
        ("schema_version", str(record["schema_version"]).encode()),
    )
    value = orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)
    return WireRecord(topic, record["request_id"].encode(), value, headers)
