"""Hands scoring events to Kafka without ever making a caller wait for Kafka.

`log()` only appends to a bounded in-memory queue; a background task serialises the records
and gives them to an aiokafka producer (acks=all, idempotent, lz4-compressed batches).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaProducer

from gateway import metrics

from .records import serialize

log = logging.getLogger("gateway.events")


class EventLogger:
    def __init__(self, bootstrap_servers: str, topic: str, queue_size: int = 100_000,
                 linger_ms: int = 5, compression: str | None = "lz4"):
        self.topic = topic
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=queue_size)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=linger_ms,
            compression_type=compression,
            max_batch_size=256 * 1024,
            request_timeout_ms=30_000,
        )
        self._task: asyncio.Task | None = None
        self._pending: set[asyncio.Future] = set()
        self._produced = metrics.EVENTS.labels(topic, "queued")
        self._delivered = metrics.EVENTS.labels(topic, "delivered")
        self._failed = metrics.EVENTS.labels(topic, "failed")
        self._dropped = metrics.EVENTS.labels(topic, "dropped")

    async def start(self) -> None:
        await self._producer.start()
        self._task = asyncio.create_task(self._drain())

    def log(self, record: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self._dropped.inc()
            return
        self._produced.inc()

    async def _drain(self) -> None:
        while True:
            record = await self._queue.get()
            batch = [record]
            while not self._queue.empty() and len(batch) < 1000:
                batch.append(self._queue.get_nowait())
            metrics.EVENT_QUEUE_DEPTH.set(self._queue.qsize())
            for rec in batch:
                try:
                    future = await self._producer.send(self.topic, serialize(rec), key=rec["request_id"].encode())
                except Exception as exc:
                    self._failed.inc()
                    log.error("event not accepted by the producer: %s", exc)
                    continue
                self._pending.add(future)
                future.add_done_callback(self._on_delivery)

    def _on_delivery(self, future: asyncio.Future) -> None:
        self._pending.discard(future)
        if future.cancelled() or future.exception() is not None:
            self._failed.inc()
            log.error("event delivery failed: %s", None if future.cancelled() else future.exception())
        else:
            self._delivered.inc()

    async def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued event has been delivered (or failed)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while (not self._queue.empty() or self._pending) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        await self._producer.flush()

    async def stop(self) -> None:
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._producer.stop()
