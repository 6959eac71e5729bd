"""Two source trees' event hand-over (gateway.events.handover, scorers.protocol.scoring_log),
alternated in 20-call chunks within one process, 300 times each, so a host whose speed swings
hits both alike: the loop's cost per event (serialised + frame), the shipper's per event
(wires_from_batches) and the worker's per scoring log.

    git worktree add /tmp/before 248ce10
    git worktree add /tmp/after 248ce10 && git -C /tmp/after apply $PWD/docs/benchmarks/logging-cost/worker-writes-v2-tensors.patch
    .venv/bin/python docs/benchmarks/logging-cost/handover_ab.py /tmp/before /tmp/after
"""
import sys, time, timeit, numpy as np
def load(tree, tag):
    mods = {}
    sys.path.insert(0, tree)
    from prometheus_client import REGISTRY
    for c in list(REGISTRY._collector_to_names): REGISTRY.unregister(c)
    for name in list(sys.modules):
        if name.startswith(("gateway", "scorers")): del sys.modules[name]
    import scorers.protocol as sp, gateway.events.handover as h, gateway.codecs.v2 as v2, gateway.parallel.pool as pool
    sys.path.pop(0)
    return sp, h, v2, pool
impl = {}
for tag, tree in (("before", sys.argv[1]), ("after", sys.argv[2])):
    impl[tag] = load(tree, tag)
row=np.random.default_rng(0).random((1,13),dtype=np.float32)
outs={"label":np.array([1]),"probabilities":np.random.default_rng(1).random((1,3),dtype=np.float32)}
action={"probabilities":outs["probabilities"]}
meta = {"ts": time.time(), "request_id": "abc"*10, "model_name": "wine", "model_version": "1",
        "role": "champion", "route": "shadow", "arm": "1", "reason": "x",
        "served": True, "status": "ok", "error": None, "latency_ms": 1.234,
        "instance": "bench", "sample_rate": 1.0, "action_version": "1"}
fns = {}
for tag, (sp, h, v2, pool) in impl.items():
    p = pool.Prediction(outs, 1.0, 1, sp.scoring_log({"input": row}, outs))
    req = v2.InferRequest("x", {"input": row}, 1)
    def loop(h=h, p=p, req=req):
        ev = [h.serialised(meta, req, p, action) for _ in range(24)]
        return h.frame(ev)
    data = loop() * 10
    fns[tag] = (loop, lambda h=h, data=data: h.wires_from_batches(data, "t"), lambda sp=sp: sp.scoring_log({"input": row}, outs))
tot = {t: [0.0, 0.0, 0.0] for t in fns}
for k in range(300):
    for t in (("before", "after") if k % 2 else ("after", "before")):
        for i, f in enumerate(fns[t]):
            tot[t][i] += timeit.timeit(f, number=20)
for t, (a, b, c) in tot.items():
    print(t, f"loop per event {a / (300*20*24) * 1e6:.3f} us; shipper per event {b / (300*20*240) * 1e6:.3f} us; worker scoring_log {c / (300*20) * 1e6:.3f} us")
