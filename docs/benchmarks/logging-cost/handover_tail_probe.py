"""A probe (sixteenth session, docs/benchmarks/logging-cost.md): is logging's added tail the
loop's hand-over to the shipper, or the shipper's and broker's work beside it? Six sides per
round, order rotated, 8 s each at RATE (fixed open loop):
  - off: logging off (no Kafka);
  - on: logging every answer;
  - nohand: logging on, but the loop hands nothing over (`nohand.patch`: `return` at the top of
    ScoringService._log); the workers still write their scoring logs;
  - sink: logging on, the loop hands over as `on` does, but its shipper reads and discards what
    it gets (`sink.patch`): the hand-over without the records, Kafka or the broker's work;
  - nohand+kafka: `nohand` with the `kafka` bystander of loadtests.bystander beside it (a real
    shipper fed RATE shadowed requests' events a second by another process, to the same broker):
    the shipper's and broker's work, without the gateway's hand-over;
  - sink+kafka: `sink` with that bystander beside it: the parts of `on`, each in a process of
    its own (does the tail add up?).
The patched sides run from git worktrees (servers.gateway(source=...)). Its load generator and
bystander run in spawned processes, which import their code by module name, so it runs from
loadtests/:

    cp docs/benchmarks/logging-cost/handover_tail_probe.py loadtests/_handover_tail_probe.py
    for p in nohand sink; do git worktree add --detach /tmp/wt/$p HEAD
      git -C /tmp/wt/$p apply $PWD/docs/benchmarks/logging-cost/$p.patch; done
    deploy/with-kafka.sh .venv/bin/python -m loadtests._handover_tail_probe 2000 6 /tmp/wt <out.json>  # RATE ROUNDS TREES OUT
"""
from __future__ import annotations

import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from loadtests import host, servers
from loadtests.bystander import Bystander, produce
from loadtests.logging_cost import demo_gateway, warm_broker
from loadtests.tail_sides import finish, rotated, round_line, run_side

SIDES = ["off", "on", "nohand", "sink", "nohand+kafka", "sink+kafka"]


def main() -> None:
    rate, rounds, trees, out = float(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    with servers.kafka_broker() as (bootstrap, kafka_pid), ExitStack() as stack:
        tmp = lambda: stack.enter_context(tempfile.TemporaryDirectory())
        gws = {"off": stack.enter_context(demo_gateway(None, tmp(), {})),
               "on": stack.enter_context(demo_gateway(bootstrap, tmp(), {})),
               "nohand": stack.enter_context(demo_gateway(bootstrap, tmp(), {}, source=trees / "nohand")),
               "sink": stack.enter_context(demo_gateway(bootstrap, tmp(), {}, source=trees / "sink"))}
        print("warm", warm_broker(gws["on"], kafka_pid, 1200.0, 40), flush=True)
        kafka = Bystander(produce, bootstrap, rate, tmp())
        print("quiet", host.wait_for_quiet(max_wait_s=30), flush=True)
        results = []
        try:
            for k in range(rounds):
                entry = {side: run_side(gws[side.split("+")[0]], kafka_pid, rate, side,
                                        kafka if side.endswith("+kafka") else None) for side in rotated(SIDES, k)}
                results.append(entry)
                print(k, round_line(entry, SIDES), flush=True)
        finally:
            kafka.close()
    finish(results, SIDES, out)


if __name__ == "__main__":
    main()
