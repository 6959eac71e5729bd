"""Shared fixtures: a real Kafka broker and the demo model repository.

The broker is the one `make test` started (KAFKA_BOOTSTRAP), or, when a test file is run on
its own, one this session starts on a free port with deploy/kafka/kafka.sh and stops at the end.
"""
from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = ROOT / "deploy" / "kafka" / "kafka.sh"


def free_port(pairs: int = 1) -> int:
    """A free TCP port on 127.0.0.1 (and the next `pairs - 1` ports free too)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ok = True
        for extra in range(1, pairs):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + extra))
                except OSError:
                    ok = False
        if ok and port + pairs < 65535:
            return port
    raise RuntimeError("no free port pair found")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory) -> str:
    existing = os.environ.get("KAFKA_BOOTSTRAP")
    if existing:
        yield existing
        return
    port = free_port(pairs=2)
    run_dir = tmp_path_factory.mktemp("kafka")
    subprocess.run([str(KAFKA_SH), "start", str(port), str(run_dir)], check=True)
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
