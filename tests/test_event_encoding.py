"""The event log's fast paths give the same bytes as the plain ones: records the shipper builds
from the gateway's batches, Kafka's murmur2 partitioning, lz4 batches at the fast level, the
burst queue."""
from __future__ import annotations

import asyncio
import random
import socket
import sys
from datetime import datetime, timezone

import numpy as np
import orjson
import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record import default_records
from aiokafka.record.memory_records import MemoryRecords

from gateway.events.logger import EventLogger, _append, _lz4_fast_level, use_fast_lz4
from gateway.events.partitions import murmur2, partitions_of
from gateway.codecs.v2 import InferRequest
from gateway.events.handover import frame, log_of, wires_from_batches
from gateway.codecs.datatypes import NUMPY_TO_V2
from gateway.codecs.json_tensors import tensors_json
from gateway.events.records import FIELDS, by_kind, event_row, rows_json, scoring_event
from gateway.parallel.pool import Prediction, prediction_from
from gateway.events.spool import DiskSpool, WireRecord
from scorers.protocol import decode_arrays, encode, scoring_log, split_frames
from scorers.worker import score_frames


def _event(rows: int, action: bool) -> tuple[dict, dict]:
    rng = np.random.default_rng(rows)
    arrays = {"inputs/input": rng.random((rows, 13), dtype=np.float32),
              "inputs/flag": rng.integers(0, 2, rows).astype(np.bool_),
              "outputs/label": rng.integers(0, 3, rows),
              "outputs/probabilities": rng.random((rows, 3), dtype=np.float32)}
    fields = {"ts_ms": 1795642642996, "request_id": f"req-{rows}", "gateway_instance": "host-1", "model_name": "wine",
              "model_version": "2", "role": "challenger", "route": "shadow", "arm": "2", "reason": "shadow",
              "served": False, "status": "ok", "error": None,
              "action": {"model_version": "1", "outputs": {"probabilities": arrays["outputs/probabilities"]}}
              if action else None,
              "latency_ms": 1.235, "sample_rate": 0.5}
    return fields, arrays


def _plain_tensors(arrays: dict) -> list:
    """V2 tensors as a plain dict per tensor gives them (what json_tensors must agree with)."""
    return [{"name": name, "datatype": NUMPY_TO_V2[a.dtype], "shape": list(a.shape),
             "data": np.ascontiguousarray(a).ravel()} for name, a in arrays.items()]


def _plain_record(fields: dict, arrays: dict) -> dict:
    """The record every part of the hand-over must add up to, written the plain way."""
    split = by_kind(arrays)
    second, ms = divmod(fields["ts_ms"], 1000)
    stamp = datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms:03d}Z"
    record = {"schema_version": 1, "timestamp": stamp, **fields, "inputs": _plain_tensors(split["inputs"]),
              "outputs": _plain_tensors(split["outputs"])}
    return orjson.loads(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY))


def _without_id(wire: WireRecord) -> tuple:
    record = orjson.loads(wire.value)
    event_id = record.pop("event_id")
    headers = dict(wire.headers)
    assert len(event_id) == 32 and headers.pop("ce_id") == event_id.encode()
    return wire.topic, wire.key, record, headers


def _loggable(fields: dict, arrays: dict, worker_log: bool = True) -> tuple:
    """What the gateway's loop logs for `fields` and `arrays`: (fields, request, prediction);
    the prediction with the worker's scoring log, or without one (the loop writes it)."""
    split = by_kind(arrays)
    request = InferRequest(fields["request_id"], split["inputs"], 1)
    outputs = split["outputs"]
    log = scoring_log(request.inputs, outputs) if worker_log else None
    prediction = Prediction(outputs, 1.0, 1, log) if outputs else None
    return fields, request, prediction


def _handed_over(fields: dict, arrays: dict, worker_log: bool = True) -> tuple[tuple, bytes]:
    """What the loop keeps of one event: its row (records.FIELDS' values) and its scoring log."""
    fields, request, prediction = _loggable(fields, arrays, worker_log)
    return event_row(**fields), log_of(request, prediction)


def _frame_of(events: list[tuple[tuple, bytes]]) -> bytes:
    """The frame the loop writes for `events` (`_handed_over`'s)."""
    return frame(rows_json([row for row, _ in events]), [log for _, log in events])


