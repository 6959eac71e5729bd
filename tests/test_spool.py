"""The disk spool keeps every record it accepted, in order, across restarts and torn writes."""
from __future__ import annotations

from gateway.events.spool import DiskSpool, WireRecord


def rec(i: int, size: int = 10) -> WireRecord:
    return WireRecord("scoring.events", f"k{i}".encode(), b"x" * size + str(i).encode(),
                      [("ce_id", str(i).encode()), ("content-type", b"application/json")])


def test_records_come_back_in_order_across_segments(tmp_path):
    spool = DiskSpool(tmp_path, max_bytes=1 << 20, segment_bytes=200)
    assert spool.append([rec(i) for i in range(50)]) == 50
    got = []
    while not spool.empty:
        records, position = spool.read(7)
        got.extend(records)
        spool.acknowledge(position)
    assert got == [rec(i) for i in range(50)]
    assert spool.drained and spool.size_bytes == 0 and not list(tmp_path.glob("segment-*"))


def test_a_restart_resumes_after_the_acknowledged_records(tmp_path):
    spool = DiskSpool(tmp_path, max_bytes=1 << 20, segment_bytes=300)
    spool.append([rec(i) for i in range(20)])
    records, position = spool.read(8)
    spool.acknowledge(position)
    spool.read(5)  # read but never acknowledged: must come back after a restart
    spool.close()
    again = DiskSpool(tmp_path, max_bytes=1 << 20, segment_bytes=300)
    rest, _ = again.read(100)
    assert rest == [rec(i) for i in range(8, 20)]


def test_a_failed_replay_is_read_again(tmp_path):
    spool = DiskSpool(tmp_path, max_bytes=1 << 20)
    spool.append([rec(i) for i in range(5)])
    first, _ = spool.read(3)
    spool.rewind()
    again, _ = spool.read(3)
    assert first == again


def test_the_size_limit_refuses_records_instead_of_losing_them_silently(tmp_path):
    spool = DiskSpool(tmp_path, max_bytes=500)
    accepted = spool.append([rec(i) for i in range(100)])
    assert 0 < accepted < 100
    assert spool.size_bytes <= 500
    records, _ = spool.read(1000)
    assert records == [rec(i) for i in range(accepted)]


def test_a_torn_write_is_skipped_and_counted(tmp_path):
    spool = DiskSpool(tmp_path, max_bytes=1 << 20)
    spool.append([rec(i) for i in range(3)])
    spool.close()
    segment = next(tmp_path.glob("segment-*.spool"))
    with segment.open("ab") as fh:
        fh.write(b"\x40\x00\x00\x00garbage")  # a frame header promising 64 bytes, then a crash
    reopened = DiskSpool(tmp_path, max_bytes=1 << 20)
    records, _ = reopened.read(100)
    assert records == [rec(i) for i in range(3)]
    assert reopened.corrupt_frames == 1 and reopened.empty


def test_a_corrupted_frame_is_detected_by_its_checksum(tmp_path):
    spool = DiskSpool(tmp_path, max_bytes=1 << 20)
    spool.append([rec(0, size=100)])
    spool.close()
    segment = next(tmp_path.glob("segment-*.spool"))
    data = bytearray(segment.read_bytes())
    data[-5] ^= 0xFF
    segment.write_bytes(bytes(data))
    records, _ = DiskSpool(tmp_path, max_bytes=1 << 20).read(10)
    assert records == []
