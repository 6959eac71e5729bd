"""Delivers scoring events to Kafka without ever making a caller wait, and without losing any.

`log()` only appends to a bounded in-memory queue. A drain task hands records to an idempotent
aiokafka producer (acks=all) and tracks each one until Kafka confirms it. When Kafka is down or
slow (a send or a confirmation takes longer than `stall_timeout`), records go to the disk spool
instead, and so does everything after them, so order is kept; a replay task sends the spool
back in order once the broker answers again, then delivery returns to direct mode.

Delivery is at least once: a record handed to the spool while its first send was still pending
can arrive twice (counted as `resent`); `event_id` identifies duplicates downstream.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaProducer

from gateway import metrics

from .records import to_wire
from .topics import ensure_topics
from .spool import DiskSpool, WireRecord

log = logging.getLogger("gateway.events")


class EventLogger:
    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        spool: DiskSpool,
        queue_size: int = 100_000,
        linger_ms: int = 5,
        compression: str | None = "lz4",
        stall_timeout: float = 2.0,
        max_in_flight: int = 50_000,
        replay_batch: int = 1000,
        create_topics: tuple[list[str], int, int] | None = None,
    ):
        self.topic = topic
        self.spool = spool
        self.stall_timeout = stall_timeout
        self.max_in_flight = max_in_flight
        self.replay_batch = replay_batch
        self._create_topics = create_topics  # (names, partitions, replication factor)
        self._producer_args = dict(
            bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=True,
            linger_ms=linger_ms, compression_type=compression, max_batch_size=512 * 1024,
            request_timeout_ms=30_000, retry_backoff_ms=200,
        )
        self._producer: AIOKafkaProducer | None = None
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=queue_size)
        self._in_flight: dict[asyncio.Future, tuple[WireRecord, float]] = {}
        self._spooling = not spool.drained  # records left from an earlier run go first
        self._spool_full = False
        self._tasks: list[asyncio.Task] = []
        self._closers: set[asyncio.Task] = set()
        self._closing = False
        self._count = {o: metrics.EVENTS.labels(topic, o) for o in
                       ("queued", "delivered", "spooled", "replayed", "dropped", "failed", "resent")}
        metrics.EVENT_SPOOL_BYTES.set(spool.size_bytes)

    # -- the caller's side -------------------------------------------------------------------

    def log(self, record: dict[str, Any]) -> None:
        """Never blocks: queue it, or spool it when the queue is full."""
        if self._closing:
            self._to_spool([to_wire(record, self.topic)])
            return
        try:
            self._queue.put_nowait(record)
            self._count["queued"].inc()
        except asyncio.QueueFull:  # Kafka is not keeping up: the spool takes over
            self._enter_spooling([to_wire(record, self.topic)])

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Returns at once: connecting to Kafka happens in the background, spooling meanwhile."""
        self._tasks = [asyncio.create_task(t) for t in (self._connect(), self._drain(), self._watch(), self._replay())]

    async def stop(self, timeout: float = 15.0) -> None:
        """Deliver what is queued if Kafka lets us within `timeout`; spool whatever it does not."""
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (not self._queue.empty() or self._in_flight or (self._spooling and not self.spool.drained
               and self._producer is not None)) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        leftover = []
        while not self._queue.empty():
            leftover.append(to_wire(self._queue.get_nowait(), self.topic))
        leftover.extend(record for record, _ in self._in_flight.values())
        self._in_flight.clear()
        self._to_spool(leftover)
        if self._producer is not None:
            await self._close(self._producer)
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

    def _fail(self, reason: str, unsent: list[WireRecord]) -> None:
        """Kafka let us down: spool `unsent` and all in flight, and start over with a new producer.

        A fresh producer matters: after expired batches an idempotent producer's sequence numbers
        are out of step with the broker (OutOfOrderSequenceNumber) and it never recovers by itself.
        """
        stalled = [wire for wire, _ in self._in_flight.values()]
        self._in_flight.clear()
        self._enter_spooling(stalled + unsent)
        if self._producer is not None:
            log.warning("Kafka delivery failed (%s); spooling events and reconnecting", reason)
            old, self._producer = self._producer, None
            task = asyncio.create_task(self._close(old))
            self._closers.add(task)
            task.add_done_callback(self._closers.discard)

    # -- direct delivery ----------------------------------------------------------------------

    async def _drain(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < 1000:
                batch.append(self._queue.get_nowait())
            metrics.EVENT_QUEUE_DEPTH.set(self._queue.qsize())
            wires = [to_wire(r, self.topic) for r in batch]
            for i, wire in enumerate(wires):
                if self._spooling or self._producer is None or len(self._in_flight) >= self.max_in_flight:
                    self._enter_spooling(wires[i:])
                    break
                try:
                    future = await asyncio.wait_for(self._send(wire), self.stall_timeout)
                except Exception as exc:  # the producer's buffer did not move: Kafka is not taking data
                    self._fail(f"send: {exc!r}", wires[i:])
                    break
                self._in_flight[future] = (wire, time.monotonic())
                future.add_done_callback(self._on_delivery)
            metrics.EVENTS_IN_FLIGHT.set(len(self._in_flight))

    async def _send(self, wire: WireRecord) -> asyncio.Future:
        return await self._producer.send(wire.topic, wire.value, key=wire.key, headers=list(wire.headers))

    def _on_delivery(self, future: asyncio.Future) -> None:
        entry = self._in_flight.pop(future, None)
        failed = future.cancelled() or future.exception() is not None
        if entry is None:  # already handed to the spool as stalled
            if not failed:
                self._count["resent"].inc()
            return
        wire, sent_at = entry
        if failed:
            self._count["failed"].inc()
            self._fail(f"delivery: {None if future.cancelled() else future.exception()!r}", [wire])
        else:
            self._count["delivered"].inc()
            metrics.EVENT_DELIVERY_LATENCY.observe(time.monotonic() - sent_at)

    async def _watch(self) -> None:
        """Spools records whose confirmation is overdue, so memory stays bounded while Kafka is away."""
        while True:
            await asyncio.sleep(min(0.25, self.stall_timeout / 4))
            now = time.monotonic()
            if self._in_flight and now - min(t for _, t in self._in_flight.values()) > self.stall_timeout:
                self._fail(f"{len(self._in_flight)} events unconfirmed for {self.stall_timeout:.1f} s", [])
            metrics.EVENTS_IN_FLIGHT.set(len(self._in_flight))
            metrics.EVENT_QUEUE_DEPTH.set(self._queue.qsize())

    # -- spooling and replay ------------------------------------------------------------------

    def _enter_spooling(self, wires: list[WireRecord]) -> None:
        self._spooling = True
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
            if not self._spool_full:
                log.error("spool full at %d bytes (limit %d): dropping new events until it drains",
                          self.spool.size_bytes, self.spool.max_bytes)
            self._spool_full = True
        elif self._spool_full:
            self._spool_full = False
        metrics.EVENT_SPOOL_FULL.set(1 if self._spool_full else 0)

    async def _replay(self) -> None:
        while True:
            if not self._spooling or self._in_flight or self._producer is None:
                await asyncio.sleep(0.05)
                continue
            records, position = self.spool.read(self.replay_batch)
            if not records:
                # Nothing unread: back to direct delivery (no await between check and switch).
                if self.spool.empty:
                    self.spool.acknowledge(position)
                    self._spooling = False
                    metrics.EVENT_SPOOL_BYTES.set(self.spool.size_bytes)
                    log.info("spool replayed; delivering events directly again")
                await asyncio.sleep(0.05)
                continue
            futures: list[asyncio.Future] = []
            try:
                for record in records:
                    futures.append(await asyncio.wait_for(self._send(record), self.stall_timeout))
                    futures[-1].add_done_callback(_retrieve)
                done, pending = await asyncio.wait(futures, timeout=self.stall_timeout * 5)
                errors = [f.exception() for f in done if not f.cancelled() and f.exception() is not None]
                if pending or errors:
                    raise RuntimeError(f"{len(pending)} unconfirmed, first error {errors[0] if errors else None!r}")
            except Exception as exc:
                self.spool.rewind()
                self._fail(f"replay: {exc!r}", [])
                continue
            self.spool.acknowledge(position)
            self._count["replayed"].inc(len(records))
            metrics.EVENT_SPOOL_BYTES.set(self.spool.size_bytes)


def _retrieve(future: asyncio.Future) -> None:
    """Marks a replay future's exception as seen; the replay loop reports it."""
    if not future.cancelled():
        future.exception()
