"""The feedback topic (`scoring.feedback`) as every gateway replica sees it.

Two kinds of record share the topic, both keyed by request id:
- `feedback`: ground truth or a reward that the receiving replica could not join (it does not
  remember that request) - from the POST endpoint of another replica, or written straight to
  the topic by an upstream system (a record without `type` is read as this kind);
- `joined`: feedback joined to its prediction by the replica that served the request.

Every replica reads the whole topic with no consumer group. It joins the `feedback` records
whose request it remembers, and it applies every `joined` record to its experiment state. So
all replicas converge on the same bandit sums and statistics, and a restarted replica rebuilds
them by reading the topic from the beginning before it serves (`catch_up`).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

log = logging.getLogger("gateway.feedback")
Handler = Callable[[dict[str, Any]], None]
HEADERS = [("content-type", b"application/json")]


class KafkaControl:
    """The gateway process's own small producer (feedback, audit): acks=all and idempotent,
    awaited per send, because these records are few and each one matters."""

    def __init__(self, bootstrap_servers: str):
        self.bootstrap_servers = bootstrap_servers
        self.producer: AIOKafkaProducer | None = None  # None until connected: sends are refused

    async def start(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap_servers, acks="all",
                                    enable_idempotence=True, linger_ms=0, request_timeout_ms=5000)
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self.producer = producer

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None

    async def send(self, topic: str, key: str, value: dict[str, Any], timeout: float = 10.0) -> None:
        await self.send_many(topic, [(key, value)], timeout)

    async def send_many(self, topic: str, records: list[tuple[str, dict[str, Any]]], timeout: float = 10.0) -> None:
        """Returns once the broker has acknowledged every record; raises if it has not in time."""
        if self.producer is None:
            raise ConnectionError(f"not connected to Kafka at {self.bootstrap_servers} yet")

        async def send_all() -> None:
            delivered = [await self.producer.send(topic, orjson.dumps(value), key=key.encode(), headers=HEADERS)
                         for key, value in records]
            await asyncio.gather(*delivered)
        await asyncio.wait_for(send_all(), timeout)


class FeedbackReader:
    """Reads the feedback topic from the beginning, for as long as the gateway runs."""

    def __init__(self, bootstrap_servers: str, topic: str, handle: Handler):
        self.topic = topic
        self.handle = handle
        self.malformed = 0
        self._settings = dict(bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False,
                              auto_offset_reset="earliest")
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None

    async def start(self, catch_up_timeout: float = 120.0) -> int:
        """Read up to the end offsets seen at start (state rebuilt), then follow in the background."""
        self._consumer = AIOKafkaConsumer(**self._settings)
        try:
            await self._consumer.start()
        except BaseException:
            await self.stop()
            raise
        self._consumer.subscribe([self.topic])  # no group: every partition is assigned to this reader
        loop = asyncio.get_running_loop()
        deadline = loop.time() + catch_up_timeout
        applied = 0
        while not self._consumer.assignment() and loop.time() < deadline:
            applied += await self._poll(timeout_ms=100)
        partitions = sorted(self._consumer.assignment())
        ends = await self._consumer.end_offsets(partitions)
        while True:
            behind = [tp for tp in partitions if await self._consumer.position(tp) < ends[tp]]
            if not behind:
                break
            if loop.time() >= deadline:
                log.warning("feedback topic not replayed within %.0f s (%d partitions behind): serving with "
                            "partial experiment state; the rest is applied as it is read", catch_up_timeout, len(behind))
                break
            applied += await self._poll()
        self._task = asyncio.create_task(self._follow())
        return applied

    async def _poll(self, timeout_ms: int = 500) -> int:
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=5000)
        count = 0
        for messages in batches.values():
            for message in messages:
                try:
                    record = orjson.loads(message.value)
                    if not isinstance(record, dict):
                        raise ValueError("not an object")
                    self.handle(record)
                    count += 1
                except Exception as exc:  # one bad record never stops the reader
                    self.malformed += 1
                    log.warning("skipped feedback record at %s[%d]@%d: %s", message.topic, message.partition,
                                message.offset, exc)
        return count

    async def _follow(self) -> None:
        while True:
            try:
                await self._poll()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("feedback reader failed; retrying in 1 s")
                await asyncio.sleep(1)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
