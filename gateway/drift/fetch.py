"""Fetched Kafka record batches -> records, without a Python object per record header.

Why: aiokafka builds every record field by field (in C) and then wraps it in a ConsumerRecord
(in Python), decoding its headers into (str, bytes) tuples on the way. The gateway's events carry
nine CloudEvents headers that the drift monitor never reads; building them and the wrappers took
about 7 µs per event, half of the whole consumer (docs/benchmarks/drift-throughput.md). Here one fetched partition's record batches
(Kafka message format v2) are read with numpy: a short loop finds where each record starts, the
fields after it are decoded for all records at once, and each record becomes a tuple with
ConsumerRecord's attributes whose `headers` are decoded only when someone reads them.

`install()` hooks this into aiokafka's fetcher, for the whole process. Anything the fast reader
does not cover (older message formats, transactional or control batches, a checksum mismatch,
deserializers) is left to aiokafka's own reader for that fetch, so behaviour never depends on
which path read a batch: tests/test_drift_fetch.py pins the two equal.
"""
from __future__ import annotations

import logging
import operator
import struct
from collections import namedtuple
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain, islice, repeat
from typing import Any

import numpy as np
from aiokafka import __version__ as aiokafka_version
from aiokafka import codec
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c, decode_varint

log = logging.getLogger("gateway.drift")

# RecordBatch v2 header: baseOffset, batchLength, partitionLeaderEpoch, magic, crc, attributes,
# lastOffsetDelta, baseTimestamp, maxTimestamp, producerId, producerEpoch, baseSequence, count.
_BATCH = struct.Struct(">qiibIhiqqqhii")
_LOG_OVERHEAD = 12  # baseOffset and batchLength: batchLength counts the bytes after them
_CRC_FROM = 21  # the checksum covers the batch from `attributes` on
_MAGIC_AT = 16  # where every message format keeps its magic byte
_CODEC_MASK, _LOG_APPEND_TIME, _TRANSACTIONAL_OR_CONTROL = 0x07, 0x08, 0x30
_DECOMPRESS = {1: codec.gzip_decode, 2: codec.snappy_decode, 3: codec.lz4_decode, 4: codec.zstd_decode}
_COLUMNS = np.arange(10)  # a varint takes at most 10 bytes
_SHIFTS = (7 * _COLUMNS).astype(np.uint64)
TESTED_AIOKAFKA = ((0, 13), (0, 14))  # minor versions whose fetcher internals this was checked against


_Fields = namedtuple("_Fields", "topic partition offset timestamp timestamp_type value serialized_key_size "
                                "serialized_value_size record_buffer key_at headers_at")


class LeanRecord(_Fields):
    """A fetched record with ConsumerRecord's attributes; key and headers are read on first use."""

    __slots__ = ()
    checksum = None

    @property
    def key(self) -> bytes | None:
        size = self.serialized_key_size
        return None if size < 0 else self.record_buffer[self.key_at:self.key_at + size]

    @property
    def headers(self) -> tuple[tuple[str, bytes | None], ...]:
        buffer, pos = self.record_buffer, self.headers_at
        count, pos = decode_varint(buffer, pos)
        headers = []
        for _ in range(count):
            size, pos = decode_varint(buffer, pos)
            key = buffer[pos:pos + size].decode()
            size, pos = decode_varint(buffer, pos + size)
            headers.append((key, None if size < 0 else buffer[pos:pos + size]))
            pos += max(size, 0)
        return tuple(headers)


class _Unreadable(Exception):
    """A batch the fast reader does not cover: aiokafka's reader takes the whole fetch."""


