"""Does the event log get back to Kafka after an outage while events keep coming? A disk spool
holding a backlog of shadowed requests' events (the demo wine model's, as the workers and the
loop write them), an EventLogger started on it against a real broker, and new events arriving
at a fixed rate meanwhile (they go to the spool too, behind the backlog, to keep order). It
reports how fast the spool is replayed and when direct delivery resumes: a replay slower than
the arrivals never catches up, and the spool grows to its limit, where events are dropped.

    deploy/with-kafka.sh .venv/bin/python -m loadtests.spool_replay --backlog 100000 --rate 7000
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from typing import Any

from loadtests import servers

TOPIC = "scoring.events"
MAX_SECONDS = 60.0  # give up on the spool being replayed after this long


async def measure(bootstrap: str, backlog: int, rate: float, max_seconds: float) -> dict[str, Any]:
    """Replays a spool of `backlog` events while `rate` events/s arrive; stops when delivery is
    direct again, or after `max_seconds`."""
    from gateway.events.handover import wires_from_batches
    from gateway.events.logger import EventLogger
    from gateway.events.spool import DiskSpool
    from loadtests.policy_cost import handed_over, shadowed_request

    template, _, _ = wires_from_batches(handed_over(1000, *shadowed_request()), TOPIC)  # 2,000 records, again and again
    with tempfile.TemporaryDirectory(prefix="spool-replay-") as directory:
        spool = DiskSpool(directory, 4 << 30)
        for start in range(0, backlog, len(template)):
            spool.append(template[: min(len(template), backlog - start)])
        spool.close()
        logger = EventLogger(bootstrap, TOPIC, DiskSpool(directory, 4 << 30), create_topics=([TOPIC], 6, 1))
        await logger.start()
        started, sent, resumed = time.monotonic(), 0, None
        try:
            while (elapsed := time.monotonic() - started) < max_seconds:
                due = int(elapsed * rate) - sent
                while due > 0:  # arrivals: into the queue once delivery is direct, else to the spool
                    burst = template[: min(due, len(template))]
                    logger.log_wires(burst)
                    sent += len(burst)
                    due -= len(burst)
                if not logger.spooling:
                    resumed = elapsed
                    break
                await asyncio.sleep(0.01)
            return {"backlog": backlog, "arrival_rate": rate, "arrived": sent,
                    "resumed_direct_after_s": None if resumed is None else round(resumed, 1),
                    "replayed": replayed(), "replay_rate": round(replayed() / (time.monotonic() - started)),
                    "spool_bytes_left": logger.spool.size_bytes}
        finally:
            await logger.stop()


def replayed() -> float:
    """Events replayed from the spool so far, by this process's event log."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("gateway_events_total", {"topic": TOPIC, "outcome": "replayed"}) or 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.spool_replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backlog", type=int, default=100_000, help="events in the spool at the start")
    parser.add_argument("--rate", type=float, default=7000.0, help="events arriving per second meanwhile")
    args = parser.parse_args(argv)
    with servers.kafka_broker() as (bootstrap, _):
        print(asyncio.run(measure(bootstrap, args.backlog, args.rate, MAX_SECONDS)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
