"""The drift consumer: scoring events from Kafka in, drift reports and alerts out.

All the work is in DriftMonitor (monitor.py, no I/O); this module fetches batches, publishes what
the monitor finished (acks=all), and only then commits each partition's checkpoint: its offset
and, as offset metadata, what a restart needs to resume without reporting anything twice.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import signal
import time
import uuid
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CommitFailedError, IllegalStateError

from gateway.config import DriftConfig, KafkaConfig, TopicsConfig
from gateway.models.repository import ModelRepository

from .classifier import domain_classifier
from . import fetch
from .metrics import DriftMetrics
from .monitor import DriftMonitor, Outgoing
from .report import summary
from .reference import ReferenceStore

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

log = logging.getLogger("gateway.drift")

WARNING_INTERVAL_S = 10.0
GC_THRESHOLD = 200_000  # allocations between young-generation collections
MAX_PENDING_CLASSIFIERS = 2  # beyond this the consumer waits: bounded memory, same reports


class DriftSettings(DriftConfig):
    """The `drift:` section of the gateway config, plus where to read and write."""

    # Defaults as the gateway config's `kafka:` section has them (settings_from_config copies it).
    bootstrap_servers: str | list[str] = KafkaConfig().bootstrap_servers
    events_topic: str = TopicsConfig().events
    reports_topic: str = TopicsConfig().drift
    model_repository: Path = Path("models")
    # Publish reports and commit offsets in one Kafka transaction (exactly-once for read_committed
    # readers); False: publish, then commit (at-least-once: a crash between them repeats reports).
    transactional: bool = True
    transaction_timeout_ms: int = 10_000  # how long a killed consumer's open transaction holds readers


class _WarningLimiter:
    """At most one warning per reason per interval, saying how many were held back."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def warn(self, reason: str, message: str) -> None:
        now = time.monotonic()
        last = self._last.get(reason)
        if last is not None and now - last < self.interval_s:
            self._held[reason] += 1
            return
        held = self._held.pop(reason, 0)
        self._last[reason] = now
        log.warning("drift: skipped event at %s%s", message,
                    f" ({held} more '{reason}' skips since the last warning)" if held else "")


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, owner: DriftConsumer):
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._owner._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._owner._on_assigned(assigned)


