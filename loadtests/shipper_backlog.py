"""Does the event shipper keep up with a saturated gateway? A closed loop (32 connections) on
the demo gateway with logging on, then the gateway's own counters: model answers against events
queued and delivered by the shipper, read at once and again some seconds after the load stopped.
Events that were answered but not yet queued waited in the gateway's hand-over to the shipper:
a closed-loop throughput measured while they wait does not include the cost of shipping them.

    deploy/with-kafka.sh .venv/bin/python -m loadtests.shipper_backlog                # this checkout
    deploy/with-kafka.sh .venv/bin/python -m loadtests.shipper_backlog --revision 8c30653
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from loadtests import servers
from loadtests.compare_builds import _worktree
from loadtests.logging_cost import closed_loop, counts, demo_gateway


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.shipper_backlog", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--revision", default=".", help="the git revision to run (default: this checkout)")
    parser.add_argument("--duration", type=float, default=20.0, help="closed-loop seconds")
    parser.add_argument("--after", type=float, nargs="+", default=[2.0, 12.0],
                        help="seconds after the load stopped at which to read the counters")
    args = parser.parse_args(argv)
    with servers.kafka_broker() as (bootstrap, kafka_pid), _worktree(args.revision) as tree, \
            tempfile.TemporaryDirectory() as spool, demo_gateway(bootstrap, spool, {}, Path(tree)) as server:
        result = closed_loop(server, kafka_pid, 32, args.duration, 2.0)
        print(f"revision {args.revision}: closed loop {result['achieved_rate']:,.0f} req/s for {args.duration:.0f} s")
        stopped = time.monotonic()
        for after in args.after:
            time.sleep(max(0.0, stopped + after - time.monotonic()))
            c = counts(server.url)
            print(f"  {after:4.0f} s after: answers {c['answers']:,.0f}, events queued {c.get('queued', 0):,.0f}, "
                  f"delivered {c.get('delivered', 0):,.0f}, spooled {c.get('spooled', 0):,.0f}, "
                  f"dropped {c.get('dropped', 0):,.0f}, unshipped {c.get('unshipped', 0):,.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
