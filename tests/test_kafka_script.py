"""deploy/kafka/kafka.sh, the script every test, benchmark and `make run` starts its broker with:
a run that is killed outright must not leave a broker behind, and `stop` must end only a broker
the script launched; and it fetches the broker's jars again only when pom.xml changed."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time

from loadtests.host import alive
from tests.conftest import KAFKA_SH, broker_port, start_broker


def _within(seconds: float, done) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.2)
    return False


def test_a_broker_whose_owner_is_sigkilled_stops_by_itself(tmp_path):
    owner = subprocess.Popen(["sleep", "600"])
    run_dir = tmp_path / "kafka"
    start_broker(broker_port(), run_dir, owner=owner.pid)
    broker = int((run_dir / "broker.pid").read_text())
    try:
        time.sleep(2)
        assert alive(broker), "the broker must keep running while its owner does"
        owner.send_signal(signal.SIGKILL)  # not reaped yet: the watcher must see a zombie as ended
        assert _within(60, lambda: not alive(broker)), "the broker outlived the process that owned it"
        assert _within(5, lambda: not (run_dir / "broker.pid").exists()), "the stopped broker's pid file stayed"
        assert f"owner (pid {owner.pid}) ended" in (run_dir / "logs" / "watch.log").read_text()
    finally:
        subprocess.run([str(KAFKA_SH), "stop", str(run_dir)], check=False)
        owner.kill()
        owner.wait()


def test_stop_leaves_alone_a_process_that_is_not_a_broker(tmp_path):
    """A pid file left by a broker that died, its pid since taken by another process."""
    stranger = subprocess.Popen(["sleep", "600"])
    try:
        (tmp_path / "broker.pid").write_text(f"{stranger.pid}\n")
        subprocess.run([str(KAFKA_SH), "stop", str(tmp_path)], check=True)
        assert stranger.poll() is None, "kafka.sh stop killed a process it did not launch"
        assert not (tmp_path / "broker.pid").exists()
    finally:
        stranger.kill()
        stranger.wait()


def _fetch_with_maven_that_fails(tmp_path, stamp: str) -> subprocess.CompletedProcess:
    """`kafka.sh fetch` with its cache in tmp_path and a `mvn` that only records that it ran."""
    bin_dir, libs = tmp_path / "bin", tmp_path / "cache" / "libs"
    bin_dir.mkdir()
    libs.mkdir(parents=True)
    mvn = bin_dir / "mvn"
    mvn.write_text(f"#!/bin/sh\ntouch {tmp_path}/mvn-ran\nexit 1\n")
    mvn.chmod(0o755)
    (libs / ".complete").write_text(stamp)
    os.utime(libs / ".complete", (0, 0))  # older than any pom.xml, as in a fresh clone's cache
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "KAFKA_CACHE": str(tmp_path / "cache")}
    return subprocess.run([str(KAFKA_SH), "fetch"], env=env, capture_output=True, text=True)


def test_fetch_keeps_jars_resolved_from_the_same_pom_however_old_the_stamp(tmp_path):
    pom_hash = hashlib.sha256((KAFKA_SH.parent / "pom.xml").read_bytes()).hexdigest()
    done = _fetch_with_maven_that_fails(tmp_path, pom_hash + "\n")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "mvn-ran").exists(), "fetch resolved the jars again though pom.xml had not changed"


def test_fetch_resolves_again_when_the_pom_changed(tmp_path):
    done = _fetch_with_maven_that_fails(tmp_path, "hash-of-an-older-pom\n")
    assert (tmp_path / "mvn-ran").exists(), "fetch kept jars resolved from another pom.xml"
    assert done.returncode != 0
