"""The event shipper alone: what it costs per event, without a gateway competing for the cores.

Starts the real shipper process (gateway.events.shipper.EventShipper, as the gateway starts it)
against a Kafka broker, hands it the events of shadowed requests (a champion and a challenger
event each, the demo wine model's inputs and outputs, written as the workers write them) at a
fixed rate, and reads the shipper's CPU time from /proc over a few windows.

    deploy/with-kafka.sh .venv/bin/python -m loadtests.shipper_cost --rate 2000
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from typing import Any

from loadtests import host, servers


def settings(bootstrap: str, spool: str) -> dict[str, Any]:
    """The shipper's settings as gateway.server builds them from config/demo.yaml's defaults."""
    from gateway.config import KafkaConfig

    kafka = KafkaConfig()
    return {"bootstrap_servers": bootstrap, "topic": "scoring.events", "spool_dir": spool,
            "spool_max_bytes": kafka.spool.max_bytes, "spool_segment_bytes": kafka.spool.segment_bytes,
            "spool_fsync": kafka.spool.fsync, "queue_size": kafka.queue_size, "linger_ms": kafka.linger_ms,
            "compression": "lz4", "stall_timeout": kafka.stall_timeout_ms / 1000,
            "create_topics": [["scoring.events"], 6, 1]}


async def feed(shipper: Any, rate: float, duration: float, requests: list[tuple] | None = None) -> int:
    """Hands `shipper` (an EventShipper) the events of `rate` shadowed requests a second for
    `duration` seconds, as the gateway's loop does (its rows of fields and the workers' scoring logs,
    every 2 ms); how many requests it handed over. The requests are `requests` in turn
    ((rows, predictions, action) each, as policy_cost.shadowed_request gives one), or that one."""
    from gateway.codecs.v2 import InferRequest
    from gateway.events.records import new_id
    from loadtests.policy_cost import shadowed_events, shadowed_request

    requests = requests or [shadowed_request()]
    start, sent = time.monotonic(), 0
    while (elapsed := time.monotonic() - start) < duration:
        while sent < int(elapsed * rate):
            rows, predictions, action = requests[sent % len(requests)]
            request_id = new_id()
            request = InferRequest(request_id, {"input": rows}, len(rows))
            for version, row in shadowed_events(request_id, action):
                shipper.log(row, request, predictions[version])
            sent += 1
        await asyncio.sleep(0.002)
    return sent


async def measure(bootstrap: str, rate: float, seconds: float, windows: int) -> list[float]:
    """CPU µs of the shipper per shadowed request (two events), per window."""
    from gateway.events.shipper import EventShipper

    with tempfile.TemporaryDirectory(prefix="shipper-cost-") as spool:
        shipper = EventShipper(settings(bootstrap, spool))
        await shipper.start()
        try:
            await feed(shipper, rate, seconds)  # connects, creates the topic, warms up
            pid = shipper._process.pid
            out = []
            for _ in range(windows):
                before = host.process_cpu_seconds(pid)
                requests = await feed(shipper, rate, seconds)
                out.append(round((host.process_cpu_seconds(pid) - before) / requests * 1e6, 1))
            return out
        finally:
            await shipper.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.shipper_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=2000.0, help="shadowed requests per second (2 events each)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per window")
    parser.add_argument("--windows", type=int, default=3)
    args = parser.parse_args(argv)
    with servers.kafka_broker() as (bootstrap, _):
        us = asyncio.run(measure(bootstrap, args.rate, args.seconds, args.windows))
    print(f"shipper CPU per shadowed request (2 events) at {args.rate:.0f} requests/s: {', '.join(map(str, us))} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
