"""`gateway events tail` and `export` read what the gateway logged, by time range."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import orjson
import pyarrow.parquet as pq
import pytest

from gateway.models.demo import sample_wines
from tests.conftest import ROOT, gateway_config, read_topic
from tests.test_gateway_e2e import infer_body, post_all

pytestmark = pytest.mark.integration


def gateway_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, check=True)


async def test_export_a_time_range_to_jsonl_and_parquet_and_tail_it(
        demo_repository, kafka_bootstrap, unique_topic, start_gateway, tmp_path):
    gateway = start_gateway(gateway_config(demo_repository, kafka_bootstrap, unique_topic))
    url = f"{gateway.url}/v2/models/wine/infer"
    await post_all(url, [infer_body(sample_wines("train", 1, seed=i), f"early-{i}") for i in range(10)])
    await read_topic(kafka_bootstrap, unique_topic, expected=20)
    await asyncio.sleep(0.05)
    boundary = int(time.time() * 1000)
    await asyncio.sleep(0.05)
    await post_all(url, [infer_body(sample_wines("drift", 2, seed=i), f"late-{i}") for i in range(15)])
    await read_topic(kafka_bootstrap, unique_topic, expected=50)

    common = ("--bootstrap", kafka_bootstrap, "--topic", unique_topic)
    gateway_cli("events", "export", *common, "--since", str(boundary), "--format", "jsonl",
                "--out", str(tmp_path / "late.jsonl"))
    late = [orjson.loads(line) for line in (tmp_path / "late.jsonl").read_bytes().splitlines()]
    assert sorted({e["request_id"] for e in late}) == sorted(f"late-{i}" for i in range(15))
    assert len(late) == 30

    gateway_cli("events", "export", *common, "--until", str(boundary), "--format", "parquet",
                "--out", str(tmp_path / "early.parquet"))
    table = pq.read_table(tmp_path / "early.parquet").to_pylist()
    assert len(table) == 20 and {r["request_id"] for r in table} == {f"early-{i}" for i in range(10)}
    row = table[0]
    assert len(row["inputs.input"]) == 13 and row["inputs.input.shape"] == [1, 13]
    assert row["outputs.probabilities.shape"] == [1, 3]

    tailed = gateway_cli("events", "tail", *common, "--from-beginning", "-n", "5").stdout.splitlines()
    assert len(tailed) == 5 and all("wine/" in line and "id=" in line for line in tailed)
