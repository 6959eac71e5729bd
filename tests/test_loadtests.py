"""The load-test harness: schedules, histograms, scenarios, the HTTP client, the generator, and
the one behaviour it exists for: an open-loop run shows a server stall that a closed loop hides."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import AsyncIterator

import numpy as np
import orjson
import pytest
from aiohttp import web

from loadtests import histograms, host, servers
from loadtests.generator import Generator, WorkerSpec
from loadtests.httpclient import ConnectionPool, RequestFailed, RequestHead
from loadtests.run import RunSettings, execute
from loadtests.scenario import SCENARIOS, RequestFactory, ScenarioError, load_scenario, parse_scenario
from loadtests.schedule import intended_offsets


# --- schedule -------------------------------------------------------------------------------

def test_constant_arrivals_interleave_processes_into_one_even_stream() -> None:
    parts = [intended_offsets("constant", 100.0, 2.0, process=k, processes=3) for k in range(3)]
    merged = np.sort(np.concatenate(parts))
    assert len(merged) == 200
    assert np.allclose(np.diff(merged), 0.01)
    assert merged[0] == 0.0 and merged[-1] < 2.0
    assert all(np.allclose(np.diff(p), 0.03) for p in parts)


def test_poisson_arrivals_have_the_rate_and_exponential_gaps() -> None:
    offsets = intended_offsets("poisson", 1000.0, 20.0, seed=7)
    gaps = np.diff(offsets)
    assert abs(len(offsets) / 20.0 - 1000.0) < 30  # 20k arrivals: sd of the count is ~141
    assert abs(gaps.mean() - 1e-3) < 3e-5
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.03  # exponential gaps: coefficient of variation 1
    assert np.all(offsets < 20.0) and np.all(gaps >= 0)
    again = intended_offsets("poisson", 1000.0, 20.0, seed=7)
    assert np.array_equal(offsets, again)
    other = intended_offsets("poisson", 1000.0, 20.0, seed=7, process=1, processes=2)
    assert abs(len(other) / 20.0 - 500.0) < 25


def test_schedule_is_bounded_by_its_limit() -> None:
    assert len(intended_offsets("constant", 1000.0, 10.0, limit=123)) == 123
    with pytest.raises(ValueError):
        intended_offsets("constant", 0.0, 1.0)
    with pytest.raises(ValueError):
        intended_offsets("bursty", 1.0, 1.0)  # type: ignore[arg-type]


# --- histograms -----------------------------------------------------------------------------

def test_histograms_merge_losslessly_across_processes() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.exponential(0.002, 50_000), rng.exponential(0.02, 5_000)
    merged = histograms.merge([histograms.encode(histograms.from_seconds(a)),
                               histograms.encode(histograms.from_seconds(b))])
    whole = histograms.from_seconds(np.concatenate([a, b]))
    assert histograms.summary_ms(merged) == histograms.summary_ms(whole)
    summary = histograms.summary_ms(whole)
    assert summary["count"] == 55_000
    exact = np.percentile(np.concatenate([a, b]) * 1e3, 99)
    assert abs(summary["p99"] - exact) / exact < 0.01  # 3 significant digits
    assert histograms.summary_ms(histograms.new()) == {"count": 0}


# --- scenarios ------------------------------------------------------------------------------

def _body(request_bytes: bytes) -> dict:
    return orjson.loads(request_bytes.split(b"\r\n\r\n", 1)[1])


def test_every_builtin_scenario_builds_valid_v2_requests() -> None:
    names = sorted(p.stem for p in SCENARIOS.glob("*.yaml"))
    assert {"standard", "single-row", "demo-mix", "drift"} <= set(names)
    for name in names:
        scenario = load_scenario(name)
        factory = RequestFactory(scenario, "127.0.0.1:1", process=1, seed=2, run_id="r")
        for seq in range(50):
            request = factory.make(seq, 0.5)
            head, _, raw = request.data.partition(b"\r\n\r\n")
            kind = scenario.requests[request.kind]
            assert head.startswith(f"POST {kind.path} HTTP/1.1".encode())
            assert f"Content-Length: {len(raw)}".encode() in head
            body = orjson.loads(raw)
            assert body["id"] == request.request_id == f"r-1-{seq}"
            tensor = body["inputs"][0]
            assert tensor["shape"] == [request.rows, 13] and len(tensor["data"]) == request.rows * 13
            assert kind.rows[0] <= request.rows <= kind.rows[1] and len(request.labels) == request.rows


def test_drift_scenario_sends_low_alcohol_wines_from_minute_one() -> None:
    factory = RequestFactory(load_scenario("drift"), "h", seed=0)
    alcohol = lambda t: [_body(factory.make(i, t).data)["inputs"][0]["data"][0] for i in range(200)]  # noqa: E731
    assert min(alcohol(59.9)) >= 13.0
    assert max(alcohol(60.0)) < 13.0


def test_mix_weights_sticky_keys_and_feedback() -> None:
    scenario = load_scenario("demo-mix")
    factory = RequestFactory(scenario, "h", seed=3)
    requests = [factory.make(i, 1.0) for i in range(4000)]
    share = np.bincount([r.kind for r in requests], minlength=4) / len(requests)
    assert np.allclose(share, [0.80, 0.15, 0.03, 0.02], atol=0.02)
    body = _body(requests[0].data)
    key = body["parameters"]["customer_id"]
    assert key.startswith("customer-") and f"X-Customer-Id: {key}\r\n".encode() in requests[0].data
    feedback = _body(factory.feedback(requests[0], b""))
    assert feedback == {"id": requests[0].request_id, "model_name": "wine", "ground_truth": list(requests[0].labels)}
    assert factory.feedback(requests[0], b"").startswith(b"POST /v2/models/wine/feedback HTTP/1.1")


def test_reward_feedback_scores_the_answer() -> None:
    factory = RequestFactory(load_scenario("drift"), "h", seed=0)
    request = factory.make(0, 0.0)
    right = orjson.dumps({"outputs": [{"name": "label", "data": [request.labels[0]]}]})
    wrong = orjson.dumps({"outputs": [{"name": "label", "data": [request.labels[0] + 1]}]})
    assert _body(factory.feedback(request, right))["reward"] == 1.0
    assert _body(factory.feedback(request, wrong))["reward"] == 0.0
    assert factory.feedback(request, b"not json") is None


def test_scenario_errors_name_the_key() -> None:
    with pytest.raises(ScenarioError, match=r"requests\[0\].*unknown key.*colour"):
        parse_scenario({"name": "x", "requests": [{"name": "a", "model": "wine", "colour": "red"}]})
    with pytest.raises(ScenarioError, match="rows"):
        parse_scenario({"name": "x", "requests": [{"name": "a", "model": "wine", "rows": [5, 2]}]})
    with pytest.raises(ScenarioError, match="data must be"):
        parse_scenario({"name": "x", "requests": [{"name": "a", "model": "wine"}], "phases": [{"at_s": 1, "data": "x"}]})
    with pytest.raises(ScenarioError, match="built-in scenarios"):
        load_scenario("no-such-scenario")


# --- HTTP client ----------------------------------------------------------------------------

async def _canned_server(responses: list[bytes], connections: list[int]):
    """Answers the n-th request (over all connections) with responses[n]; b"" means never answer."""
    served = iter(responses)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                answer = next(served)
                if not answer:
                    await asyncio.sleep(3600)
                writer.write(answer)
                await writer.drain()
                if b"Connection: close" in answer:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError, StopIteration):
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_client_reads_length_chunked_and_close_delimited_responses() -> None:
    connections: list[int] = []
    server = await _canned_server([
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 503 Busy\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    ], connections)
    pool = ConnectionPool("127.0.0.1", server.sockets[0].getsockname()[1], limit=1)
    head = RequestHead("POST", "/x", "h")
    try:
        results = [await pool.request(head.render(b"{}"), time.monotonic() + 5) for _ in range(5)]
    finally:
        pool.close()
        server.close()
    assert results == [(200, b"hello"), (503, b"abcde"), (204, b""), (200, b"ok"), (404, b"")]
    assert len(connections) == 2  # kept alive until the server said close


async def test_client_times_out_and_never_exceeds_its_connection_limit() -> None:
    connections: list[int] = []
    server = await _canned_server([b""] * 10, connections)
    pool = ConnectionPool("127.0.0.1", server.sockets[0].getsockname()[1], limit=2)
    head = RequestHead("POST", "/x", "h")
    started = time.monotonic()
    try:
        outcomes = await asyncio.gather(*(pool.request(head.render(b"{}"), started + 0.3) for _ in range(5)),
                                        return_exceptions=True)
    finally:
        pool.close()
        server.close()
    assert all(isinstance(o, RequestFailed) and o.kind == "timeout" for o in outcomes)
    assert len(connections) == 2  # the other three waited for a connection and timed out waiting


async def test_client_reports_refused_connections() -> None:
    pool = ConnectionPool("127.0.0.1", servers.free_port(), limit=1)
    try:
        with pytest.raises(RequestFailed) as failed:
            await pool.request(RequestHead("POST", "/", "h").render(b""), time.monotonic() + 2)
    finally:
        pool.close()
    assert failed.value.kind == "connect"


# --- generator ------------------------------------------------------------------------------

async def _label_zero(request: web.Request) -> web.Response:
    return web.json_response({"outputs": [{"name": "label", "data": [0]}]})


@asynccontextmanager
async def _wine_server(infer=_label_zero) -> AsyncIterator[str]:
    """A server with only the wine model's infer route, answered by `infer`; yields its URL."""
    app = web.Application()
    app.router.add_post("/v2/models/wine/infer", infer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_open_loop_generator_records_every_due_request_and_skips_missing_feedback(tmp_path: Path) -> None:
    scenario = tmp_path / "fb.yaml"
    scenario.write_text("name: fb\nrequests: [{name: one, model: wine, rows: 1}]\n"
                        "feedback: {kind: ground_truth, fraction: 1.0, delay_s: 0.05}\n")
    seen: list[str] = []

    async def infer(request: web.Request) -> web.Response:
        seen.append((await request.json())["id"])
        return await _label_zero(request)

    async with _wine_server(infer) as url:  # no feedback route: 404
        spec = WorkerSpec(url=url, scenario=str(scenario), mode="constant", rate=200.0,
                          warmup=0.25, duration=1.0, connections=4, process=0, processes=1, seed=0, timeout=2.0,
                          max_requests=10_000, max_in_flight=1000, run_id="t", bucket_s=0.5)
        result = await Generator(spec).run(time.monotonic() + 0.05)
    assert result["scheduled"] == 250 == len(seen) == len(set(seen))
    assert result["warmup_requests"] == 50 and result["outcomes"] == {"200": 200}
    assert histograms.decode(result["kinds"]["one"]["histogram"]).get_total_count() == 200
    assert sorted(result["timeline"]) == [0, 1, 2]  # 0.25-1.25 s in 0.5 s buckets
    # The first 404 switches feedback off: of the 200 due, only those already in flight when it
    # came back are sent (one, or a few on a loaded machine), and nothing else is counted.
    assert set(result["feedback"]) == {"404"} and 1 <= result["feedback"]["404"] <= 10
    assert any("feedback" in w and "404" in w for w in result["warnings"])
    assert result["cpu_s"] is not None and result["max_in_flight"] <= 1000


async def test_the_generator_reports_its_cpu_over_the_window_even_when_its_timers_fire_late(
        tmp_path: Path, monkeypatch) -> None:
    """The window's end mark was a timer racing the run's own sleep to the same moment: when it
    lost, it fired after the run had returned, the run reported no CPU for the generator, and
    logging_cost read 0 µs for it. Here the generator's timers fire late on purpose."""
    loop = asyncio.get_running_loop()
    on_time = loop.call_later

    def late_for_the_generator(delay, callback, *args, **kwargs):
        late = 0.2 if "Generator.run" in getattr(callback, "__qualname__", "") else 0.0
        return on_time(delay + late, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_later", late_for_the_generator)
    scenario = tmp_path / "one.yaml"
    scenario.write_text("name: one\nrequests: [{name: one, model: wine, rows: 1}]\n")
    async with _wine_server() as url:
        spec = WorkerSpec(url=url, scenario=str(scenario), mode="constant", rate=100.0, warmup=0.1, duration=0.5,
                          connections=2, process=0, processes=1, seed=0, timeout=2.0, max_requests=1000,
                          max_in_flight=100, run_id="t", bucket_s=0.5)
        result = await Generator(spec).run(time.monotonic() + 0.05)
    assert result["outcomes"] == {"200": 50}
    assert result["cpu_s"] is not None and result["cpu_s"] > 0


# --- the behaviour the harness exists for ---------------------------------------------------

def test_a_server_pause_shows_in_open_loop_percentiles_but_not_in_closed_loop() -> None:
    """SIGSTOP the server for 1 s: open-loop p99 (from intended send times) shows it; closed-loop
    clients just stop sending, so only a handful of requests see it and p99 stays low."""
    pause = 1.0
    with servers.ceiling() as server:
        actions = [(1.0, lambda: os.kill(server.pid, signal.SIGSTOP)),
                   (1.0 + pause, lambda: os.kill(server.pid, signal.SIGCONT))]
        base = RunSettings(url=server.url, scenario="single-row", warmup=0.5, duration=3.0, processes=1,
                           timeout=10.0)
        open_loop = execute(replace(base, mode="constant", rate=200.0, connections=32),
                            watch={"server": server.pid}, actions=actions)
        closed_loop = execute(replace(base, mode="closed", connections=4), watch={"server": server.pid},
                              actions=actions)
    pause_ms = pause * 1000
    assert open_loop["errors"] == {} and closed_loop["errors"] == {}
    assert open_loop["measured_requests"] == 600
    assert open_loop["latency_ms"]["p99"] >= 0.5 * pause_ms
    assert closed_loop["latency_ms"]["max"] >= 0.8 * pause_ms  # the stall happened to it too ...
    assert closed_loop["latency_ms"]["p99"] < 0.2 * pause_ms  # ... but its percentiles hide it
    assert closed_loop["measured_requests"] > 100 * 4  # the 4 stalled requests are far below 1%


def test_a_server_does_not_outlive_a_harness_that_was_killed() -> None:
    """A benchmark killed mid-run (SIGKILL, or SIGHUP when its shell goes) must not leave its
    gateways serving, logging and holding ports: they get SIGTERM when it dies."""
    harness = subprocess.Popen(
        [sys.executable, "-c", "import time; from loadtests import servers\n"
                               "server = servers.ceiling().start(); print(server.pid, flush=True); time.sleep(120)"],
        cwd=servers.ROOT, stdout=subprocess.PIPE, text=True)
    server = int(harness.stdout.readline())
    try:
        assert host.alive(server)
        harness.kill()
        harness.wait(10)
        deadline = time.monotonic() + 15
        while host.alive(server) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not host.alive(server)
    finally:
        if host.alive(server):
            os.kill(server, signal.SIGKILL)


def test_a_server_runs_the_source_tree_it_was_given_even_from_a_console_script(tmp_path: Path, monkeypatch) -> None:
    """A gateway started from a launcher outside the tree (the venv's `gateway` script) must run
    the tree the harness runs from, not the editable install's: else a benchmark run from a
    worktree silently measures a mix of two builds (its workers and shipper, started with
    `python -m`, do run the worktree)."""
    tree = tmp_path / "tree"
    monkeypatch.setattr(servers, "ROOT", tree)  # the harness runs from this checkout
    (tree / "gateway").mkdir(parents=True)
    (tree / "gateway" / "__init__.py").write_text('SOURCE = "the given tree"\n')
    launcher = tmp_path / "bin" / "serve.py"  # like a console script: its own directory comes first
    launcher.parent.mkdir()
    launcher.write_text(
        "import http.server, sys\nimport gateway\n"
        "class Answer(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        body = getattr(gateway, 'SOURCE', gateway.__file__).encode()\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(body)\n"
        "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), Answer).serve_forever()\n")
    port = servers.free_port()
    server = servers.Server("probe", [sys.executable, str(launcher), str(port)], port, "/", {}, source=tree)
    with server.start(timeout=30):
        with urllib.request.urlopen(f"{server.url}/", timeout=5) as answer:
            assert answer.read() == b"the given tree"


# --- the logging-cost benchmark's verdict -----------------------------------------------------

_ROUNDS = [{"off": {"us_per_request": {"machine": 100.0}}, "on": {"us_per_request": {"machine": 100.0}}}]


def _side(rate: float, queued: float = 1.0, spooled: float = 0.0, steal: float = 0.0, waiting: float = 0.0) -> dict:
    """One side of a closed-loop slice pair, as logging_cost.closed_loop reports it."""
    return {"achieved_rate": rate, "cpu": {"steal": steal, "loop_waiting": waiting},
            "shipped": {"answers": 100.0, "queued": queued, "delivered": queued, "spooled": spooled}}


def test_logging_cost_counts_only_pairs_whose_shipper_kept_up_and_whose_cores_were_not_stolen() -> None:
    from loadtests.logging_cost import summarise

    slices = [{"off": _side(1000, waiting=0.01), "on": _side(900, waiting=0.05)},
              {"off": _side(1000), "on": _side(1200, queued=0.5)},  # deferred its logging: not counted
              {"off": _side(1000), "on": _side(1100, spooled=1.0)},  # Kafka stalled, events spooled: not counted
              {"off": _side(1200), "on": _side(1020)},
              {"off": _side(600, steal=0.4), "on": _side(1000)}]  # the hypervisor took the "off" cores: not counted
    summary = summarise(_ROUNDS, slices)
    assert (summary["slices_kept_up"], summary["pairs_with_steal"]) == ("3 of 5", "1 of 3")
    assert summary["closed_ratio"] == round(1920 / 2200, 3)
    assert summary["closed_pair_ratio_median"] == round((0.9 + 0.85) / 2, 3)
    assert summary["shipped"] == {"queued": round(4.5 / 5, 3), "delivered": round(4.5 / 5, 3), "spooled": 0.2}
    assert not summary["shipper_kept_up"]  # a run that deferred an eighth of its events is flagged
    assert [summary[s]["loop_waiting_cores"]["max"] for s in ("off", "on")] == [0.01, 0.05]


def test_logging_cost_reports_what_logging_adds_to_the_p99_below_saturation() -> None:
    from loadtests.logging_cost import summarise

    rounds = [{side: {"us_per_request": {"machine": 100.0}, "p99_ms": p99} for side, p99 in pair.items()}
              for pair in ({"off": 3.0, "on": 4.5}, {"off": 3.2, "on": 6.0}, {"off": 2.9, "on": 4.4})]
    summary = summarise(rounds, [{"off": _side(1000), "on": _side(900)}])
    assert summary["off"]["p99_ms"] == {"median": 3.0, "min": 2.9, "max": 3.2}
    assert summary["on"]["p99_ms"] == {"median": 4.5, "min": 4.4, "max": 6.0}


def test_logging_cost_champion_only_compares_the_demo_route_without_its_shadow(tmp_path: Path) -> None:
    from loadtests.logging_cost import demo_gateway

    with ExitStack() as stack:  # built, never started: the stack only removes their temporary files
        routes = [stack.push(demo_gateway(None, str(tmp_path), {}, **kwargs)).description["config"]["models"]["wine"]
                  ["route"] for kwargs in ({}, {"shadow": False})]  # the default, then champion only
    assert [len(route["challengers"]) for route in routes] == [1, 0]
    assert routes[1]["champion"] == routes[0]["champion"]


def test_a_benchmark_gateway_can_sample_its_events_at_a_given_rate() -> None:
    with ExitStack() as stack:  # built, never started: the stack only removes their temporary files
        models = [stack.push(servers.gateway(kafka_bootstrap="127.0.0.1:9", shadow=True, **kwargs))
                  .description["config"]["models"] for kwargs in ({}, {"log_sample_rate": 0.1})]
    assert [model["log_sample_rate"] for model in models[0].values()] == [1.0]  # the demo's own
    assert [model["log_sample_rate"] for model in models[1].values()] == [0.1]
    assert models[1]["wine"]["route"] == models[0]["wine"]["route"]  # the shadow stays


def test_a_benchmark_gateway_keeps_the_demos_loop_placement_unless_given_one() -> None:
    with ExitStack() as stack:  # built, never started: the stack only removes their temporary files
        placed = [stack.push(servers.gateway(**kwargs)).description["config"]["server"]
                  for kwargs in ({}, {"loop_cpus": None}, {"loop_cpus": [1]})]
    demo = servers.demo_config()["server"].get("loop_cpus")
    assert [placed[0].get("loop_cpus"), placed[1]["loop_cpus"], placed[2]["loop_cpus"]] == [demo, None, [1]]


def test_logging_cost_places_the_loop_as_the_demo_config_says_unless_told(tmp_path: Path, monkeypatch) -> None:
    from loadtests.logging_cost import loop_placement

    monkeypatch.setattr("gateway.parallel.cpus.allowed_cpus", lambda: {2, 3, 5})  # a container's cpuset
    monkeypatch.setattr(servers, "DEMO_CONFIG", tmp_path / "demo.yaml")
    servers.DEMO_CONFIG.write_text("server:\n  loop_cpus: auto\n")
    assert [loop_placement(None), loop_placement("auto"), loop_placement("free"), loop_placement("3,5")] == \
        [[2], [2], None, [3, 5]]
    servers.DEMO_CONFIG.write_text("server:\n  port: 8080\n")  # unset: every process free
    assert loop_placement(None) is None


def test_logging_cost_says_how_far_the_ratio_may_move_when_pairs_disagree() -> None:
    from loadtests.logging_cost import summarise

    def pairs(ratios: list[float]) -> list[dict]:
        return [{"off": _side(1000.0), "on": _side(1000.0 * r)} for r in ratios]

    steady = summarise(_ROUNDS, pairs([0.91, 0.92, 0.90, 0.91, 0.92, 0.90, 0.91, 0.92]))
    swinging = summarise(_ROUNDS, pairs([0.75, 1.05, 0.80, 1.02, 0.78, 1.04, 0.83, 1.01]))
    for summary in (steady, swinging):
        low, high = summary["closed_ratio_ci95"]
        assert low <= summary["closed_ratio"] <= high
    assert steady["closed_ratio_ci95"][0] >= 0.90  # pairs that agree pin the ratio ...
    assert swinging["closed_ratio_ci95"][0] < 0.85 < 0.95 < swinging["closed_ratio_ci95"][1]  # ... pairs that swing do not
    assert summarise(_ROUNDS, pairs([0.9, 0.9]))["closed_ratio_ci95"] is None  # too few to say


def test_logging_cost_takes_its_interval_over_gateway_starts_whose_speeds_differ() -> None:
    """Pairs inside a start can agree closely while the starts disagree (each process start
    draws a speed of its own): the interval must show the starts' spread, not the pairs'."""
    from loadtests.logging_cost import summarise

    def run(start_ratios: list[float]) -> dict:
        slices = [{"off": _side(1000.0), "on": _side(1000.0 * (r + d)), "start": k}
                  for k, r in enumerate(start_ratios) for d in (-0.002, 0.0, 0.002)]
        return summarise(_ROUNDS, slices)

    agreeing, disagreeing = run([0.91, 0.91, 0.91, 0.91]), run([0.95, 0.86, 0.93, 0.84])
    assert agreeing["closed_ratio_by_start"] == [0.91] * 4
    assert disagreeing["closed_ratio_by_start"] == [0.95, 0.86, 0.93, 0.84]
    assert agreeing["closed_ratio_interval_over"] == disagreeing["closed_ratio_interval_over"] == "starts"
    assert agreeing["closed_ratio_ci95"] == [0.91, 0.91]
    low, high = disagreeing["closed_ratio_ci95"]
    assert low < 0.85 and high > 0.95  # resampling the pairs alone gives 0.869-0.921
    one_start = summarise(_ROUNDS, [{"off": _side(1000.0), "on": _side(1000.0 * r)} for r in (0.9, 0.91, 0.92)])
    assert one_start["closed_ratio_interval_over"] == "pairs"  # runs from before --starts: resampled pairs


def test_runs_pooled_give_an_interval_over_all_their_starts_and_leave_out_runs_that_do_not_count() -> None:
    from loadtests.logging_cost import pooled_over_runs, summarise

    def run(start_ratios: list[float], delivered: float = 1.0) -> dict:
        slices = [{"off": _side(1000.0), "on": _side(1000.0 * r), "start": k} for k, r in enumerate(start_ratios)
                  for _ in range(3)]
        return summarise(_ROUNDS, slices, {"delivered": delivered, "spooled": 0.0, "dropped": 0.0})

    pooled = pooled_over_runs([run([0.86, 0.88]), run([0.84, 0.86]), run([0.99, 0.99], delivered=0.5)])
    assert pooled["runs_counted"] == "2 of 3" and pooled["starts"] == 4
    assert pooled["closed_ratio_mean_of_starts"] == 0.86
    low, high = pooled["closed_ratio_ci95"]
    assert 0.83 < low < 0.86 < high < 0.89  # t over the four starts: 0.834-0.886
    assert pooled["below_0.9_p"] < 0.01  # one-sided t against 0.9: 0.008


def test_a_logging_cost_run_whose_events_were_not_all_in_kafka_afterwards_does_not_count() -> None:
    from loadtests.logging_cost import summarise

    slices = [{"off": _side(1000.0), "on": _side(1000.0)}] * 4
    all_there = {"delivered": 1.002, "spooled": 0.0, "dropped": 0.0, "unshipped": 0.0}
    assert summarise(_ROUNDS, slices, all_there)["run_counts"]
    assert summarise(_ROUNDS, slices)["run_counts"]  # runs from before the check are judged on the rest
    for missing in ({"delivered": 0.86, "spooled": 0.14}, {"delivered": 0.99}, {"unshipped": 3.0}):
        assert not summarise(_ROUNDS, slices, {**all_there, **missing})["run_counts"]


def test_a_logging_cost_run_keeps_the_shippers_reasons_for_spooling(tmp_path, caplog) -> None:
    """The harness reads them from the gateway's log: it must still find the lines the shipper writes."""
    from gateway.events.logger import EventLogger
    from gateway.events.spool import DiskSpool
    from loadtests.logging_cost import delivery_failures
    from tests.test_event_delivery import _NoProducer

    async def give_up() -> None:
        logger = EventLogger("127.0.0.1:1", "scoring.events", DiskSpool(tmp_path, 1 << 20))
        logger._producer = _NoProducer()  # connected, for `_fail` to give up on
        logger._fail("send: Kafka took no batch within 2.0 s", [])
        await asyncio.sleep(0.01)

    with caplog.at_level("WARNING", logger="gateway.events"):
        asyncio.run(give_up())
    lines = delivery_failures("2026-11-26 14:00:00,000 INFO gateway.events[shipper]: connected\n" + caplog.text)
    assert len(lines) == 1 and "Kafka took no batch within 2.0 s" in lines[0]


def test_the_bystander_probe_pools_each_side_over_off_in_the_rounds_the_hypervisor_left_alone() -> None:
    from loadtests.bystander import SIDES, summarise

    def side(rate: float, steal: float = 0.0) -> dict:
        return {"rate": rate, "steal": steal, "loop_us": 1e6 / rate, "loop_waiting": 0.01,
                "preempted_per_1000": 10.0, "bystander_cores": 0.1}

    rounds = [{s: side(1000.0) for s in SIDES} | {"on": side(850.0), "cpu": side(990.0)},
              {s: side(2000.0) for s in SIDES} | {"on": side(1700.0), "cpu": side(1950.0)},
              {s: side(1000.0) for s in SIDES} | {"off": side(400.0, steal=0.3)}]  # off's cores stolen: left out
    summary = summarise(rounds)
    assert summary["rounds_counted"] == "2 of 3"
    assert [summary[side]["of_off"] for side in ("off", "on", "cpu")] == [1.0, 0.85, round(2940 / 3000, 3)]
    assert summary["on"]["rate"] == 1275.0  # medians over the counted rounds only


def test_the_tail_probes_run_every_side_once_a_round_each_first_in_turn_and_report_medians(tmp_path, capsys) -> None:
    from loadtests.logging_cost import rotated
    from loadtests.tail_sides import finish

    sides = ["off", "on", "sink"]
    orders = [rotated(sides, k) for k in range(4)]
    assert all(sorted(order) == sorted(sides) for order in orders)
    assert [order[0] for order in orders] == ["off", "on", "sink", "off"]

    def side(p99: float) -> dict:
        return {"response_time_ms": {"p99": p99, "p99.9": 2 * p99}, "cpu": {"machine_busy": 1.0}}

    rounds = [{"off": side(2.0), "on": side(5.0)}, {"on": side(7.0), "off": side(3.0)}, {"off": side(4.0), "on": side(4.0)}]
    finish(rounds, ["off", "on"], tmp_path / "out.json")
    assert orjson.loads((tmp_path / "out.json").read_bytes()) == rounds
    assert capsys.readouterr().out.splitlines() == ["off median p99 3.0 p99.9 6.0 machine busy 1.0",
                                                    "on median p99 5.0 p99.9 10.0 machine busy 1.0"]


def test_a_bystander_fed_the_standard_mix_hands_its_shipper_the_scenarios_batches_in_turn() -> None:
    from gateway.events.records import FIELDS
    from loadtests.policy_cost import standard_mix
    from loadtests.shipper_cost import feed

    requests = standard_mix(200)
    sizes = [len(rows) for rows, _, _ in requests]
    assert 0.8 < sizes.count(1) / len(sizes) < 0.97 and max(sizes) <= 20 and min(s for s in sizes if s > 1) >= 2
    for rows, predictions, _ in requests:  # each version's scoring log holds the request's rows
        assert all(len(orjson.loads(p.log)["inputs"][0]["data"]) == rows.size for p in predictions.values())

    class Shipper:
        def __init__(self) -> None:
            self.logged: list[tuple[str, int]] = []

        def log(self, row, request, prediction) -> None:
            self.logged.append((row[FIELDS.index("model_version")], request.rows))

    shipper = Shipper()
    sent = asyncio.run(feed(shipper, 2000.0, 0.05, requests))
    assert sent > 0 and len(shipper.logged) == 2 * sent  # champion and shadow, per request
    assert [rows for _, rows in shipper.logged[::2]] == [sizes[i % len(sizes)] for i in range(sent)]


def test_the_loop_instruction_probe_reads_every_event_callgrind_totals(tmp_path) -> None:
    """callgrind leaves trailing zero counts out of its summary line: they must read as 0, not shift or vanish."""
    from loadtests.loop_instructions import _totals

    dump = tmp_path / "callgrind.out.1"
    dump.write_text("version: 1\ncreator: callgrind-3.19.0\nevents: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw\n"
                    "fn=(1) main\n0 5 1 1\nsummary: 812345 2300 1400 280 130 39\n")
    assert _totals(dump) == {"Ir": 812345, "Dr": 2300, "Dw": 1400, "I1mr": 280, "D1mr": 130, "D1mw": 39,
                             "ILmr": 0, "DLmr": 0, "DLmw": 0}
    dump.write_text("events: Ir\nsummary: 791542\n")
    assert _totals(dump) == {"Ir": 791542}
