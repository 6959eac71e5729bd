"""The walking skeleton end to end: HTTP -> worker -> response -> Kafka event, on the real broker."""
from __future__ import annotations

import asyncio
import shutil

import aiohttp
import numpy as np
import onnxruntime as ort
import orjson
import pytest

from gateway.models.demo import sample_wines
from tests.conftest import gateway_config, read_topic

pytestmark = pytest.mark.integration


def infer_body(rows: np.ndarray, request_id: str | None = None) -> bytes:
    body = {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}]}
    if request_id:
        body["id"] = request_id
    return orjson.dumps(body)


def onnx_outputs(repository, version: str, rows: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(repository / "wine" / version / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": rows})))


async def post_all(url: str, bodies: list[bytes], concurrency: int = 16) -> list[tuple[int, dict]]:
    results: list = [None] * len(bodies)
    queue = list(enumerate(bodies))

    async def client(session: aiohttp.ClientSession) -> None:
        while queue:
            i, body = queue.pop()
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                results[i] = (resp.status, orjson.loads(await resp.read()))

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return results


async def test_every_request_logs_one_champion_and_one_challenger_event(
        demo_repository, kafka_bootstrap, unique_topic, start_gateway):
    gateway = start_gateway(gateway_config(demo_repository, kafka_bootstrap, unique_topic))
    rng = np.random.default_rng(7)
    requests = {f"req-{i}": sample_wines("train", int(rng.integers(1, 4)), seed=i) for i in range(500)}
    answers = await post_all(f"{gateway.url}/v2/models/wine/infer",
                             [infer_body(rows, rid) for rid, rows in requests.items()])
    assert all(status == 200 for status, _ in answers), answers[:3]
    for (rid, rows), (_, answer) in zip(requests.items(), answers):
        assert answer["id"] == rid and answer["model_version"] == "1"
        direct = onnx_outputs(demo_repository, "1", rows) if rid == "req-0" else None
        if direct is not None:
            got = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in answer["outputs"]}
            np.testing.assert_array_equal(got["label"], direct["label"])
            np.testing.assert_allclose(got["probabilities"], direct["probabilities"], rtol=1e-6)

    records = await read_topic(kafka_bootstrap, unique_topic, expected=1000)
    by_request: dict[str, list[dict]] = {}
    for key, event, _ in records:
        assert key.decode() == event["request_id"]
        by_request.setdefault(event["request_id"], []).append(event)
    assert set(by_request) == set(requests)
    champion_rows, champion_events = [], []
    for rid, events in by_request.items():
        roles = sorted(e["role"] for e in events)
        assert roles == ["challenger", "champion"], (rid, roles)
        for e in events:
            for key in ("schema_version", "event_id", "timestamp", "ts_ms", "model_name", "model_version",
                        "inputs", "outputs", "action", "latency_ms", "gateway_instance", "route", "served"):
                assert key in e, key
            assert e["status"] == "ok" and e["model_name"] == "wine"
            assert e["action"]["model_version"] == "1"
        champion = next(e for e in events if e["role"] == "champion")
        challenger = next(e for e in events if e["role"] == "challenger")
        assert champion["model_version"] == "1" and champion["served"] is True
        assert challenger["model_version"] == "2" and challenger["served"] is False
        assert challenger["action"] == champion["action"]
        rows = np.asarray(champion["inputs"][0]["data"], dtype=np.float32).reshape(champion["inputs"][0]["shape"])
        np.testing.assert_array_equal(rows, requests[rid])
        champion_rows.append(rows)
        champion_events.append(champion)
    # Champion outputs in the log equal onnxruntime's on the same rows, all 500 requests at once.
    direct = onnx_outputs(demo_repository, "1", np.concatenate(champion_rows))
    logged = {name: np.concatenate([np.asarray(next(o for o in e["outputs"] if o["name"] == name)["data"]).reshape(
        next(o for o in e["outputs"] if o["name"] == name)["shape"]) for e in champion_events])
        for name in ("label", "probabilities")}
    np.testing.assert_array_equal(logged["label"], direct["label"])
    # Workers stack queued requests into one call; a different batch size may pick a different
    # GEMM kernel, so probabilities agree to float32 rounding (a few ulps), labels exactly.
    np.testing.assert_allclose(logged["probabilities"], direct["probabilities"], rtol=1e-5, atol=1e-7)


def add_python_version(repository, version: str, runtime: str, parameters: dict) -> None:
    target = repository / "wine" / version
    target.mkdir(parents=True, exist_ok=True)
    meta = orjson.loads((repository / "wine" / "1" / "model.json").read_bytes())
    meta.update({"version": version, "runtime": runtime, "file": "", "sha256": "", "parameters": parameters,
                 "reference": {}})
    (target / "model.json").write_bytes(orjson.dumps(meta))


@pytest.fixture
def fault_repository(demo_repository, tmp_path):
    repository = tmp_path / "models"
    shutil.copytree(demo_repository, repository)
    add_python_version(repository, "raising", "python:tests.fault_scorers:Raising", {})
    add_python_version(repository, "slow", "python:tests.fault_scorers:Slow", {"seconds": 2.0})
    return repository


def shadow_config(repository, bootstrap, topic, challenger: str, timeout_ms: int, max_in_flight: int = 256) -> dict:
    return gateway_config(repository, bootstrap, topic, wine={
        "versions": {"1": {}, challenger: {}},
        "route": {"policy": "shadow", "champion": "1", "challengers": [
            {"version": challenger, "timeout_ms": timeout_ms, "max_in_flight": max_in_flight}]},
    })


async def test_raising_challenger_changes_no_answer(fault_repository, kafka_bootstrap, unique_topic, start_gateway):
    gateway = start_gateway(shadow_config(fault_repository, kafka_bootstrap, unique_topic, "raising", 1000))
    rows = [sample_wines("train", 2, seed=i) for i in range(100)]
    answers = await post_all(f"{gateway.url}/v2/models/wine/infer", [infer_body(r, f"r{i}") for i, r in enumerate(rows)])
    direct = onnx_outputs(fault_repository, "1", np.concatenate(rows))["label"]
    assert [status for status, _ in answers] == [200] * 100
    served = np.concatenate([np.asarray(a["outputs"][0]["data"]) for _, a in answers])
    np.testing.assert_array_equal(served, direct)
    events = await read_topic(kafka_bootstrap, unique_topic, expected=200)
    challenger = [e for _, e, _ in events if e["role"] == "challenger"]
    assert len(challenger) == 100
    assert all(e["status"] == "error" and "challenger exploded" in e["error"] for e in challenger)


async def shadow_gauge(session: aiohttp.ClientSession, url: str, version: str) -> tuple[float, float]:
    """(challenger calls finished, challenger calls in flight) from the gateway's /metrics."""
    text = await (await session.get(url + "/metrics")).text()
    finished = in_flight = 0.0
    for line in text.splitlines():
        if line.startswith("gateway_model_requests_total") and 'role="challenger"' in line and f'version="{version}"' in line:
            finished += float(line.rsplit(" ", 1)[1])
        if line.startswith("gateway_shadow_in_flight") and f'version="{version}"' in line:
            in_flight += float(line.rsplit(" ", 1)[1])
    return finished, in_flight


async def test_slow_challenger_never_holds_up_an_answer(fault_repository, kafka_bootstrap, unique_topic, start_gateway):
    # The challenger sleeps 2 s per call and may run 5 s: if an answer waited for it, the first
    # answer could not arrive before the first challenger call had finished.
    gateway = start_gateway(shadow_config(fault_repository, kafka_bootstrap, unique_topic, "slow", 5000,
                                          max_in_flight=8))
    url = f"{gateway.url}/v2/models/wine/infer"
    rows = [sample_wines("train", 1, seed=i) for i in range(20)]
    direct = onnx_outputs(fault_repository, "1", np.concatenate(rows))["label"]
    async with aiohttp.ClientSession() as session:
        served = []
        for i, r in enumerate(rows):
            async with session.post(url, data=infer_body(r, f"s{i}")) as resp:
                assert resp.status == 200
                served.append((await resp.json())["outputs"][0]["data"][0])
            if i == 0:
                finished, in_flight = await shadow_gauge(session, gateway.url, "slow")
                assert finished == 0 and in_flight == 1, "the answer came back while the challenger still ran"
        np.testing.assert_array_equal(served, direct)
        finished, in_flight = await shadow_gauge(session, gateway.url, "slow")
        assert in_flight <= 8, "in-flight shadow calls are capped"
        skipped = [line for line in (await (await session.get(gateway.url + "/metrics")).text()).splitlines()
                   if line.startswith("gateway_shadow_skipped_total") and 'version="slow"' in line]
        assert skipped and float(skipped[0].rsplit(" ", 1)[1]) == 20 - 8 - finished


async def test_malformed_requests_get_a_4xx_json_error_and_the_gateway_keeps_serving(
        demo_repository, kafka_bootstrap, unique_topic, start_gateway):
    config = gateway_config(demo_repository, kafka_bootstrap, unique_topic)
    config["server"] = {"max_body_bytes": 4096}
    gateway = start_gateway(config)
    good = infer_body(sample_wines("train", 1, seed=1))
    one = {"name": "input", "shape": [1, 13], "datatype": "FP32", "data": [1.0] * 13}
    cases = {
        "invalid_json": ("/v2/models/wine/infer", b'{"inputs": [', 400),
        "not_an_object": ("/v2/models/wine/infer", b"[1, 2]", 400),
        "no_inputs": ("/v2/models/wine/infer", b'{"id": "x"}', 400),
        "wrong_shape": ("/v2/models/wine/infer", orjson.dumps({"inputs": [{**one, "shape": [1, 12], "data": [1.0] * 12}]}), 400),
        "shape_data_mismatch": ("/v2/models/wine/infer", orjson.dumps({"inputs": [{**one, "shape": [2, 13]}]}), 400),
        "wrong_datatype": ("/v2/models/wine/infer", orjson.dumps({"inputs": [{**one, "datatype": "BYTES"}]}), 400),
        "strings_as_numbers": ("/v2/models/wine/infer", orjson.dumps({"inputs": [{**one, "data": ["a"] * 13}]}), 400),
        "ragged_rows": ("/v2/models/wine/infer", orjson.dumps({"inputs": [{**one, "shape": [2, 13], "data": [[1.0] * 13, [1.0] * 12]}]}), 400),
        "unknown_input": ("/v2/models/wine/infer", orjson.dumps({"inputs": [{**one, "name": "x"}]}), 400),
        "unknown_output": ("/v2/models/wine/infer", orjson.dumps({"inputs": [one], "outputs": [{"name": "nope"}]}), 400),
        "unknown_model": ("/v2/models/beer/infer", good, 404),
        "unknown_version": ("/v2/models/wine/versions/9/infer", good, 404),
        "too_large": ("/v2/models/wine/infer", orjson.dumps({"inputs": [{**one, "shape": [100, 13], "data": [1.5] * 1300}]}), 413),
    }
    async with aiohttp.ClientSession() as session:
        for case, (path, body, expected) in cases.items():
            async with session.post(gateway.url + path, data=body) as resp:
                assert resp.status == expected, (case, resp.status, await resp.text())
                error = await resp.json()
                assert error["code"] and error["error"], case
        async with session.post(gateway.url + "/v2/models/wine/infer", data=good) as resp:
            assert resp.status == 200
        async with session.post(gateway.url + "/v2/models/wine/versions/2/infer", data=good) as resp:
            assert resp.status == 200 and (await resp.json())["model_version"] == "2"
    assert gateway.process.poll() is None
