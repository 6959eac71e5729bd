"""Raw onnxruntime throughput in one process: the model's own cost, with no HTTP, JSON or IPC.

The session is built exactly as a gateway worker builds it (scorers.onnx.OnnxScorer, one
intra-op thread), so rows/s here is the upper bound one worker could reach, and the ratio to
the gateway's rows/s is what the serving path costs.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gateway.models.demo import sample_wines
from scorers.onnx import OnnxScorer

BATCHES = (1, 10, 100, 1000)


def measure(model_file: str | Path, *, batches: tuple[int, ...] = BATCHES, seconds: float = 1.0,
            threads: int = 1) -> list[dict[str, Any]]:
    """Calls/s and rows/s for each batch size, each measured for about `seconds` after a warm-up."""
    scorer = OnnxScorer(model_file, intra_op_threads=threads)
    out = []
    for batch in batches:
        inputs = {"input": sample_wines("train", batch, seed=batch)}
        for _ in range(20):
            scorer.predict(inputs)
        calls, started = 0, time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            scorer.predict(inputs)
            calls += 1
        elapsed = time.perf_counter() - started
        out.append({"batch_rows": batch, "calls_per_s": round(calls / elapsed, 1),
                    "rows_per_s": round(calls * batch / elapsed, 1), "us_per_call": round(elapsed / calls * 1e6, 2)})
    return out


def measure_repository(root: str | Path, model: str = "wine", **kwargs: Any) -> dict[str, list[dict[str, Any]]]:
    """Every version of `model` in the repository: {"wine/1": [...], "wine/2": [...]}."""
    from gateway.models.repository import ModelRepository

    repository = ModelRepository(root)
    return {f"{name}/{version}": measure(repository.load(name, version).model_file, **kwargs)
            for name, version in repository.list() if name == model}
