"""The request loop's own cost per logged event: ScoringService._log and the shipper hand-over's
2 ms flush (every 32 events here), the socket a stub; hot caches, so a floor. Times the tree on
PYTHONPATH; the argument only labels the line.

    git worktree add /tmp/before 4971ce8
    PYTHONPATH=/tmp/before .venv/bin/python docs/benchmarks/logging-cost/loop_event_cost.py before
    PYTHONPATH=. .venv/bin/python docs/benchmarks/logging-cost/loop_event_cost.py after
"""
import asyncio, sys, time, timeit
import numpy as np
from prometheus_client import REGISTRY
from gateway.service import ScoringService, DeployedModel, Outcome
from gateway.events.shipper import EventShipper
from gateway.parallel.pool import Prediction
from gateway.routing.plan import Plan
from gateway.codecs.v2 import InferRequest
from scorers.protocol import scoring_log

class T:
    def get_write_buffer_size(self): return 0
class W:
    transport = T(); n = 0
    def is_closing(self): return False
    def write(self, b): W.n += len(b)

async def main():
    ev = EventShipper({}); ev._writer = W()
    svc = ScoringService({}, ev, "gw-1", 10000)
    d = DeployedModel("wine", {}, {}, None, 2.0)
    req = InferRequest("0123456789abcdef0123456789abcdef", {"input": np.random.rand(1, 13).astype(np.float32)}, 1)
    outs = {"label": np.frombuffer(np.array([1], dtype=np.int64).tobytes(), dtype=np.int64).reshape(1),
            "probabilities": np.random.rand(1, 3).astype(np.float32)}
    o = Outcome("ok", Prediction(outs, 0.1, 4, scoring_log(req.inputs, outs)), 1.23456)
    plan = Plan("shadow", "1", "champion", "champion")
    action = {"model_version": "1", "outputs": {"label": outs["label"]}}
    n = 100_000
    def run():
        for i in range(n):
            svc._log(d, "1", "champion", plan, "champion", req.id, req, o, action)
            if i % 32 == 31: ev._flush()
    best = min(timeit.repeat(run, number=1, repeat=7))
    print(f"{sys.argv[1]}: loop per event {best / n * 1e6:.3f} us (log + flush every 32)")
asyncio.run(main())
