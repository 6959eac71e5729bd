"""The scoring event record (schema version 1, documented in docs/events.md) and its two
wire forms: the Kafka record (`to_wire`) and the frame the gateway hands the event shipper
(`to_frame`, read back by `wires_from_frames`).

The gateway builds each record as a plain dict holding numpy arrays and serialises it with one
orjson call, at its next 2 ms flush to the shipper (`event_from`, `to_frame`): a record built
straight from the request's arrays costs the gateway no more than framing those arrays did,
while rebuilding it from raw arrays in the shipper cost the shipper half its CPU. The shipper
only cuts frames into Kafka records."""
from __future__ import annotations

import hashlib
import itertools
import os
import struct
from datetime import datetime, timezone
from typing import Any, Mapping

import numpy as np
import orjson

from gateway.codecs.v2 import InferRequest, tensor
from gateway.events.spool import WireRecord
from scorers.protocol import MAX_FRAME

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


def logged_inputs(arrays: Mapping[str, np.ndarray]) -> orjson.Fragment:
    """A request's inputs serialised once, for the records of its champion and of every shadow."""
    return orjson.Fragment(orjson.dumps(tensors(arrays), option=orjson.OPT_SERIALIZE_NUMPY))


def scoring_event(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """`event_record` from arrays named `inputs/<name>`, `outputs/<name>`, `action/<name>`: for
    code that holds a model's arrays (tests, benchmarks); the gateway calls `event_from`."""
    by_kind: dict[str, dict[str, np.ndarray]] = {"inputs": {}, "outputs": {}, "action": {}}
    for key, array in arrays.items():
        kind, _, name = key.partition("/")
        by_kind[kind][name] = array
    return event_record(meta, tensors(by_kind["inputs"]), tensors(by_kind["outputs"]), by_kind["action"])


def event_from(meta: dict[str, Any], request: InferRequest, outputs: Mapping[str, np.ndarray],
               action: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The record of one model's answer to `request`: its inputs are serialised once per request
    (kept on the request), shared by the champion's record and every shadow's."""
    if request.logged_inputs is None:
        request.logged_inputs = logged_inputs(request.inputs)
    return event_record(meta, request.logged_inputs, tensors(outputs), action)


def event_record(meta: dict[str, Any], inputs: list | orjson.Fragment, outputs: list,
                 action: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The record from `meta` (scalars, `ts` in Unix seconds, `action_version`), the inputs and
    outputs as V2 tensors (`tensors`, or `logged_inputs`) and the served action's arrays."""
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
_SOURCE_LENGTHS = struct.Struct("<3I")
_SOURCE_BLOBS: dict[tuple[str, str, str], bytes] = {}
_SOURCE_HEADERS: dict[bytes, tuple[tuple[str, bytes], ...]] = {}


def _source_blob(instance: str, model: str, version: str) -> bytes:
    """(instance, model, version) as the frame carries them, built once per triple."""
    blob = _SOURCE_BLOBS.get((instance, model, version))
    if blob is None:
        if len(_SOURCE_BLOBS) > 10_000:
            _SOURCE_BLOBS.clear()
        parts = (instance.encode(), model.encode(), version.encode())
        blob = _SOURCE_BLOBS[(instance, model, version)] = _SOURCE_LENGTHS.pack(*map(len, parts)) + b"".join(parts)
    return blob


def _headers(event_id: bytes, timestamp: bytes, source_blob: bytes) -> list[tuple[str, bytes]]:
    source = _SOURCE_HEADERS.get(source_blob)
    if source is None:
        if len(_SOURCE_HEADERS) > 10_000:
            _SOURCE_HEADERS.clear()
        instance_len, model_len, _ = _SOURCE_LENGTHS.unpack_from(source_blob)
        model_at = _SOURCE_LENGTHS.size + instance_len
        instance = source_blob[_SOURCE_LENGTHS.size : model_at]
        model, version = source_blob[model_at : model_at + model_len], source_blob[model_at + model_len :]
        source = _SOURCE_HEADERS[source_blob] = (
            ("ce_source", b"/gateway/" + instance), ("model", model), ("model_version", version))
    return [_SPEC, ("ce_id", event_id), _TYPE, source[0], ("ce_time", timestamp), _CONTENT_TYPE,
            source[1], source[2], _SCHEMA]


def _value(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)


def to_wire(record: dict[str, Any], topic: str) -> WireRecord:
    """The Kafka record: JSON value, request-id key, CloudEvents binary-mode headers."""
    headers = _headers(record["event_id"].encode(), record["timestamp"].encode(),
                       _source_blob(record["gateway_instance"], record["model_name"], record["model_version"]))
    return WireRecord(topic, record["request_id"].encode(), _value(record), headers)


# The gateway -> shipper frame: the lengths of (value, key, event id, time, source), then those
# bytes back to back, the source being (instance, model, version) as `_source_blob` packs them:
# what `to_wire` needs, without parsing the value.
_FRAME = struct.Struct("<5I")


def to_frame(record: dict[str, Any]) -> bytes:
    parts = (_value(record), record["request_id"].encode(), record["event_id"].encode(), record["timestamp"].encode(),
             _source_blob(record["gateway_instance"], record["model_name"], record["model_version"]))
    return _FRAME.pack(*map(len, parts)) + b"".join(parts)


def wires_from_frames(data: bytes, topic: str) -> tuple[list[WireRecord], int]:
    """The Kafka records of the complete frames at the front of `data` (equal to `to_wire` of
    each frame's record), and how many bytes those frames used."""
    wires: list[WireRecord] = []
    pos, size, head = 0, len(data), _FRAME.size
    while size - pos >= head:
        lengths = _FRAME.unpack_from(data, pos)
        end = pos + head + sum(lengths)
        if end - pos > MAX_FRAME:
            raise ValueError(f"event frame of {end - pos} bytes exceeds the {MAX_FRAME} limit: the stream is corrupt")
        if end > size:
            break
        value_len, key_len, id_len, time_len, _ = lengths
        at = pos + head + value_len
        value = data[pos + head : at]
        key = data[at : at + key_len]
        at += key_len
        event_id = data[at : at + id_len]
        at += id_len
        timestamp = data[at : at + time_len]
        wires.append(WireRecord(topic, key, value, _headers(event_id, timestamp, data[at + time_len : end])))
        pos = end
    return wires, pos
