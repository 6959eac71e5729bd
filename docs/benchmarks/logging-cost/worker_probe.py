"""A probe (nineteenth session, docs/benchmarks/logging-cost.md): what does logging add to a model
worker's own code? `scorers.worker.score_frames` over the same demo request frames (the
one-row request of loadtests.policy_cost.shadowed_request), with and without the gateway's
`"log": true`, for each demo version and for batches of 1, 2 and 4 frames (the worker stacks
what waited into one batch):
CPU per answer (time.process_time), the least of 3 repeats of 20,000 answers a side. With the
flag the worker also writes the request's scoring log and sends it back with the answer. No
gateway, no sockets: only the worker's code, in this process. Run from the project root after
`make models`:

    .venv/bin/python docs/benchmarks/logging-cost/worker_probe.py
"""
from __future__ import annotations

import time

from loadtests.policy_cost import shadowed_request
from scorers.protocol import encode, split_frames
from scorers.worker import load_scorer, score_frames

ANSWERS = 20_000
REPEATS = 3


def frames(count: int, log: bool) -> list[tuple[dict, bytes]]:
    row = shadowed_request()[0]
    data = b"".join(encode({"seq": i, "log": True} if log else {"seq": i}, {"input": row}) for i in range(count))
    return split_frames(data)[0]


def cpu_per_answer(scorer, batch: list[tuple[dict, bytes]]) -> float:
    """µs of this process's CPU per answer, scoring `batch` over and over."""
    turns = ANSWERS // len(batch)
    started = time.process_time()
    for _ in range(turns):
        score_frames(scorer, batch, 4096)
    return (time.process_time() - started) / (turns * len(batch)) * 1e6


def main() -> None:
    for version in ("1", "2"):
        scorer = load_scorer({"runtime": "onnx", "model_file": f"models/wine/{version}/model.onnx",
                              "intra_op_threads": 1, "inter_op_threads": 1})
        for count in (1, 2, 4):
            off = min(cpu_per_answer(scorer, frames(count, False)) for _ in range(REPEATS))
            on = min(cpu_per_answer(scorer, frames(count, True)) for _ in range(REPEATS))
            print(f"version {version}, batch of {count}: off {off:.1f} µs/answer, on {on:.1f} (+{on - off:.1f})")


if __name__ == "__main__":
    main()
