"""How the event shipper shares the cores with scoring: it yields them while the machine has
room to spare, and takes its share when it has not.

Yielding is Linux's SCHED_IDLE. Besides never preempting a request, a core that runs only
SCHED_IDLE tasks counts as idle when the kernel places a task that wakes up: a model worker or
the load the gateway answers then takes the shipper's core instead of landing on, and
preempting, the gateway's request loop, which is the process that limits throughput. (On
SCHED_BATCH the shipper never preempts a request either, but its core looks busy, and the
wake-ups it displaces preempt the loop: closed-loop throughput with logging on was 9% lower
than with SCHED_IDLE, docs/benchmarks/logging-cost.md.)

But a SCHED_IDLE task gets ~0.3% of a busy core: on a machine with no idle time the shipper
would fall behind without bound, and events must not be lost. So the shipper reports how late
each of its timers fired (`update`), and when it wakes STARVED_AFTER late it takes the
gateway's own share (SCHED_BATCH: still never preempting a request; not a nice value, for
niced 10 it got ~5% of a busy core against the ~10% it needed) for HOLD seconds before
yielding again. Linux lets a process
leave SCHED_IDLE only with CAP_SYS_NICE, or an RLIMIT_NICE that allows nice 0; without either,
the shipper never enters SCHED_IDLE and stays on SCHED_BATCH.
"""
from __future__ import annotations

import logging
import os
import resource
import time
from typing import Callable, Literal

from . import metrics

log = logging.getLogger("gateway.events")

Mode = Literal["yield", "batch"]  # kafka.shipper_cpu
CAP_SYS_NICE = 23  # linux/capability.h
STARVED_AFTER = 0.25  # seconds a timer fired late: the shipper is not getting the CPU it needs
HOLD = 30.0  # seconds on the gateway's share after starving, before yielding again


def can_leave_idle(status: str | None = None) -> bool:
    """Whether this process may switch from SCHED_IDLE back to SCHED_BATCH (see the module doc)."""
    if status is None:
        try:
            with open("/proc/self/status") as handle:
                status = handle.read()
        except OSError:
            return False
    for line in status.splitlines():
        if line.startswith("CapEff:") and int(line.split()[1], 16) >> CAP_SYS_NICE & 1:
            return True
    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    return soft == resource.RLIM_INFINITY or soft >= 20  # an RLIMIT_NICE of 20 allows nice 0


def _set_policy(policy: int) -> None:
    os.sched_setscheduler(0, policy, os.sched_param(0))


class CpuShare:
    """The shipper's scheduling policy: `start()`, then `update()` on every tick of its timers."""

    def __init__(self, mode: Mode, *, allowed: bool | None = None, set_policy: Callable[[int], None] = _set_policy,
                 clock: Callable[[], float] = time.monotonic):
        self.mode = mode
        self._allowed = allowed
        self._set_policy = set_policy
        self._clock = clock
        self.yielding = False
        self._until = 0.0  # when a hold on the gateway's share ends

    def start(self) -> None:
        if not hasattr(os, "sched_setscheduler"):  # not Linux: the OS decides
            return
        if self._allowed is None:
            self._allowed = can_leave_idle()
        if self.mode == "yield" and not self._allowed:
            log.info("event shipper on SCHED_BATCH: yielding the cores (SCHED_IDLE) needs CAP_SYS_NICE to take them back")
        self._apply(self.mode == "yield" and self._allowed)

    def update(self, late: float) -> None:
        """`late`: how many seconds after its due time the shipper's last timer fired."""
        if not self._allowed or self.mode != "yield":
            return
        now = self._clock()
        if self.yielding and late > STARVED_AFTER:
            metrics.EVENT_SHIPPER_STARVED.inc()
            self._until = now + HOLD
            log.warning("event shipper starved of CPU (a timer fired %.2f s late): on the gateway's share for %.0f s",
                        late, HOLD)
            self._apply(False)
        elif not self.yielding and now >= self._until:
            self._apply(True)

    def _apply(self, yielding: bool) -> None:
        self._set_policy(os.SCHED_IDLE if yielding else os.SCHED_BATCH)
        self.yielding = yielding
        metrics.EVENT_SHIPPER_YIELDING.set(1 if yielding else 0)
