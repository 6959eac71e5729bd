"""`gateway events tail` and `gateway events export`: the event log for people and notebooks.

Both read without a consumer group (nothing is committed, no other reader is disturbed).
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition


def _parse_time(text: str | None) -> int | None:
    """ISO-8601 (UTC unless it says otherwise) or Unix milliseconds -> Unix milliseconds."""
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


async def _open(bootstrap: str, topic: str, since_ms: int | None) -> tuple[AIOKafkaConsumer, dict[TopicPartition, int]]:
    # Subscribing at start makes the client fetch the topic's metadata; then take the partitions by hand.
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    partitions = consumer.partitions_for_topic(topic) or set()
    consumer.unsubscribe()
    if not partitions:
        await consumer.stop()
        raise SystemExit(f"gateway events: topic '{topic}' does not exist on {bootstrap}")
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    ends = await consumer.end_offsets(tps)
    starts = await consumer.beginning_offsets(tps)
    for tp in tps:
        consumer.seek(tp, starts[tp])
    if since_ms is not None:
        found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
        for tp in tps:
            consumer.seek(tp, found[tp].offset if found[tp] is not None else ends[tp])
    return consumer, ends


async def read_events(bootstrap: str, topic: str, since_ms: int | None = None, until_ms: int | None = None,
                      follow: bool = False, limit: int | None = None) -> AsyncIterator[tuple[Any, dict]]:
    """Records in [since, until) by Kafka timestamp; stops at the end offsets unless `follow`."""
    consumer, ends = await _open(bootstrap, topic, since_ms)
    count = 0
    try:
        while True:
            done = all([await consumer.position(tp) >= end for tp, end in ends.items()])
            if done and not follow:
                return
            batch = await consumer.getmany(timeout_ms=500)
            for tp, messages in batch.items():
                for message in messages:
                    if not follow and message.offset >= ends[tp]:
                        continue
                    if until_ms is not None and message.timestamp >= until_ms:
                        continue
                    try:
                        event = orjson.loads(message.value)
                    except orjson.JSONDecodeError:
                        event = {"_undecodable": message.value[:200].decode(errors="replace")}
                    yield message, event
                    count += 1
                    if limit is not None and count >= limit:
                        return
    finally:
        await consumer.stop()


def _summary(message: Any, event: dict) -> str:
    if "_undecodable" in event:
        return f"p{message.partition}@{message.offset} undecodable: {event['_undecodable']!r}"
    outputs = {o["name"]: o["data"] for o in event.get("outputs") or []}
    first = next(iter(outputs.items()), ("-", []))
    rows = (event.get("inputs") or [{}])[0].get("shape", [0])[0]
    shown = first[1][:6]
    return (f"{event.get('timestamp')}  {event.get('model_name')}/{event.get('model_version'):<4} "
            f"{event.get('role', '?'):<10} {event.get('status', '?'):<7} id={event.get('request_id')} rows={rows} "
            f"{first[0]}={shown}{'...' if len(first[1]) > 6 else ''} {event.get('latency_ms')}ms "
            f"[p{message.partition}@{message.offset}]")


def _flat(event: dict) -> dict:
    """One table row per event: scalars as columns, each tensor as `<inputs|outputs>.<name>` data + shape."""
    row = {k: v for k, v in event.items() if k not in ("inputs", "outputs", "action")}
    for kind in ("inputs", "outputs"):
        for tensor in event.get(kind) or []:
            row[f"{kind}.{tensor['name']}"] = [float(x) for x in tensor["data"]]
            row[f"{kind}.{tensor['name']}.shape"] = tensor["shape"]
    row["action"] = orjson.dumps(event.get("action")).decode()
    return row


async def tail(args: argparse.Namespace) -> int:
    since = _parse_time(args.since)
    if since is None and not args.from_beginning:
        since = int(datetime.now(timezone.utc).timestamp() * 1000)
    async for message, event in read_events(args.bootstrap, args.topic, since, None, args.follow, args.limit):
        if args.model and event.get("model_name") != args.model:
            continue
        print(orjson.dumps(event).decode() if args.json else _summary(message, event), flush=True)
    return 0


async def export(args: argparse.Namespace) -> int:
    events = [e async for _, e in read_events(args.bootstrap, args.topic, _parse_time(args.since),
                                              _parse_time(args.until)) if "_undecodable" not in e]
    out = Path(args.out)
    if args.format == "jsonl":
        with out.open("wb") as fh:
            for event in events:
                fh.write(orjson.dumps(event) + b"\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([_flat(e) for e in events]), out)
    print(f"exported {len(events)} events from {args.topic} to {out} ({args.format})", file=sys.stderr)
    return 0


def add_arguments(sub: argparse._SubParsersAction) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers")
        p.add_argument("--topic", default="scoring.events")
        p.add_argument("--since", help="ISO-8601 time or Unix ms (Kafka record timestamp)")

    t = sub.add_parser("tail", help="pretty-print a topic's events")
    common(t)
    t.add_argument("--from-beginning", action="store_true", help="start at the oldest event, not now")
    t.add_argument("--follow", "-f", action="store_true", help="keep waiting for new events")
    t.add_argument("--limit", "-n", type=int, help="stop after this many events")
    t.add_argument("--model", help="only this model's events")
    t.add_argument("--json", action="store_true", help="one JSON object a line instead of a summary")
    t.set_defaults(events_func=tail)

    e = sub.add_parser("export", help="a time range of events to JSON Lines or Parquet")
    common(e)
    e.add_argument("--until", help="ISO-8601 time or Unix ms, exclusive; default: up to now")
    e.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl")
    e.add_argument("--out", required=True)
    e.set_defaults(events_func=export)
