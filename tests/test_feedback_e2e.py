"""Ground truth and rewards end to end: the feedback endpoint and topic, the join, experiment
statistics, and bandit state that is the same on every replica and survives a restart."""
from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from gateway.models.demo import labelled_wine_rows
from tests.conftest import metric, read_topic
from tests.test_experiments_e2e import experiment_config, send
from tests.test_gateway_e2e import infer_body, onnx_outputs

pytestmark = pytest.mark.integration


async def get_json(session: aiohttp.ClientSession, url: str) -> dict:
    async with session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def post_json(session: aiohttp.ClientSession, url: str, payload) -> tuple[int, dict]:
    async with session.post(url, data=orjson.dumps(payload), headers={"Content-Type": "application/json"}) as resp:
        return resp.status, await resp.json()


async def wait_for(predicate, session, url: str, attempts: int = 100) -> dict:
    """Polls a JSON endpoint until predicate(body) holds; returns the last body either way."""
    for _ in range(attempts):
        body = await get_json(session, url)
        if predicate(body):
            return body
        await asyncio.sleep(0.1)
    return body


async def test_ground_truth_joins_predictions_and_drives_the_paired_comparison(
        demo_repository, kafka_bootstrap, unique_topic, start_gateway):
    gateway = start_gateway(experiment_config(demo_repository, kafka_bootstrap, unique_topic, {
        "policy": "shadow", "champion": "1", "challengers": [{"version": "2"}]}))
    rows, labels = labelled_wine_rows("drift")  # outside the training range: the models disagree sometimes
    ids = [f"gt-{i}" for i in range(len(rows))]
    async with aiohttp.ClientSession() as session:
        answers = await send(session, f"{gateway.url}/v2/models/wine/infer",
                             [infer_body(rows[i:i + 1], ids[i]) for i in range(len(rows))])
        assert all(status == 200 for status, _ in answers)
        await asyncio.sleep(1.0)  # let the shadow calls finish, so both versions' answers are remembered
        feedback = [{"id": rid, "ground_truth": int(label)} for rid, label in zip(ids[:-1], labels[:-1])]
        status, accepted = await post_json(session, f"{gateway.url}/v2/models/wine/feedback",
                                           {"feedback": feedback + [{"id": "never-seen", "reward": 1}]})
        bad = await post_json(session, f"{gateway.url}/v2/models/wine/feedback",
                              [{"id": ids[-1], "ground_truth": [0, 1]}, {"id": "x"}])
        wrong_rows = await post_json(session, f"{gateway.url}/v2/models/wine/feedback",
                                     [{"id": ids[-1], "ground_truth": [0, 1]}])
        # The last request's ground truth comes straight through the topic, from an upstream system.
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        await producer.send_and_wait(f"{unique_topic}.feedback",
                                     orjson.dumps({"request_id": ids[-1], "ground_truth": int(labels[-1])}))
        await producer.stop()
        stats = await wait_for(lambda s: s["arms"]["1"]["count"] == len(rows), session,
                               f"{gateway.url}/experiments/wine")
    scraped_feedback = await metric(gateway.url, "gateway_experiment_feedback", arm="1")
    scraped_accuracy = await metric(gateway.url, "gateway_experiment_accuracy", arm="1")
    assert status == 202 and accepted["joined"] == len(rows) - 1 and accepted["forwarded"] == 1
    assert bad[0] == 400 and bad[1]["code"] == "invalid_feedback"
    assert wrong_rows[0] == 422 and "1 rows" in wrong_rows[1]["errors"][0]["error"]
    expected = {v: onnx_outputs(demo_repository, v, rows)["label"] for v in ("1", "2")}
    accuracy = {v: float(np.mean(expected[v] == labels)) for v in expected}
    assert stats["arms"]["1"]["count"] == len(rows)
    assert stats["arms"]["1"]["accuracy"] == pytest.approx(accuracy["1"])
    assert scraped_feedback == len(rows) and scraped_accuracy == pytest.approx(accuracy["1"])
    paired = stats["champion_challenger"]["2_vs_1"]
    assert paired["n"] == len(rows)
    assert paired["mean_champion_loss"] == pytest.approx(1 - accuracy["1"])
    assert paired["mean_challenger_loss"] == pytest.approx(1 - accuracy["2"])
    assert paired["decision"] in ("no_difference", "challenger_better", "champion_better")
    records = await read_topic(kafka_bootstrap, f"{unique_topic}.feedback", len(rows) + 3)
    joined = {r["request_id"]: r for _, r, _ in records if r.get("type") == "joined"}
    assert len(joined) == len(rows)  # every request joined exactly once, including the one from the topic
    for i, rid in enumerate(ids):
        record = joined[rid]
        assert record["arm"] == "1" and record["policy"] == "shadow" and record["ground_truth"] == [int(labels[i])]
        for version in ("1", "2"):
            assert record["outcomes"][version]["prediction"] == [int(expected[version][i])]
            assert record["outcomes"][version]["loss"] == [float(expected[version][i] != labels[i])]


