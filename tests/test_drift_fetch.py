"""The drift consumer's batch reader gives exactly what aiokafka's own reader gives: every field
of every record, the position the consumer moves to, and aiokafka's behaviour for what it hands
back (transactional batches, bad checksums)."""
from __future__ import annotations

import asyncio
import os
import random
import struct
from types import SimpleNamespace

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.consumer.fetcher import READ_UNCOMMITTED

from gateway.drift import fetch

TP = TopicPartition("scoring.events", 3)
STOCK = fetch.LeanPartitionRecords.__bases__[0]  # aiokafka's own, even once install() has swapped the name
FIELDS = ("topic", "partition", "offset", "timestamp", "timestamp_type", "key", "value",
          "serialized_key_size", "serialized_value_size", "headers", "checksum")
HEADERS = [("ce_specversion", b"1.0"), ("ce_id", b"0123456789abcdef"), ("content-type", b"application/json"),
           ("empty", b""), ("absent", None), ("unicode-\u00e9", b"\xff\x00")]


def _batch(base_offset: int, records: list[tuple], codec: int = 0, transactional: bool = False) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=int(transactional),
                                        producer_id=7 if transactional else -1, producer_epoch=0 if transactional else -1,
                                        base_sequence=0 if transactional else -1, batch_size=1 << 24)
    for delta, timestamp, key, value, headers in records:
        builder.append(delta, timestamp=timestamp, key=key, value=value, headers=headers)
    data = builder.build()
    struct.pack_into(">q", data, 0, base_offset)  # the broker assigns it; not covered by the checksum
    return bytes(data)


def _records(n: int, seed: int) -> list[tuple]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        size = rng.choice([0, 1, 63, 64, 700, 9000])  # 9000: a 3-byte record length
        key = None if i % 7 == 3 else os.urandom(rng.choice([0, 5, 32]))
        value = None if i % 11 == 5 else os.urandom(size)
        headers = [] if i % 5 == 0 else HEADERS[: rng.randint(1, len(HEADERS))]
        out.append((i, 1_764_000_000_000 + rng.randint(-5, 10_000), key, value, headers))
    return out


def _read(records_class, wrapper, data: bytes, fetch_offset: int, take: int | None = None):
    """Records through FetchResult.getall, `take` at a time, as the consumer gets them: what each
    call returned, and the positions the consumer was moved to (aiokafka's getall for aiokafka's
    reader, ours for ours)."""
    state = SimpleNamespace(paused=False, position=fetch_offset)
    state.consumed_to = lambda offset: setattr(state, "position", offset)
    assignment = SimpleNamespace(active=True, state_value=lambda tp: state)
    partition_records = records_class(TP, wrapper(data), None, fetch_offset, None, None, True, READ_UNCOMMITTED)
    result = aiokafka_fetcher.FetchResult(TP, assignment=assignment, partition_records=partition_records, backoff=0)
    getall = fetch._getall if records_class is fetch.LeanPartitionRecords else fetch._stock_getall
    calls = []
    while result.has_more():
        calls.append(([tuple(getattr(r, f) for f in FIELDS) for r in getall(result, take)], state.position))
    return calls


@pytest.mark.parametrize("codec", [0, 1, 2, 3, 4], ids=["none", "gzip", "snappy", "lz4", "zstd"])
def test_every_field_and_the_position_equal_aiokafkas(codec: int) -> None:
    batches = [_batch(100, _records(40, 1), codec), _batch(140, _records(3, 2), codec), _batch(143, _records(25, 3), codec)]
    data = b"".join(batches)
    partial = data + batches[0][:50]  # a fetch may end inside a batch
    # The broker's answer starts with the batch holding the fetch offset, maybe before it.
    fetches = [(partial, 100), (partial, 117), (batches[1] + batches[2], 141), (batches[2], 150)]
    for fetched, fetch_offset in fetches:
        for take in (None, 1, 30):
            stock = _read(STOCK, MemoryRecords, fetched, fetch_offset, take)
            lean = _read(fetch.LeanPartitionRecords, fetch.FetchedBytes, fetched, fetch_offset, take)
            assert lean == stock
            assert stock[0][0], "the comparison must cover records"
    batches, next_offset = fetch.scan_batches(data, 100)
    records = [r for b in batches for r in b.records(TP.topic, TP.partition, 100)]
    assert len(records) == 68 and next_offset == 168
    assert isinstance(records[0], fetch.LeanRecord)  # the fast reader did read these


def test_what_the_fast_reader_does_not_cover_is_read_by_aiokafka() -> None:
    plain, transactional = _batch(0, _records(10, 4)), _batch(10, _records(10, 5), transactional=True)
    data = plain + transactional
    with pytest.raises(fetch._Unreadable):
        fetch.scan_batches(data, 0)
    stock = _read(STOCK, MemoryRecords, data, 0)
    assert _read(fetch.LeanPartitionRecords, fetch.FetchedBytes, data, 0) == stock
    assert sum(len(records) for records, _ in stock) == 20

    corrupt = bytearray(plain)
    corrupt[-3] ^= 0xFF
    for records_class, wrapper in ((STOCK, MemoryRecords),
                                   (fetch.LeanPartitionRecords, fetch.FetchedBytes)):
        with pytest.raises(CorruptRecordException):
            _read(records_class, wrapper, bytes(corrupt), 0)


def test_a_consumer_with_the_reader_installed_gets_what_was_produced(kafka_bootstrap: str, unique_topic: str) -> None:
    assert fetch.install()

    async def scenario() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all",
                                    compression_type="lz4", linger_ms=5)
        await producer.start()
        sent = []
        try:
            for i in range(3000):
                key, value = f"req-{i}".encode(), os.urandom(i % 300)
                headers = [("ce_id", str(i).encode()), ("model", b"wine")]
                sent.append((key, value, tuple(headers)))
                await producer.send(unique_topic, value, key=key, headers=headers, partition=0)
            await producer.flush()
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False, max_partition_fetch_bytes=64 * 1024)
        tp = TopicPartition(unique_topic, 0)
        consumer.assign([tp])
        await consumer.start()
        try:
            got = []
            while len(got) < len(sent):
                for records in (await consumer.getmany(timeout_ms=1000, max_records=777)).values():
                    got.extend(records)
            assert [(r.key, r.value, r.headers) for r in got] == sent
            assert [r.offset for r in got] == list(range(len(sent)))
            assert all(isinstance(r, fetch.LeanRecord) for r in got)
            consumer.seek(tp, 1234)  # into the middle of a batch
            again = await consumer.getmany(tp, timeout_ms=5000, max_records=10)
            assert [r.offset for r in again[tp]] == list(range(1234, 1244))
        finally:
            await consumer.stop()

    asyncio.run(scenario())
