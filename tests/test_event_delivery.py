"""The event log loses nothing: broker outages and a killed gateway, on a real broker."""
from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import aiohttp
import jsonschema
import pytest
from prometheus_client import REGISTRY

from gateway.events.logger import EventLogger
from gateway.events.records import FIELDS, sampled
from gateway.events.spool import DiskSpool, WireRecord
from gateway.models.demo import sample_wines
from gateway.parallel.cpus import allowed_cpus, pin_process
from loadtests.host import process_tree
from loadtests.logging_cost import part_of
from tests.conftest import ROOT, gateway_config, metric, read_topic
from tests.test_gateway_e2e import infer_body, post_all

pytestmark = pytest.mark.integration
SCHEMA = json.loads((ROOT / "gateway/events/schemas/scoring-event.v1.json").read_text())


async def traffic(url: str, stop: asyncio.Event, answered: list[str], failed: list, prefix: str,
                  clients: int = 4, pause: float = 0.01, max_requests: int = 20_000) -> None:
    """Bounded continuous load: `clients` loops, each sending a request, then pausing briefly."""
    counter = iter(range(max_requests))

    async def client(session: aiohttp.ClientSession) -> None:
        for i in counter:
            if stop.is_set():
                return
            rid = f"{prefix}-{i}"
            try:
                async with session.post(url, data=infer_body(sample_wines("train", 1, seed=i), rid)) as resp:
                    (answered.append(rid) if resp.status == 200 else failed.append((rid, resp.status)))
            except aiohttp.ClientError as exc:
                failed.append((rid, repr(exc)))
            await asyncio.sleep(pause)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))


async def wait_for_metric(url: str, name: str, predicate, timeout: float = 120.0, **labels) -> float:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await metric(url, name, **labels)
        if predicate(value) or loop.time() > deadline:
            return value
        await asyncio.sleep(0.5)


def delivery_config(repository, bootstrap, topic, spool_dir, instance="gw-test") -> dict:
    config = gateway_config(repository, bootstrap, topic)
    config["server"] = {"instance_id": instance}
    config["kafka"].update(stall_timeout_ms=1000, spool={"directory": str(spool_dir)})
    return config


async def test_a_30_second_broker_outage_loses_no_event_and_fails_no_request(
        demo_repository, private_broker, unique_topic, start_gateway, tmp_path):
    gateway = start_gateway(delivery_config(demo_repository, private_broker.bootstrap, unique_topic, tmp_path / "spool"))
    url = f"{gateway.url}/v2/models/wine/infer"
    answered: list[str] = []
    failed: list = []
    stop = asyncio.Event()
    load = asyncio.create_task(traffic(url, stop, answered, failed, "outage"))
    await asyncio.sleep(5)
    before_outage = len(answered)
    assert await metric(gateway.url, "gateway_event_spooling") == 0
    await asyncio.to_thread(private_broker.stop)
    await asyncio.sleep(30)
    during_outage = len(answered) - before_outage
    assert await metric(gateway.url, "gateway_event_spooling") == 1, "the metric says events go to the spool"
    await asyncio.to_thread(private_broker.start)
    await asyncio.sleep(10)
    stop.set()
    await load

    assert failed == [], f"requests failed during the outage: {failed[:5]}"
    assert during_outage > 100, "traffic kept flowing while the broker was down"
    spooled = await metric(gateway.url, "gateway_events_total", outcome="spooled")
    assert spooled > 0, "the outage sent events to the spool"
    await wait_for_metric(gateway.url, "gateway_event_spool_bytes", lambda v: v == 0)
    assert await wait_for_metric(gateway.url, "gateway_event_spooling", lambda v: v == 0) == 0, "back to direct delivery"
    assert await metric(gateway.url, "gateway_events_total", outcome="dropped") == 0

    records = await read_topic(private_broker.bootstrap, unique_topic, expected=2 * len(answered), timeout=120)
    seen = collections.Counter((e["request_id"], e["role"]) for _, e, _ in records)
    missing = [rid for rid in answered if seen[(rid, "champion")] == 0 or seen[(rid, "challenger")] == 0]
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    print(f"\nanswered={len(answered)} during_outage={during_outage} records={len(records)} "
          f"spooled={spooled:.0f} duplicates={duplicates} missing={len(missing)}")
    assert missing == []


