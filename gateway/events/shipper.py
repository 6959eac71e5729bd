"""The event shipper: a process of its own that turns what the gateway scored into Kafka records.

Building records and producing them to Kafka (batches, partitions, confirmations, spool) costs
more Python than the scoring they log, and the gateway's request loop is the process that
saturates first; so the loop only keeps each event's fields as a tuple beside the scoring log
the worker wrote, and every 2 ms serialises the events since the last flush in one orjson call
and writes them to the shipper's socket (gateway.events.handover). The shipper makes them into
records and runs the EventLogger: queue, Kafka producer, disk spool and replay. Its metrics
come back to the gateway once a second (scorers.protocol frames) and are re-exported on the
gateway's /metrics.

If the gateway dies, the shipper reads to the end of its socket, delivers or spools what it
has, and exits; a new shipper waits for the spool's lock, so two never write one spool.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any, Callable

import orjson
from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric

from gateway.parallel.cpus import pin_process
from scorers.protocol import HEADER, encode

from .handover import frame, log_of, wires_from_batches
from .records import rows_json
from .spool import DiskSpool, WireRecord

if TYPE_CHECKING:
    from gateway.codecs.v2 import InferRequest
    from gateway.parallel.pool import Prediction

log = logging.getLogger("gateway.events")
METRICS_INTERVAL = 1.0
FLUSH_INTERVAL = 0.002  # one write to the shipper per 2 ms: fewer syscalls and wake-ups per event
# The shipper reads its socket at most this often: between reads it stops polling the socket,
# so events wait in the kernel's socket buffer (safe if the gateway dies: the shipper still
# reads them) and arrive in bursts; the fixed cost of a wake-up (epoll, read, callbacks: more
# than cutting an event's frame) is paid per burst, not per loop turn of the gateway. 100 ms
# rather than 20 or 50 ms: the shipper's CPU per request at 3,000 req/s is 12-14 µs against
# 20-26 µs at 50 ms (docs/benchmarks/logging-cost.md); events wait in Kafka batches for
# 2 x linger_ms (1 s) anyway.
READ_PAUSE = 0.100
BACKLOG_READ = 64 << 10  # a read at least this big leaves more waiting (the loops read 256 kB at most)
# What the kernel may hold between two reads (capped by net.core.wmem_max): 100 ms of events at
# 10,000 events/s is ~1 MB; beyond it the gateway's own write buffer holds the rest.
SOCKET_BUFFER_BYTES = 4 << 20


class EventShipper:
    """The gateway's side: never blocks; starts, watches and restarts the shipper process."""

    def __init__(self, settings: dict[str, Any], max_buffer_bytes: int = 256 << 20):
        self.settings = settings
        self.max_buffer_bytes = max_buffer_bytes
        self._process: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._rows: list[tuple] = []  # the events since the last flush: records.FIELDS' values
        self._logs: list[bytes] = []  # ... and each one's scoring log
        self._reader: asyncio.Task | None = None
        self._stopping = False
        self.lost = 0  # events that could not be handed over (shipper gone, buffer full)
        self.snapshot: list[dict[str, Any]] = []
        REGISTRY.register(self)

    # -- prometheus collector: the shipper's last snapshot, plus what was lost on the way ----
    def collect(self):
        for family in self.snapshot:
            metric = Metric(family["name"], family["documentation"], family["type"])
            for name, labels, value in family["samples"]:
                metric.add_sample(name, labels, value)
            yield metric
        lost = Metric("gateway_events_unshipped", "Events the gateway could not hand to the shipper.", "counter")
        lost.add_sample("gateway_events_unshipped_total", {}, float(self.lost))
        yield lost

    async def start(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        parent.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.events.shipper", "--fd", str(child.fileno()),
                "--settings", orjson.dumps(self.settings).decode(),
                pass_fds=(child.fileno(),), stdin=asyncio.subprocess.DEVNULL, env=env,
            )
        finally:
            child.close()
        reader, self._writer = await asyncio.open_unix_connection(sock=parent)
        self._reader = asyncio.create_task(self._read(reader))

    def log(self, row: tuple, request: InferRequest, prediction: Prediction | None) -> None:
        """Keeps the event's row (records.FIELDS' values) and the worker's scoring log
        (handover.log_of); the events since the last flush reach the shipper together, every 2 ms."""
        try:
            written = log_of(request, prediction)
        except TypeError:  # one event that cannot be serialised must not take others with it
            self._drop_unserialisable(1)
            return
        if not self._rows:
            asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self._flush)
        self._rows.append(row)
        self._logs.append(written)

    def _flush(self) -> None:
        rows, logs = self._rows, self._logs
        if not rows:
            return  # already flushed (stop() flushes at once)
        self._rows, self._logs = [], []
        writer = self._writer
        if writer is None or writer.is_closing() or writer.transport.get_write_buffer_size() > self.max_buffer_bytes:
            self.lost += len(rows)  # the shipper is gone or not reading: never block, never grow without bound
            return
        try:
            written = rows_json(rows)
        except TypeError:  # a bug somewhere: find the events that cannot be JSON, send the others
            kept = [i for i, row in enumerate(rows) if self._serialisable(row)]
            self._drop_unserialisable(len(rows) - len(kept))
            if not kept:
                return
            written, logs = rows_json([rows[i] for i in kept]), [logs[i] for i in kept]
        writer.write(frame(written, logs))

    @staticmethod
    def _serialisable(row: tuple) -> bool:
        try:
            rows_json([row])
        except TypeError:
            return False
        return True

    def _drop_unserialisable(self, count: int) -> None:
        """Counts events dropped for a value JSON cannot hold; called while handling the TypeError."""
        self.lost += count
        log.exception("%d scoring event(s) not serialisable; dropped and counted as unshipped", count)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                meta_len, body_len = HEADER.unpack(await reader.readexactly(HEADER.size))
                data = await reader.readexactly(meta_len + body_len)
                self.snapshot = orjson.loads(data[:meta_len]).get("metrics", self.snapshot)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        if not self._stopping:
            log.error("event shipper exited (code %s); restarting it", await self._process.wait())
            self._writer = None
            await self.start()

    async def stop(self, timeout: float = 30.0) -> None:
        """Closing the socket tells the shipper to deliver or spool everything, then exit."""
        self._stopping = True
        self._flush()
        if self._writer is not None:
            self._writer.write_eof()
        if self._process is not None:
            try:
                await asyncio.wait_for(self._process.wait(), timeout)
            except asyncio.TimeoutError:
                log.error("event shipper did not finish within %.0f s; killing it (its spool keeps what it had)", timeout)
                self._process.kill()
                await self._process.wait()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        REGISTRY.unregister(self)


