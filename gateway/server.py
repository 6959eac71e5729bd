"""Builds the running gateway from a config: model pools, routes, event log, HTTP app.

Start-up fails fast and whole (bad config, missing model, incompatible challenger) rather
than serving part of what was asked for.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import signal
from contextlib import AsyncExitStack
from pathlib import Path

from aiohttp import web
from prometheus_client import REGISTRY

from gateway.config import ConfigError, GatewayConfig
from gateway.control.audit import AuditLog
from gateway.control.routes import RouteController, check_signatures
from gateway.errors import ApiError
from gateway.events.shipper import EventShipper
from gateway.events.topics import ensure_topics
from gateway.experiments.report import ExperimentCollector
from gateway.experiments.tracker import ExperimentTracker
from gateway.feedback.bus import FeedbackReader, KafkaControl
from gateway.feedback.hub import FeedbackHub
from gateway.feedback.store import PredictionStore
from gateway.models.repository import ModelRepository, ModelRepositoryError
from gateway.parallel.cpus import CpuLayout
from gateway.parallel.pool import WorkerPool
from gateway.rest.admin import add_admin_routes
from gateway.rest.app import create_app
from gateway.rest.feedback import add_feedback_routes
from gateway.routing import build_policy
from gateway.service import DeployedModel, ScoringService

log = logging.getLogger("gateway")


def _threads_per_worker(config: GatewayConfig, cpus: CpuLayout) -> int:
    workers = sum(v.workers for m in config.models.values() for v in m.versions.values())
    return max(1, cpus.cores_for_others() // workers)


def instance_dir(config: GatewayConfig) -> str:
    """The spool belongs to a configured instance id, so a restart finds what it left behind."""
    return config.server.instance_id or "default"


def _deploy(config: GatewayConfig, tracker: ExperimentTracker, cpus: CpuLayout) -> dict[str, DeployedModel]:
    repository = ModelRepository(config.model_repository)
    threads = _threads_per_worker(config, cpus)
    deployed = {}
    for name, model_config in config.models.items():
        versions, pools = {}, {}
        for version, version_config in model_config.versions.items():
            try:
                mv = repository.load(name, version)
            except ModelRepositoryError as exc:
                raise ConfigError(f"models.{name}.versions.{version}: {exc}") from None
            versions[version] = mv
            pools[version] = WorkerPool(mv, version_config.workers, threads, version_config.max_batch_rows,
                                        cpus=cpus.others)
        model = DeployedModel(name, versions, pools, build_policy(model_config.route, tracker.bandit_state),
                              model_config.timeout_ms / 1000, model_config.log_sample_rate)
        try:
            check_signatures(model, model_config.route)
        except ValueError as exc:
            raise ConfigError(f"models.{name}.route: {exc}") from None
        deployed[name] = model
    return deployed


CONTROL_PLANE_WAIT = 15.0  # seconds start-up waits for Kafka to replay feedback before serving anyway
CONTROL_PLANE_RETRY = 5.0


async def _control_plane(config: GatewayConfig, hub: FeedbackHub, stack: AsyncExitStack) -> KafkaControl | None:
    """The gateway's own Kafka clients: a producer for feedback and audit records, and the
    feedback reader, which replays the topic to rebuild experiment state before serving.

    Kafka being away must not keep the gateway from scoring (its events go to the spool): after
    CONTROL_PLANE_WAIT the gateway serves anyway and keeps connecting in the background; until
    then feedback and admin changes are refused with 503, because neither may go unrecorded."""
    kafka = config.kafka
    if not kafka.enabled:
        return None
    control = KafkaControl(kafka.bootstrap_servers)
    reader = FeedbackReader(kafka.bootstrap_servers, kafka.topics.feedback, hub.handle)
    hub.control = control
    stack.push_async_callback(control.stop)
    stack.push_async_callback(hub.drain)  # runs before control.stop: joined records in flight get written
    stack.push_async_callback(reader.stop)

    async def connect() -> None:
        while True:
            try:
                await ensure_topics(kafka.bootstrap_servers, [kafka.topics.feedback, kafka.topics.audit],
                                    kafka.partitions, kafka.replication_factor)
                await control.start()
                replayed = await reader.start()
                log.info("experiment state rebuilt from %d feedback records", replayed)
                return
            except Exception as exc:
                await reader.stop()
                await control.stop()
                log.warning("Kafka not reachable for feedback and audit (%s); retrying in %.0f s: until then "
                            "feedback and admin changes are refused", exc, CONTROL_PLANE_RETRY)
                await asyncio.sleep(CONTROL_PLANE_RETRY)

    connecting = asyncio.create_task(connect())
    stack.push_async_callback(_cancel, connecting)  # runs first at shutdown
    try:
        await asyncio.wait_for(asyncio.shield(connecting), CONTROL_PLANE_WAIT)
    except asyncio.TimeoutError:
        log.warning("serving before the feedback topic was replayed: experiment state fills in once Kafka answers")
    return control


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _reload_on_sighup(controller: RouteController) -> None:
    async def reload() -> None:
        try:
            result = await controller.reload("signal:SIGHUP")
            log.info("config reloaded: %s", result)
        except ApiError as exc:
            log.error("config reload refused: %s", exc.message)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload()))


async def serve(config: GatewayConfig, stop: asyncio.Event | None = None, config_path: str | Path | None = None) -> None:
    stop = stop or asyncio.Event()
    cpus = CpuLayout.of(config.server.loop_cpus)
    cpus.pin_loop()  # before anything below starts a thread; the workers and shipper pin themselves
    tracker = ExperimentTracker()
    models = _deploy(config, tracker, cpus)
    instance = config.server.instance()
    hub = FeedbackHub(PredictionStore(config.feedback.max_pending, config.feedback.ttl_seconds), tracker, instance,
                      topic=config.kafka.topics.feedback)
    collector = ExperimentCollector(tracker, models)
    REGISTRY.register(collector)
    async with AsyncExitStack() as stack:
        stack.callback(REGISTRY.unregister, collector)
        control = await _control_plane(config, hub, stack)
        audit = AuditLog(control, config.kafka.topics.audit, instance)
        stack.push_async_callback(audit.drain)
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
                "nice": kafka.shipper_nice,
                "create_topics": [list(kafka.topics.model_dump().values()), kafka.partitions, kafka.replication_factor],
                "cpus": cpus.others,
            })
            await events.start()
            stack.push_async_callback(events.stop)
        for model in models.values():
            for pool in model.pools.values():
                stack.push_async_callback(pool.stop)
                await pool.start()
        service = ScoringService(models, events, instance, config.server.max_rows, hub)
        stack.push_async_callback(service.drain)
        controller = RouteController(service, audit, tracker.bandit_state, Path(config_path) if config_path else None)
        app = create_app(service, config.server.max_body_bytes)
        add_feedback_routes(app, hub, config.feedback.max_records)
        add_admin_routes(app, controller, config.admin.tokens)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
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
        if cpus.loop is not None:
            log.info("request loop on CPU %s; workers and event shipper on CPU %s",
                     ",".join(map(str, cpus.loop)), ",".join(map(str, cpus.others)))
        elif config.server.loop_cpus == "auto":
            log.info("server.loop_cpus is auto, but this process may use one CPU: the scheduler places every process")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        _reload_on_sighup(controller)
        await stop.wait()
        log.info("shutting down: finishing in-flight requests and flushing events")
