"""A probe (twenty-third session, docs/benchmarks/logging-cost.md): with the request loop alone
on its CPU (`server.loop_cpus`), nothing else takes its core, yet its CPU per request still
rises ~12% with logging on. Where does that time go: the interpreter, the C libraries, or the
kernel? `perf record` (software clock, the loop's process only) during closed-loop slices of
the two gateways, alternated; per side, the share of samples by shared object and by symbol,
and the µs per request of each (so the +12% is split by where it is spent), largest change first.
Run it in place, from the project root, as root (perf):

    deploy/with-kafka.sh .venv/bin/python docs/benchmarks/logging-cost/loop_profile_probe.py 6 <out.json>   # ROUNDS OUT
"""
from __future__ import annotations

import collections
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import orjson

from loadtests import host, servers
from loadtests.logging_cost import closed_loop, keep_off_the_loop, rotated, warm_gateways

LOOP_CPUS = [0]
HZ = 4000  # samples per second of the loop's CPU time
TOP_SYMBOLS = 150  # kept per slice (the rest, each under ~0.05% of the samples, would make the file 6x larger)


def by_object(data: Path, key: str) -> dict[str, int]:
    """Samples per shared object (`key` "dso") or per symbol ("sym", named "object:symbol") of a perf.data file."""
    fields = "sample,dso" if key == "dso" else "sample,dso,sym"
    out = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--sort", key if key == "dso" else "dso,sym",
                          "-F", fields, "--no-children"], capture_output=True, text=True, check=True).stdout
    found: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit() and not line.startswith("#"):
            name = parts[1] if key == "dso" else f"{parts[1]}:{' '.join(parts[3:]) or parts[2]}"
            found[name] = found.get(name, 0) + int(parts[0])
    return found


def main() -> None:
    rounds, out = int(sys.argv[1]), sys.argv[2]
    results = []
    with servers.kafka_broker() as (bootstrap, kafka_pid), ExitStack() as stack, \
            tempfile.TemporaryDirectory() as scratch:
        keep_off_the_loop(LOOP_CPUS, kafka_pid)
        gws, _ = warm_gateways(stack, bootstrap, kafka_pid, loop_cpus=LOOP_CPUS)
        print("quiet", host.wait_for_quiet(max_wait_s=30), flush=True)
        for k in range(rounds):
            entry = {}
            for side in rotated(["off", "on"], k):
                data = Path(scratch, f"{side}-{k}.data")
                perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", str(HZ), "-p",
                                         str(gws[side].pid), "-o", str(data), "--", "sleep", "4"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                slice_ = closed_loop(gws[side], kafka_pid, 32, 4.0, 1.0, logged=side == "on")
                perf.wait()
                entry[side] = {"achieved_rate": slice_["achieved_rate"], "loop_us": slice_["us_per_request"]["gateway"],
                               "objects": by_object(data, "dso"),
                               "symbols": dict(collections.Counter(by_object(data, "sym")).most_common(TOP_SYMBOLS))}
            results.append(entry)
            print(k, {s: (round(v["achieved_rate"]), v["loop_us"]) for s, v in entry.items()}, flush=True)
    Path(out).write_bytes(orjson.dumps(results))
    loop_us = {side: sorted(e[side]["loop_us"] for e in results)[len(results) // 2] for side in ("off", "on")}
    print(f"loop µs per request (median): off {loop_us['off']}, on {loop_us['on']}")
    for key, rows in (("objects", 15), ("symbols", 40)):
        totals = {side: collections.Counter() for side in ("off", "on")}
        for entry in results:
            for side in totals:
                totals[side].update(entry[side].get(key, {}))
        share = {side: {o: n / max(sum(c.values()), 1) for o, n in c.items()} for side, c in totals.items()}
        print(f"\n{key[:-1]:60} {'off %':>7} {'on %':>7} {'off µs':>7} {'on µs':>7} {'+µs':>6}")
        names = set(share["off"]) | set(share["on"])
        growth = {o: share["on"].get(o, 0.0) * loop_us["on"] - share["off"].get(o, 0.0) * loop_us["off"] for o in names}
        for o in sorted(names, key=lambda o: -abs(growth[o]))[:rows]:
            off, on = share["off"].get(o, 0.0), share["on"].get(o, 0.0)
            print(f"{o[:60]:60} {off:7.1%} {on:7.1%} {off * loop_us['off']:7.1f} {on * loop_us['on']:7.1f} {growth[o]:6.1f}")


if __name__ == "__main__":
    main()