def test_v2_tensors_are_written_as_a_plain_dict_per_tensor_writes_them():
    rng = np.random.default_rng(1)
    arrays = {"f4": rng.random((2, 3), dtype=np.float32), "f8": rng.random(4) / 7,
              "i8": rng.integers(-5, 5, (3, 1)), "u1": np.arange(4, dtype=np.uint8), "b": np.array([[True, False]]),
              "cube": np.arange(12, dtype=np.int32).reshape(2, 3, 2), "none": np.ones((), dtype=np.float32),
              "fortran": np.asfortranarray(rng.random((3, 2))), "empty": np.zeros((0, 3), dtype=np.float32),
              "nan": np.array([np.nan, np.inf, -1.5])}
    for _ in range(2):  # the second time from the cached prefixes
        assert tensors_json(arrays) == orjson.dumps(_plain_tensors(arrays), option=orjson.OPT_SERIALIZE_NUMPY)
    assert tensors_json({}) == b"[]"
    with pytest.raises(TypeError):
        tensors_json({"s": np.array(["a", "b"])})


def test_the_shippers_records_are_the_records_of_the_gateways_arrays():
    cases = [_event(rows, action) for rows, action in [(1, True), (7, True), (2, False)]]
    cases[2][0]["gateway_instance"] = "höst-2"  # non-ASCII names survive
    fields, arrays = _event(3, True)
    arrays["outputs/probabilities"] = np.asfortranarray(arrays["outputs/probabilities"])  # not C-contiguous
    arrays["outputs/embedding"] = np.arange(3 * 2 * 2, dtype=np.float64).reshape(3, 2, 2) / 7  # three dimensions
    arrays["outputs/score"] = np.float32(0.25) * np.ones((), dtype=np.float32)  # none
    cases.append((fields, arrays))
    failed = dict(_event(1, False)[0], status="error", error="model failed")  # no outputs
    cases.append((failed, {"inputs/input": _event(1, False)[1]["inputs/input"]}))

    data = _frame_of([_handed_over(f, a, worker_log=i % 2 == 0) for i, (f, a) in enumerate(cases)])
    wires, used, broken = wires_from_batches(data + data[:40], "scoring.events")  # a batch cut short stays unread
    assert (used, broken) == (len(data), 0)
    assert len(wires) == len(cases)
    for wire, (f, a) in zip(wires, cases):
        topic, key, record, headers = _without_id(wire)
        assert (topic, key, record) == ("scoring.events", f["request_id"].encode(), _plain_record(f, a))
        # the order the drift consumer's fast path reads (gateway.drift.decode): tensors before the action
        action = FIELDS.index("action")
        assert list(record) == ["schema_version", "timestamp", *FIELDS[:action], "inputs", "outputs", *FIELDS[action:]]
        assert headers == {"ce_specversion": b"1.0", "ce_type": b"dev.scoring-gateway.scoring.v1",
                           "ce_source": b"/gateway/" + f["gateway_instance"].encode(),
                           "ce_time": record["timestamp"].encode(), "content-type": b"application/json",
                           "model": b"wine", "model_version": f["model_version"].encode(), "schema_version": b"1"}
        assert _without_id(wire) == _without_id(scoring_event(f, a))


def test_an_event_row_holds_the_fields_in_their_order_and_refuses_a_missing_or_unknown_name():
    fields, _ = _event(1, False)
    shuffled = dict(reversed(list(fields.items())))
    assert event_row(**shuffled) == tuple(fields[name] for name in FIELDS)
    del shuffled["arm"]
    with pytest.raises(TypeError, match=r"missing \['arm'\]"):
        event_row(**shuffled)
    with pytest.raises(TypeError, match=r"unknown \['armm'\]"):
        event_row(**fields, armm="2")


def test_the_shipper_writes_key_headers_and_fields_whatever_the_request_id_holds():
    fields, arrays = _event(2, True)
    fields["request_id"] = 'r,"role":"x\\",\u00e9"action":1]]'  # JSON's own syntax, inside the id
    [wire], _, broken = wires_from_batches(_frame_of([_handed_over(fields, arrays)]), "scoring.events")
    topic, key, record, headers = _without_id(wire)
    assert (broken, key, record) == (0, fields["request_id"].encode(), _plain_record(fields, arrays))
    assert (headers["ce_source"], headers["model_version"]) == (b"/gateway/host-1", b"2")


class _Doubler:
    batchable = True

    def predict(self, inputs: dict) -> dict:
        return {"y": inputs["x"] * 2, "n": inputs["x"].sum(axis=1)}


def test_the_worker_writes_the_scoring_log_of_the_requests_the_gateway_logs():
    rng = np.random.default_rng(5)
    xs = [rng.random((rows, 3), dtype=np.float32) for rows in (1, 4, 2)]
    requests = [encode({"seq": i, "log": True} if i != 1 else {"seq": i}, {"x": x}) for i, x in enumerate(xs)]
    frames, _ = split_frames(b"".join(requests))
    answers, _ = split_frames(b"".join(score_frames(_Doubler(), frames, 4096)))  # stacked in one batch
    predictions = [prediction_from(meta, body) for meta, body in answers]
    for x, prediction in zip(xs, predictions):
        np.testing.assert_array_equal(prediction.outputs["y"], x * 2)
    assert predictions[1].log is None  # not logged: nothing written
    for i in (0, 2):
        assert predictions[i].log == scoring_log({"x": xs[i]}, predictions[i].outputs)


