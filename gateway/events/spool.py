"""A disk spool for events Kafka could not take: append-only segments, read back in order.

Each frame is `<length:u32><crc32:u32><key_len:u16><headers_len:u16><key><headers JSON><value>`;
the CRC covers everything after itself, so a torn write at a crash or a flipped bit is found
and reported, never replayed as garbage. `cursor.json` holds the position up to which Kafka
has acknowledged the replay; a restart resumes from there (at-least-once).

A frame is in the OS page cache once `append()` returns, so it survives the gateway being
killed; `fsync: true` also makes it survive a machine crash, at a cost per append.
"""
from __future__ import annotations

import fcntl
import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import orjson

log = logging.getLogger("gateway.spool")
FRAME = struct.Struct("<II")
INNER = struct.Struct("<HH")


@dataclass(slots=True)
class WireRecord:
    """One Kafka record as it is sent: topic, key, value and headers."""
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]  # a list: aiokafka's batch builder takes no tuple


@dataclass(frozen=True, order=True)
class Position:
    segment: int
    offset: int


def _encode(record: WireRecord) -> bytes:
    headers = orjson.dumps([record.topic, [[k, v.decode()] for k, v in record.headers]])
    inner = INNER.pack(len(record.key), len(headers)) + record.key + headers + record.value
    return FRAME.pack(len(inner), zlib.crc32(inner)) + inner


def _decode(inner: bytes) -> WireRecord:
    key_len, headers_len = INNER.unpack_from(inner)
    start = INNER.size
    key = inner[start : start + key_len]
    topic, headers = orjson.loads(inner[start + key_len : start + key_len + headers_len])
    value = inner[start + key_len + headers_len :]
    return WireRecord(topic, key, value, [(k, v.encode()) for k, v in headers])


class DiskSpool:
    def __init__(self, directory: str | Path, max_bytes: int, segment_bytes: int = 64 << 20, fsync: bool = False):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.corrupt_frames = 0
        self._segments = sorted(int(p.stem.split("-")[1]) for p in self.directory.glob("segment-*.spool"))
        self._sizes = {s: self._path(s).stat().st_size for s in self._segments}
        self._acked = self._load_cursor()
        self._read = self._acked
        self._writer = None
        self._lock = None  # set by locked(): the flock that keeps other processes out

    @classmethod
    def locked(cls, directory: str | Path, max_bytes: int, segment_bytes: int = 64 << 20, fsync: bool = False,
               wait: float = 60.0) -> "DiskSpool":
        """Opens the spool once no other process holds it (a shipper still finishing, say)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        lock = (directory / ".lock").open("w")
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"spool {directory} is held by another process for over {wait:.0f} s") from None
                time.sleep(0.2)
        spool = cls(directory, max_bytes, segment_bytes, fsync)
        spool._lock = lock
        return spool

    def _path(self, segment: int) -> Path:
        return self.directory / f"segment-{segment:012d}.spool"

    def _load_cursor(self) -> Position:
        first = Position(self._segments[0], 0) if self._segments else Position(1, 0)
        try:
            raw = orjson.loads((self.directory / "cursor.json").read_bytes())
            cursor = Position(int(raw["segment"]), int(raw["offset"]))
        except (OSError, ValueError, KeyError, TypeError):
            return first
        return max(cursor, first)

    @property
    def size_bytes(self) -> int:
        return sum(self._sizes.values())

    def _at_end(self, position: Position) -> bool:
        """Whether `position` is past the last spooled record."""
        if not self._segments:
            return True
        last = self._segments[-1]
        return position >= Position(last, self._sizes[last])

    @property
    def empty(self) -> bool:
        """True when every spooled record has been read (not necessarily acknowledged)."""
        return self._at_end(self._read)

    @property
    def drained(self) -> bool:
        """True when every spooled record has been acknowledged."""
        return self._at_end(self._acked)

    def append(self, records: list[WireRecord]) -> int:
        """Append in order; returns how many fit under `max_bytes` (the rest are refused)."""
        frames = []
        room = self.max_bytes - self.size_bytes
        for record in records:
            frame = _encode(record)
            if len(frame) > room:
                break
            room -= len(frame)
            frames.append(frame)
        if not frames:
            return 0
        if self._writer is None or self._sizes[self._segments[-1]] >= self.segment_bytes:
            self._rotate()
        data = b"".join(frames)
        self._writer.write(data)
        self._writer.flush()
        if self.fsync:
            os.fsync(self._writer.fileno())
        self._sizes[self._segments[-1]] += len(data)
        return len(frames)

    def _rotate(self) -> None:
        if self._writer is not None:
            self._writer.close()
        # A new segment always sorts after the acknowledged cursor, so nothing in it counts as sent.
        segment = (self._segments[-1] + 1) if self._segments else self._acked.segment + 1
        self._segments.append(segment)
        self._sizes[segment] = 0
        self._writer = self._path(segment).open("ab")

    def read(self, max_records: int) -> tuple[list[WireRecord], Position]:
        """The next records after the read position, and the position after them."""
        records: list[WireRecord] = []
        position = self._read
        while len(records) < max_records:
            live = [s for s in self._segments if s >= position.segment]
            if not live:
                break
            segment = live[0]
            if segment != position.segment:
                position = Position(segment, 0)
            size = self._sizes[segment]
            if position.offset >= size:
                if segment == self._segments[-1]:
                    break
                position = Position(segment + 1, 0)
                continue
            with self._path(segment).open("rb") as fh:
                fh.seek(position.offset)
                data = fh.read(min(size - position.offset, 4 << 20))
                if len(data) >= FRAME.size:
                    first = FRAME.size + FRAME.unpack_from(data)[0]
                    if len(data) < first <= size - position.offset:
                        data += fh.read(first - len(data))  # one frame larger than a read chunk
            pos = 0
            while len(records) < max_records and len(data) - pos >= FRAME.size:
                length, crc = FRAME.unpack_from(data, pos)
                end = pos + FRAME.size + length
                if end > len(data):
                    break
                inner = data[pos + FRAME.size : end]
                if zlib.crc32(inner) != crc:
                    self.corrupt_frames += 1
                    log.error("spool segment %s: corrupt frame at byte %d; skipping the rest of the segment",
                              self._path(segment).name, position.offset + pos)
                    pos = size - position.offset
                    break
                records.append(_decode(inner))
                pos = end
            if pos == 0 and position.offset < size:
                # A torn frame at the end of a segment (crash mid-write): nothing after it is readable.
                log.error("spool segment %s: %d unreadable bytes at its end; skipping them",
                          self._path(segment).name, size - position.offset)
                self.corrupt_frames += 1
                pos = size - position.offset
            position = Position(segment, position.offset + pos)
        self._read = position
        return records, position

    def rewind(self) -> None:
        """Read again from the last acknowledged position (a replay that failed)."""
        self._read = self._acked

    def acknowledge(self, position: Position) -> None:
        self._acked = max(self._acked, position)
        tmp = self.directory / "cursor.json.tmp"
        tmp.write_bytes(orjson.dumps({"segment": self._acked.segment, "offset": self._acked.offset}))
        os.replace(tmp, self.directory / "cursor.json")
        for segment in list(self._segments):
            fully_read = segment < self._acked.segment or (
                segment == self._acked.segment and self._acked.offset >= self._sizes[segment])
            if fully_read and (segment != self._segments[-1] or self.drained):
                if segment == self._segments[-1] and self._writer is not None:
                    self._writer.close()
                    self._writer = None
                self._path(segment).unlink(missing_ok=True)
                self._segments.remove(segment)
                del self._sizes[segment]

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None
