"""Is it the CPU? Logging's cost to the request loop against bystanders beside it.

With logging on, the shipper and the broker use about 0.1 of a core beside the gateway (more
with the workers' scoring logs), and the closed loop loses 15-20%. This asks which part of that
work costs the loop what: it alternates closed-loop slices of the gateway with logging off, with
logging on, and with logging off plus one bystander:
  - `cpu`: a process that burns `--share` of a core in bursts every READ_PAUSE (as the shipper
    reads its socket), serialising a small document over and over;
  - `memory`: the same, also writing `--fresh-mb` of newly allocated memory per burst (the
    shipper copies each event a few times);
  - `kafka`: the logging itself without the gateway: a real event shipper, fed the events of
    `--kafka-rate` shadowed requests a second (loadtests.shipper_cost.feed), producing to the
    same broker: all the logging work beside the loop, none in it;
  - `broker`: the broker's part of that: the same records at the same rate produced by kcat
    (librdkafka, in C, lz4, idempotent, acks=all), so that little of the work beside the loop
    is a producer's and most is the broker's, which in a deployment runs on other machines.
Per slice it reads the loop's CPU per request, how long it waited for a core and how often it
was preempted.

    deploy/with-kafka.sh .venv/bin/python -m loadtests.bystander            # 10 rounds, ~8 min
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.synchronize
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

import orjson

from gateway.events.shipper import READ_PAUSE
from loadtests import host, logging_cost, report, servers, shipper_cost
from loadtests.logging_cost import rotated

SIDES = ("off", "on", "cpu", "memory", "kafka", "broker")


def burn(share: float, fresh_mb: int, active: multiprocessing.synchronize.Event) -> None:
    """The `cpu` and `memory` bystanders: while `active` is set, `share` of a core's time in a
    burst every READ_PAUSE."""
    document = [{"ts_ms": i, "request_id": f"r{i}", "model_name": "wine", "outputs": [0.1 * i, 0.2]}
                for i in range(200)]
    while active.wait():
        started = time.process_time()
        if fresh_mb:
            fresh = bytearray(fresh_mb << 20)  # zeroed: written once
            bytes(fresh)  # and copied
            del fresh
        while time.process_time() - started < share * READ_PAUSE:
            orjson.loads(orjson.dumps(document))
        time.sleep(READ_PAUSE * (1 - share))


def produce(bootstrap: str, rate: float, spool: str, active: multiprocessing.synchronize.Event,
            mixed: bool = False) -> None:
    """The `kafka` bystander: while `active` is set, a real shipper producing `rate` shadowed
    requests' events a second to Kafka (the shipper's own process is a child of this one); single
    rows, or with `mixed` the `standard` scenario's mix of rows (policy_cost.standard_mix)."""
    from gateway.events.shipper import EventShipper
    from loadtests.policy_cost import standard_mix

    requests = standard_mix() if mixed else None

    async def run() -> None:
        shipper = EventShipper(shipper_cost.settings(bootstrap, spool))
        await shipper.start()
        while True:
            if active.is_set():
                await shipper_cost.feed(shipper, rate, 0.1, requests)
            else:
                await asyncio.sleep(0.05)

    asyncio.run(run())


def produce_mixed(bootstrap: str, rate: float, spool: str, active: multiprocessing.synchronize.Event) -> None:
    """`produce` with the `standard` scenario's mix of rows."""
    produce(bootstrap, rate, spool, active, mixed=True)


def produce_with_kcat(bootstrap: str, rate: float, active: multiprocessing.synchronize.Event) -> None:
    """The `broker` bystander: while `active` is set, kcat produces the two records of `rate`
    shadowed requests a second (keyed, the values the shipper would write) to Kafka."""
    from gateway.events.handover import wires_from_batches
    from loadtests.policy_cost import handed_over, shadowed_request

    # 64 requests' records (two each, keyed by request id), written over and over: the keys spread
    # over the partitions
    wires, _, _ = wires_from_batches(handed_over(64, *shadowed_request()), "scoring.events")
    lines = [b"%s\t%s\n" % (wire.key, wire.value) for wire in wires]
    kcat = subprocess.Popen(["kcat", "-P", "-b", bootstrap, "-t", "scoring.events", "-K", "\t", "-z", "lz4",
                             "-X", "enable.idempotence=true", "-X", "acks=all", "-X", "linger.ms=500",
                             "-X", "batch.size=1048576"], stdin=subprocess.PIPE)
    sent, started = 0, time.monotonic()
    while True:
        if not active.is_set():
            active.wait()
            sent, started = 0, time.monotonic()
        due = int((time.monotonic() - started) * rate) * 2  # records
        if due > sent:
            kcat.stdin.write(b"".join(lines[i % len(lines)] for i in range(sent, due)))
            kcat.stdin.flush()
            sent = due
        time.sleep(0.01)