# -- the shipper process ---------------------------------------------------------------------

def _metrics_snapshot() -> list[dict[str, Any]]:
    return [
        {"name": family.name, "documentation": family.documentation, "type": family.type,
         "samples": [(s.name, s.labels, s.value) for s in family.samples]}
        for family in REGISTRY.collect() if family.name.startswith("gateway_event")
    ]


class _Inbox(asyncio.Protocol):
    """The shipper's end of the socket: hands the Kafka records of complete batches to `on_wires`
    in bursts, at most one burst per READ_PAUSE (reading is paused in between, unless a backlog
    is waiting), and the rest at end of stream."""

    def __init__(self, topic: str, on_wires: Callable[[list[WireRecord]], None]):
        self.topic = topic
        self.on_wires = on_wires
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self._chunks: list[bytes] = []  # received, not yet split into frames
        self._pending = b""  # the start of a frame whose end has not arrived yet
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(READ_PAUSE, self._burst)
        # A short read drained the socket: sleep until the burst is due. A full one means a
        # backlog: keep reading, or the shipper would take one read (256 kB) per READ_PAUSE and
        # fall behind any faster gateway (it did: ~3,700 events/s).
        if len(data) < BACKLOG_READ:
            self.transport.pause_reading()

    def _burst(self) -> None:
        self._timer = None
        self._deliver()
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def _deliver(self) -> None:
        data = b"".join([self._pending, *self._chunks])
        self._chunks.clear()
        wires, used, broken = wires_from_batches(data, self.topic)
        self._pending = data[used:]
        if broken:
            from .metrics import EVENTS  # here, not at the top: the gateway imports this module and re-exports these metrics

            EVENTS.labels(self.topic, "dropped").inc(broken)
        if wires:
            self.on_wires(wires)

    def eof_received(self) -> bool:
        return False  # close: the gateway stopped or died

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deliver()
        if not self.closed.done():
            self.closed.set_result(None)