def _varints(data: np.ndarray, at: np.ndarray, longest: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The zigzag varints starting at `at` (one per record), and where each one ends; an int32
    takes at most 5 bytes, an int64 10."""
    columns = _COLUMNS[:longest]
    raw = data[at[:, None] + columns]
    more = raw >= 0x80
    width = np.argmin(more, axis=1) + 1  # up to the first byte without the continuation bit
    if more.all(axis=1).any():
        raise _Unreadable(f"varint longer than {longest} bytes")
    parts = (raw & 0x7F).astype(np.uint64) << _SHIFTS[:longest]
    parts[columns >= width[:, None]] = 0
    value = parts.sum(axis=1)
    return (value >> np.uint64(1)).astype(np.int64) ^ -(value & np.uint64(1)).astype(np.int64), at + width


def _record_bounds(body: bytes, count: int) -> tuple[list[int], list[int]]:
    """Where each record's fields start and where the record ends: records are length-prefixed,
    so this one walk is sequential (the common 1- and 2-byte lengths inline)."""
    starts, ends = [0] * count, [0] * count
    pos = 0
    for i in range(count):
        first = body[pos]
        if first < 0x80:
            pos += 1
            length = (first >> 1) ^ -(first & 1)
        elif body[pos + 1] < 0x80:
            raw = (first & 0x7F) | (body[pos + 1] << 7)
            pos += 2
            length = (raw >> 1) ^ -(raw & 1)
        else:
            length, pos = decode_varint(body, pos)
        starts[i] = pos
        pos += length
        ends[i] = pos
    if pos > len(body):
        raise _Unreadable("records run past their batch")
    return starts, ends


def _slices(body: bytes, starts: np.ndarray, sizes: np.ndarray) -> list[bytes | None]:
    out = list(map(body.__getitem__, map(slice, starts.tolist(), (starts + np.maximum(sizes, 0)).tolist())))
    for i in np.flatnonzero(sizes < 0).tolist():
        out[i] = None
    return out


def _batch_records(body: bytes, count: int, base_offset: int, attributes: int, base_ts: int, max_ts: int,
                   topic: str, partition: int, fetch_offset: int) -> list[LeanRecord]:
    starts, ends = _record_bounds(body, count)
    data = np.frombuffer(body + bytes(10), dtype=np.uint8)  # padded: a varint read never runs off
    at = np.array(starts, dtype=np.int64) + 1  # after the record's attributes byte
    ts_delta, at = _varints(data, at, longest=10)
    offset_delta, at = _varints(data, at)
    key_size, at = _varints(data, at)
    key_at = at
    value_size, at = _varints(data, at + np.maximum(key_size, 0))
    value_at = at
    headers_at = value_at + np.maximum(value_size, 0)
    if (headers_at > np.array(ends, dtype=np.int64)).any():
        raise _Unreadable("a record's value runs past the record")
    offsets = offset_delta + base_offset
    first = int(np.searchsorted(offsets, fetch_offset)) if offsets[0] < fetch_offset else 0  # a fetch may start mid-batch
    if first:
        offsets, ts_delta, key_at, key_size, value_at, value_size, headers_at = (
            a[first:] for a in (offsets, ts_delta, key_at, key_size, value_at, value_size, headers_at))
    n = len(offsets)
    if attributes & _LOG_APPEND_TIME:
        timestamps, ts_type = repeat(max_ts, n), 1
    else:
        timestamps, ts_type = (ts_delta + base_ts).tolist(), 0
    return list(map(tuple.__new__, repeat(LeanRecord), zip(
        repeat(topic, n), repeat(partition, n), offsets.tolist(), timestamps, repeat(ts_type, n),
        _slices(body, value_at, value_size), key_size.tolist(), value_size.tolist(),  # -1: null, as aiokafka
        repeat(body, n), key_at.tolist(), headers_at.tolist())))


@dataclass(frozen=True)
class _Batch:
    """A checked batch of a fetch, read into records only when the consumer gets to it (a fetch
    can hold tens of megabytes of compressed events: all of them at once would be gigabytes)."""

    body: bytes  # still compressed
    codec: int
    count: int
    base_offset: int
    next_offset: int
    attributes: int
    base_ts: int
    max_ts: int

    def records(self, topic: str, partition: int, fetch_offset: int) -> list[LeanRecord]:
        body = self.body
        if self.codec:
            body = _DECOMPRESS[self.codec](body)
        try:
            return _batch_records(body, self.count, self.base_offset, self.attributes, self.base_ts, self.max_ts,
                                  topic, partition, fetch_offset)
        except (_Unreadable, IndexError, ValueError) as exc:  # its checksum was right: a producer's bug
            raise CorruptRecordException(f"{topic}-{partition}: batch at offset {self.base_offset}: {exc}") from None


def scan_batches(data: bytes, fetch_offset: int, check_crcs: bool = True) -> tuple[list[_Batch], int]:
    """The complete batches of one partition's fetched bytes that hold offsets at or after
    `fetch_offset`, checked, and the offset after the last complete batch. Raises _Unreadable
    for what it does not cover (the caller then uses aiokafka's reader)."""
    batches: list[_Batch] = []
    pos, size, next_offset = 0, len(data), fetch_offset
    while size - pos >= _BATCH.size:
        base_offset, length = struct.unpack_from(">qi", data, pos)
        end = pos + _LOG_OVERHEAD + length
        if end > size:
            break  # the fetch ends inside this batch: the next fetch starts with it
        if data[pos + _MAGIC_AT] != 2:
            raise _Unreadable(f"message format {data[pos + _MAGIC_AT]}")
        (_, _, _, _, crc, attributes, last_delta, base_ts, max_ts, _, _, _, count) = _BATCH.unpack_from(data, pos)
        if attributes & _TRANSACTIONAL_OR_CONTROL:
            raise _Unreadable("transactional or control batch")
        codec = attributes & _CODEC_MASK
        if codec and codec not in _DECOMPRESS:
            raise _Unreadable(f"codec {codec}")
        if check_crcs and calc_crc32c(data[pos + _CRC_FROM:end]) != crc:
            raise _Unreadable("checksum mismatch")
        next_offset = base_offset + last_delta + 1
        if count and next_offset > fetch_offset:
            batches.append(_Batch(data[pos + _BATCH.size:end], codec, count, base_offset, next_offset, attributes,
                                  base_ts, max_ts))
        pos = end
    return batches, max(next_offset, fetch_offset)


class FetchedBytes:
    """What aiokafka's fetcher wraps a partition's fetched bytes in; keeps them for the fast
    reader and builds aiokafka's own reader only when asked."""

    __slots__ = ("data", "_stock")

    def __init__(self, data: bytes):
        self.data = data
        self._stock: MemoryRecords | None = None

    @property
    def stock(self) -> MemoryRecords:
        if self._stock is None:
            self._stock = MemoryRecords(self.data)
        return self._stock

    def has_next(self) -> bool:
        return self.stock.has_next()

    def next_batch(self) -> Any:
        return self.stock.next_batch()

    def size_in_bytes(self) -> int:
        return self.stock.size_in_bytes()


class LeanPartitionRecords(aiokafka_fetcher.PartitionRecords):
    """aiokafka's PartitionRecords over `scan_batches` when it can: the fetcher's per-record loop
    then runs over C-level iterators (a chain of one list iterator per batch, each batch read when
    reached), and the position it commits (`next_fetch_offset`) is derived from how far the
    current batch's iterator got."""

    def __init__(self, tp: Any, records: Any, aborted_transactions: Any, fetch_offset: int, key_deserializer: Any,
                 value_deserializer: Any, check_crcs: bool, isolation_level: Any):
        batches = None
        if isinstance(records, FetchedBytes) and key_deserializer is None and value_deserializer is None:
            try:
                batches, self._end_offset = scan_batches(records.data, fetch_offset, check_crcs)
            except (_Unreadable, IndexError, ValueError, struct.error) as exc:
                log.debug("partition %s: aiokafka reads this fetch (%s)", tp, exc)
        self._lean = batches is not None
        if not self._lean:
            super().__init__(tp, records, aborted_transactions, fetch_offset, key_deserializer, value_deserializer,
                             check_crcs, isolation_level)
            return
        self._tp = tp
        self._records_iterator = None
        self._position = fetch_offset  # before the batch being read
        self._current: tuple[list[LeanRecord], Any] | None = None
        self._iterator = chain.from_iterable(self._read(batches, fetch_offset))

    def _read(self, batches: list[_Batch], fetch_offset: int) -> Iterator[Any]:
        for batch in batches:
            records = batch.records(self._tp.topic, self._tp.partition, fetch_offset)
            iterator = iter(records)
            self._current = (records, iterator)
            yield iterator
            self._position = max(batch.next_offset, fetch_offset)
        self._current = None
        self._position = self._end_offset

    @property
    def next_fetch_offset(self) -> int:
        if not self._lean:
            return self._stock_offset
        if self._current is None:
            return self._position
        records, iterator = self._current
        taken = len(records) - operator.length_hint(iterator)
        return records[taken - 1].offset + 1 if taken else self._position

    @next_fetch_offset.setter
    def next_fetch_offset(self, offset: int) -> None:
        self._stock_offset = offset

    def __iter__(self) -> Any:
        return self._iterator if self._lean else self

    def __next__(self) -> Any:
        return next(self._iterator) if self._lean else super().__next__()


_stock_getall = aiokafka_fetcher.FetchResult.getall


def _getall(self: Any, max_records: int | None = None) -> list[Any]:
    """aiokafka's FetchResult.getall; over lean records it takes them a list slice at a time
    instead of appending one by one in Python."""
    records = self._partition_records
    if type(records) is not LeanPartitionRecords or not records._lean:
        return _stock_getall(self, max_records)
    if not self.check_assignment(self._topic_partition) or not self.has_more():
        return []
    taken = list(records._iterator if max_records is None else islice(records._iterator, max_records))
    self._update_position()
    if max_records is None or len(taken) < max_records:
        self._partition_records = None
    return taken


def install() -> bool:
    """Makes this process's aiokafka consumers read fetched batches with `scan_batches`;
    idempotent. Refuses (and says so) on an aiokafka whose fetcher it was not checked against."""
    if aiokafka_fetcher.PartitionRecords is LeanPartitionRecords:
        return True
    version = tuple(int(p) for p in aiokafka_version.split(".")[:2])
    if version not in TESTED_AIOKAFKA or aiokafka_fetcher.MemoryRecords is not MemoryRecords:
        log.warning("aiokafka %s: the drift consumer's fast batch reader is off (checked against %s)",
                    aiokafka_version, ", ".join(f"{a}.{b}" for a, b in TESTED_AIOKAFKA))
        return False
    aiokafka_fetcher.MemoryRecords = FetchedBytes
    aiokafka_fetcher.PartitionRecords = LeanPartitionRecords
    aiokafka_fetcher.FetchResult.getall = _getall  # a method, not the class: the fetcher checks its type
    return True
