"""Two drift consumers in one group share the partitions (one joins while the other is already
consuming, so partitions move between them) and together publish exactly the reports one
offline monitor computes; the skipped events are counted; the metrics endpoint serves the
latest window's scores."""
from __future__ import annotations

import asyncio
import urllib.request

import pytest

from gateway.drift.consumer import DriftConsumer, DriftSettings
from tests.conftest import free_port
from tests.test_drift_restart import (_comparable, _expected, _produce, _traffic, create_events_topic,
                                      read_committed)

pytestmark = pytest.mark.integration


async def test_a_consumer_group_shares_partitions_and_publishes_each_window_once(kafka_bootstrap, demo_repository):
    topic = await create_events_topic(kafka_bootstrap, "group")
    traffic = _traffic(demo_repository, seed=11)
    junk = [(0, b"{not json"), (1, b'{"schema_version": 1, "status": "error", "ts_ms": 5}')]
    half = len(traffic) // 2
    produced = await _produce(kafka_bootstrap, topic, junk + traffic[:half])
    port = free_port()
    common = dict(bootstrap_servers=kafka_bootstrap, events_topic=topic, reports_topic=f"{topic}.drift",
                  group_id=f"{topic}.group", model_repository=demo_repository, window_size=40,
                  classifier_on_drift=False, max_batch=50, poll_timeout_ms=100)
    first = DriftConsumer(DriftSettings(**common, metrics_port=port))
    second = DriftConsumer(DriftSettings(**common))
    stop = asyncio.Event()
    await first.start()
    running = [asyncio.ensure_future(first.run(stop))]
    try:
        while first.reports_published < 3:  # the second joins mid-stream: a rebalance
            await asyncio.sleep(0.05)
        await second.start()
        running.append(asyncio.ensure_future(second.run(stop)))
        while not second.monitor.partitions:  # the group has rebalanced: both hold partitions
            await asyncio.sleep(0.05)
        produced += await _produce(kafka_bootstrap, topic, traffic[half:])
        _, records = _expected(DriftSettings(**common), [p for p in produced if p[2] not in (v for _, v in junk)])
        expected = _comparable(records)
        published = await read_committed(kafka_bootstrap, f"{topic}.drift", expected=len(expected), timeout=120)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        stop.set()
        await asyncio.gather(*running)
        await first.stop()
        await second.stop()
    assert _comparable(published) == expected
    assert second.reports_published > 0 and first.reports_published > 0  # both did a share
    skipped = first.skipped + second.skipped
    assert skipped["bad_json"] >= 1 and skipped["status_error"] >= 1
    assert 'gateway_drift_score{column="alcohol",kind="features",model="wine",score="effect",version=' in metrics
    assert "gateway_drift_events_skipped_total" in metrics