async def test_bandit_state_is_shared_by_replicas_and_survives_a_restart(
        demo_repository, kafka_bootstrap, unique_topic, start_gateway):
    route = {"policy": "bandit", "experiment": "wine-bandit", "arms": ["1", "2"], "algorithm": "thompson_beta"}
    replica_a = start_gateway(experiment_config(demo_repository, kafka_bootstrap, unique_topic, route,
                                                server={"instance_id": "replica-a"}))
    replica_b = start_gateway(experiment_config(demo_repository, kafka_bootstrap, unique_topic, route,
                                                server={"instance_id": "replica-b"}))
    rows, _ = labelled_wine_rows("train")

    async def round_of_traffic(session, served_by, feedback_to, n: int, tag: str) -> list[str]:
        bodies = [infer_body(rows[i % len(rows)][None, :], f"{tag}-{i}") for i in range(n)]
        answers = await send(session, f"{served_by.url}/v2/models/wine/infer", bodies, concurrency=4)
        versions = [a["model_version"] for _, a in answers]
        # Version 2 converts, version 1 does not; feedback goes to the *other* replica, which
        # cannot join it and passes it on through the topic.
        rewards = [{"id": f"{tag}-{i}", "reward": 1 if v == "2" else 0} for i, v in enumerate(versions)]
        status, result = await post_json(session, f"{feedback_to.url}/v2/models/wine/feedback", rewards)
        assert status == 202 and result["forwarded"] == n
        return versions

    def posterior(stats: dict) -> dict:
        return {arm: (p["alpha"], p["beta"]) for arm, p in stats["bandit"]["posterior"].items()}

    def total(stats: dict) -> int:
        return sum(p["count"] for p in stats["bandit"]["posterior"].values())

    async with aiohttp.ClientSession() as session:
        for round_ in range(4):
            await round_of_traffic(session, replica_a, replica_b, 50, f"a{round_}")
            await round_of_traffic(session, replica_b, replica_a, 50, f"b{round_}")
            await wait_for(lambda s: total(s) == 100 * (round_ + 1), session, f"{replica_a.url}/experiments/wine")
        stats_a = await wait_for(lambda s: total(s) == 400, session, f"{replica_a.url}/experiments/wine")
        stats_b = await wait_for(lambda s: total(s) == 400, session, f"{replica_b.url}/experiments/wine")
        late = await round_of_traffic(session, replica_a, replica_b, 200, "late")
        replica_a.stop()
        replica_a.start()
        stats_b_now = await wait_for(lambda s: total(s) == 600, session, f"{replica_b.url}/experiments/wine")
        stats_a_restarted = await get_json(session, f"{replica_a.url}/experiments/wine")
    assert total(stats_a) == 400 and posterior(stats_a) == posterior(stats_b)
    assert late.count("2") / len(late) > 0.8, late.count("2")
    assert total(stats_b_now) == 600
    assert posterior(stats_a_restarted) == posterior(stats_b_now)
    assert stats_a_restarted["bandit"]["allocation"]["2"] > 0.9
    assert await metric(replica_a.url, "gateway_bandit_allocation", arm="2") > 0.9