class Bystander:
    """A process beside the gateway that works only while `active` is set (an event, not
    SIGSTOP: a stopped child makes the harness's process group get SIGHUP if its shell exits)."""

    def __init__(self, target: Callable[..., None], *args: Any):
        context = multiprocessing.get_context("spawn")
        self.active = context.Event()
        self.process = context.Process(target=target, args=(*args, self.active), daemon=True)
        self.process.start()

    def cpu_seconds(self) -> float:
        return sum(host.process_cpu_seconds(pid) or 0.0 for pid in host.process_tree(self.process.pid))

    def __enter__(self) -> "Bystander":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, timeout: float = 15.0) -> None:
        """Ends the bystander, and waits for its children (the `kafka` side's shipper delivers
        what it holds and exits when its parent is gone)."""
        children = host.process_tree(self.process.pid)[1:]
        self.process.terminate()
        self.process.join()
        deadline = time.monotonic() + timeout
        while any(host.alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)


def _slice(server: servers.Server, kafka_pid: int, logged: bool, bystander: Bystander | None) -> dict[str, Any]:
    burnt = bystander.cpu_seconds() if bystander else 0.0
    switched, started = host.preemptions(server.pid), time.monotonic()
    if bystander:
        bystander.active.set()
    try:
        result = logging_cost.closed_loop(server, kafka_pid, 32, 4.0, 1.0, logged=logged)
    finally:
        if bystander:
            bystander.active.clear()
    seconds = time.monotonic() - started
    answered = result["achieved_rate"] * seconds  # warm-up included, as the switches are
    return {"rate": result["achieved_rate"], "steal": result["cpu"]["steal"],
            "loop_us": result["us_per_request"]["gateway"], "loop_waiting": result["cpu"]["loop_waiting"],
            "preempted_per_1000": round((host.preemptions(server.pid) - switched) / answered * 1000, 1),
            "bystander_cores": round((bystander.cpu_seconds() - burnt) / seconds, 3) if bystander else 0.0}


def summarise(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Each side's pooled throughput over "off" and its medians, over the rounds without steal."""
    quiet = [r for r in rounds if max(s["steal"] for s in r.values()) <= logging_cost.MAX_STEAL]
    out: dict[str, Any] = {"rounds_counted": f"{len(quiet)} of {len(rounds)}"}
    for side in SIDES:
        out[side] = {"of_off": round(sum(r[side]["rate"] for r in quiet) / sum(r["off"]["rate"] for r in quiet), 3)}
        for key in ("rate", "loop_us", "loop_waiting", "preempted_per_1000", "bystander_cores"):
            out[side][key] = round(statistics.median(r[side][key] for r in quiet), 3)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    with servers.kafka_broker() as (bootstrap, kafka_pid), ExitStack() as stack:
        gateways, _ = logging_cost.warm_gateways(stack, bootstrap, kafka_pid, warmup=args.broker_warmup)
        enter = stack.enter_context  # the bystanders end before the gateways and the broker
        bystanders = {"cpu": enter(Bystander(burn, args.share, 0)),
                      "memory": enter(Bystander(burn, args.share, args.fresh_mb)),
                      "kafka": enter(Bystander(produce, bootstrap, args.kafka_rate,
                                               enter(tempfile.TemporaryDirectory()))),
                      "broker": enter(Bystander(produce_with_kcat, bootstrap, args.kafka_rate))}
        rounds = []
        for k in range(args.rounds):
            entry = {side: _slice(gateways["on" if side == "on" else "off"], kafka_pid, side == "on",
                                  bystanders.get(side)) for side in rotated(SIDES, k)}
            rounds.append(entry)
            print(f"round {k + 1}: " + "; ".join(
                f"{side} {entry[side]['rate']:,.0f} req/s, loop {entry[side]['loop_us']} us/req, waiting "
                f"{entry[side]['loop_waiting']}, preempted {entry[side]['preempted_per_1000']}/1000"
                for side in SIDES), flush=True)
    return {"settings": {**vars(args), "out": str(args.out)}, "machine": host.describe_machine(), "rounds": rounds,
            "summary": summarise(rounds)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bystander", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="each round is one 4 s slice of every side")
    parser.add_argument("--share", type=float, default=0.12, help="cores the bystander burns (the shipper's, about)")
    parser.add_argument("--fresh-mb", type=int, default=8,
                        help="MB of new memory the `memory` bystander writes per burst")
    parser.add_argument("--kafka-rate", type=float, default=4000.0,
                        help="shadowed requests a second whose events the `kafka` and `broker` bystanders produce "
                             "(about the on side's)")
    parser.add_argument("--broker-warmup", type=float, default=60.0, help="seconds of logged load before measuring")
    parser.add_argument("--out", type=Path, help="write the rounds and summary here (JSON)")
    args = parser.parse_args(argv)
    data = run(args)
    print(orjson.dumps(data["summary"], option=orjson.OPT_INDENT_2).decode())
    if args.out:
        report.write_json(args.out, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
