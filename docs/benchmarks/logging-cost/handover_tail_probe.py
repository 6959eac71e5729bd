"""A probe (sixteenth session, docs/benchmarks/logging-cost.md): is logging's added tail the
loop's hand-over to the shipper, or the shipper's and broker's work beside it? Every side once
per round, order rotated, 8 s each at RATE (fixed open loop):
  - off: logging off (no Kafka);
  - on: logging every answer;
  - nohand: logging on, but the loop hands nothing over (`nohand.patch`: `return` at the top of
    ScoringService._log); the workers still write their scoring logs;
  - sink: logging on, the loop hands over as `on` does, but its shipper reads and discards what
    it gets (`sink.patch`): the hand-over without the records, Kafka or the broker's work;
  - nohand+kafka: `nohand` with the `kafka` bystander of loadtests.bystander beside it (a real
    shipper fed RATE single-row shadowed requests' events a second by another process, to the
    same broker): the shipper's and broker's work, without the gateway's hand-over;
  - sink+kafka: `sink` with that bystander beside it: the parts of `on`, each in a process of
    its own (does the tail add up?);
  - nohand+mix: `nohand` beside the same bystander fed the `standard` scenario's mix of rows
    (10% batches of 2-20), as the gateway's events are (bystander.produce_mixed).
SIDES, comma-separated, runs some of them (all by default). The patched sides run from git
worktrees (servers.gateway(source=...)).
Run it in place, from the project root (earlier sessions copied it into loadtests/ first):

    for p in nohand sink; do git worktree add --detach /tmp/wt/$p HEAD
      git -C /tmp/wt/$p apply $PWD/docs/benchmarks/logging-cost/$p.patch; done
    deploy/with-kafka.sh .venv/bin/python docs/benchmarks/logging-cost/handover_tail_probe.py 2000 6 /tmp/wt <out.json> [SIDES]
"""
from __future__ import annotations

import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from loadtests import host, servers
from loadtests.bystander import Bystander, produce, produce_mixed
from loadtests.logging_cost import warm_gateways
from loadtests.tail_sides import finish, run_rounds

SIDES = ["off", "on", "nohand", "sink", "nohand+kafka", "sink+kafka", "nohand+mix"]


def main() -> None:
    rate, rounds, trees, out = float(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    sides = sys.argv[5].split(",") if len(sys.argv) > 5 else SIDES
    with servers.kafka_broker() as (bootstrap, kafka_pid), ExitStack() as stack:
        tmp = lambda: stack.enter_context(tempfile.TemporaryDirectory())
        tree_of = {"off": None, "on": servers.ROOT, "nohand": trees / "nohand", "sink": trees / "sink"}
        wanted = {"on"} | {side.split("+")[0] for side in sides}  # "on" warms the broker
        gws, _ = warm_gateways(stack, bootstrap, kafka_pid, {name: tree_of[name] for name in tree_of if name in wanted})
        bystanders = {"kafka": stack.enter_context(Bystander(produce, bootstrap, rate, tmp())),
                      "mix": stack.enter_context(Bystander(produce_mixed, bootstrap, rate, tmp()))}
        print("quiet", host.wait_for_quiet(max_wait_s=30), flush=True)
        results = run_rounds(rounds, sides, rate, kafka_pid, lambda side: gws[side.split("+")[0]],
                             lambda side: bystanders.get(side.partition("+")[2]))
    finish(results, sides, out)


if __name__ == "__main__":
    main()
