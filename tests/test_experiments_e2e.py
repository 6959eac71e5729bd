"""Experiments end to end on the real broker: A/B (sticky and random), shadow sampling, canary
auto-rollback, blue/green under traffic, the admin API's tokens and audit trail, reload."""
from __future__ import annotations

import asyncio
import shutil
import signal
from collections import Counter, defaultdict

import aiohttp
import orjson
import pytest
import yaml

from gateway.models.demo import sample_wines
from tests.conftest import gateway_config, read_topic
from tests.test_gateway_e2e import add_python_version, infer_body

pytestmark = pytest.mark.integration
TOKEN = "test-admin-token-0123456789abcdef"
ROWS = sample_wines("train", 64, seed=3)


def experiment_config(repository, bootstrap, topic: str, route: dict, versions=("1", "2"), **extra) -> dict:
    config = gateway_config(repository, bootstrap, topic, wine={
        "versions": {v: {} for v in versions}, "route": route})
    config["kafka"]["topics"].update({"feedback": f"{topic}.feedback", "audit": f"{topic}.audit"})
    config["admin"] = {"tokens": {"ops-alice": TOKEN}}
    config.update(extra)
    return config


def body(i: int, customer: str | None = None, request_id: str | None = None) -> bytes:
    payload = orjson.loads(infer_body(ROWS[i % len(ROWS)][None, :], request_id))
    if customer is not None:
        payload["parameters"] = {"customer_id": customer}
    return orjson.dumps(payload)


async def send(session: aiohttp.ClientSession, url: str, bodies: list[bytes], concurrency: int = 16) -> list:
    results: list = [None] * len(bodies)
    queue = list(enumerate(bodies))

    async def client() -> None:
        while queue:
            i, data = queue.pop()
            async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as resp:
                results[i] = (resp.status, orjson.loads(await resp.read()))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return results


