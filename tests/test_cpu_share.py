"""The event shipper yields the cores to scoring while there is room, and takes its share when starved."""
from __future__ import annotations

import os

import pytest

from gateway.events.cpu_share import HOLD, STARVED_AFTER, CpuShare, can_leave_idle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def share(mode: str = "yield", allowed: bool = True) -> tuple[CpuShare, list[int], Clock]:
    policies: list[int] = []
    clock = Clock()
    return CpuShare(mode, allowed=allowed, set_policy=policies.append, clock=clock), policies, clock


def test_a_yielding_shipper_takes_its_share_when_starved_and_yields_again_after_the_hold() -> None:
    cpu, policies, clock = share()
    cpu.start()
    assert policies == [os.SCHED_IDLE] and cpu.yielding
    cpu.update(STARVED_AFTER / 2)  # a little late: its own work, or a busy moment
    assert policies == [os.SCHED_IDLE]
    cpu.update(STARVED_AFTER * 2)
    assert policies[-1] == os.SCHED_BATCH and not cpu.yielding
    clock.now += HOLD - 1
    cpu.update(0.0)
    assert not cpu.yielding  # holds its share ...
    clock.now += 1
    cpu.update(0.0)
    assert policies == [os.SCHED_IDLE, os.SCHED_BATCH, os.SCHED_IDLE]  # ... then yields again


@pytest.mark.parametrize("mode, allowed", [("yield", False), ("batch", True)])
def test_a_shipper_that_could_not_take_its_share_back_never_yields(mode: str, allowed: bool) -> None:
    cpu, policies, clock = share(mode, allowed)
    cpu.start()
    for late in (0.0, STARVED_AFTER * 10, 0.0):
        clock.now += HOLD * 2
        cpu.update(late)
    assert policies == [os.SCHED_BATCH] and not cpu.yielding


def test_leaving_sched_idle_is_allowed_by_cap_sys_nice() -> None:
    assert can_leave_idle("Name:\tx\nCapEff:\t0000000000800000\n")  # bit 23 only
    assert can_leave_idle("CapEff:\t000001fffeffffff\n")


@pytest.mark.parametrize("limit, allowed", [(0, False), (19, False), (20, True)])
def test_without_cap_sys_nice_rlimit_nice_decides(monkeypatch: pytest.MonkeyPatch, limit: int, allowed: bool) -> None:
    monkeypatch.setattr("resource.getrlimit", lambda _: (limit, limit))
    assert can_leave_idle("CapEff:\t0000000000000000\n") is allowed
