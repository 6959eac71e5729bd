"""The event log's fast paths give the same bytes as the plain ones: records cut from the
gateway's frames, inputs serialised once per request, Kafka's murmur2 partitioning, lz4 batches
at the fast level, the burst queue."""
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
from gateway.events.records import (event_record, logged_inputs, scoring_event, tensors, to_frame, to_wire,
                                    wires_from_frames)
from gateway.events.spool import DiskSpool, WireRecord
from scorers.protocol import decode_arrays, encode, split_frames


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


def _without_id(value: bytes) -> dict:
    record = orjson.loads(value)
    assert len(record.pop("event_id")) == 32
    return record


def test_the_shippers_records_are_the_records_the_gateway_framed():
    records = [scoring_event(*_event(rows, action)) for rows, action in [(1, True), (7, True), (2, False)]]
    records[2]["gateway_instance"] = "höst-2"  # non-ASCII names survive the byte lengths
    stream = b"".join(to_frame(r) for r in records)
    wires, used = wires_from_frames(stream + stream[:40], "scoring.events")  # a frame cut short stays unread
    assert used == len(stream)
    for wire, record in zip(wires, records, strict=True):
        expected = to_wire(record, "scoring.events")
        assert (wire.topic, wire.key, wire.value, wire.headers) == \
            (expected.topic, expected.key, expected.value, expected.headers)
    assert dict(wires[2].headers)["ce_source"] == "/gateway/höst-2".encode()


def test_inputs_serialised_once_give_the_same_record():
    meta, arrays = _event(3, True)
    plain = scoring_event(meta, arrays)
    inputs = {k.split("/")[1]: a for k, a in arrays.items() if k.startswith("inputs/")}
    outputs = {k.split("/")[1]: a for k, a in arrays.items() if k.startswith("outputs/")}
    shared = event_record(meta, logged_inputs(inputs), tensors(outputs), {"probabilities": arrays["action/probabilities"]})
    assert _without_id(to_wire(shared, "t").value) == _without_id(to_wire(plain, "t").value)


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
    """Event frames of varying size, the request id numbering them."""
    meta, arrays = _event(i % 7 + 1, i % 2 == 0)
    return to_frame(scoring_event({**meta, "request_id": str(i)}, arrays))


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


def test_a_flush_frames_every_event_and_drops_only_one_that_cannot_be_serialised():
    from prometheus_client import REGISTRY

    from gateway.codecs.v2 import InferRequest
    from gateway.events.shipper import EventShipper

    async def scenario() -> tuple[list, int, bool]:
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        shipper = EventShipper({})
        try:
            _, shipper._writer = await asyncio.open_unix_connection(sock=ours)
            meta, arrays = _event(2, True)
            request = InferRequest("r", {"input": arrays["inputs/input"], "flag": arrays["inputs/flag"]}, 2)
            outputs = {"label": arrays["outputs/label"], "probabilities": arrays["outputs/probabilities"]}
            action = {"probabilities": arrays["action/probabilities"]}
            for i, error in enumerate([None, object(), None]):  # the second cannot be JSON
                shipper.log({**meta, "request_id": str(i), "error": error}, request, outputs, action)
            shipper._flush()
            await shipper._writer.drain()
            shipper._writer.close()
            data = b""
            while chunk := await asyncio.wait_for(asyncio.get_running_loop().sock_recv(theirs, 1 << 20), 10):
                data += chunk
            wires, used = wires_from_frames(data, "scoring.events")
            return wires, shipper.lost, used == len(data)
        finally:
            REGISTRY.unregister(shipper)
            theirs.close()

    wires, lost, whole = asyncio.run(scenario())
    assert [w.key for w in wires] == [b"0", b"2"] and lost == 1 and whole
    expected = scoring_event({**_event(2, True)[0], "request_id": "2"}, _event(2, True)[1])
    assert _without_id(wires[1].value) == _without_id(to_wire(expected, "t").value)  # inputs serialised once, shared
