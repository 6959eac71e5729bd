"""Servers under test, started as child processes on free loopback ports and stopped by pid.

The gateway gets a temporary copy of config/demo.yaml with its own port, the absolute model
repository, Kafka on or off, and the shadow challengers kept or removed, so a benchmark never
depends on (or disturbs) a gateway someone else is running.
"""
from __future__ import annotations

import ctypes
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "config" / "demo.yaml"
MODELS = ROOT / "models"
KAFKA_SH = ROOT / "deploy" / "kafka" / "kafka.sh"
AS_IN_DEMO = "as in config/demo.yaml"  # a `loop_cpus` argument that leaves the demo's server.loop_cpus as it is


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port: int, path: str) -> bool:
    """Whether 127.0.0.1:`port` answers GET `path` with 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


_PR_SET_PDEATHSIG = 1  # linux/prctl.h
HARNESS_CPUS = os.sched_getaffinity(0)  # where the harness could run when it started


def _prepare_child() -> None:
    """In the child, before it runs the server: SIGTERM when the harness's thread that started it
    ends, however it ends (killed, hung up), so a server never outlives the benchmark (servers
    are started from the main thread); and every CPU the harness started with, not the ones it
    keeps itself to since (`loadtests.logging_cost --loop-cpus`): a server places itself."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    os.sched_setaffinity(0, HARNESS_CPUS)


class Server:
    """A child process serving HTTP on 127.0.0.1:`port`; a context manager that always stops it."""

    def __init__(self, name: str, argv: list[str], port: int, ready_path: str, description: dict[str, Any],
                 temporary: tuple[str, ...] = (), source: Path = ROOT):
        self.name, self.argv, self.port, self.ready_path = name, argv, port, ready_path
        self.source = source  # the code it runs: its working directory and PYTHONPATH
        self.description = description
        self.process: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)
        self.temporary = (*temporary, self.log.name)  # removed on exit

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def _ready(self) -> bool:
        return answers(self.port, self.ready_path)

    def start(self, timeout: float = 120.0) -> "Server":
        # The working directory serves `python -m` (the gateway's shipper and workers: it comes
        # first on their path); PYTHONPATH serves the gateway's console script, which would
        # otherwise import the editable install's tree, whichever checkout the harness runs from.
        env = dict(os.environ, PYTHONPATH=str(self.source))
        self.process = subprocess.Popen(self.argv, cwd=self.source, env=env, stdin=subprocess.DEVNULL, stdout=self.log,
                                        stderr=subprocess.STDOUT, preexec_fn=_prepare_child)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode} during start-up:\n{self.tail()}")
            if self._ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} was not ready within {timeout:.0f} s:\n{self.tail()}")

    def log_text(self) -> str:
        """Everything the process has written to stdout and stderr so far."""
        return Path(self.log.name).read_text(errors="replace")

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        """SIGCONT (in case an experiment left it paused), SIGTERM, and SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def __enter__(self) -> "Server":
        return self if self.process is not None else self.start()  # `with server.start(timeout=...)` too

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.log.close()
        for path in self.temporary:
            try:
                os.unlink(path)
            except OSError:
                pass


def ceiling() -> Server:
    port = free_port()
    return Server("ceiling", [sys.executable, "-m", "loadtests.ceiling", "--port", str(port)], port, "/",
                  {"server": "ceiling", "what": "bare aiohttp endpoint on uvloop returning a constant body"})


def demo_config() -> dict[str, Any]:
    """config/demo.yaml as written (its ${VAR:-default} placeholders unexpanded)."""
    return yaml.safe_load(DEMO_CONFIG.read_text())


def gateway_config(port: int, *, kafka_bootstrap: str | None, shadow: bool,
                   kafka_settings: dict[str, Any] | None = None, log_sample_rate: float | None = None,
                   loop_cpus: list[int] | str | None = AS_IN_DEMO) -> dict[str, Any]:
    """config/demo.yaml adapted for a benchmark run (see the module docstring); `kafka_settings`
    override keys of its `kafka:` section, `log_sample_rate` (if given) every model's own,
    `loop_cpus` (unless AS_IN_DEMO) sets `server.loop_cpus` (None: unset, every process free)."""
    config = demo_config()
    config.setdefault("server", {})["port"] = port
    config["server"]["host"] = "127.0.0.1"
    if loop_cpus != AS_IN_DEMO:
        config["server"]["loop_cpus"] = loop_cpus
    config["model_repository"] = str(MODELS)
    kafka = config.setdefault("kafka", {})
    kafka["enabled"] = kafka_bootstrap is not None
    if kafka_bootstrap:
        kafka["bootstrap_servers"] = kafka_bootstrap
    kafka.update(kafka_settings or {})
    for model in config.get("models", {}).values():
        if not shadow and isinstance(model.get("route"), dict) and "challengers" in model["route"]:
            model["route"]["challengers"] = []
        if log_sample_rate is not None:
            model["log_sample_rate"] = log_sample_rate
    return config


def gateway(*, kafka_bootstrap: str | None = None, shadow: bool = False, kafka_settings: dict[str, Any] | None = None,
            log_sample_rate: float | None = None, loop_cpus: list[int] | str | None = AS_IN_DEMO, source: Path = ROOT,
            wrapper: tuple[str, ...] = ()) -> Server:
    """The demo gateway (`gateway_config`); `source` is the source tree it runs (a git worktree,
    to compare builds); `wrapper`, a command it runs under (valgrind, to count the loop's instructions)."""
    port = free_port()
    config = gateway_config(port, kafka_bootstrap=kafka_bootstrap, shadow=shadow, kafka_settings=kafka_settings,
                            log_sample_rate=log_sample_rate, loop_cpus=loop_cpus)
    handle = tempfile.NamedTemporaryFile("w", prefix="gateway-bench-", suffix=".yaml", delete=False)
    with handle:
        yaml.safe_dump(config, handle, sort_keys=False)
    argv = [*wrapper, str(Path(sys.executable).parent / "gateway"), "--log-level", "warning", "serve",
            "--config", handle.name]
    what = ("gateway, Kafka event logging" if kafka_bootstrap else "gateway, no event logging") + \
        (", shadow challenger(s) as in config/demo.yaml" if shadow else ", champion only (challengers removed)")
    return Server("gateway", argv, port, "/v2/health/ready", {"server": "gateway", "what": what, "config": config},
                  temporary=(handle.name,), source=source)


@contextmanager
def kafka_broker() -> Iterator[tuple[str, int | None]]:
    """(bootstrap, broker pid): the broker in $KAFKA_BOOTSTRAP (`make bench` starts one), or a
    fresh one started here with deploy/kafka/kafka.sh on a free port and stopped afterwards."""
    from loadtests.host import pid_listening_on

    existing = os.environ.get("KAFKA_BOOTSTRAP")
    if existing:
        yield existing, pid_listening_on(int(existing.rsplit(":", 1)[1]))
        return
    port = free_port()
    while True:  # the controller takes port + 1
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            break
        except OSError:
            port = free_port()
    directory = tempfile.mkdtemp(prefix="bench-kafka-")
    subprocess.run([str(KAFKA_SH), "start", str(port), directory], check=True, timeout=180,
                   env=dict(os.environ, KAFKA_OWNER_PID=str(os.getpid())))  # stopped even if we are SIGKILLed
    try:
        yield f"127.0.0.1:{port}", int(Path(directory, "broker.pid").read_text())
    finally:
        subprocess.run([str(KAFKA_SH), "stop", directory], check=False, timeout=120)
        shutil.rmtree(directory, ignore_errors=True)
