"""Delivers scoring events to Kafka without ever making a caller wait, and without losing any.

`log_wires()` only appends records, already serialised, to a bounded in-memory queue. A drain
task packs them into Kafka record batches per partition itself (one future per batch, not per
record: per-record sends cost more CPU than the scoring they log) and hands them to an
idempotent aiokafka producer (acks=all), tracking each batch until Kafka confirms it. When
Kafka is down or slow (a send or a confirmation takes longer than `stall_timeout` of the
shipper's own time, `_watch`), records go to the disk spool instead, and so does everything
after them, so order is kept; a replay task sends the spool back in order once the broker
answers again, then delivery returns to direct mode (`gateway_event_spooling` says which).

Delivery is at least once: a record handed to the spool while its first send was still pending,
or read from the spool again after a replay turn failed part-way, can arrive twice (each copy
Kafka confirms beyond the first is counted as `resent`); `event_id` identifies duplicates downstream.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Awaitable

import numpy as np
from aiokafka import AIOKafkaProducer
from aiokafka import codec
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record import default_records

from gateway.config import KafkaConfig
from gateway.parallel.cpus import run_queue_wait

from . import metrics
from .partitions import partitions_of
from .spool import DiskSpool, WireRecord
from .topics import ensure_topics

_CONFIGURED = KafkaConfig()  # the logger's defaults are the config's, so the two cannot drift apart

log = logging.getLogger("gateway.events")
DELIVERY_FAILED = "Kafka delivery failed"  # how the log says the shipper gave up on Kafka and spooled


def _lz4_fast_level(payload: Any) -> bytes:
    """aiokafka's lz4 framing (what brokers and consumers read), at level 0 instead of 9."""
    return codec.lz4_encode(payload, 0)


def use_fast_lz4() -> None:
    """Makes aiokafka compress lz4 batches at the fast level 0, process-wide; idempotent.

    aiokafka compresses at level 9 (LZ4-HC) and offers no setting for it: on event batches
    that is 3x the CPU of level 0 for 5-10% smaller batches. The level changes only how hard
    the compressor searches, not the frame format, so readers see no difference
    (tests/test_event_encoding.py reads such batches back with aiokafka). Both batch builders
    (pure Python and the C extension aiokafka uses when built) look `lz4_encode` up in their
    module globals on each call, so replacing that name is enough. Called by
    `EventLogger.start()`: the shipper process is the only producer it affects.
    """
    default_records.lz4_encode = _lz4_fast_level
    try:
        from aiokafka.record._crecords import default_records as c_records
    except ImportError:
        return
    c_records.lz4_encode = _lz4_fast_level


def _append(batch: BatchBuilder, wires: list[WireRecord], start: int) -> int:
    """Appends wires[start:] to an aiokafka batch until it is full; returns where it stopped.

    Straight to the batch's record builder (C when aiokafka's extension is built): aiokafka's
    per-record wrapper cost as much as the builder itself. Its bookkeeping (the next relative
    offset) is kept as the wrapper keeps it; a test pins both attributes, so an aiokafka that
    renames them fails there, not here."""
    offset, end = batch._relative_offset, start
    append = batch._builder.append
    for wire in wires[start:] if start else wires:
        if append(offset, None, wire.key, wire.value, wire.headers) is None:
            break
        offset += 1
        end += 1
    batch._relative_offset = offset
    return end