class _ClassifierPool:
    """One worker process for the domain classifier, started on first use."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    def __call__(self, *args):
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver"))
        return self._pool.submit(domain_classifier, *args)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


class DriftConsumer:
    """Reads scoring events, publishes reports and alerts, commits checkpoints behind them."""

    def __init__(self, settings: DriftSettings, references: ReferenceStore | None = None):
        self.settings = settings
        self.references = references or ReferenceStore(ModelRepository(settings.model_repository))
        self._classifiers = _ClassifierPool()
        self.monitor = DriftMonitor(settings, self.references, self._classifiers)
        self._warnings = _WarningLimiter(WARNING_INTERVAL_S)
        self.monitor.on_warning = self._warnings.warn
        self.metrics = DriftMetrics(self.monitor)
        self.reports_published = 0
        self.alerts_published = 0
        self._committed: dict[int, tuple[int, str]] = {}
        # Serialises batch handling with the rebalance callbacks, which run in aiokafka's task.
        self._lock = asyncio.Lock()
        self._generation = 0  # bumped on revocation: batches fetched before it are stale
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None

    @property
    def skipped(self) -> Counter[str]:
        return self.monitor.skipped

    async def start(self) -> None:
        s = self.settings
        log.info("drift consumer: %s -> %s, group %s, models %s, %s windows of %g (slide %s)",
                 s.events_topic, s.reports_topic, s.group_id,
                 ",".join(f"{n}/{v}" for n, v in self.references.repository.list()) or "(none)",
                 s.window_by, s.window_size, s.window_slide or "tumbling")
        self._producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap_servers, acks="all", enable_idempotence=True,
            transactional_id=f"{s.group_id}.{uuid.uuid4().hex}" if s.transactional else None,
            transaction_timeout_ms=s.transaction_timeout_ms)
        self._admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap_servers)
        fetch.install()  # records without their headers decoded: that was half of the consumer's CPU
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers, group_id=s.group_id,
            enable_auto_commit=False, auto_offset_reset="earliest",
            fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=16 * 1024 * 1024,
        )
        self._consumer.subscribe([s.events_topic], listener=_Rebalance(self))
        await self._producer.start()
        await self._admin.start()
        try:
            await self._consumer.start()
        except BaseException:
            await self._admin.close()
            await self._producer.stop()
            raise
        # Each batch holds tens of thousands of short-lived, acyclic objects (records, parsed
        # events); the default cyclic-GC thresholds would rescan them many times per batch.
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, 50, 50)
        if s.metrics_port is not None:
            self.metrics.serve(s.metrics_port)
            log.info("drift metrics on http://127.0.0.1:%d/metrics", s.metrics_port)

    async def run(self, stop: asyncio.Event | None = None, max_reports: int | None = None) -> None:
        """Until `stop` is set, or `max_reports` reports are published and committed.

        A record that cannot be published raises: nothing it covers has been committed.
        """
        assert self._consumer is not None, "call start() first"
        while not (stop is not None and stop.is_set()):
            if max_reports is not None and self.reports_published >= max_reports:
                return
            batch = await self._consumer.getmany(timeout_ms=self.settings.poll_timeout_ms,
                                                 max_records=self.settings.max_batch)
            generation = self._generation
            async with self._lock:
                if generation != self._generation:
                    continue  # fetched before a revocation: re-read from the committed offsets
                for tp, records in batch.items():
                    if tp.partition not in self.monitor.partitions:
                        # Fetched before its checkpoint was loaded (a reassignment in flight):
                        # read it again once the partition's state is restored.
                        self._consumer.seek(tp, records[0].offset)
                        continue
                    self.metrics.events += len(records)
                    self.monitor.process(tp.partition, records)
                await self._flush()
            pending = self.monitor.pending()
            if len(pending) > MAX_PENDING_CLASSIFIERS:  # back-pressure, never dropping a run
                await asyncio.wrap_future(pending[0].classifier)

    async def stop(self) -> None:
        """Unpublished windows are dropped, not reported: their events were not committed."""
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        if self._admin is not None:
            await self._admin.close()
        self._classifiers.shutdown()
        if self.skipped:
            log.info("drift consumer skipped events: %s", dict(sorted(self.skipped.items())))

    async def _flush(self) -> None:
        """Publish what is ready, in order, then commit the partitions' checkpoints; with
        `transactional`, both in one transaction, so a crash never leaves reports uncommitted."""
        assert self._producer is not None and self._consumer is not None
        ready = self.monitor.ready()
        if not self.settings.transactional:
            await self._publish(ready)
            await self._commit()
            return
        for item in ready:  # the checkpoints sent in this transaction must already count them as published
            self.monitor.published(item)
        offsets = self._changed_checkpoints()
        if not ready and not offsets:
            return
        async with self._producer.transaction():
            records = await self._send(ready)
            if offsets:
                await self._producer.send_offsets_to_transaction(self._topic_offsets(offsets), self.settings.group_id)
        self._count_published(records)
        self._committed.update(offsets)

    def _topic_offsets(self, offsets: dict[int, tuple[int, str]]) -> dict[TopicPartition, tuple[int, str]]:
        return {TopicPartition(self.settings.events_topic, p): c for p, c in offsets.items()}

    def _changed_checkpoints(self) -> dict[int, tuple[int, str]]:
        """Every partition's checkpoint that differs from the one last committed."""
        offsets = {}
        for p in list(self.monitor.partitions):
            checkpoint = self.monitor.checkpoint(p)
            if checkpoint is not None and self._committed.get(p) != checkpoint:
                offsets[p] = checkpoint
        return offsets

    async def _send(self, items: list[Outgoing]) -> list[dict]:
        assert self._producer is not None
        futures, records = [], []
        for item in items:
            for record in item.records():
                key = f"{record['model_name']}/{record['model_version']}".encode()
                futures.append(await self._producer.send(self.settings.reports_topic, orjson.dumps(record), key=key))
                records.append(record)
        await asyncio.gather(*futures)
        return records

    def _count_published(self, records: list[dict]) -> None:
        """Counters, metrics and log lines: only once the broker has acknowledged the records."""
        for record in records:
            if record["type"] == "drift_report":
                self.reports_published += 1
                self.metrics.observe(record)
                log.info("%s", summary(record))
            else:
                self.alerts_published += 1
                log.warning("drift alert: %s/%s %s (%d of the last %d windows drifted; partition %d)",
                            record["model_name"], record["model_version"], record["state"],
                            record["drifted_windows"], record["n"], record["partition"])

    async def _publish(self, items: list[Outgoing]) -> None:
        records = await self._send(items)
        for item in items:
            self.monitor.published(item)
        self._count_published(records)

    async def _commit(self) -> None:
        assert self._consumer is not None
        offsets = self._changed_checkpoints()
        if not offsets:
            return
        try:
            await self._consumer.commit(self._topic_offsets(offsets))
        except (CommitFailedError, IllegalStateError) as exc:
            # The group is rebalancing: whoever gets these partitions re-reads from the last commit.
            log.warning("drift: offset commit failed (%s); events since the last commit will be re-read", exc)
            return
        self._committed.update(offsets)

    async def _commit_directly(self, partitions: set[int]) -> None:
        """Commit the transaction's checkpoints again, outside it, before handing partitions over.
        A transaction's offsets become visible to the group only once its markers are written,
        and the new owner's offset fetch (OffsetFetch below v7, as aiokafka sends it) does not
        wait for them: without this it could resume from an older checkpoint and publish again."""
        assert self._consumer is not None
        offsets = {p: self._committed[p] for p in partitions if p in self._committed}
        if offsets:
            try:
                await self._consumer.commit(self._topic_offsets(offsets))
            except (CommitFailedError, IllegalStateError) as exc:
                log.warning("drift: handover commit failed (%s); the new owner may re-publish a window", exc)

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._lock:
            self._generation += 1
            mine = {tp.partition for tp in revoked if tp.partition in self.monitor.partitions}
            if mine:
                await self._flush()
                if self.settings.transactional:
                    await self._commit_directly(mine)
                for p in mine:
                    self.monitor.revoke(p)
                    self._committed.pop(p, None)
                log.info("drift: partitions %s revoked; their open windows will be rebuilt by the new owner",
                         sorted(mine))

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        assert self._admin is not None
        async with self._lock:
            committed = await self._admin.list_consumer_group_offsets(self.settings.group_id, partitions=list(assigned))
            for tp in assigned:
                meta = committed.get(tp)
                self.monitor.assign(tp.partition, meta.metadata if meta is not None and meta.offset >= 0 else None)
        log.info("drift consumer assigned %s", sorted(tp.partition for tp in assigned))


def settings_from_config(config: GatewayConfig) -> DriftSettings:
    """Kafka and the repository come from their own sections of the (already validated) config."""
    return DriftSettings(
        **config.drift.model_dump(),
        bootstrap_servers=config.kafka.bootstrap_servers,
        events_topic=config.kafka.topics.events,
        reports_topic=config.kafka.topics.drift,
        model_repository=config.model_repository,
    )


async def run_drift(settings: DriftSettings, stop: asyncio.Event | None = None) -> None:
    """`gateway drift`: run until `stop` is set; without one, until SIGINT or SIGTERM.

    Stopping on a signal (rather than dying) leaves the consumer group at once, so the
    partitions move to another member without waiting for the session timeout.
    """
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    consumer = DriftConsumer(settings)
    await consumer.start()
    try:
        await consumer.run(stop)
    finally:
        await consumer.stop()
