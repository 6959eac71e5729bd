"""How scoring events cross from the gateway to the event shipper: the gateway's request loop
hands over what each record needs, the shipper, on the other core, makes the Kafka records.

The request loop is the process that saturates first, so it does as little per event as it can.
The worker that scores a request the gateway will log also writes its scoring log (inputs and
outputs as the record holds them: scorers.protocol.scoring_log) on its own core, and sends it
back with the answer. The loop writes the event's fields (records.FIELDS) in one orjson call
(`serialised`), and every 2 ms writes the events since the last flush to the shipper's socket
in one frame (`frame`). The shipper joins each event's parts into its Kafka record
(`wires_from_batches`, records.wire_of), reading only the fields.

A frame on the socket is a little-endian u32 length, then the body: a u32 count of parts,
each part's u32 length, then the parts back to back; an event is two parts, its fields and its
scoring log."""
from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING, Any

from gateway.events.records import fields_json, wire_of
from gateway.events.spool import WireRecord
from scorers.protocol import MAX_FRAME, scoring_log

log = logging.getLogger("gateway.events")

if TYPE_CHECKING:
    from gateway.codecs.v2 import InferRequest
    from gateway.parallel.pool import Prediction

LENGTH = struct.Struct("<I")
PARTS_PER_EVENT = 2  # what `serialised` returns: the fields, the scoring log


def serialised(fields: dict[str, Any], request: InferRequest, prediction: Prediction | None) -> tuple[bytes, bytes]:
    """One model's answer to `request` as the shipper reads it: the event's fields (records.FIELDS)
    and the request's scoring log, as the worker wrote it (`Prediction.log`); the loop writes
    the log itself only when the worker did not (a failed answer, or one it could not write).
    Raises TypeError if the event cannot be serialised."""
    written = prediction.log if prediction is not None else None
    if written is None:
        written = scoring_log(request.inputs, prediction.outputs if prediction is not None else {})
    return fields_json(fields), written


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
