"""Two or more builds of the gateway (git revisions) against one broker, alternated, logging on:
CPU per request by process in an open loop, then closed-loop throughput. On a VM whose speed
drifts from minute to minute, only builds measured turn about (ABBA...) compare fairly.

Each revision is checked out in a temporary git worktree and run from there (working directory
and PYTHONPATH, so the shipper and workers run it too); `HEAD` with
uncommitted changes is not what runs, so commit first (or name `.` for this checkout as it is).

    deploy/with-kafka.sh .venv/bin/python -m loadtests.compare_builds before=HEAD~1 after=. --repeats 3
    deploy/with-kafka.sh .venv/bin/python -m loadtests.compare_builds before=HEAD~1 after=. --off   # + logging off
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from loadtests import host, servers
from loadtests.logging_cost import closed_loop, cpu_per_request, demo_gateway

OFF = "off"  # a variant name: this checkout with logging off


@contextmanager
def _worktree(revision: str) -> Iterator[str]:
    """A source tree of `revision`: this checkout for `.`, else a temporary git worktree."""
    if revision == ".":
        yield str(servers.ROOT)
        return
    path = tempfile.mkdtemp(prefix="gateway-build-")
    subprocess.run(["git", "-C", str(servers.ROOT), "worktree", "add", "--detach", "-q", path, revision], check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(servers.ROOT), "worktree", "remove", "--force", path], check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.compare_builds", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("builds", nargs="+", metavar="NAME=REVISION", help="e.g. before=HEAD~1 after=.")
    parser.add_argument("--off", action="store_true", help="also run this checkout with logging off")
    parser.add_argument("--rate", type=float, default=3000.0, help="open-loop req/s for the CPU measure")
    parser.add_argument("--repeats", type=int, default=2, help="rounds; every other round runs in reverse order")
    parser.add_argument("--cpu-duration", type=float, default=12.0)
    parser.add_argument("--closed-duration", type=float, default=8.0)
    parser.add_argument("--broker-warmup", type=float, default=30.0)
    args = parser.parse_args(argv)
    builds = dict(b.split("=", 1) for b in args.builds) | ({OFF: "."} if args.off else {})
    with ExitStack() as stack, servers.kafka_broker() as (bootstrap, kafka_pid):
        trees = {name: stack.enter_context(_worktree(revision)) for name, revision in builds.items()}
        with tempfile.TemporaryDirectory() as spool, demo_gateway(bootstrap, spool, {}) as server:
            cpu_per_request(server, kafka_pid, args.rate / 2, args.broker_warmup, 1.0)  # the broker's JIT
        for k in range(args.repeats):
            for name in (list(trees) if k % 2 == 0 else list(reversed(trees))):
                host.wait_for_quiet(max_wait_s=5)
                with tempfile.TemporaryDirectory() as spool, \
                        demo_gateway(None if name == OFF else bootstrap, spool, {}, Path(trees[name])) as server:
                    cpu = cpu_per_request(server, kafka_pid, args.rate, args.cpu_duration, 2.0)
                    closed = closed_loop(server, kafka_pid, 32, args.closed_duration, 2.0)
                print(f"round {k + 1} {name}: open loop {args.rate:.0f}/s {cpu['us_per_request']} us/request | "
                      f"closed loop {closed['achieved_rate']:,.0f} req/s, {closed['us_per_request']} us/request",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