def test_an_event_the_shipper_cannot_build_is_dropped_alone_and_reported():
    good = _handed_over(*_event(2, True))
    malformed = ((1, "no-fields"), b"{}")  # not an event: a gateway bug
    data = _frame_of([good, malformed, good])
    wires, used, broken = wires_from_batches(data, "scoring.events")
    assert (len(wires), broken, used) == (2, 1, len(data))
    # rows and logs that do not pair up: the frame's events are dropped, the next frame's are not
    unpaired = frame(rows_json([good[0]]), [good[1], good[1]])
    empty = b"\x04\x00\x00\x00" + b"\x00\x00\x00\x00"  # a frame of no parts at all
    wires, used, broken = wires_from_batches(unpaired + empty + data, "scoring.events")
    assert (len(wires), broken, used) == (2, 3, len(unpaired) + len(empty) + len(data))


def test_split_frames_copies_unless_told_not_to():
    frames = encode({"seq": 1}, {"x": np.arange(3)}) + encode({"seq": 2})
    buffer = bytearray(frames + frames[:5])
    parsed, used = split_frames(buffer)
    del buffer[:used]  # copies: the buffer can be trimmed
    assert [m["seq"] for m, _ in parsed] == [1, 2] and bytes(buffer) == frames[:5]
    assert decode_arrays(*parsed[0])["x"].tolist() == [0, 1, 2]


def test_keys_are_partitioned_as_kafkas_default_partitioner_does():
    rng = random.Random(3)
    keys = [bytes(rng.getrandbits(8) for _ in range(length)) for length in range(70) for _ in range(20)]
    rng.shuffle(keys)  # lengths mixed in one burst, as client-chosen request ids are
    assert murmur2(keys).tolist() == [aiokafka_murmur2(key) for key in keys]
    assert partitions_of(keys, 6).tolist() == [(aiokafka_murmur2(key) & 0x7FFFFFFF) % 6 for key in keys]


def test_fast_lz4_batches_decode_to_the_same_records():
    use_fast_lz4()
    builder_module = sys.modules[default_records.DefaultRecordBatchBuilder.__module__]
    assert builder_module.lz4_encode is _lz4_fast_level  # the builder aiokafka uses takes the fast level
    batch = BatchBuilder(1 << 20, 3)  # 3: lz4
    values = [orjson.dumps({"n": i, "pad": "x" * (i % 50)}) for i in range(200)]
    wires = [WireRecord("scoring.events", str(i).encode(), value, [("h", b"v")]) for i, value in enumerate(values)]
    batch.append(key=b"first", value=b"through aiokafka's own path", timestamp=None, headers=[])
    assert _append(batch, wires, 0) == len(wires)  # the shipper's path, straight to the builder
    assert batch.record_count() == 1 + len(wires)
    records = list(MemoryRecords(bytes(batch._build())).next_batch())
    assert [r.value for r in records] == [b"through aiokafka's own path", *values]
    assert [r.offset for r in records] == list(range(1 + len(values)))
    assert [r.headers for r in records[1:]] == [[("h", b"v")]] * len(values)


def test_a_full_batch_takes_what_fits_and_says_where_it_stopped():
    batch = BatchBuilder(4096, 0)
    wires = [WireRecord("scoring.events", b"k", b"x" * 1000, []) for _ in range(10)]
    stopped = _append(batch, wires, 2)
    assert 2 < stopped < len(wires) and batch.record_count() == stopped - 2


def test_a_full_queue_sends_the_rest_of_a_burst_to_the_spool_in_order(tmp_path):
    async def scenario() -> tuple[list[bytes], list[bytes]]:
        logger = EventLogger("127.0.0.1:1", "scoring.events", DiskSpool(tmp_path, 1 << 20), queue_size=3)
        wires = [WireRecord("scoring.events", b"k", str(i).encode(), []) for i in range(5)]
        logger.log_wires(wires[:2])
        logger.log_wires(wires[2:])  # one more fits; two go to the spool
        queued = [w.value for w in logger._queue]
        spooled, _ = logger.spool.read(10)
        return queued, [w.value for w in spooled]

    queued, spooled = asyncio.run(scenario())
    assert queued == [b"0", b"1", b"2"]
    assert spooled == [b"3", b"4"]


def _frame(i: int) -> bytes:
    """Batches of one event, of varying size, the request id numbering them."""
    meta, arrays = _event(i % 7 + 1, i % 2 == 0)
    return _frame_of([_handed_over({**meta, "request_id": str(i)}, arrays)])


