"""The event log's fast paths give the same bytes as the plain ones: records the shipper builds
from the gateway's batches, Kafka's murmur2 partitioning, lz4 batches at the fast level, the
burst queue."""
from __future__ import annotations

import asyncio
import random
import socket
import sys

import numpy as np
import orjson
import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record import default_records
from aiokafka.record.memory_records import MemoryRecords

from gateway.events.logger import EventLogger, _lz4_fast_level, murmur2, use_fast_lz4
from gateway.codecs.v2 import InferRequest
from gateway.events.handover import frame, serialised, wires_from_batches
from gateway.events.records import by_kind, scoring_event, to_wire
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
    if action:
        arrays["action/probabilities"] = arrays["outputs/probabilities"]
    meta = {"ts": 1795642642.9961, "request_id": f"req-{rows}", "model_name": "wine", "model_version": "2",
            "role": "challenger", "route": "shadow", "arm": "2", "reason": "shadow", "served": False,
            "status": "ok", "error": None, "latency_ms": 1.23456, "instance": "host-1", "sample_rate": 0.5,
            "action_version": "1" if action else None}
    return meta, arrays


def _without_id(wire: WireRecord) -> tuple:
    record = orjson.loads(wire.value)
    event_id = record.pop("event_id")
    headers = dict(wire.headers)
    assert len(event_id) == 32 and headers.pop("ce_id") == event_id.encode()
    return wire.topic, wire.key, record, headers


def _loggable(meta: dict, arrays: dict, worker_log: bool = True) -> tuple:
    """What the gateway's loop logs for `meta` and `arrays`: (meta, request, prediction, action);
    the prediction with the worker's scoring log, or without one (the loop writes it)."""
    split = by_kind(arrays)
    request = InferRequest(meta["request_id"], split["inputs"], 1)
    outputs = split["outputs"]
    log = scoring_log(request.inputs, outputs) if worker_log else None
    prediction = Prediction(outputs, 1.0, 1, log) if outputs else None
    return meta, request, prediction, split["action"]


def _handed_over(meta: dict, arrays: dict, worker_log: bool = True) -> bytes:
    return serialised(*_loggable(meta, arrays, worker_log))


def test_the_shippers_records_are_the_records_of_the_gateways_arrays():
    cases = [_event(rows, action) for rows, action in [(1, True), (7, True), (2, False)]]
    cases[2][0]["instance"] = "höst-2"  # non-ASCII names survive
    meta, arrays = _event(3, True)
    arrays["outputs/probabilities"] = np.asfortranarray(arrays["outputs/probabilities"])  # not C-contiguous
    arrays["outputs/embedding"] = np.arange(3 * 2 * 2, dtype=np.float64).reshape(3, 2, 2) / 7  # three dimensions
    arrays["outputs/score"] = np.float32(0.25) * np.ones((), dtype=np.float32)  # none
    cases.append((meta, arrays))
    failed = dict(_event(1, False)[0], status="error", error="model failed")  # no outputs
    cases.append((failed, {"inputs/input": _event(1, False)[1]["inputs/input"]}))

    data = frame([_handed_over(m, a, worker_log=i % 2 == 0) for i, (m, a) in enumerate(cases)])
    wires, used, broken = wires_from_batches(data + data[:40], "scoring.events")  # a batch cut short stays unread
    assert (used, broken) == (len(data), 0)
    assert len(wires) == len(cases)
    for wire, (m, a) in zip(wires, cases):
        assert _without_id(wire) == _without_id(to_wire(scoring_event(m, a), "scoring.events"))
    assert dict(wires[2].headers)["ce_source"] == "/gateway/höst-2".encode()


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
    meta, arrays = _event(2, True)
    good = _handed_over(meta, arrays)
    malformed = orjson.dumps([{"ts": 1.0}, [], {}])  # not an event: a gateway bug
    data = frame([good, malformed, good])
    wires, used, broken = wires_from_batches(data, "scoring.events")
    assert (len(wires), broken, used) == (2, 1, len(data))


def test_split_frames_copies_unless_told_not_to():
    frames = encode({"seq": 1}, {"x": np.arange(3)}) + encode({"seq": 2})
    buffer = bytearray(frames + frames[:5])
    parsed, used = split_frames(buffer)
    del buffer[:used]  # copies: the buffer can be trimmed
    assert [m["seq"] for m, _ in parsed] == [1, 2] and bytes(buffer) == frames[:5]
    assert decode_arrays(*parsed[0])["x"].tolist() == [0, 1, 2]


def test_murmur2_matches_kafkas():
    rng = random.Random(3)
    for length in range(0, 70):
        for _ in range(20):
            key = bytes(rng.getrandbits(8) for _ in range(length))
            assert murmur2(key) == aiokafka_murmur2(key), key


def test_fast_lz4_batches_decode_to_the_same_records():
    use_fast_lz4()
    builder_module = sys.modules[default_records.DefaultRecordBatchBuilder.__module__]
    assert builder_module.lz4_encode is _lz4_fast_level  # the builder aiokafka uses takes the fast level
    batch = BatchBuilder(1 << 20, 3)  # 3: lz4
    values = [orjson.dumps({"n": i, "pad": "x" * (i % 50)}) for i in range(200)]
    for i, value in enumerate(values):
        batch.append(key=str(i).encode(), value=value, timestamp=None, headers=[("h", b"v")])
    records = list(MemoryRecords(bytes(batch._build())).next_batch())
    assert [r.value for r in records] == values
    assert [r.headers for r in records] == [[("h", b"v")]] * len(values)


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
    return frame([_handed_over({**meta, "request_id": str(i)}, arrays)])


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
                shipper.log(*_loggable({**meta, "request_id": str(i), "error": error}, arrays))
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
    assert _without_id(wires[1]) == _without_id(to_wire(expected, "scoring.events"))
