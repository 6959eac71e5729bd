"""Which CPUs the gateway's processes run on (`server.loop_cpus`).

The request loop is the process that saturates first. Whatever else the scheduler puts on its
core (the model workers, the event shipper, on a shared host a load generator or a broker)
takes time from it. With `loop_cpus` set, the loop has those CPUs to itself; the workers and the
shipper run on the other CPUs the gateway may use ("auto": the first of them is the loop's).
Unset, the scheduler places every process; config/demo.yaml sets "auto".
On 2 cores with event logging on, the loop waited for its core about 0.05 cores' worth of time
with every process free and 0.005 with its own core; logging on kept 90.5% of logging off's
throughput (32 gateway starts) against 84.8%, and the layout was itself 1.7% faster with
logging off, 7.0% with it on (docs/benchmarks/logging-cost.md).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable


def allowed_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity: taskset, cgroup cpusets), not every CPU."""
    return os.sched_getaffinity(0)


def pin_process(cpus: Iterable[int], pid: int | None = None) -> None:
    """Every thread of process `pid` (None: this one) on `cpus`, threads that libraries started
    at import (OpenBLAS, onnxruntime) included; threads started later inherit it."""
    cpus = set(cpus)
    for tid in os.listdir(f"/proc/{pid or 'self'}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:
            pass  # the thread ended meanwhile


def run_queue_wait(thread: str = "thread-self") -> float | None:
    """Seconds so far that a thread was ready to run but waited for a core (the scheduler's
    run-queue delay, /proc/<thread>/schedstat; "<pid>/task/<pid>" is a process's main thread):
    time it lost to whatever shared its core. None where the kernel keeps no schedstats."""
    try:
        return int(Path(f"/proc/{thread}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


@dataclass(frozen=True)
class CpuLayout:
    """The request loop's CPUs and those of the processes it starts; None: wherever the scheduler likes."""
    loop: tuple[int, ...] | None = None
    others: tuple[int, ...] | None = None

    @classmethod
    def of(cls, loop_cpus: Iterable[int] | str | None) -> "CpuLayout":
        """The layout for config `server.loop_cpus` (validated there against `allowed_cpus()`).
        "auto" takes the first CPU the gateway may use, so one config serves any cpuset (a
        container's CPUs are not always numbered from 0); with a single CPU there is none to
        give the loop alone, and the scheduler places every process."""
        if loop_cpus == "auto":
            allowed = sorted(allowed_cpus())
            loop_cpus = allowed[:1] if len(allowed) > 1 else None
        if loop_cpus is None:
            return cls()
        loop = set(loop_cpus)
        return cls(tuple(sorted(loop)), tuple(sorted(allowed_cpus() - loop)))

    def cores_for_others(self) -> int:
        """How many CPUs the workers share: what their intra-op threads are sized by."""
        return len(self.others) if self.others is not None else len(allowed_cpus())

    def pin_loop(self) -> None:
        if self.loop is not None:
            pin_process(self.loop)