def test_the_shippers_inbox_hands_over_every_frame_in_order_in_bursts():
    from gateway.events.shipper import _Inbox

    async def scenario() -> list[list[int]]:
        ours, theirs = socket.socketpair()
        bursts: list[list[int]] = []
        loop = asyncio.get_running_loop()
        _, inbox = await loop.connect_accepted_socket(
            lambda: _Inbox("t", lambda wires: bursts.append([int(w.key) for w in wires])), theirs)
        _, writer = await asyncio.open_unix_connection(sock=ours)
        data = b"".join(_frame(i) for i in range(1000))
        for start in range(0, len(data), 997):  # frames cut anywhere
            writer.write(data[start : start + 997])
            await asyncio.sleep(0)
        writer.write_eof()  # the gateway stopped: what is left is handed over at once
        await asyncio.wait_for(inbox.closed, 10)
        return bursts

    bursts = asyncio.run(scenario())
    assert [i for burst in bursts for i in burst] == list(range(1000))


def test_the_shippers_inbox_stops_reading_until_its_burst_is_due(monkeypatch):
    from gateway.events import shipper

    monkeypatch.setattr(shipper, "READ_PAUSE", 3600.0)

    async def scenario() -> tuple[bool, list, list]:
        ours, theirs = socket.socketpair()
        bursts: list[list[int]] = []
        loop = asyncio.get_running_loop()
        transport, inbox = await loop.connect_accepted_socket(
            lambda: shipper._Inbox("t", lambda wires: bursts.append([int(w.key) for w in wires])), theirs)
        ours.sendall(_frame(0))

        async def received() -> None:
            while not inbox._chunks:
                await asyncio.sleep(0.001)

        await asyncio.wait_for(received(), 10)
        reading, before = transport.is_reading(), list(bursts)
        transport.close()  # ends the wait: what was received is handed over
        await asyncio.wait_for(inbox.closed, 10)
        ours.close()
        return reading, before, bursts

    reading, before, after = asyncio.run(scenario())
    assert not reading and before == []  # the wake-up only queued the data and paused the socket
    assert after == [[0]]


def test_the_shippers_inbox_reads_a_backlog_through_without_waiting_for_each_burst(monkeypatch):
    """A gateway faster than one socket read per burst: the shipper must keep up with it."""
    from gateway.events import shipper

    monkeypatch.setattr(shipper, "READ_PAUSE", 3600.0)

    async def scenario() -> tuple[int, int]:
        ours, theirs = socket.socketpair()
        loop = asyncio.get_running_loop()
        transport, inbox = await loop.connect_accepted_socket(lambda: shipper._Inbox("t", lambda wires: None), theirs)
        backlog = b"".join(_frame(i) for i in range(4000))  # ~3 MB, a dozen reads
        ours.setblocking(False)
        sending = asyncio.ensure_future(loop.sock_sendall(ours, backlog))

        async def received() -> None:
            while sum(map(len, inbox._chunks)) < len(backlog):
                await asyncio.sleep(0.001)

        try:
            await asyncio.wait_for(received(), 10)  # not one read per burst (due in an hour)
        finally:
            sending.cancel()
        transport.close()
        ours.close()
        return sum(map(len, inbox._chunks)), len(backlog)

    got, sent = asyncio.run(scenario())
    assert got == sent


def test_the_shipper_gets_every_event_but_one_that_cannot_be_serialised_which_is_counted():
    from prometheus_client import REGISTRY

    from gateway.events.shipper import EventShipper

    async def scenario() -> tuple[list, int, bool]:
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        shipper = EventShipper({})
        try:
            _, shipper._writer = await asyncio.open_unix_connection(sock=ours)
            meta, arrays = _event(2, True)
            for i, error in enumerate([None, object(), None]):  # the second cannot be JSON
                fields, request, prediction = _loggable({**meta, "request_id": str(i), "error": error}, arrays)
                shipper.log(event_row(**fields), request, prediction)
            shipper._flush()
            await shipper._writer.drain()
            shipper._writer.close()
            data = b""
            while chunk := await asyncio.wait_for(asyncio.get_running_loop().sock_recv(theirs, 1 << 20), 10):
                data += chunk
            wires, used, _ = wires_from_batches(data, "scoring.events")
            return wires, shipper.lost, used == len(data)
        finally:
            REGISTRY.unregister(shipper)
            theirs.close()

    wires, lost, whole = asyncio.run(scenario())
    assert [w.key for w in wires] == [b"0", b"2"] and lost == 1 and whole
    expected = scoring_event({**_event(2, True)[0], "request_id": "2"}, _event(2, True)[1])
    assert _without_id(wires[1]) == _without_id(expected)
