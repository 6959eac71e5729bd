"""Builds the running gateway from a config: model pools, routes, event log, HTTP app.

Start-up fails fast and whole (bad config, missing model, incompatible challenger) rather
than serving part of what was asked for.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from contextlib import AsyncExitStack

from aiohttp import web

from gateway.config import ConfigError, GatewayConfig
from gateway.events.shipper import EventShipper
from gateway.models.repository import ModelRepository, ModelRepositoryError
from gateway.parallel.pool import WorkerPool
from gateway.rest.app import create_app
from gateway.routing.shadow import ShadowPolicy
from gateway.service import DeployedModel, ScoringService

log = logging.getLogger("gateway")


def _threads_per_worker(config: GatewayConfig) -> int:
    workers = sum(v.workers for m in config.models.values() for v in m.versions.values())
    return max(1, (os.cpu_count() or 1) // workers)


def instance_dir(config: GatewayConfig) -> str:
    """The spool belongs to a configured instance id, so a restart finds what it left behind."""
    return config.server.instance_id or "default"


def _deploy(config: GatewayConfig) -> dict[str, DeployedModel]:
    repository = ModelRepository(config.model_repository)
    threads = _threads_per_worker(config)
    deployed = {}
    for name, model_config in config.models.items():
        versions, pools = {}, {}
        for version, version_config in model_config.versions.items():
            try:
                mv = repository.load(name, version)
            except ModelRepositoryError as exc:
                raise ConfigError(f"models.{name}.versions.{version}: {exc}") from None
            versions[version] = mv
            pools[version] = WorkerPool(mv, version_config.workers, threads, version_config.max_batch_rows)
        champion = versions[model_config.route.champion]
        for challenger in model_config.route.challengers:
            other = versions[challenger.version]
            if [(t.name, t.shape) for t in other.inputs] != [(t.name, t.shape) for t in champion.inputs]:
                raise ConfigError(
                    f"models.{name}.route.challengers: version '{challenger.version}' takes inputs "
                    f"{[t.name for t in other.inputs]} but the champion takes {[t.name for t in champion.inputs]}; "
                    "a challenger must accept the champion's requests")
        deployed[name] = DeployedModel(name, versions, pools, ShadowPolicy(model_config.route),
                                       model_config.timeout_ms / 1000, model_config.log_sample_rate)
    return deployed


async def serve(config: GatewayConfig, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    models = _deploy(config)
    instance = config.server.instance()
    async with AsyncExitStack() as stack:
        events = None
        kafka = config.kafka
        if kafka.enabled:
            events = EventShipper({
                "bootstrap_servers": kafka.bootstrap_servers, "topic": kafka.topics.events,
                "spool_dir": str(kafka.spool.directory / instance_dir(config)),
                "spool_max_bytes": kafka.spool.max_bytes, "spool_segment_bytes": kafka.spool.segment_bytes,
                "spool_fsync": kafka.spool.fsync, "queue_size": kafka.queue_size, "linger_ms": kafka.linger_ms,
                "compression": None if kafka.compression == "none" else kafka.compression,
                "stall_timeout": kafka.stall_timeout_ms / 1000,
                "create_topics": [list(kafka.topics.model_dump().values()), kafka.partitions, kafka.replication_factor],
            })
            await events.start()
            stack.push_async_callback(events.stop)
        for model in models.values():
            for pool in model.pools.values():
                stack.push_async_callback(pool.stop)
                await pool.start()
        service = ScoringService(models, events, instance, config.server.max_rows)
        stack.push_async_callback(service.drain)
        runner = web.AppRunner(create_app(service, config.server.max_body_bytes), access_log=None,
                               handle_signals=False)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, config.server.host, config.server.port, backlog=1024, reuse_address=True)
        await site.start()
        # Start-up objects (models' metadata, modules) never die: keep them out of every GC pass,
        # and collect the young generation less often; both cut pauses on the request path.
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        port = runner.addresses[0][1] if runner.addresses else config.server.port
        log.info("gateway %s listening on http://%s:%d (models: %s)", instance, config.server.host, port,
                 ", ".join(f"{m.name}[{', '.join(m.versions)}]" for m in models.values()))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down: finishing in-flight requests and flushing events")
