"""How scoring events cross from the gateway to the event shipper: the model worker writes each
answered request's event, the gateway's request loop passes it on, the shipper makes the Kafka
records.

The request loop is the process that saturates first, so it does as little per event as it can.
For a request it will log, it sends the worker what only the loop knows of the event
(`sent_event`: its `context`, the route, role and the like, serialised once per combination and
cached; the request id, the policy's reason and when it sent the request). The worker that
answers writes the whole event on its own core (`answered_event`): its fields (records.FIELDS)
and its scoring log (inputs and outputs as the record holds them: scorers.protocol.scoring_log),
and sends them back with the answer. The loop keeps them as they are and every 2 ms writes the
events since the last flush to the shipper's socket in one frame (`frame`); it writes an event
itself (`serialised`) only when the worker did not answer (a timeout, a model error, a dead
worker) or could not write it. The shipper joins each event's parts into its Kafka record
(`wires_from_batches`, records.wire_of), reading only the fields.

With the loop on a core of its own (server.loop_cpus), this took logging's cost to the loop
from +12.8% CPU per request to +8.4%, and the closed loop from 86.5% of logging off to 88.7%
(docs/benchmarks/logging-cost.md, twenty-third session).

A frame on the socket is a little-endian u32 length, then the body: a u32 count of parts,
each part's u32 length, then the parts back to back; an event is two parts, its fields and its
scoring log."""
from __future__ import annotations

import logging
import struct
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import orjson

from gateway.events.records import fields_json, wire_of
from gateway.events.spool import WireRecord
from scorers.protocol import MAX_FRAME, scoring_log

log = logging.getLogger("gateway.events")

if TYPE_CHECKING:
    from gateway.codecs.v2 import InferRequest
    from gateway.parallel.pool import Prediction

LENGTH = struct.Struct("<I")
PARTS_PER_EVENT = 2  # what `serialised` returns: the fields, the scoring log


class Context(NamedTuple):
    """What the loop knows of a model call's event before the call, the same for every request
    of one model version, role and route: records.FIELDS from `gateway_instance` to `arm`
    (`head`), `served`, `sample_rate`, and the output the event's action holds (`first`; None:
    the model's first). `wire` is the same serialised, once: the loop caches a Context per
    combination and sends `wire` in each logged request's frame as it is. The policy's `reason`
    is not in it: it can differ per request (`sticky:bucket=0.4213`), so it travels beside it."""
    values: dict[str, Any]
    wire: orjson.Fragment


def context(instance: str, model: str, version: str, role: str, route: str, served: bool,
            sample_rate: float, first_output: str | None) -> Context:
    values = {"head": {"gateway_instance": instance, "model_name": model, "model_version": version, "role": role,
                      "route": route, "arm": version},
              "served": served, "sample_rate": sample_rate, "first": first_output}
    return Context(values, orjson.Fragment(orjson.dumps(values)))


def outcome_fields(values: dict[str, Any], request_id: str, reason: str, status: str, error: str | None, action: Any,
                   latency_ms: float) -> dict[str, Any]:
    """An event's fields (records.FIELDS, in order): what was known before the call
    (`Context.values`, the request id and the policy's reason) and what became known with the
    answer. `ts_ms` is now."""
    return {"ts_ms": time.time_ns() // 1_000_000, "request_id": request_id, **values["head"], "reason": reason,
            "served": values["served"], "status": status, "error": error, "action": action,
            "latency_ms": int(latency_ms * 1000) / 1000,  # to the µs; round() costs 3x
            "sample_rate": values["sample_rate"]}


def answered_event(event: list, inputs: dict[str, np.ndarray],
                   outputs: dict[str, np.ndarray]) -> tuple[bytes, bytes, bytes | None]:
    """The event of a request its model answered, written by the worker that scored it:
    its fields, its scoring log, and (unless the loop sent one) the JSON of its action, which the
    loop sends on to the request's shadow calls. `event` is what the loop sent (`sent_event`).
    Raises (TypeError, KeyError) if it cannot be written; the loop then writes it."""
    values, request_id, reason, action, sent = event
    own = None
    if action is None:
        first = values["first"] or next(iter(outputs))
        own = fields_json({"model_version": values["head"]["model_version"], "outputs": {first: outputs[first]}})
        action = orjson.Fragment(own)
    fields = outcome_fields(values, request_id, reason, "ok", None, action, (time.monotonic() - sent) * 1e3)
    return fields_json(fields), scoring_log(inputs, outputs), own


def sent_event(event_context: Context, request_id: str, reason: str, action: orjson.Fragment | None,
               sent: float) -> list:
    """What a logged request's frame tells its worker of the event (`answered_event` reads it):
    its `context`, the request id, the policy's reason, the served answer's JSON for a shadow
    call (None: the worker's own outputs are served), and when the loop sent the request
    (time.monotonic(): one clock for all processes on Linux; the event's latency_ms ends when
    the worker has the outputs)."""
    return [event_context.wire, request_id, reason, action, sent]


def serialised(fields: dict[str, Any], request: InferRequest, prediction: Prediction | None) -> tuple[bytes, bytes]:
    """A model call's event as the shipper reads it, written by the loop: for the calls whose
    worker did not write it (`answered_event`): a failed answer, or one it could not write.
    Raises TypeError if the event cannot be serialised."""
    return fields_json(fields), scoring_log(request.inputs, prediction.outputs if prediction is not None else {})


def frame(parts: list[bytes]) -> bytes:
    """One frame of `serialised` events' parts, in order."""
    lengths = [len(part) for part in parts]
    head = struct.pack(f"<I{len(lengths)}I", len(lengths), *lengths)
    return b"".join((LENGTH.pack(len(head) + sum(lengths)), head, *parts))


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
        (count,) = LENGTH.unpack_from(data, pos + LENGTH.size)
        lengths = struct.unpack_from(f"<{count}I", data, pos + 2 * LENGTH.size)
        at = pos + (2 + count) * LENGTH.size
        for i in range(0, count - 1, PARTS_PER_EVENT):
            fields_end = at + lengths[i]
            log_end = fields_end + lengths[i + 1]
            try:
                wires.append(wire_of(data[at:fields_end], data[fields_end:log_end], topic))
            except Exception:  # a gateway bug, not a reason to lose the rest of the batch
                broken += 1
                log.exception("scoring event could not be made into a record; dropped")
            at = log_end
        pos = end
    return wires, pos, broken
