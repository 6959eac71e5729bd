"""A worker process: loads one model version and scores the frames that reach its socket.

Requests that pile up while the model is busy are read together and scored in one call
(adaptive batching without a timer: the batch is whatever waited, capped at `max_batch_rows`),
which is where a busy worker gets its throughput back.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from gateway.parallel.cpus import pin_process

from .base import Scorer
from .protocol import decode_arrays, encode, scoring_log, split_frames


def load_scorer(spec: dict[str, Any]) -> Scorer:
    runtime = spec["runtime"]
    if runtime == "onnx":
        from .onnx import OnnxScorer

        return OnnxScorer(spec["model_file"], spec["intra_op_threads"], spec["inter_op_threads"])
    if runtime.startswith("python:"):
        from .python import load_python_scorer

        return load_python_scorer(runtime, Path(spec["model_dir"]), spec.get("parameters", {}))
    raise ValueError(f"unknown runtime '{runtime}' (expected 'onnx' or 'python:<module>:<Class>')")


def _signature(arrays: dict[str, np.ndarray]) -> tuple:
    return tuple((k, v.dtype.str, v.shape[1:]) for k, v in sorted(arrays.items()))


Request = tuple[int, dict[str, np.ndarray], bool]  # seq, inputs, whether the gateway logs it


def _answer(meta: dict[str, Any], inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray], log: bool) -> bytes:
    """The answer frame; with the request's scoring log when the gateway will log it (if that
    cannot be written, the gateway writes it, or counts the event as unshipped)."""
    tail = b""
    if log:
        try:
            tail = scoring_log(inputs, outputs)
        except TypeError:
            pass
    return encode(meta, outputs, tail)


def _score_one(scorer: Scorer, seq: int, arrays: dict[str, np.ndarray], log: bool) -> bytes:
    started = time.perf_counter()
    try:
        outputs = scorer.predict(arrays)
    except Exception as exc:  # a model error answers this request only
        return encode({"seq": seq, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
    return _answer({"seq": seq, "ok": True, "compute_ms": (time.perf_counter() - started) * 1e3}, arrays, outputs, log)


def _score_batch(scorer: Scorer, batch: list[Request]) -> list[bytes]:
    if len(batch) == 1:
        return [_score_one(scorer, *batch[0])]
    sizes = [next(iter(arrays.values())).shape[0] for _, arrays, _ in batch]
    stacked = {name: np.concatenate([arrays[name] for _, arrays, _ in batch]) for name in batch[0][1]}
    started = time.perf_counter()
    try:
        outputs = scorer.predict(stacked)
        total = sum(sizes)
        if any(v.ndim == 0 or v.shape[0] != total for v in outputs.values()):
            raise ValueError("outputs are not batch-major")
    except Exception:
        # One bad request must not fail the others stacked with it: answer each on its own.
        return [_score_one(scorer, *request) for request in batch]
    compute_ms = (time.perf_counter() - started) * 1e3
    frames, offset = [], 0
    for (seq, arrays, log), size in zip(batch, sizes):
        part = {name: value[offset : offset + size] for name, value in outputs.items()}
        frames.append(_answer({"seq": seq, "ok": True, "compute_ms": compute_ms, "batch": len(batch)}, arrays, part, log))
        offset += size
    return frames


def score_frames(scorer: Scorer, frames: list[tuple[dict, bytes]], max_batch_rows: int) -> list[bytes]:
    out: list[bytes] = []
    batch: list[Request] = []
    rows = 0
    signature = None
    for meta, body in frames:
        seq = meta["seq"]
        try:
            arrays = decode_arrays(meta, body)
        except Exception as exc:
            if batch:
                out.extend(_score_batch(scorer, batch))
            batch, rows, signature = [], 0, None
            out.append(encode({"seq": seq, "ok": False, "error": f"bad frame: {exc}"}))
            continue
        first = next(iter(arrays.values()), None)
        n = first.shape[0] if first is not None and first.ndim else 0
        sig = _signature(arrays) if n else None
        can_stack = scorer.batchable and sig is not None and sig == signature and rows + n <= max_batch_rows
        if batch and not can_stack:
            out.extend(_score_batch(scorer, batch))
            batch, rows = [], 0
        batch.append((seq, arrays, bool(meta.get("log"))))
        rows += n
        signature = sig
    if batch:
        out.extend(_score_batch(scorer, batch))
    return out


def serve(sock: socket.socket, scorer: Scorer, max_batch_rows: int) -> None:
    buf = bytearray()
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return  # the gateway closed its end: exit quietly
        buf += chunk
        frames, used = split_frames(buf)
        if used:
            del buf[:used]
        if frames:
            sock.sendall(b"".join(score_frames(scorer, frames, max_batch_rows)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scorers.worker")
    parser.add_argument("--fd", type=int, required=True, help="inherited socket file descriptor")
    parser.add_argument("--spec", required=True, help="JSON: runtime, model_file, model_dir, ...")
    args = parser.parse_args(argv)
    # The gateway decides when workers stop; Ctrl-C in a terminal goes to the gateway only.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    spec = orjson.loads(args.spec)
    if spec.get("cpus"):  # before the model's runtime starts its threads
        pin_process(spec["cpus"])
    sock = socket.socket(fileno=args.fd)
    try:
        scorer = load_scorer(spec)
    except Exception as exc:
        sock.sendall(encode({"ready": False, "error": f"{type(exc).__name__}: {exc}"}))
        return 1
    sock.sendall(encode({"ready": True, "pid": os.getpid()}))
    try:
        serve(sock, scorer, int(spec.get("max_batch_rows", 4096)))
    except (BrokenPipeError, ConnectionResetError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