async def _ship(sock: socket.socket, settings: dict[str, Any]) -> None:
    from .logger import EventLogger

    spool = await asyncio.to_thread(DiskSpool.locked, settings["spool_dir"], settings["spool_max_bytes"],
                                    settings["spool_segment_bytes"], settings["spool_fsync"])
    logger = EventLogger(
        settings["bootstrap_servers"], settings["topic"], spool, queue_size=settings["queue_size"],
        linger_ms=settings["linger_ms"], compression=settings["compression"],
        stall_timeout=settings["stall_timeout"], create_topics=settings["create_topics"],
    )
    await logger.start()
    loop = asyncio.get_running_loop()
    transport, inbox = await loop.connect_accepted_socket(lambda: _Inbox(settings["topic"], logger.log_wires), sock)

    async def report() -> None:
        while not transport.is_closing():
            transport.write(encode({"metrics": _metrics_snapshot()}))
            await asyncio.sleep(METRICS_INTERVAL)

    reporter = asyncio.create_task(report())
    try:
        await inbox.closed
    finally:
        reporter.cancel()
        await logger.stop()
        transport.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.events.shipper")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--settings", required=True)
    args = parser.parse_args(argv)
    # The gateway decides when the shipper stops: a process group of its own keeps a terminal's
    # Ctrl-C away from it. Not a session of its own: with autogroup scheduling a session is a
    # scheduling group, weighed like the whole gateway.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # a background group may still write to the terminal
    os.setpgid(0, 0)
    # Logging must never slow scoring, and must keep up with it. SCHED_BATCH: a shipper waking up
    # waits for the running request to finish its slice instead of preempting it. Niced
    # (kafka.shipper_nice, 19 by default): where it shares a core with the request loop, the loop
    # comes first; the closed loop kept 83.8% of logging off over 16 gateway starts, against
    # 80.2% at the gateway's own priority, with the shipper keeping up and Kafka confirming
    # every event (docs/benchmarks/logging-cost.md, twenty-fourth session). Starved (every core
    # busy for long), it falls behind rather than slowing answers; its stall detection does not
    # count the time it waits for a core against Kafka (EventLogger._watch). What waits sits in
    # its socket and the gateway's write buffer (EventShipper.max_buffer_bytes, then counted as
    # unshipped), then in its queue and spool (docs/events.md, kafka.shipper_nice).
    if hasattr(os, "sched_setscheduler"):  # Linux
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    settings = orjson.loads(args.settings)
    os.nice(settings.get("nice", 0))  # relative to the gateway's: lowering a priority needs no privilege
    if settings.get("cpus"):  # off the request loop's CPUs (server.loop_cpus)
        pin_process(settings["cpus"])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[shipper]: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    import uvloop

    from . import logger  # noqa: F401  imported before the freeze below
    # Every event allocates a few short-lived dicts and lists and no reference cycles, so the
    # default collector (a pass every 700 allocations, over ever more survivors) cost ~40% of
    # the shipper's CPU; collect rarely, and never rescan what start-up left behind.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)

    uvloop.run(_ship(socket.socket(fileno=args.fd), settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