async def test_events_spooled_before_a_sigkill_are_delivered_after_the_restart(
        demo_repository, private_broker, unique_topic, start_gateway, tmp_path):
    config = delivery_config(demo_repository, private_broker.bootstrap, unique_topic, tmp_path / "spool", "gw-kill")
    gateway = start_gateway(config)
    url = f"{gateway.url}/v2/models/wine/infer"
    await asyncio.to_thread(private_broker.stop)
    rows = [sample_wines("train", 1, seed=i) for i in range(200)]
    answers = await post_all(url, [infer_body(r, f"kill-{i}") for i, r in enumerate(rows)])
    assert [s for s, _ in answers] == [200] * 200
    # Everything has left memory for the spool (queue empty, nothing awaiting Kafka) ...
    await wait_for_metric(gateway.url, "gateway_events_total", lambda v: v >= 400, outcome="spooled")
    assert await metric(gateway.url, "gateway_events_in_flight") == 0
    assert await metric(gateway.url, "gateway_event_queue_depth") == 0
    assert await metric(gateway.url, "gateway_event_spool_bytes") > 0
    gateway.process.kill()  # ... and then the gateway dies without any chance to flush
    gateway.process.wait()

    await asyncio.to_thread(private_broker.start)
    restarted = start_gateway(config)
    # Waited for in this order: until the new shipper's first metrics arrive (about a second),
    # an absent spool gauge reads 0, which would pass a wait for an empty spool at once.
    replayed = await wait_for_metric(restarted.url, "gateway_events_total", lambda v: v >= 400, outcome="replayed")
    assert replayed >= 400
    assert await wait_for_metric(restarted.url, "gateway_event_spool_bytes", lambda v: v == 0) == 0
    records = await read_topic(private_broker.bootstrap, unique_topic, expected=400)
    seen = collections.Counter((e["request_id"], e["role"]) for _, e, _ in records)
    assert all(seen[(f"kill-{i}", role)] >= 1 for i in range(200) for role in ("champion", "challenger"))


