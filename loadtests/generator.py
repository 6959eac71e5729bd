"""One load-generator process: sends its share of a run's requests and measures them.

Open loop (constant or Poisson arrivals): every request has an intended send time fixed before
the run; latency is completion minus that intended time, so time spent waiting for a free
connection, or for a generator that fell behind, counts against the server as it would for a
real caller. How late the generator itself was (dispatch lag) is recorded on the side, so a
report can tell a slow server from a slow generator.
Closed loop: `connections` clients each send, wait for the answer, and send again; latency
runs from the actual send. Kept for comparison: it hides stalls (coordinated omission).

Only requests due inside the measurement window (after the warm-up) are recorded. Every run is
bounded: by its duration, by a request count, and by a per-request timeout counted from the
intended send time; whatever is still unanswered at the end is recorded as a failure.
"""
from __future__ import annotations

import asyncio
import gc
import time
import traceback
from array import array
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Literal

import numpy as np

from loadtests import histograms
from loadtests.httpclient import ConnectionPool, RequestFailed, parse_url
from loadtests.scenario import Request, RequestFactory, load_scenario
from loadtests.schedule import intended_offsets

Mode = Literal["constant", "poisson", "closed"]
# Outcomes are HTTP status codes, or these negative codes when no response came back.
FAILURES = {"timeout": -1, "connect": -2, "closed": -3, "protocol": -4, "unfinished": -5, "overflow": -6}
FAILURE_NAMES = {code: name for name, code in FAILURES.items()}
MIN_SLEEP = 0.001  # seconds; see _open_loop


@dataclass(frozen=True)
class WorkerSpec:
    url: str
    scenario: str
    mode: Mode
    rate: float | None  # the whole run's offered rate (open loop); each process sends rate/processes
    warmup: float
    duration: float
    connections: int  # this process's connection limit (closed loop: its number of clients)
    process: int
    processes: int
    seed: int
    timeout: float
    max_requests: int  # this process's request budget, warm-up included
    max_in_flight: int
    run_id: str
    bucket_s: float  # timeline resolution


def outcome_name(code: int) -> str:
    return FAILURE_NAMES.get(code, str(code))


