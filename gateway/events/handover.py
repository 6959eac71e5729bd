"""How scoring events cross from the gateway to the event shipper: the gateway's request loop
hands over what each record needs, the shipper, on the other core, makes the Kafka records.

The request loop is the process that saturates first, so it does as little per event as it can.
The worker that scores a request the gateway will log also writes its scoring log (inputs and
outputs as the record holds them: scorers.protocol.scoring_log) on its own core, and sends it
back with the answer. Per event the loop keeps only a tuple of the event's fields (its row:
records.FIELDS' values) beside that log; every 2 ms it serialises the rows since the last flush
in one orjson call (records.rows_json) and writes them and the logs to the shipper's socket in
one frame (`frame`). The shipper reads the rows back and writes each event's Kafka record
(`wires_from_batches`, records.wire_of).

A frame on the socket is a little-endian u32 length, then the body: a u32 count of parts,
each part's u32 length, then the parts back to back: the rows (a JSON array of arrays), then
each event's scoring log, in the rows' order."""
from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING

import orjson

from gateway.events.records import wire_of
from gateway.events.spool import WireRecord
from scorers.protocol import MAX_FRAME, scoring_log

log = logging.getLogger("gateway.events")

if TYPE_CHECKING:
    from gateway.codecs.v2 import InferRequest
    from gateway.parallel.pool import Prediction

LENGTH = struct.Struct("<I")


def log_of(request: InferRequest, prediction: Prediction | None) -> bytes:
    """The scoring log of one model's answer to `request`, as the worker wrote it
    (`Prediction.log`); the loop writes it itself only when the worker did not (a failed answer,
    or one it could not write). Raises TypeError if the arrays cannot be JSON."""
    written = prediction.log if prediction is not None else None
    if written is None:
        written = scoring_log(request.inputs, prediction.outputs if prediction is not None else {})
    return written


def frame(rows: bytes, logs: list[bytes]) -> bytes:
    """One frame: the events' rows (records.rows_json) and their scoring logs, in the same order."""
    lengths = [len(rows), *map(len, logs)]
    head = struct.pack(f"<I{len(lengths)}I", len(lengths), *lengths)
    return b"".join((LENGTH.pack(len(head) + sum(lengths)), head, rows, *logs))


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
        try:
            rows = orjson.loads(data[at:at + lengths[0]])
            if not isinstance(rows, list) or len(rows) != count - 1:
                raise ValueError(f"{count - 1} scoring logs for {len(rows) if isinstance(rows, list) else 'no'} rows")
        except (ValueError, IndexError):  # a gateway bug (or no parts): none of the frame's events can be trusted
            broken += max(count - 1, 0)
            log.exception("a frame of scoring events could not be read; its %d events dropped", max(count - 1, 0))
            pos = end
            continue
        at += lengths[0]
        for row, length in zip(rows, lengths[1:]):
            try:
                wires.append(wire_of(row, data[at:at + length], topic))
            except Exception:  # a gateway bug, not a reason to lose the rest of the batch
                broken += 1
                log.exception("scoring event could not be made into a record; dropped")
            at += length
        pos = end
    return wires, pos, broken
