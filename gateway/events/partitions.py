"""Kafka's default key partitioning (murmur2, as the Java client does), for a burst of keys at
once: other producers writing the same request id (ground truth, say) land in the same partition.

The shipper partitions thousands of keys per drain; murmur2 in Python cost ~3 µs per key, more
than building the record. Here each step of the hash runs over all keys of one length as numpy
uint32 arrays, whose multiplication wraps as Java's int does.
"""
from __future__ import annotations

import numpy as np

_M = np.uint32(0x5BD1E995)


def _murmur2_same_length(data: np.ndarray, length: int) -> np.ndarray:
    """murmur2 of each row of `data` (uint8, one key of `length` bytes per row)."""
    h = np.full(len(data), 0x9747B28C ^ length, dtype=np.uint32)
    words = length // 4
    if words:
        blocks = np.ascontiguousarray(data[:, : words * 4]).view("<u4")
        for j in range(words):
            k = blocks[:, j] * _M
            k ^= k >> 24
            k *= _M
            h *= _M
            h ^= k
    tail, base = length & 3, words * 4
    if tail >= 3:
        h ^= data[:, base + 2].astype(np.uint32) << 16
    if tail >= 2:
        h ^= data[:, base + 1].astype(np.uint32) << 8
    if tail:
        h ^= data[:, base].astype(np.uint32)
        h *= _M
    h ^= h >> 13
    h *= _M
    h ^= h >> 15
    return h


def murmur2(keys: list[bytes]) -> np.ndarray:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2) of each key, as uint32."""
    lengths = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys))
    hashes = np.empty(len(keys), dtype=np.uint32)
    for length in np.unique(lengths).tolist():
        where = np.flatnonzero(lengths == length)
        same = keys if len(where) == len(keys) else [keys[i] for i in where.tolist()]
        data = np.frombuffer(b"".join(same), dtype=np.uint8).reshape(len(same), length)
        hashes[where] = _murmur2_same_length(data, length)
    return hashes


def partitions_of(keys: list[bytes], partitions: int) -> np.ndarray:
    """The partition of each key among `partitions`, as the Java client's default partitioner
    picks it for a keyed record."""
    return (murmur2(keys) & 0x7FFFFFFF) % partitions
