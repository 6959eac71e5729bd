"""A pool of worker processes for one model version, driven from the event loop.

Each worker owns one socket pair; requests are pipelined (many in flight per worker) and the
least-loaded live worker takes the next one. A worker that dies fails only its in-flight
requests and is restarted; a slow model slows only its own pool.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from gateway import metrics
from gateway.models.repository import ModelVersion
from scorers.protocol import HEADER, decode_arrays, encode, split_frames

log = logging.getLogger("gateway.pool")


class ScoringError(Exception):
    """The model raised on this request (the worker lives on)."""


class WorkerUnavailable(Exception):
    """No live worker could take or finish the request."""


@dataclass(frozen=True)
class Prediction:
    outputs: dict[str, np.ndarray]
    compute_ms: float
    batch: int
    log: bytes | None = None  # the worker's scoring_log of this request, when asked for one


def prediction_from(meta: dict[str, Any], body: bytes) -> Prediction:
    """A worker's answer frame as a Prediction."""
    tail = meta.get("tail", 0)
    return Prediction(decode_arrays(meta, body), meta.get("compute_ms", 0.0), meta.get("batch", 1),
                      body[len(body) - tail :] if tail else None)


class _Worker:
    def __init__(self, pool: "WorkerPool", index: int):
        self.pool = pool
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, asyncio.Future] = {}
        self.alive = False
        self._reader_task: asyncio.Task | None = None
        self._outbox: list[bytes] = []

    async def start(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "scorers.worker",
                "--fd", str(child.fileno()), "--spec", self.pool.spec_json,
                pass_fds=(child.fileno(),), stdin=asyncio.subprocess.DEVNULL, env=env,
            )
        finally:
            child.close()
        reader, self.writer = await asyncio.open_unix_connection(sock=parent)
        meta, _ = await asyncio.wait_for(_read_frame(reader), self.pool.start_timeout)
        if not meta.get("ready"):
            raise RuntimeError(f"worker for {self.pool.model.key} failed to load: {meta.get('error')}")
        self.alive = True
        self._reader_task = asyncio.create_task(self._read_responses(reader))

    async def _read_responses(self, reader: asyncio.StreamReader) -> None:
        buffer = bytearray()
        try:
            while True:
                chunk = await reader.read(1 << 20)  # every response that has arrived, in one await
                if not chunk:
                    break
                buffer += chunk
                frames, used = split_frames(buffer)
                del buffer[:used]
                for meta, body in frames:
                    future = self.pending.pop(meta["seq"], None)
                    if future is not None and not future.done():
                        future.set_result((meta, body))
        except ConnectionError:
            pass
        finally:
            self.alive = False
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(WorkerUnavailable(f"worker {self.pool.model.key}#{self.index} exited"))
            self.pending.clear()
            self.pool.on_worker_exit(self)

    def send(self, seq: int, arrays: dict[str, np.ndarray], log: bool = False) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending[seq] = future
        # Frames written in the same loop iteration leave in one syscall (and reach the worker
        # as one batch), instead of one write and one worker wake-up per request.
        if not self._outbox:
            loop.call_soon(self._flush)
        self._outbox.append(encode({"seq": seq, "log": True} if log else {"seq": seq}, arrays))
        return future

    def _flush(self) -> None:
        frames, self._outbox = self._outbox, []
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(b"".join(frames))

    async def stop(self) -> None:
        self.alive = False
        if self.writer is not None:
            self.writer.close()  # the worker sees EOF and exits
        if self.process is not None:
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._reader_task is not None:
            await asyncio.gather(self._reader_task, return_exceptions=True)


async def _read_frame(reader: asyncio.StreamReader) -> tuple[dict, bytes]:
    meta_len, body_len = HEADER.unpack(await reader.readexactly(HEADER.size))
    data = await reader.readexactly(meta_len + body_len)
    return orjson.loads(data[:meta_len]), data[meta_len:]


class WorkerPool:
    def __init__(
        self,
        model: ModelVersion,
        workers: int = 1,
        intra_op_threads: int = 1,
        max_batch_rows: int = 4096,
        start_timeout: float = 60.0,
        cpus: tuple[int, ...] | None = None,
    ):
        self.model = model
        self.start_timeout = start_timeout
        self.spec_json = orjson.dumps({
            "runtime": model.runtime,
            "model_file": str(model.model_file),
            "model_dir": str(model.directory),
            "parameters": model.parameters,
            "intra_op_threads": intra_op_threads,
            "inter_op_threads": 1,
            "max_batch_rows": max_batch_rows,
            "cpus": cpus,  # the worker pins itself there before it loads the model (gateway.parallel.cpus)
        }).decode()
        self._workers = [_Worker(self, i) for i in range(max(1, workers))]
        self._seq = itertools.count()
        self._stopping = False
        self._restarts: set[asyncio.Task] = set()

    @property
    def ready(self) -> bool:
        return any(w.alive for w in self._workers)

    async def start(self) -> None:
        await asyncio.gather(*(w.start() for w in self._workers))
        log.info("model %s ready in %d worker(s)", self.model.key, len(self._workers))

    def on_worker_exit(self, worker: _Worker) -> None:
        if self._stopping:
            return
        metrics.WORKER_RESTARTS.labels(self.model.name, self.model.version).inc()
        log.error("worker %s#%d exited; restarting it", self.model.key, worker.index)
        task = asyncio.create_task(self._restart(worker))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _restart(self, worker: _Worker) -> None:
        delay = 0.1
        while not self._stopping:
            try:
                if worker.process is not None and worker.process.returncode is None:
                    worker.process.kill()
                    await worker.process.wait()
                await worker.start()
                return
            except Exception as exc:  # keep trying with back-off; the pool reports not ready meanwhile
                log.error("restarting worker %s#%d failed: %s", self.model.key, worker.index, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def predict(self, arrays: dict[str, np.ndarray], timeout: float, log: bool = False) -> Prediction:
        """The model's answer; with `log`, the worker also writes the request's scoring log."""
        live = [w for w in self._workers if w.alive]
        if not live:
            raise WorkerUnavailable(f"no live worker for {self.model.key}")
        worker = min(live, key=lambda w: len(w.pending))
        seq = next(self._seq)
        future = worker.send(seq, arrays, log)
        try:
            meta, body = await asyncio.wait_for(future, timeout)
        finally:
            worker.pending.pop(seq, None)
        if not meta.get("ok"):
            raise ScoringError(meta.get("error", "unknown error"))
        return prediction_from(meta, body)

    async def stop(self) -> None:
        self._stopping = True
        for task in list(self._restarts):
            task.cancel()
        await asyncio.gather(*(w.stop() for w in self._workers), return_exceptions=True)