async def admin(session, url: str, method: str, path: str, token: str | None = TOKEN, json=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.request(method, url + path, headers=headers, json=json) as resp:
        return resp.status, await resp.json()


async def test_sticky_ab_keeps_every_key_on_one_arm(demo_repository, kafka_bootstrap, unique_topic, start_gateway):
    gateway = start_gateway(experiment_config(demo_repository, kafka_bootstrap, unique_topic, {
        "policy": "ab", "experiment": "wine-ab-1", "weights": {"1": 50, "2": 50}, "sticky": {}}))
    customers = [f"customer-{k}" for k in range(100)]
    bodies = [body(i, customers[i % 100], f"sticky-{i}") for i in range(1000)]
    async with aiohttp.ClientSession() as session:
        answers = await send(session, f"{gateway.url}/v2/models/wine/infer", bodies)
        # The header works as the key too, when the parameter is absent.
        headed = []
        for i in range(20):
            async with session.post(f"{gateway.url}/v2/models/wine/infer", data=body(i),
                                    headers={"X-Customer-Id": customers[i]}) as resp:
                headed.append((customers[i], (await resp.json())["model_version"]))
    assert all(status == 200 for status, _ in answers)
    arms = defaultdict(set)
    for i, (_, answer) in enumerate(answers):
        arms[customers[i % 100]].add(answer["model_version"])
    assert all(len(seen) == 1 for seen in arms.values()), {k: v for k, v in arms.items() if len(v) > 1}
    per_arm = Counter(next(iter(v)) for v in arms.values())
    assert set(per_arm) == {"1", "2"}  # 100 keys at 50/50: both arms get keys
    for customer, version in headed:
        assert arms[customer] == {version}
    events = await read_topic(kafka_bootstrap, unique_topic, 1020)
    logged = {e["request_id"]: e for _, e, _ in events if e["request_id"].startswith("sticky-")}
    assert len(logged) == 1000
    for i in range(1000):
        event = logged[f"sticky-{i}"]
        assert event["route"] == "ab" and event["role"] == "arm" and event["served"]
        assert {event["arm"]} == arms[customers[i % 100]] and event["reason"].startswith("sticky:bucket=")


async def test_random_ab_splits_within_two_points_of_the_weights(
        demo_repository, kafka_bootstrap, unique_topic, start_gateway):
    gateway = start_gateway(experiment_config(demo_repository, kafka_bootstrap, unique_topic, {
        "policy": "ab", "experiment": "wine-ab-2", "weights": {"1": 70, "2": 30}}))
    async with aiohttp.ClientSession() as session:
        answers = await send(session, f"{gateway.url}/v2/models/wine/infer", [body(i) for i in range(10_000)], 32)
        status, stats = await admin(session, gateway.url, "GET", "/experiments/wine", token=None)
    assert all(s == 200 for s, _ in answers)
    share = Counter(a["model_version"] for _, a in answers)["1"] / 10_000
    assert abs(share - 0.70) <= 0.02, share
    assert status == 200 and stats["arms"]["1"]["requests"] + stats["arms"]["2"]["requests"] == 10_000


async def test_shadow_challenger_sampled_at_ten_percent(demo_repository, kafka_bootstrap, unique_topic, start_gateway):
    gateway = start_gateway(experiment_config(demo_repository, kafka_bootstrap, unique_topic, {
        "policy": "shadow", "champion": "1", "challengers": [{"version": "2", "fraction": 0.1}]}))
    n = 4000
    async with aiohttp.ClientSession() as session:
        answers = await send(session, f"{gateway.url}/v2/models/wine/infer",
                             [body(i, request_id=f"s-{i}") for i in range(n)], 32)
    assert all(s == 200 and a["model_version"] == "1" for s, a in answers)
    events = await read_topic(kafka_bootstrap, unique_topic, n + int(0.08 * n))
    challenger = {e["request_id"] for _, e, _ in events if e["role"] == "challenger"}
    champion = {e["request_id"] for _, e, _ in events if e["role"] == "champion"}
    assert len(champion) == n
    assert abs(len(challenger) / n - 0.10) <= 0.02, len(challenger) / n
    assert challenger <= champion


@pytest.fixture
def canary_repository(demo_repository, tmp_path):
    repository = tmp_path / "models"
    shutil.copytree(demo_repository, repository)
    add_python_version(repository, "broken", "python:tests.fault_scorers:Raising", {"message": "canary is broken"})
    return repository


async def test_failing_canary_rolls_back_by_itself(canary_repository, kafka_bootstrap, unique_topic, start_gateway):
    gateway = start_gateway(experiment_config(canary_repository, kafka_bootstrap, unique_topic, {
        "policy": "canary", "stable": "1", "canary": "broken", "steps": [20, 50, 100],
        "objectives": {"max_error_rate": 0.05, "min_requests": 20}}, versions=("1", "broken")))
    url = f"{gateway.url}/v2/models/wine/infer"
    async with aiohttp.ClientSession() as session:
        first = await send(session, url, [body(i) for i in range(400)], concurrency=4)
        after = await send(session, url, [body(i) for i in range(500)], concurrency=8)
        status, route = await admin(session, gateway.url, "GET", "/admin/models/wine/route")
    failed = sum(1 for s, _ in first if s != 200)
    # The canary failed every call it got until it had been judged on min_requests of them.
    assert 20 <= failed < 400 * 0.2
    assert all(s == 200 and a["model_version"] == "1" for s, a in after)
    assert status == 200 and route["route"]["rolled_back"].startswith("error rate")
    audit = await read_topic(kafka_bootstrap, f"{unique_topic}.audit", 1)
    assert [(r["action"], r["actor"]) for _, r, _ in audit] == [("canary_rollback:objective", "gateway")]
    assert audit[0][1]["before"]["rolled_back"] is None and audit[0][1]["after"]["rolled_back"]


async def test_blue_green_switch_under_traffic_fails_no_request(
        demo_repository, kafka_bootstrap, unique_topic, start_gateway):
    gateway = start_gateway(experiment_config(demo_repository, kafka_bootstrap, unique_topic, {
        "policy": "blue_green", "active": "1", "standby": "2"}))
    url = f"{gateway.url}/v2/models/wine/infer"
    async with aiohttp.ClientSession() as session:
        switched = asyncio.Event()
        answers: list = []
        after: list = []  # each client's request sent after the last switch

        async def client(i: int) -> None:
            while True:
                done = switched.is_set()
                answer = await send(session, url, [body(i)], concurrency=1)
                (after if done else answers).extend(answer)
                if done:
                    return

        traffic = asyncio.gather(*(client(i) for i in range(16)))
        await asyncio.sleep(0.5)
        switches = []
        for _ in range(2):  # blue -> green, and, while traffic still flows, back
            switches.append(await admin(session, gateway.url, "POST", "/admin/models/wine/switch"))
            await asyncio.sleep(0.3)
        switches.append(await admin(session, gateway.url, "POST", "/admin/models/wine/switch"))
        switched.set()
        await traffic
    assert [s for s, _ in switches] == [200, 200, 200]
    assert switches[-1][1]["route"]["active"] == "2"
    assert all(status == 200 for status, _ in answers + after), Counter(s for s, _ in answers + after)
    assert {a["model_version"] for _, a in answers} == {"1", "2"}
    assert [a["model_version"] for _, a in after] == ["2"] * 16
    audit = await read_topic(kafka_bootstrap, f"{unique_topic}.audit", 3)
    assert [(r["action"], r["actor"], r["before"]["active"], r["after"]["active"]) for _, r, _ in audit] == [
        ("switch", "ops-alice", "1", "2"), ("switch", "ops-alice", "2", "1"), ("switch", "ops-alice", "1", "2")]


async def test_admin_api_refuses_bad_tokens_and_audits_every_change(
        demo_repository, kafka_bootstrap, unique_topic, start_gateway, tmp_path):
    config = experiment_config(demo_repository, kafka_bootstrap, unique_topic, {
        "policy": "shadow", "champion": "1", "challengers": [{"version": "2"}]})
    gateway = start_gateway(config)
    ab = {"policy": "ab", "experiment": "wine-ab-3", "weights": {"1": 90, "2": 10}}
    async with aiohttp.ClientSession() as session:
        refused = [
            await admin(session, gateway.url, "GET", "/admin/routes", token=None),
            await admin(session, gateway.url, "PUT", "/admin/models/wine/route", token=None, json=ab),
            await admin(session, gateway.url, "PUT", "/admin/models/wine/route", token="wrong-token-wrong-token", json=ab),
            await admin(session, gateway.url, "POST", "/admin/models/wine/promote", token="x", json={"version": "2"}),
        ]
        bad_route = await admin(session, gateway.url, "PUT", "/admin/models/wine/route",
                                json={"policy": "ab", "experiment": "x", "weights": {"1": 1, "9": 1}})
        changes = [
            await admin(session, gateway.url, "PUT", "/admin/models/wine/route", json=ab),
            await admin(session, gateway.url, "POST", "/admin/models/wine/rollback"),
            await admin(session, gateway.url, "POST", "/admin/models/wine/promote", json={"version": "2"}),
        ]
        _, routes = await admin(session, gateway.url, "GET", "/admin/routes")
        # Reload: a broken file is refused and the running route kept; a good one applies.
        original = gateway.config_path.read_text()
        gateway.config_path.write_text(original.replace("policy: shadow", "policy: shadoww"))
        broken_reload = await admin(session, gateway.url, "POST", "/admin/reload")
        _, kept = await admin(session, gateway.url, "GET", "/admin/models/wine/route")
        gateway.config_path.write_text(original)
        good_reload = await admin(session, gateway.url, "POST", "/admin/reload")
        _, reloaded = await admin(session, gateway.url, "GET", "/admin/models/wine/route")
        # SIGHUP reloads too.
        edited = yaml.safe_load(original)
        edited["models"]["wine"]["route"] = {"policy": "blue_green", "active": "2", "standby": "1"}
        gateway.config_path.write_text(yaml.safe_dump(edited))
        gateway.process.send_signal(signal.SIGHUP)
        for _ in range(50):
            _, after_hup = await admin(session, gateway.url, "GET", "/admin/models/wine/route")
            if after_hup["route"]["policy"] == "blue_green":
                break
            await asyncio.sleep(0.1)
    assert [s for s, _ in refused] == [401, 401, 403, 403]
    assert all(b["code"] in ("unauthorized", "forbidden") for _, b in refused)
    assert bad_route[0] == 400 and bad_route[1]["code"] == "invalid_route" and "'9'" in bad_route[1]["error"]
    assert [s for s, _ in changes] == [200, 200, 200]
    assert changes[0][1]["route"]["policy"] == "ab" and changes[1][1]["route"]["policy"] == "shadow"
    assert changes[2][1]["route"]["champion"] == "2"
    assert changes[2][1]["route"]["challengers"][0]["version"] == "1"
    assert routes["models"]["wine"]["route"]["champion"] == "2"
    assert broken_reload[0] == 400 and broken_reload[1]["code"] == "invalid_config"
    assert "shadoww" in broken_reload[1]["error"] and kept["route"]["champion"] == "2"
    assert good_reload[0] == 200 and reloaded["route"]["champion"] == "1"
    assert after_hup["route"] == {"policy": "blue_green", "active": "2", "standby": "1"}
    audit = await read_topic(kafka_bootstrap, f"{unique_topic}.audit", 5)
    records = [r for _, r, _ in audit]
    assert [(r["action"], r["actor"]) for r in records] == [
        ("set_route", "ops-alice"), ("rollback", "ops-alice"), ("promote:2", "ops-alice"),
        ("reload", "ops-alice"), ("reload", "signal:SIGHUP")]
    assert records[0]["before"]["policy"] == "shadow" and records[0]["after"] == {**ab, "sticky": None, "design": None}
    assert TOKEN not in gateway.log() and TOKEN not in str(records)


async def test_gateway_scores_while_kafka_is_away_and_refuses_what_it_cannot_record(
        demo_repository, start_gateway, tmp_path):
    from tests.conftest import free_port

    config = experiment_config(demo_repository, f"127.0.0.1:{free_port()}", "unreachable", {  # nothing listens
        "policy": "shadow", "champion": "1", "challengers": [{"version": "2"}]})
    gateway = start_gateway(config)
    async with aiohttp.ClientSession() as session:
        answers = await send(session, f"{gateway.url}/v2/models/wine/infer", [body(i, request_id=f"k-{i}") for i in range(20)])
        async with session.post(f"{gateway.url}/v2/models/wine/feedback", json={"id": "k-1", "ground_truth": 0}) as r:
            feedback = (r.status, await r.json())
        change = await admin(session, gateway.url, "POST", "/admin/models/wine/promote", json={"version": "2"})
        _, route = await admin(session, gateway.url, "GET", "/admin/models/wine/route")
    assert all(status == 200 for status, _ in answers)  # events go to the spool meanwhile
    assert feedback[0] == 503 and feedback[1]["code"] == "feedback_not_stored"
    assert change[0] == 503 and change[1]["code"] == "audit_unavailable"
    assert route["route"]["champion"] == "1"  # an unaudited change never takes effect