async def test_records_validate_against_the_schema_carry_cloudevents_headers_and_kcat_reads_them(
        demo_repository, kafka_bootstrap, unique_topic, start_gateway):
    config = gateway_config(demo_repository, kafka_bootstrap, unique_topic)
    config["server"] = {"instance_id": "gw-schema"}
    gateway = start_gateway(config)
    started_ms = time.time_ns() // 1_000_000
    answers = await post_all(f"{gateway.url}/v2/models/wine/infer",
                             [infer_body(sample_wines("drift", 2, seed=i), f"schema-{i}") for i in range(20)])
    async with aiohttp.ClientSession() as session:  # a direct call and a failing request too
        await session.post(f"{gateway.url}/v2/models/wine/versions/2/infer", data=infer_body(sample_wines("train", 1), "direct-1"))
    assert all(s == 200 for s, _ in answers)
    records = await read_topic(kafka_bootstrap, unique_topic, expected=41)
    assert len(records) == 41
    validator = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    action = FIELDS.index("action")
    for key, event, message in records:
        validator.validate(event)
        # records.FIELDS in its order, the tensors before the action (the drift consumer's fast path)
        assert list(event) == ["schema_version", "event_id", "timestamp", *FIELDS[:action], "inputs", "outputs",
                               *FIELDS[action:]]
        # Each value in its own field: the gateway hands them over by position (records.FIELDS)
        direct = event["request_id"] == "direct-1"
        role = "direct" if direct else event["role"]
        version = {"direct": "2", "champion": "1", "challenger": "2"}[role]
        assert (event["gateway_instance"], event["model_name"], event["model_version"], event["arm"]) == (
            "gw-schema", "wine", version, version)
        assert (event["role"], event["route"], event["reason"], event["served"]) == {
            "direct": ("direct", "direct", "direct", True), "champion": ("champion", "shadow", "champion", True),
            "challenger": ("challenger", "shadow", "shadow", False)}[role]
        assert (event["status"], event["error"], event["sample_rate"]) == ("ok", None, 1.0)
        assert event["action"]["model_version"] == ("2" if direct else "1") and list(event["action"]["outputs"]) == ["label"]
        assert started_ms <= event["ts_ms"] <= time.time_ns() // 1_000_000 and 0 < event["latency_ms"] < 60_000
        headers = {k: v.decode() for k, v in message.headers}
        assert headers["ce_specversion"] == "1.0" and headers["ce_id"] == event["event_id"]
        assert headers["ce_type"] == "dev.scoring-gateway.scoring.v1" and headers["ce_time"] == event["timestamp"]
        assert headers["ce_source"] == f"/gateway/{event['gateway_instance']}"
        assert headers["content-type"] == "application/json"
        assert (headers["model"], headers["model_version"], headers["schema_version"]) == (
            event["model_name"], event["model_version"], "1")

    kcat = shutil.which("kcat")
    assert kcat, "kcat is missing: `make tools` installs it"
    out = subprocess.run([kcat, "-b", kafka_bootstrap, "-t", unique_topic, "-C", "-e", "-q", "-f", "%k\t%s\n"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    lines = [line.split("\t", 1) for line in out.splitlines() if line]
    assert len(lines) == 41
    assert {k for k, _ in lines} == {f"schema-{i}" for i in range(20)} | {"direct-1"}
    for key, value in lines:
        validator.validate(json.loads(value))


async def test_sampling_logs_champion_and_challenger_of_the_same_requests(
        demo_repository, kafka_bootstrap, unique_topic, start_gateway):
    config = gateway_config(demo_repository, kafka_bootstrap, unique_topic)
    config["models"]["wine"]["log_sample_rate"] = 0.25
    gateway = start_gateway(config)
    ids = [f"sample-{i}" for i in range(400)]
    answers = await post_all(f"{gateway.url}/v2/models/wine/infer",
                             [infer_body(sample_wines("train", 1, seed=i), rid) for i, rid in enumerate(ids)])
    assert all(s == 200 for s, _ in answers)
    expected = [rid for rid in ids if sampled(rid, 0.25)]
    records = await read_topic(kafka_bootstrap, unique_topic, expected=2 * len(expected), timeout=30)
    by_request = collections.defaultdict(set)
    for _, event, _ in records:
        assert event["sample_rate"] == 0.25
        by_request[event["request_id"]].add(event["role"])
    assert sorted(by_request) == sorted(expected)
    assert all(roles == {"champion", "challenger"} for roles in by_request.values())
    assert 0.18 < len(expected) / len(ids) < 0.32


@pytest.mark.parametrize("nice", [None, 5])
async def test_the_event_shipper_yields_to_requests_and_ignores_ctrl_c(
        demo_repository, kafka_bootstrap, unique_topic, start_gateway, nice):
    """The shipper runs without wake-up preemption, below the gateway's priority by
    `kafka.shipper_nice` (19 unless set), in the gateway's session (with autogroup scheduling a
    session of its own would be weighed like the whole gateway), in a process group of its own
    (a terminal's Ctrl-C goes to the gateway, which stops it in order)."""
    config = gateway_config(demo_repository, kafka_bootstrap, unique_topic)
    if nice is not None:
        config["kafka"]["shipper_nice"] = nice
    gateway = start_gateway(config)
    pid = gateway.process.pid
    shippers = [p for p in process_tree(pid) if part_of(p, pid) == "shipper"]
    assert len(shippers) == 1
    shipper = shippers[0]
    gateway_nice = os.getpriority(os.PRIO_PROCESS, pid)
    assert os.getpriority(os.PRIO_PROCESS, shipper) == min(gateway_nice + (19 if nice is None else nice), 19)
    assert os.sched_getscheduler(shipper) == os.SCHED_BATCH
    assert os.getsid(shipper) == os.getsid(pid) and os.getpgid(shipper) == shipper != os.getpgid(pid)


async def test_a_shipper_starved_of_cpu_does_not_spool_a_healthy_brokers_events(kafka_bootstrap, unique_topic, tmp_path):
    """When every core is busy the shipper may not run for longer than `stall_timeout`, while
    Kafka's confirmations wait in its socket: on waking it must read them before it judges Kafka
    (it once took a healthy broker for a stalled one and spooled, docs/benchmarks/logging-cost.md)."""
    async with _connected_logger(kafka_bootstrap, unique_topic, tmp_path, linger_ms=5, stall_timeout=1.0) as logger:
        deadline = time.monotonic() + 60
        for round_ in range(3):
            logger.log_wires(_records(unique_topic, 100))
            while not logger._in_flight and time.monotonic() < deadline:  # until the round's batch is sent
                await asyncio.sleep(0)
            assert logger._in_flight, "the batch was never sent"
            time.sleep(2.0)  # starved for twice stall_timeout: the confirmation arrives meanwhile, unread
            settled = 100 * (round_ + 1)
            assert await _settled(unique_topic, settled, deadline) == (settled, 0)


async def test_a_shipper_starved_while_kafka_makes_room_for_a_batch_does_not_spool(unique_topic, tmp_path):
    """aiokafka takes a batch only once the broker has taken the one before, so a send can wait.
    That wait is judged in the shipper's own time as well: starved for twice `stall_timeout`
    while Kafka made room, the shipper must send, not spool (it once judged the wait by the wall
    clock, and a healthy broker's events went to the spool at saturation). A fake send stands in
    for the waiting one: a real broker cannot be made to hold a batch on cue."""
    loop = asyncio.get_running_loop()
    waiting, room = asyncio.Event(), asyncio.Event()

    async def send_once_there_is_room(wires: list[WireRecord]) -> list[tuple[asyncio.Future, list[WireRecord]]]:
        waiting.set()
        await room.wait()
        confirmed = loop.create_future()
        confirmed.set_result(None)
        return [(confirmed, wires)]

    async with _logger_sending_by(unique_topic, tmp_path, send_once_there_is_room) as logger:
        logger.log_wires(_records(unique_topic, 100))
        deadline = time.monotonic() + 10
        await asyncio.wait_for(waiting.wait(), 5)
        threading.Timer(0.5, loop.call_soon_threadsafe, (room.set,)).start()  # room is made meanwhile
        time.sleep(2.0)  # starved for twice stall_timeout
        assert await _settled(unique_topic, 100, deadline) == (100, 0)


async def test_a_spool_is_replayed_without_waiting_for_the_producers_linger(kafka_bootstrap, unique_topic, tmp_path):
    """New events queue behind the spool, so its replay must outpace them: each replay turn goes
    out at once instead of lingering in aiokafka's queue (it did: 3,600 events/s replayed, never
    catching up with 7,000/s arriving, loadtests/spool_replay.py). With a linger far longer than
    the wait here, only a replay that does not linger delivers the backlog in time."""
    _spooled(tmp_path, _records(unique_topic, 50))
    async with _connected_logger(kafka_bootstrap, unique_topic, tmp_path, linger_ms=120_000, stop_timeout=1):
        records = await read_topic(kafka_bootstrap, unique_topic, 50, timeout=60)
        assert [key for key, _, _ in records] == [b"r%d" % i for i in range(50)]


async def test_a_backlog_of_full_batches_is_sent_without_lingering_batch_by_batch(kafka_bootstrap, unique_topic,
                                                                                  tmp_path):
    """A backlog (the broker was slow a moment, the shipper was starved) fills several batches for
    one partition, and aiokafka takes a partition's next batch only once the one before is sent.
    Full batches must go at once: each lingered first, so handing over n batches took n lingers,
    the send was judged stalled, and a healthy broker's events went to the spool, then the next
    backlog likewise, every 2-3 s (loadtests.shipper_cost on a fresh broker)."""
    pad = b"x" * 1000
    backlog = [WireRecord(unique_topic, b"k", b'{"n":%d,"pad":"%s"}' % (i, pad), []) for i in range(4000)]  # ~4 MB
    async with _connected_logger(kafka_bootstrap, unique_topic, tmp_path, linger_ms=1000, stall_timeout=2.5) as logger:
        logger.log_wires(backlog)  # one drain turn: four full batches and a part, for one partition
        assert await _settled(unique_topic, 4000, time.monotonic() + 60) == (4000, 0)


async def test_a_send_kafka_never_makes_room_for_goes_to_the_spool(unique_topic, tmp_path):
    async with _logger_sending_by(unique_topic, tmp_path, _send_never) as logger:
        logger.log_wires(_records(unique_topic, 100))
        deadline = time.monotonic() + 10
        while logger.spool.size_bytes == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        spooled, _ = logger.spool.read(1000)
        assert [w.key for w in spooled] == [b"r%d" % i for i in range(100)]


async def test_a_send_still_waiting_for_kafka_at_shutdown_goes_to_the_spool(unique_topic, tmp_path):
    async with _logger_sending_by(unique_topic, tmp_path, _send_never, stall_timeout=60.0) as logger:
        logger.log_wires(_records(unique_topic, 100))
        while logger._queue:
            await asyncio.sleep(0.01)
        await logger.stop(timeout=0.5)
    spooled, _ = DiskSpool(tmp_path, 1 << 20).read(1000)
    assert [w.key for w in spooled] == [b"r%d" % i for i in range(100)]


async def test_a_replay_turn_that_fails_part_way_counts_every_copy_kafka_confirms_twice_as_resent(unique_topic,
                                                                                                 tmp_path):
    """A replay turn is sent at once as several batches; if one is not confirmed in time, the
    turn is read again from the spool, so the batches Kafka had confirmed, or confirms late,
    arrive twice. Each must count as resent (the turn once cancelled its pending batches and
    counted nothing, though Kafka may still take them). A fake send: a real broker cannot be made
    to confirm one batch of a produce request and not the other."""
    loop = asyncio.get_running_loop()
    _spooled(tmp_path, _records(unique_topic, 100))
    late: list[asyncio.Future] = []

    async def confirm_half_then_all(wires: list[WireRecord], at_once: bool) -> list[tuple[asyncio.Future, list]]:
        first, second = loop.create_future(), loop.create_future()
        first.set_result(None)
        if not late:
            late.append(second)  # confirmed only after the turn has been given up on
        else:
            second.set_result(None)
        return [(first, wires[:60]), (second, wires[60:])]

    async with _logger_sending_by(unique_topic, tmp_path, confirm_half_then_all, stall_timeout=0.2,
                                tasks=("_replay", "_watch")) as logger:
        assert await _replayed(logger, 100, time.monotonic() + 10)
        assert _count(unique_topic, "resent") == 60  # the first turn's confirmed batch, sent again
        late[0].set_result(None)
        await asyncio.sleep(0.05)
        assert _count(unique_topic, "resent") == 100


async def test_a_replay_turn_starved_of_cpu_is_not_judged_stalled(unique_topic, tmp_path):
    """Like a send and a confirmation, a replay turn is judged in the shipper's own time: starved
    for longer than the turn may take while Kafka confirmed it, the shipper must not give the
    broker up and replay the turn again (it judged the turn by the wall clock)."""
    loop = asyncio.get_running_loop()
    _spooled(tmp_path, _records(unique_topic, 100))
    sends = []

    async def confirmed_while_starved(wires: list[WireRecord], at_once: bool) -> list[tuple[asyncio.Future, list]]:
        confirmed = loop.create_future()
        sends.append(wires)
        threading.Timer(0.2, loop.call_soon_threadsafe, (confirmed.set_result, None)).start()
        time.sleep(2.0)  # starved for 2 s, more than the turn's 5 x 0.2 s
        return [(confirmed, wires)]

    async with _logger_sending_by(unique_topic, tmp_path, confirmed_while_starved, stall_timeout=0.2,
                                tasks=("_replay", "_watch")) as logger:
        assert await _replayed(logger, 100, time.monotonic() + 10)
        assert len(sends) == 1 and _count(unique_topic, "resent") == 0


async def test_a_shipper_waiting_for_a_core_mid_work_does_not_spool(unique_topic, tmp_path):
    """At nice 19 on a busy core the shipper is not only woken late: it waits for the core in the
    middle of its work, its timers on time. That wait is not Kafka's either. Here it shares one
    core with two busy processes and has about a third of it: a batch confirmed after 4 s of wall
    time was unconfirmed for about 1.3 s of its own, under `stall_timeout`, and must not be
    spooled (discounting late wake-ups only, it once spooled a healthy broker's events,
    docs/benchmarks/logging-cost.md). A fake send: the confirmation comes on cue."""
    loop = asyncio.get_running_loop()
    timers = []

    async def confirmed_after_4_s(wires: list[WireRecord]) -> list[tuple[asyncio.Future, list[WireRecord]]]:
        confirmed = loop.create_future()
        timer = threading.Timer(4.0, loop.call_soon_threadsafe, (confirmed.set_result, None))
        timer.start()
        timers.append(timer)
        return [(confirmed, wires)]

    async def busy() -> None:  # always ready to run, like a shipper with a backlog
        while True:
            sum(range(2000))
            await asyncio.sleep(0)

    with _sharing_one_core_with_busy_processes(2):
        async with _logger_sending_by(unique_topic, tmp_path, confirmed_after_4_s, stall_timeout=3.0) as logger:
            logger._tasks.append(asyncio.create_task(busy()))
            logger.log_wires(_records(unique_topic, 100))
            try:
                assert await _settled(unique_topic, 100, time.monotonic() + 20) == (100, 0)
            finally:
                for timer in timers:
                    timer.cancel()


@contextlib.contextmanager
def _sharing_one_core_with_busy_processes(count: int):
    """This thread and `count` processes that spin, all on one CPU, all at this process's priority."""
    allowed = allowed_cpus()
    cpu = min(allowed)
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        for spinner in spinners:
            pin_process({cpu}, spinner.pid)
        os.sched_setaffinity(0, {cpu})  # this thread only: the event loop's, which runs the logger
        yield
    finally:
        os.sched_setaffinity(0, allowed)
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def _records(topic: str, count: int) -> list[WireRecord]:
    """`count` small records keyed r0, r1, ... in order."""
    return [WireRecord(topic, b"r%d" % i, b'{"n":%d}' % i, []) for i in range(count)]


def _spooled(spool_dir, records: list[WireRecord]) -> None:
    spool = DiskSpool(spool_dir, 1 << 20)
    spool.append(records)
    spool.close()


async def _replayed(logger: EventLogger, events: int, deadline: float) -> bool:
    """Whether the spool's `events` were replayed and delivery went direct again, by the deadline."""
    while (logger.spooling or _count(logger.topic, "replayed") < events) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return not logger.spooling and _count(logger.topic, "replayed") == events


@contextlib.asynccontextmanager
async def _logger_sending_by(topic: str, spool_dir, send, stall_timeout: float = 1.0, tasks=("_drain", "_watch")):
    """An EventLogger whose Kafka send is `send`, and which gets a new producer at once when it
    gives one up: only its `tasks` run (by default, its drain and its watch)."""
    logger = EventLogger("127.0.0.1:1", topic, DiskSpool(spool_dir, 1 << 20), linger_ms=5, stall_timeout=stall_timeout)
    logger._send = send
    logger._producer = _NoProducer()  # connected, as far as the drain can tell
    logger._tasks = [asyncio.create_task(getattr(logger, task)()) for task in tasks]
    logger._tasks.append(asyncio.create_task(_reconnect(logger)))
    try:
        yield logger
    finally:
        for task in logger._tasks:
            task.cancel()
        await asyncio.gather(*logger._tasks, return_exceptions=True)


def _count(topic: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("gateway_events_total", {"topic": topic, "outcome": outcome}) or 0.0


@contextlib.asynccontextmanager
async def _connected_logger(bootstrap: str, topic: str, spool_dir, stop_timeout: float = 15.0, **settings):
    """A started EventLogger on a new one-partition `topic`, once it has a producer (before that,
    events go to the spool); stopped afterwards."""
    logger = EventLogger(bootstrap, topic, DiskSpool(spool_dir, 1 << 30), create_topics=([topic], 1, 1), **settings)
    await logger.start()
    try:
        deadline = time.monotonic() + 60
        while logger._producer is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        yield logger
    finally:
        await logger.stop(timeout=stop_timeout)


async def _settled(topic: str, events: int, deadline: float) -> tuple[float, float]:
    """(delivered, spooled) once `events` are one or the other, or at the deadline."""
    while _count(topic, "delivered") + _count(topic, "spooled") < events and time.monotonic() < deadline:
        await asyncio.sleep(0.025)
    return _count(topic, "delivered"), _count(topic, "spooled")


async def _send_never(wires: list[WireRecord]) -> list[tuple[asyncio.Future, list[WireRecord]]]:
    """A Kafka that never makes room for a batch."""
    await asyncio.Event().wait()


async def _reconnect(logger: EventLogger) -> None:
    """A Kafka that takes a new producer at once, after the logger gave up on one."""
    while True:
        if logger._producer is None:
            logger._producer = _NoProducer()
        await asyncio.sleep(0.01)


class _NoProducer:
    """What `_fail` closes when it gives up on a send: nothing to close."""

    async def stop(self) -> None:
        pass
