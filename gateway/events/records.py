"""The scoring event record (schema version 1, documented in docs/events.md).

Records are built as plain dicts holding numpy arrays and serialised later, off the response
path, by the event logger.
"""
from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from typing import Any

import numpy as np
import orjson

from gateway.codecs.v2 import tensor

SCHEMA_VERSION = 1


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


def serialize(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)
