"""`server.loop_cpus`: the request loop has its CPUs to itself, and the processes the gateway
starts (model workers, the event shipper) run on the other CPUs; a config asking for CPUs the
gateway may not use, or leaving none for the rest, fails at start-up."""
from __future__ import annotations

import os
import urllib.request

import pytest

from gateway.config import ConfigError, load_config
from gateway.parallel.cpus import CpuLayout
from gateway.models.demo import sample_wines
from loadtests.host import process_tree
from loadtests.logging_cost import part_of
from tests.conftest import gateway_config
from tests.test_gateway_e2e import infer_body

ALLOWED = sorted(os.sched_getaffinity(0))


def _cpus_of_every_thread(pid: int) -> set[frozenset[int]]:
    return {frozenset(os.sched_getaffinity(int(tid))) for tid in os.listdir(f"/proc/{pid}/task")}


@pytest.mark.skipif(len(ALLOWED) < 2, reason="needs two CPUs this process may use")
@pytest.mark.parametrize("loop_cpus", [[ALLOWED[0]], "auto"])
def test_the_loop_has_its_cpu_to_itself_and_workers_and_shipper_the_rest(
        demo_repository, kafka_bootstrap, unique_topic, start_gateway, loop_cpus):
    """Given, or "auto" (the first CPU the gateway may use)."""
    loop, others = ALLOWED[0], frozenset(ALLOWED[1:])
    config = gateway_config(demo_repository, kafka_bootstrap, unique_topic)
    gateway = start_gateway({**config, "server": {"loop_cpus": loop_cpus}})
    request = urllib.request.Request(gateway.url + "/v2/models/wine/infer", infer_body(sample_wines("train", 1)),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200

    root = gateway.process.pid
    assert _cpus_of_every_thread(root) == {frozenset({loop})}, "a thread of the request loop's process ran elsewhere"
    parts = {pid: part_of(pid, root) for pid in process_tree(root) if pid != root}
    assert sorted(parts.values()) == ["shipper", "workers", "workers"]
    for pid, part in parts.items():
        assert _cpus_of_every_thread(pid) == {others}, f"the {part} process {pid} may run on the loop's CPU"
    assert f"request loop on CPU {loop}; workers and event shipper on CPU" in gateway.log()


@pytest.mark.parametrize("allowed, loop, others", [({2, 3, 5}, (2,), (3, 5)), ({4}, None, None)])
def test_auto_gives_the_loop_the_first_cpu_the_gateway_may_use_if_any_are_left(monkeypatch, allowed, loop, others):
    """A container's cpuset need not start at CPU 0; on a single CPU nothing is pinned."""
    monkeypatch.setattr("gateway.parallel.cpus.allowed_cpus", lambda: allowed)
    assert CpuLayout.of("auto") == CpuLayout(loop, others)


def _config_with_loop_cpus(tmp_path, cpus: list[int] | str):
    path = tmp_path / "gateway.yaml"
    path.write_text("models:\n  wine:\n    versions: {1: {}}\n    route: {policy: shadow, champion: 1}\n"
                    f"server:\n  loop_cpus: {cpus}\n")
    return path


@pytest.mark.parametrize("cpus, hint", [
    ([max(ALLOWED) + 1], f"CPU {max(ALLOWED) + 1} is not one this process may run on"),
    (ALLOWED, "leaves no CPU for the model workers and the event shipper"),
    ([], "give at least one CPU, or remove the key"),
    ("any", "auto"),
])
def test_loop_cpus_the_gateway_cannot_use_fail_at_start_up(tmp_path, cpus, hint):
    path = _config_with_loop_cpus(tmp_path, cpus)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "server.loop_cpus" in str(err.value) and hint in str(err.value)

