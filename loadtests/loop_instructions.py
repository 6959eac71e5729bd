"""Instructions the gateway's request loop executes per request, logging off and on (callgrind).

On this host the wall clock cannot resolve a few percent: the VM's speed swings by 2x and the
closed-loop on/off ratio's interval is +-4% after 40 pairs (docs/benchmarks/logging-cost.md).
valgrind's callgrind counts the instructions a process executes, whatever else the machine is
doing; the same code and load give the same count within about 1%. So this measures what the
loop's own code costs, and what a change to it saves, exactly; what it cannot see is time lost
to cache misses and to waiting for a core, which only the wall-clock harness shows. With
`--cache-sim` it also simulates the loop's own first- and last-level cache misses (not what
other processes do to its caches, nor the second level, which valgrind does not model).

The demo gateway (shadow challenger) runs with its main process under callgrind (its workers and
event shipper run natively); counting starts after a warm-up. It counts 20 s idle (what runs
per second, not per request: Kafka clients, the shipper's metrics), then a fixed closed-loop
load of the `standard` scenario, and reports the load's instructions per request less the idle
rate over the load's duration. Under valgrind the loop runs ~30x slower, so per-second work
weighs more per request than at full speed; that is why it is taken out.

    deploy/with-kafka.sh .venv/bin/python -m loadtests.loop_instructions      # off, then on
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtests import servers
from loadtests.httpclient import ConnectionPool
from loadtests.scenario import RequestFactory, load_scenario

IDLE_SECONDS = 20.0
CONNECTIONS = 8


async def closed_loop(port: int, count: int, seed: int) -> float:
    """Sends `count` requests of the standard scenario over CONNECTIONS connections, each waiting
    for its answer before the next; seconds taken. Raises unless every answer is a 200."""
    factory = RequestFactory(load_scenario("standard"), f"127.0.0.1:{port}", seed=seed, run_id=f"instr{seed}")
    requests = [factory.make(i, 0.0).data for i in range(count)]
    pool = ConnectionPool("127.0.0.1", port, CONNECTIONS)

    async def connection(share: list[bytes]) -> None:
        for data in share:
            status, body = await pool.request(data, time.monotonic() + 60)
            if status != 200:
                raise RuntimeError(f"the gateway answered {status}: {body[:200]!r}")

    started = time.monotonic()
    try:
        await asyncio.gather(*(connection(requests[i::CONNECTIONS]) for i in range(CONNECTIONS)))
    finally:
        pool.close()
    return time.monotonic() - started


def _totals(path: Path) -> dict[str, int]:
    """The counts callgrind dumped to `path`, by event: Ir (instructions) and, with the cache
    simulation, misses (I1mr, D1mr, D1mw: first-level; ILmr, DLmr, DLmw: last-level)."""
    names: list[str] = []
    values: list[int] = []
    for line in path.read_text().splitlines():
        if line.startswith("events:"):
            names = line.split()[1:]
        elif line.startswith(("summary:", "totals:")):
            values = [int(v) for v in line.split()[1:]]
    return dict(zip(names, values + [0] * (len(names) - len(values))))  # trailing zeros are left out


def measure(logging: bool, bootstrap: str, requests: int, workdir: Path, cache_sim: bool = False) -> dict[str, Any]:
    """The loop's instructions per request (net of its idle rate) for one gateway, logging on or
    off; with `cache_sim`, also its data reads and writes (Dr, Dw) and simulated cache misses per
    request (`cache`)."""
    side = "on" if logging else "off"
    out = workdir / f"callgrind-{side}.out"
    valgrind = ("valgrind", "--tool=callgrind", "--trace-children=no", "--instr-atstart=no",
                f"--cache-sim={'yes' if cache_sim else 'no'}", f"--callgrind-out-file={out}")
    server = servers.gateway(kafka_bootstrap=bootstrap if logging else None, shadow=True,
                             kafka_settings={"spool": {"directory": str(workdir / f"spool-{side}")}}, wrapper=valgrind)

    def control(*args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(server.pid)], check=True, capture_output=True, timeout=60)

    with server.start(timeout=600):  # the gateway starts ~30x slower under valgrind
        asyncio.run(closed_loop(server.port, 300, seed=1))  # warm-up, not counted
        control("--instr=on")
        control("--zero")
        time.sleep(IDLE_SECONDS)
        control("--dump=idle")
        seconds = asyncio.run(closed_loop(server.port, requests, seed=2))
        control("--dump=load")
        control("--instr=off")
    idle, load = (_totals(Path(f"{out}.{part}")) for part in (1, 2))
    net = {event: round((load[event] - idle.get(event, 0) / IDLE_SECONDS * seconds) / requests) for event in load}
    result: dict[str, Any] = {"requests": requests, "load_seconds": round(seconds, 1),
                              "idle_per_second": round(idle["Ir"] / IDLE_SECONDS), "per_request": net.pop("Ir")}
    if cache_sim:
        result["cache"] = net
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.loop_instructions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="requests counted per side")
    parser.add_argument("--sides", default="off,on", help="which gateways, in order: off, on or both")
    parser.add_argument("--cache-sim", action="store_true",
                        help="also count the loop's data accesses and simulated cache misses per request (slower)")
    args = parser.parse_args(argv)
    if not shutil.which("callgrind_control"):
        print("valgrind is not installed; run `make tools` (Debian package valgrind)", file=sys.stderr)
        return 2
    results = {}
    with servers.kafka_broker() as (bootstrap, _), tempfile.TemporaryDirectory(prefix="loop-instr-") as workdir:
        for side in args.sides.split(","):
            results[side] = measure(side == "on", bootstrap, args.requests, Path(workdir), args.cache_sim)
            print(f"logging {side}: {results[side]['per_request']:,} instructions per request in the loop "
                  f"({results[side]})", flush=True)
    if {"off", "on"} <= results.keys():
        off, on = results["off"]["per_request"], results["on"]["per_request"]
        print(f"=> logging adds {on - off:,} instructions per request to the loop ({(on - off) / off:+.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
