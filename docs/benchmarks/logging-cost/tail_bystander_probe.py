"""A probe (fifteenth session, docs/benchmarks/logging-cost.md): is what logging adds to the tail
at a fixed open-loop rate the CPU it puts beside the gateway? Four sides per round, order
rotated, 8 s each at RATE: logging off; logging on; logging off with the `cpu` bystander of
loadtests.bystander burning SHARE of a core in bursts every READ_PAUSE; logging off with its
`kafka` bystander (a real shipper fed RATE shadowed requests' events a second, producing to the
same broker: the logging work beside the gateway, none in it).
Run it in place, from the project root (earlier sessions copied it into loadtests/ first):

    deploy/with-kafka.sh .venv/bin/python docs/benchmarks/logging-cost/tail_bystander_probe.py 2000 6 0.12 <out.json>   # RATE ROUNDS SHARE OUT
"""
from __future__ import annotations

import sys
import tempfile
from contextlib import ExitStack

from loadtests import host, servers
from loadtests.bystander import Bystander, burn, produce
from loadtests.logging_cost import warm_gateways
from loadtests.tail_sides import finish, run_rounds

SIDES = ["off", "on", "cpu", "kafka"]


def main() -> None:
    rate, rounds, share, out = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    with servers.kafka_broker() as (bootstrap, kafka_pid), ExitStack() as stack:
        gws, _ = warm_gateways(stack, bootstrap, kafka_pid)
        bystanders = {"cpu": stack.enter_context(Bystander(burn, share, 0)),
                      "kafka": stack.enter_context(Bystander(produce, bootstrap, rate,
                                                             stack.enter_context(tempfile.TemporaryDirectory())))}
        print("quiet", host.wait_for_quiet(max_wait_s=30), flush=True)
        results = run_rounds(rounds, SIDES, rate, kafka_pid, lambda side: gws["on" if side == "on" else "off"],
                             bystanders.get)
    finish(results, SIDES, out)


if __name__ == "__main__":
    main()
