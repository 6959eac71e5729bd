"""How scoring events cross from the gateway to the event shipper: the gateway's request loop
hands over what each record needs, the shipper, on the other core, builds the records.

The request loop is the process that saturates first, so it does as little per event as it can.
The worker that scores a request the gateway will log also writes its scoring log (inputs and
outputs as nested lists with their layouts: scorers.protocol.scoring_log) on its own core, and
sends it back with the answer. The loop serialises the event's scalars and the served action
around that log, embedded as it is (`serialised`), and every 2 ms writes the events since the
last flush to the shipper's socket in one frame (`frame`). The shipper builds each Kafka record
from them (`wires_from_batches`): byte for byte the record of the gateway's own arrays, as
orjson writes a number read from its own output back as the same text (pinned by a test).

A frame on the socket is a little-endian u32 length, then the JSON list of events."""
from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import orjson

from gateway.codecs.datatypes import v2_datatype_of
from gateway.codecs.v2 import tensor_of
from gateway.events.records import event_record, to_wire
from gateway.events.spool import WireRecord
from scorers.protocol import MAX_FRAME, contiguous, scoring_log

log = logging.getLogger("gateway.events")

if TYPE_CHECKING:
    from gateway.codecs.v2 import InferRequest
    from gateway.parallel.pool import Prediction

LENGTH = struct.Struct("<I")


def serialised(meta: dict[str, Any], request: InferRequest, prediction: Prediction | None,
               action: Mapping[str, np.ndarray]) -> bytes:
    """One model's answer to `request` as the shipper reads it. The inputs and outputs come as
    the worker wrote them (`Prediction.log`), embedded, not re-encoded; the loop writes them
    itself only when the worker did not (a failed answer, or one it could not serialise).
    Raises TypeError if the event cannot be serialised."""
    log = prediction.log if prediction is not None else None
    if log is None:
        log = scoring_log(request.inputs, prediction.outputs if prediction is not None else {})
    return orjson.dumps((meta, orjson.Fragment(log), action), option=orjson.OPT_SERIALIZE_NUMPY,
                        default=contiguous)


def frame(events: list[bytes]) -> bytes:
    """One frame of `serialised` events: the length, then the JSON list of them."""
    body = b"[" + b",".join(events) + b"]"
    return LENGTH.pack(len(body)) + body


def _flat(values: Any, ndim: int) -> list:
    """An array written as nested lists, as its flat data list (row-major, like ndarray.ravel)."""
    if ndim == 1:
        return values
    if ndim == 0:
        return [values]
    for _ in range(ndim - 1):
        values = [v for inner in values for v in inner]
    return values


def _tensors(arrays_layout: list, arrays: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's V2 tensors from arrays read back with their layout."""
    return [tensor_of(name, v2_datatype_of(dtype_str), shape, _flat(arrays[name], len(shape)))
            for name, dtype_str, shape in arrays_layout]


def record_of(event: list) -> dict[str, Any]:
    """The scoring event record of one event read back from a batch: the scalars
    (event_record's meta), the request's scoring log (input layout, inputs, output layout,
    outputs) and the action."""
    meta, (input_layout, inputs, output_layout, outputs), action = event
    return event_record(meta, _tensors(input_layout, inputs), _tensors(output_layout, outputs), action)


def wires_from_batches(data: bytes, topic: str) -> tuple[list[WireRecord], int, int]:
    """The Kafka records of the complete frames at the front of `data`, how many bytes those
    frames used, and how many events in them could not be made into records (logged)."""
    wires: list[WireRecord] = []
    pos, size, broken = 0, len(data), 0
    while size - pos >= LENGTH.size:
        (length,) = LENGTH.unpack_from(data, pos)
        if length > MAX_FRAME:
            raise ValueError(f"event batch of {length} bytes exceeds the {MAX_FRAME} limit: the stream is corrupt")
        end = pos + LENGTH.size + length
        if end > size:
            break
        for one in orjson.loads(memoryview(data)[pos + LENGTH.size : end]):
            try:
                wires.append(to_wire(record_of(one), topic))
            except Exception:  # a gateway bug, not a reason to lose the rest of the batch
                broken += 1
                log.exception("scoring event could not be made into a record; dropped")
        pos = end
    return wires, pos, broken
