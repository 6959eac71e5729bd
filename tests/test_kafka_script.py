"""deploy/kafka/kafka.sh, the script every test, benchmark and `make run` starts its broker with:
a run that is killed outright must not leave a broker behind, and `stop` must end only a broker
the script launched."""
from __future__ import annotations

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