class Generator:
    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.host, self.port, base = parse_url(spec.url)
        host_header = self.host if self.port == 80 else f"{self.host}:{self.port}"
        self.factory = RequestFactory(load_scenario(spec.scenario), host_header, base, process=spec.process,
                                      seed=spec.seed, run_id=spec.run_id)
        self.offsets: list[float] = []
        if spec.mode != "closed":
            self.offsets = intended_offsets(spec.mode, spec.rate, spec.warmup + spec.duration, process=spec.process,
                                            processes=spec.processes, seed=spec.seed,
                                            limit=spec.max_requests).tolist()
        # Raw per-request records of the measurement window, turned into histograms at the end.
        self.due = array("d")  # seconds after start (intended send; closed loop: actual send)
        self.latency = array("d")
        self.lag = array("d")
        self.kind = array("b")
        self.outcome = array("h")
        self.rows = array("q")
        self.ok_in_window = self.rows_in_window = self.responses_in_window = 0
        self.warmup_requests = 0
        self.in_flight = self.max_in_flight = 0
        self.cpu_marks: list[float] = []
        self.feedback: dict[str, int] = {}
        self.feedback_enabled = self.factory.scenario.feedback is not None
        self.warnings: list[str] = []
        self._tasks: set[asyncio.Task] = set()
        self._feedback_timers: deque[asyncio.TimerHandle] = deque()  # fire in order: one delay for all

    async def run(self, start_at: float) -> dict[str, Any]:
        spec = self.spec
        loop = asyncio.get_running_loop()
        self.start = start_at
        self.window = (start_at + spec.warmup, start_at + spec.warmup + spec.duration)
        self.pool = ConnectionPool(self.host, self.port, spec.connections)
        loop.call_later(max(0.0, self.window[0] - time.monotonic()), lambda: self.cpu_marks.append(time.process_time()))
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        if spec.mode == "closed":
            budget = iter(range(spec.max_requests))
            await asyncio.gather(*(self._client(budget) for _ in range(spec.connections)))
        else:
            await self._open_loop()
        await asyncio.sleep(max(0.0, self.window[1] - time.monotonic()))
        # The window's end mark, taken here: a timer for it raced this sleep to the same moment and,
        # when it lost, fired after the run had returned (the run then reported no CPU).
        self.cpu_marks.append(time.process_time())
        await self._drain()
        self.pool.close()
        return self._summarise()

    async def _open_loop(self) -> None:
        offsets, start, mono = self.offsets, self.start, time.monotonic
        loop = asyncio.get_running_loop()
        i, n = 0, len(offsets)
        while i < n:
            now = mono()
            while i < n and start + offsets[i] <= now:
                due = start + offsets[i]
                if self.in_flight >= self.spec.max_in_flight:
                    self._record(self.factory.make(i, offsets[i]), due, 0.0, FAILURES["overflow"], now)
                else:
                    task = loop.create_task(self._issue(self.factory.make(i, offsets[i]), due, now))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                i += 1
            if i < n:
                # The event loop's timers have 1 ms resolution and shorter sleeps spin a core the
                # server needs; the lateness this costs (< ~1 ms) is counted and shown as dispatch lag.
                await asyncio.sleep(max(start + offsets[i] - mono(), MIN_SLEEP))

    async def _client(self, budget) -> None:
        end, mono = self.window[1], time.monotonic
        for seq in budget:
            now = mono()
            if now >= end:
                return
            await self._issue(self.factory.make(seq, now - self.start), now, now)

    async def _issue(self, request: Request, due: float, dispatched: float) -> None:
        """Sends one request and records it; `due` is when it should have gone out."""
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        body = b""
        try:
            status, body = await self.pool.request(request.data, due + self.spec.timeout)
            outcome = status
        except RequestFailed as exc:
            outcome = FAILURES[exc.kind]
        except asyncio.CancelledError:
            outcome = FAILURES["unfinished"]
        finally:
            self.in_flight -= 1
        done = time.monotonic()
        self._record(request, due, dispatched - due, outcome, done)
        if self.feedback_enabled and 200 <= outcome < 300 and done < self.window[1] and self.factory.wants_feedback():
            self._feedback_timers.append(asyncio.get_running_loop().call_later(
                self.factory.scenario.feedback.delay_s, self._start_feedback, request, body))

    def _record(self, request: Request, due: float, lag: float, outcome: int, done: float) -> None:
        w0, w1 = self.window
        if w0 <= done < w1:
            self.responses_in_window += outcome > 0
            if 200 <= outcome < 300:
                self.ok_in_window += 1
                self.rows_in_window += request.rows
        if not w0 <= due < w1:
            self.warmup_requests += due < w0
            return
        self.due.append(due - self.start)
        self.latency.append(done - due)
        self.lag.append(lag)
        self.kind.append(request.kind)
        self.outcome.append(outcome)
        self.rows.append(request.rows)

    def _start_feedback(self, request: Request, response: bytes) -> None:
        self._feedback_timers.popleft()  # this one
        if not self.feedback_enabled:
            return
        data = self.factory.feedback(request, response)
        if data is None:
            self._count_feedback("unreadable_response")
            return
        task = asyncio.get_running_loop().create_task(self._send_feedback(data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_feedback(self, data: bytes) -> None:
        try:
            status, _ = await self.pool.request(data, time.monotonic() + self.spec.timeout)
            outcome = str(status)
        except RequestFailed as exc:
            outcome = exc.kind
        except asyncio.CancelledError:
            outcome = "unfinished"
        self._count_feedback(outcome)
        if outcome == "404" and self.feedback_enabled:
            self.feedback_enabled = False
            self.warnings.append(f"feedback endpoint {self.factory.scenario.feedback.path} answered 404: "
                                 "feedback skipped for the rest of the run")

    def _count_feedback(self, outcome: str, n: int = 1) -> None:
        self.feedback[outcome] = self.feedback.get(outcome, 0) + n

    async def _drain(self) -> None:
        """Lets in-flight requests finish or time out, then records stragglers as unfinished."""
        for handle in self._feedback_timers:
            handle.cancel()
        if self._feedback_timers and self.feedback_enabled:
            self._count_feedback("not_sent_run_ended", len(self._feedback_timers))
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.spec.timeout + 1.0)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=1.0)

    def _summarise(self) -> dict[str, Any]:
        """Encoded histograms and counters.

        Histograms: latency per request kind and per timeline bucket (from the intended send
        time), dispatch lag, and response time (from the actual send: what a closed-loop tool sees).
        """
        latency = np.frombuffer(self.latency, dtype=np.float64)
        kind = np.frombuffer(self.kind, dtype=np.int8)
        outcome = np.frombuffer(self.outcome, dtype=np.int16)
        rows = np.frombuffer(self.rows, dtype=np.int64)
        due = np.frombuffer(self.due, dtype=np.float64)
        lag = np.frombuffer(self.lag, dtype=np.float64)
        failed = (outcome < 200) | (outcome >= 400)
        kinds = {}
        for i, k in enumerate(self.factory.scenario.requests):
            mask = kind == i
            kinds[k.name] = {"histogram": histograms.encode(histograms.from_seconds(latency[mask])),
                             "rows": int(rows[mask].sum()), "errors": int(failed[mask].sum())}
        bucket = np.floor(due / self.spec.bucket_s).astype(np.int64)
        timeline = {}
        for b in np.unique(bucket).tolist():
            mask = bucket == b
            timeline[b] = {"histogram": histograms.encode(histograms.from_seconds(latency[mask])),
                           "errors": int(failed[mask].sum())}
        codes, counts = np.unique(outcome, return_counts=True)
        cpu = self.cpu_marks[1] - self.cpu_marks[0] if len(self.cpu_marks) == 2 else None
        return {
            "process": self.spec.process,
            "kinds": kinds,
            "timeline": timeline,
            "lag": histograms.encode(histograms.from_seconds(lag)),
            "response": histograms.encode(histograms.from_seconds(latency - lag)),
            "outcomes": {outcome_name(c): n for c, n in zip(codes.tolist(), counts.tolist())},
            "ok_in_window": self.ok_in_window,
            "rows_in_window": self.rows_in_window,
            "responses_in_window": self.responses_in_window,
            "warmup_requests": self.warmup_requests,
            "scheduled": len(self.offsets) if self.spec.mode != "closed" else None,
            "cpu_s": cpu,
            "max_in_flight": self.max_in_flight,
            "connections_opened": self.pool.opened,
            "feedback": self.feedback,
            "warnings": self.warnings,
        }


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Process entry: prepare, say ready, wait for the common start time, run, send the results."""
    try:
        import uvloop

        generator = Generator(spec)
        gc.freeze()  # the schedule and bodies live all run: keep them out of every collection's scan
        conn.send(("ready", None))
        message, start_at = conn.recv()
        if message != "start":
            return
        conn.send(("result", uvloop.run(generator.run(start_at))))
    except BaseException:  # the parent reports it; a silent worker would only look like a timeout
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()