class EventLogger:
    # Records packed into Kafka batches and sent per turn of the drain loop, at most: the broker's
    # CPU goes mostly per produce request, so one turn per linger takes all that waits (at
    # saturation, ~4,000 records per 500 ms).
    DRAIN_BATCH = 20_000
    # Spooled records read and sent per turn of the replay loop, each turn sent at once and
    # confirmed before the next: the replay must outpace new events, which queue behind it in the
    # spool. 2,000 per turn, lingering in aiokafka's queue, replayed 3,600 events/s and never
    # caught up with 7,000/s arriving (loadtests/spool_replay.py).
    REPLAY_BATCH = 20_000
    # A replay turn may take this many `stall_timeout`s of the shipper's own time, from its send
    # to Kafka's last confirmation, before Kafka is given up on: it is a whole spool read, sent at once.
    REPLAY_STALLS = 5
    MAX_IN_FLIGHT = 50_000  # unconfirmed records beyond which new ones go to the spool (bounds memory)
    MAX_EVENT_BYTES = 1_000_000  # the broker's default message.max.bytes, with room for headers

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        spool: DiskSpool,
        queue_size: int = _CONFIGURED.queue_size,
        linger_ms: int = _CONFIGURED.linger_ms,
        compression: str | None = _CONFIGURED.compression,
        stall_timeout: float = _CONFIGURED.stall_timeout_ms / 1000,
        create_topics: tuple[list[str], int, int] | None = None,
    ):
        self.topic = topic
        self.spool = spool
        self.stall_timeout = stall_timeout
        self.linger = linger_ms / 1000
        self._create_topics = create_topics  # (names, partitions, replication factor)
        self._producer_args = dict(
            bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=True,
            # The producer lingers too, after the drain's own linger: each batch waits up to twice
            # `linger_ms`, but the batches of consecutive drain turns go out together. With
            # linger_ms=0 here the broker's CPU per request at saturation was 30-35 µs, with
            # 500 ms 9-10 µs (docs/benchmarks/logging-cost.md).
            linger_ms=linger_ms, compression_type=compression, max_batch_size=1024 * 1024,
            request_timeout_ms=30_000, retry_backoff_ms=200,
        )
        self._producer: AIOKafkaProducer | None = None
        self._partitions: int | None = None  # learnt from each new producer's metadata
        # Records already serialised (WireRecords), so the drain only packs them into batches.
        self._queue: deque[WireRecord] = deque()
        self._queue_size = queue_size
        self._queued = asyncio.Event()
        # Each batch Kafka has not confirmed: its records, when it was sent, and when on the
        # shipper's own clock (`_own_time`), which the stall detection goes by.
        self._in_flight: dict[asyncio.Future, tuple[list[WireRecord], float, float]] = {}
        self._lost = 0.0  # seconds so far the shipper could not attend to Kafka (`_watch`)
        # The drain's send and the replay's turn under way (aiokafka waits for room in its queue
        # while the broker has not taken the batches before; a turn also waits for Kafka to
        # confirm it), each with when it started on the shipper's own clock and how long it may
        # take: `_watch` cancels those overdue, and their callers spool or re-read their records.
        self._under_way: dict[asyncio.Future, tuple[float, float]] = {}
        self._in_flight_records = 0
        self._abandoned: dict[asyncio.Future, int] = {}
        self._set_spooling(not spool.drained)  # records left from an earlier run go first
        self._spool_full = False
        self._tasks: list[asyncio.Task] = []
        self._closers: set[asyncio.Task] = set()
        self._closing = False
        self._count = {o: metrics.EVENTS.labels(topic, o) for o in
                       ("queued", "delivered", "spooled", "replayed", "dropped", "failed", "resent")}
        metrics.EVENT_SPOOL_BYTES.set(spool.size_bytes)

    # -- the caller's side -------------------------------------------------------------------

    def log_wires(self, wires: list[WireRecord]) -> None:
        """Never blocks: queues records already serialised (a burst at a time: the bookkeeping is
        per call, not per record); what does not fit in the queue goes to the spool."""
        if self._closing:
            self._to_spool(wires)
            return
        room = self._queue_size - len(self._queue)
        if room > 0:
            accepted = wires if len(wires) <= room else wires[:room]
            self._queue.extend(accepted)
            self._count["queued"].inc(len(accepted))
            self._queued.set()
        if room < len(wires):  # Kafka is not keeping up: the spool takes over
            self._enter_spooling(wires[max(room, 0):])

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Returns at once: connecting to Kafka happens in the background, spooling meanwhile."""
        use_fast_lz4()
        self._tasks = [asyncio.create_task(t) for t in (self._connect(), self._drain(), self._watch(), self._replay())]

    async def stop(self, timeout: float = 15.0) -> None:
        """Deliver what is queued if Kafka lets us within `timeout`; spool whatever it does not."""
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self._queue or self._under_way or self._in_flight or (self._spooling and not self.spool.drained
               and self._producer is not None)) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        leftover = list(self._queue)
        self._queue.clear()
        self._to_spool(self._take_in_flight() + leftover)
        if self._producer is not None:
            await self._close(self._producer)
        await asyncio.gather(*self._closers, return_exceptions=True)  # producers given up on, still closing
        self.spool.close()
        log.info("event log stopped: %d bytes left in the spool for the next start", self.spool.size_bytes)

    async def _connect(self) -> None:
        """Keeps one healthy producer: (re)connects whenever there is none, with back-off."""
        delay = 0.5
        while True:
            if self._producer is not None:
                await asyncio.sleep(0.1)
                continue
            producer = AIOKafkaProducer(**self._producer_args)
            try:
                if self._create_topics:
                    await ensure_topics(self._producer_args["bootstrap_servers"], *self._create_topics)
                    self._create_topics = None
                await producer.start()
                self._partitions = None
            except Exception as exc:
                await self._close(producer)
                log.warning("Kafka not reachable (%s); events go to the spool; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._producer = producer
            delay = 0.5
            log.info("event log connected to Kafka; topic %s", self.topic)

    @staticmethod
    async def _close(producer: AIOKafkaProducer) -> None:
        try:
            await asyncio.wait_for(producer.stop(), 1)
        except Exception:
            # stop() waits for its unsent batches, which a dead broker never takes; its records
            # are already in the spool, so end its sender and connections (else they retry in a
            # tight loop until the broker returns).
            sender = getattr(producer, "_sender", None)
            if sender is not None:
                await sender.close()
            await producer.client.close()

    def _take_in_flight(self) -> list[WireRecord]:
        records = [wire for wires, _, _ in self._in_flight.values() for wire in wires]
        # Kept to count records that still arrive after being spooled (duplicates downstream).
        self._abandoned.update((future, len(wires)) for future, (wires, _, _) in self._in_flight.items())
        self._in_flight.clear()
        self._in_flight_records = 0
        metrics.EVENTS_IN_FLIGHT.set(0)  # at once, so /metrics never shows spooled events as in flight
        return records

    def _fail(self, reason: str, unsent: list[WireRecord]) -> None:
        """Kafka let us down: spool `unsent` and all in flight, and start over with a new producer.

        A fresh producer matters: after expired batches an idempotent producer's sequence numbers
        are out of step with the broker (OutOfOrderSequenceNumber) and it never recovers by itself.
        """
        self._enter_spooling(self._take_in_flight() + unsent)
        if self._producer is not None:
            log.warning("%s (%s); spooling events and reconnecting", DELIVERY_FAILED, reason)
            old, self._producer = self._producer, None
            task = asyncio.create_task(self._close(old))
            self._closers.add(task)
            task.add_done_callback(self._closers.discard)

    # -- sending ------------------------------------------------------------------------------

    async def _send(self, wires: list[WireRecord],
                    at_once: bool = False) -> list[tuple[asyncio.Future, list[WireRecord]]]:
        """Packs records into one batch per partition (more when a batch fills) and sends them;
        full batches go without lingering in aiokafka's queue (it sends a closed batch at once),
        and with `at_once` the last batch of each partition too.

        Returns each batch's future with its records. Raises if Kafka does not take a batch.
        """
        producer = self._producer
        if self._partitions is None:
            self._partitions = len(await producer.partitions_for(self.topic))
        partition_of = partitions_of([wire.key for wire in wires], self._partitions)
        sent = []
        for partition in np.unique(partition_of).tolist():
            group = [wires[i] for i in np.flatnonzero(partition_of == partition).tolist()]
            start = 0
            while start < len(group):
                batch = producer.create_batch()
                end = _append(batch, group, start)
                # A full batch goes at once: the partition's next one waits until it is sent, so n
                # lingering full batches took n lingers and the send was judged stalled (docs/events.md).
                if at_once or end < len(group):
                    batch.close()
                if end == start:
                    raise ValueError(f"an event of {len(group[start].value)} bytes exceeds the producer's batch size")
                future = await producer.send_batch(batch, self.topic, partition=partition)
                sent.append((future, group[start:end]))
                start = end
        return sent

    def _take(self, limit: int) -> list[WireRecord]:
        queue = self._queue
        if len(queue) <= limit:
            taken = list(queue)
            queue.clear()
        else:
            taken = [queue.popleft() for _ in range(limit)]
        if not queue:
            self._queued.clear()
        return taken

    async def _drain(self) -> None:
        while True:
            await self._queued.wait()
            if len(self._queue) < self.DRAIN_BATCH:
                await asyncio.sleep(self.linger)  # gather more: fewer, fuller Kafka batches
            wires = self._fitting(self._take(self.DRAIN_BATCH))
            metrics.EVENT_QUEUE_DEPTH.set(len(self._queue))
            if not wires:
                continue
            if self._spooling or self._producer is None or self._in_flight_records >= self.MAX_IN_FLIGHT:
                self._enter_spooling(wires)
                continue
            try:
                sent, failure = await self._within(self._send(wires), self.stall_timeout, "took no batch")
            except asyncio.CancelledError:  # stopping: these records are in no queue, so spool them
                self._to_spool(wires)
                raise
            if failure is not None:  # Kafka is not taking data
                self._fail(f"send: {failure}", wires)
                continue
            now, own = time.monotonic(), self._own_time()
            for future, records in sent:
                self._in_flight[future] = (records, now, own)
                self._in_flight_records += len(records)
                future.add_done_callback(self._on_delivery)

    def _fitting(self, wires: list[WireRecord]) -> list[WireRecord]:
        """Drops (counted, logged) events over MAX_EVENT_BYTES: a broker refuses them (default
        message.max.bytes), so sending or spooling them would only retry a failure forever."""
        fitting = [w for w in wires if len(w.value) <= self.MAX_EVENT_BYTES]
        if len(fitting) < len(wires):
            self._count["dropped"].inc(len(wires) - len(fitting))
            log.error("%d events over %d bytes dropped (request with too many rows for one Kafka record)",
                      len(wires) - len(fitting), self.MAX_EVENT_BYTES)
        return fitting

    def _on_delivery(self, future: asyncio.Future) -> None:
        entry = self._in_flight.pop(future, None)
        failed = future.cancelled() or future.exception() is not None
        if entry is None:  # already handed to the spool as stalled
            abandoned = self._abandoned.pop(future, 0)
            if not failed:
                self._count["resent"].inc(abandoned)
            return
        records, sent_at, _ = entry
        self._in_flight_records -= len(records)
        if failed:
            self._count["failed"].inc(len(records))
            self._fail(f"delivery: {None if future.cancelled() else future.exception()!r}", records)
        else:
            self._count["delivered"].inc(len(records))
            metrics.EVENT_DELIVERY_LATENCY.observe(time.monotonic() - sent_at)

    async def _watch(self) -> None:
        """Spools records whose confirmation is overdue, so memory stays bounded while Kafka is away,
        and ends sends and replay turns under way for too long (`_within`: their records are
        spooled, or read from the spool again).

        Overdue in the shipper's own time, for both: while it could not run, its batches may not
        even have been sent, and Kafka's confirmations wait unread in its socket. So two kinds of
        time are not counted against Kafka: the time it woke late (its own long burst; the loop
        runs due timers before it reads sockets) and the time it waited for a core (every core
        busy; at nice 19 it waits most of the time on a busy core, and not only to wake up).
        Counted, each once spooled a healthy broker's events (docs/benchmarks/logging-cost.md).
        Per tick, the larger of the two: a late wake-up spent waiting for a core is both."""
        interval = min(0.25, self.stall_timeout / 4)
        waited = run_queue_wait() or 0.0
        while True:
            due = time.monotonic() + interval
            await asyncio.sleep(interval)
            late = max(0.0, time.monotonic() - due)
            waited_before, waited = waited, run_queue_wait() or waited
            self._lost += max(late, waited - waited_before)
            now = self._own_time()
            oldest = min((t for _, _, t in self._in_flight.values()), default=None)
            if oldest is not None and now - oldest > self.stall_timeout:
                self._fail(f"{self._in_flight_records} events unconfirmed for {self.stall_timeout:.1f} s", [])
            for work, (started, limit) in list(self._under_way.items()):
                if now - started > limit:
                    work.cancel()
            metrics.EVENTS_IN_FLIGHT.set(self._in_flight_records)
            metrics.EVENT_QUEUE_DEPTH.set(len(self._queue))

    async def _within(self, work: Awaitable, limit: float, overdue: str) -> tuple[Any, str | None]:
        """Runs `work`: (its result, None), or (None, why it failed): it raised, or `_watch`
        cancelled it for taking over `limit` seconds of the shipper's own time (then "Kafka
        `overdue` within `limit` s")."""
        future = asyncio.ensure_future(work)
        self._under_way[future] = (self._own_time(), limit)
        try:
            await asyncio.wait((future,))
        except asyncio.CancelledError:
            future.cancel()
            raise
        finally:
            del self._under_way[future]
        if future.cancelled():
            return None, f"Kafka {overdue} within {limit:.1f} s"
        if future.exception() is not None:
            return None, repr(future.exception())
        return future.result(), None

    def _own_time(self) -> float:
        """The shipper's own clock: monotonic time less the time it could not attend to Kafka
        (woke late, or waited for a core: `_watch`)."""
        return time.monotonic() - self._lost

    # -- spooling and replay ------------------------------------------------------------------

    @property
    def spooling(self) -> bool:
        """Whether new events go to the spool rather than straight to Kafka (`gateway_event_spooling`)."""
        return self._spooling

    def _set_spooling(self, spooling: bool) -> None:
        self._spooling = spooling
        metrics.EVENT_SPOOLING.set(1 if spooling else 0)

    def _enter_spooling(self, wires: list[WireRecord]) -> None:
        self._set_spooling(True)
        self._to_spool(wires)

    def _to_spool(self, wires: list[WireRecord]) -> None:
        if not wires:
            return
        accepted = self.spool.append(wires)
        self._count["spooled"].inc(accepted)
        metrics.EVENT_SPOOL_BYTES.set(self.spool.size_bytes)
        dropped = len(wires) - accepted
        if dropped:
            self._count["dropped"].inc(dropped)
            if not self._spool_full:  # once per episode: the counter and the gauge tell the rest
                log.error("spool full at %d bytes (limit %d): dropping new events until it drains",
                          self.spool.size_bytes, self.spool.max_bytes)
        self._spool_full = dropped > 0
        metrics.EVENT_SPOOL_FULL.set(1 if self._spool_full else 0)

    async def _replay(self) -> None:
        while True:
            if not self._spooling or self._in_flight or self._producer is None:
                await asyncio.sleep(0.05)
                continue
            records, position = self.spool.read(self.REPLAY_BATCH)
            if not records:
                # Nothing unread: back to direct delivery (no await between check and switch).
                if self.spool.empty:
                    self.spool.acknowledge(position)
                    self._set_spooling(False)
                    metrics.EVENT_SPOOL_BYTES.set(self.spool.size_bytes)
                    log.info("spool replayed; delivering events directly again")
                await asyncio.sleep(0.05)
                continue
            _, failure = await self._within(self._replay_turn(records), self.stall_timeout * self.REPLAY_STALLS,
                                            "confirmed no turn")
            if failure is not None:
                self.spool.rewind()
                self._fail(f"replay: {failure}", [])
                continue
            self.spool.acknowledge(position)
            self._count["replayed"].inc(len(records))
            metrics.EVENT_SPOOL_BYTES.set(self.spool.size_bytes)

    async def _replay_turn(self, records: list[WireRecord]) -> None:
        """Sends one read of the spool at once and returns once Kafka has confirmed all of it;
        raises if a batch fails. If it fails, or is cancelled for taking too long (`_within`),
        the spool is read again from the turn's start, so the batches Kafka confirmed, now or
        later, arrive twice: they are counted as resent."""
        sent: list[tuple[asyncio.Future, list[WireRecord]]] = []
        try:
            sent = await self._send(records, at_once=True)
            for future, _ in sent:
                future.add_done_callback(self._on_delivery)  # counts it if it is abandoned below
            done, _ = await asyncio.wait([future for future, _ in sent], return_when=asyncio.FIRST_EXCEPTION)
            for future in done:
                if future.cancelled():
                    raise RuntimeError("a replayed batch was cancelled")
                if future.exception() is not None:
                    raise future.exception()
        except BaseException:
            for future, batch in sent:
                if not future.done():
                    self._abandoned[future] = len(batch)
                elif not future.cancelled() and future.exception() is None:
                    self._count["resent"].inc(len(batch))
            raise
