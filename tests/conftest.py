"""Shared fixtures: a real Kafka broker and the demo model repository.

The broker is the one `make test` started (KAFKA_BOOTSTRAP), or, when a test file is run on
its own, one this session starts on a free port with deploy/kafka/kafka.sh and stops at the end.
"""
from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = ROOT / "deploy" / "kafka" / "kafka.sh"


def start_broker(port: int, run_dir: Path, owner: int | None = None) -> None:
    """deploy/kafka/kafka.sh start, owned by `owner` (this process by default): a test run killed
    even with SIGKILL leaves no broker behind (the script's watcher stops it)."""
    subprocess.run([str(KAFKA_SH), "start", str(port), str(run_dir)], check=True,
                   env=dict(os.environ, KAFKA_OWNER_PID=str(owner or os.getpid())))


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def broker_port() -> int:
    """A port for a test broker, the next one free too (its controller's), both below the kernel's
    range of automatic ports. A test may stop its broker and start it again on the same ports;
    while it is down, any client socket may be given a port from that range, and the broker's
    restart then failed with "Address already in use" (seen once, on the controller's port)."""
    first_automatic = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randrange(10_000, first_automatic - 1)
        if _bindable(port) and _bindable(port + 1):
            return port
    raise RuntimeError(f"no two free ports found in 10000-{first_automatic - 1}")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory) -> str:
    existing = os.environ.get("KAFKA_BOOTSTRAP")
    if existing:
        yield existing
        return
    port = broker_port()
    run_dir = tmp_path_factory.mktemp("kafka")
    start_broker(port, run_dir)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(KAFKA_SH), "stop", str(run_dir)], check=False)


@pytest.fixture
def unique_topic() -> str:
    return f"test.{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def demo_repository(tmp_path_factory) -> Path:
    """The demo wine models, built once per session exactly as `gateway models build-demo` does."""
    from gateway.models.demo import build_demo_repository

    root = tmp_path_factory.mktemp("models")
    build_demo_repository(root)
    return root


class RunningGateway:
    """A `gateway serve` subprocess on a free port, stopped with SIGTERM like an operator would."""

    def __init__(self, config: dict, workdir: Path):
        import yaml

        self.port = free_port()
        config = {**config, "server": {**config.get("server", {}), "port": self.port}}
        if "kafka" in config:  # each test gateway spools into its own folder unless told otherwise
            kafka = config["kafka"]
            config["kafka"] = {**kafka, "spool": {"directory": str(workdir / "spool"), **kafka.get("spool", {})}}
        self.config_path = workdir / f"gateway-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"gateway-{self.port}.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "RunningGateway":
        import time
        import urllib.request

        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(self.config_path)],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"gateway not ready within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        import signal

        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            self._log.close()


def gateway_config(repository: Path, bootstrap: str, events_topic: str, **models) -> dict:
    """A config for tests: the demo champion/challenger unless `models` says otherwise."""
    return {
        "model_repository": str(repository),
        "models": models or {"wine": {
            "versions": {"1": {"workers": 1}, "2": {"workers": 1}},
            "route": {"policy": "shadow", "champion": "1", "challengers": [{"version": "2"}]},
        }},
        "kafka": {"enabled": True, "bootstrap_servers": bootstrap, "topics": {"events": events_topic}},
    }


@pytest.fixture
def start_gateway(tmp_path):
    started: list[RunningGateway] = []

    def start(config: dict) -> RunningGateway:
        gateway = RunningGateway(config, tmp_path).start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


QUIET_SECONDS = 2.5


async def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list:
    """Every record of `topic` from the start, once `expected` have arrived (or the time is up)."""
    import asyncio

    import orjson
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    records = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(records) < expected and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                records.extend(messages)
        # Anything beyond `expected` must show up too (duplicates; the rest when `expected` is a
        # lower bound): read until the topic has been quiet for longer than the event log holds
        # events back (the shipper's read pause + twice kafka.linger_ms: ~1.1 s by default).
        quiet_until = loop.time() + QUIET_SECONDS
        while loop.time() < min(quiet_until, deadline + QUIET_SECONDS):
            extra = await consumer.getmany(timeout_ms=500)
            if extra:
                quiet_until = loop.time() + QUIET_SECONDS
            for messages in extra.values():
                records.extend(messages)
    finally:
        await consumer.stop()
    return [(m.key, orjson.loads(m.value), m) for m in records]


class PrivateBroker:
    """A broker of one test's own, to stop and start again without disturbing other tests."""

    def __init__(self, run_dir: Path):
        self.port = broker_port()
        self.dir = run_dir
        self.bootstrap = f"127.0.0.1:{self.port}"

    def start(self) -> None:
        start_broker(self.port, self.dir)

    def stop(self) -> None:
        subprocess.run([str(KAFKA_SH), "stop", str(self.dir)], check=True)


@pytest.fixture
def private_broker(tmp_path):
    broker = PrivateBroker(tmp_path / "kafka")
    broker.start()
    yield broker
    broker.stop()


async def metric(url: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus metric's samples on the gateway that match the labels."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        text = await (await session.get(url + "/metrics")).text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total
