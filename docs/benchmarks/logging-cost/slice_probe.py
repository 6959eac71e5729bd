"""A probe (sixteenth session, docs/benchmarks/logging-cost.md): does a short EEVDF slice for
the gateway's loop and workers (sched_setattr's sched_runtime, Linux >= 6.12; the shipper keeps
the default) shrink what logging adds to the tail? Four sides per round, rotated, 8 s each at
RATE: off, on, off with short slices, on with short slices (the same two gateways; the slices
are set before a side and reset after). If logging's tail were requests waiting behind the
shipper's and broker's bursts for a core, a short slice would let the gateway's threads preempt
them on waking, and the tail would shrink.
Run it in place, from the project root, as root or with CAP_SYS_NICE to set other processes'
slices (earlier sessions copied it into loadtests/ first):

    deploy/with-kafka.sh .venv/bin/python docs/benchmarks/logging-cost/slice_probe.py 2000 6 100 <out.json>  # RATE ROUNDS SLICE_US OUT
"""
from __future__ import annotations

import ctypes
import os
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from loadtests import host, servers
from loadtests.logging_cost import warm_gateways
from loadtests.tail_sides import finish, run_rounds

SIDES = ["off", "on", "off/short", "on/short"]
_libc = ctypes.CDLL(None, use_errno=True)


class _Attr(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("policy", ctypes.c_uint32), ("flags", ctypes.c_uint64),
                ("nice", ctypes.c_int32), ("priority", ctypes.c_uint32), ("runtime", ctypes.c_uint64),
                ("deadline", ctypes.c_uint64), ("period", ctypes.c_uint64), ("util_min", ctypes.c_uint32),
                ("util_max", ctypes.c_uint32)]


def set_slice(tid: int, ns: int) -> None:
    attr = _Attr()
    if _libc.syscall(315, tid, ctypes.byref(attr), ctypes.sizeof(attr), 0):
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    attr.size, attr.flags, attr.runtime = ctypes.sizeof(attr), 0, ns
    if _libc.syscall(314, tid, ctypes.byref(attr), 0):
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def gateway_threads(root: int) -> list[int]:
    """The loop's and workers' threads (not the shipper's)."""
    tids = []
    for pid in host.process_tree(root):
        try:
            if b"gateway.events.shipper" in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            tids += [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            pass
    return tids


@contextmanager
def slices(gateway: servers.Server, ns: int) -> Iterator[None]:
    """The gateway's loop and workers on slices of `ns` (0: the kernel's default) while inside; the default after."""
    tids = gateway_threads(gateway.pid)
    for tid in tids:
        set_slice(tid, ns)
    try:
        yield
    finally:
        for tid in tids:
            set_slice(tid, 0)


def main() -> None:
    rate, rounds, slice_us, out = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    with servers.kafka_broker() as (bootstrap, kafka_pid), ExitStack() as stack:
        gws, _ = warm_gateways(stack, bootstrap, kafka_pid)
        print("quiet", host.wait_for_quiet(max_wait_s=30), flush=True)
        gateway_of = lambda side: gws[side.split("/")[0]]  # noqa: E731
        results = run_rounds(rounds, SIDES, rate, kafka_pid, gateway_of, around=lambda side: slices(
            gateway_of(side), int(slice_us * 1000) if side.endswith("/short") else 0))
    finish(results, SIDES, out)


if __name__ == "__main__":
    main()
