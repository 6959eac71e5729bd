"""The request loop's own cost per logged event: ScoringService._log and the shipper hand-over's
2 ms flush (every 32 events here), the socket a stub; hot caches, so a floor. Times the tree on
PYTHONPATH (its gateway and its loadtests.policy_cost's shadowed request); the argument only
labels the line.

    git worktree add /tmp/before 4971ce8
    PYTHONPATH=/tmp/before .venv/bin/python docs/benchmarks/logging-cost/loop_event_cost.py before
    PYTHONPATH=. .venv/bin/python docs/benchmarks/logging-cost/loop_event_cost.py after
"""
import asyncio
import sys
import timeit

from gateway.codecs.v2 import InferRequest
from gateway.events.records import new_id
from gateway.events.shipper import EventShipper
from gateway.routing.plan import Plan
from gateway.service import DeployedModel, Outcome, ScoringService
from loadtests.policy_cost import shadowed_request

EVENTS, FLUSH_EVERY = 100_000, 32


class _Transport:
    def get_write_buffer_size(self) -> int:
        return 0


class _Writer:
    transport = _Transport()

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        pass


async def main() -> None:
    events = EventShipper({})
    events._writer = _Writer()
    service = ScoringService({}, events, "bench", 10_000)
    deployed = DeployedModel("wine", {}, {}, None, 2.0)
    row, predictions, action = shadowed_request()
    request = InferRequest(new_id(), {"input": row}, len(row))
    outcome = Outcome("ok", predictions["1"], 1.23456)
    plan = Plan("shadow", "1", "champion", "champion")

    def run() -> None:
        for i in range(EVENTS):
            service._log(deployed, "1", "champion", plan, "champion", request.id, request, outcome, action)
            if i % FLUSH_EVERY == FLUSH_EVERY - 1:
                events._flush()

    best = min(timeit.repeat(run, number=1, repeat=7))
    print(f"{sys.argv[1]}: loop per event {best / EVENTS * 1e6:.3f} us (log + flush every {FLUSH_EVERY})")


asyncio.run(main())
