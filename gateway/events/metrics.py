"""Metrics of the event log. They live in the event shipper process; the gateway re-exports
them on its own /metrics (see gateway.events.shipper), so they are defined apart from the rest."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter(
    "gateway_events_total",
    "Events by outcome: queued, delivered, failed (then spooled), spooled, replayed, resent (possible duplicate), dropped (spool full, too large for a Kafka record, or not buildable into a record).",
    ["topic", "outcome"],
)
EVENT_QUEUE_DEPTH = Gauge("gateway_event_queue_depth", "Events waiting to be handed to the Kafka producer.")
EVENTS_IN_FLIGHT = Gauge("gateway_events_in_flight", "Events sent to Kafka and not yet confirmed.")
EVENT_SPOOL_BYTES = Gauge("gateway_event_spool_bytes", "Bytes of events waiting in the disk spool.")
EVENT_SPOOLING = Gauge(
    "gateway_event_spooling",
    "1 while new events go to the disk spool instead of straight to Kafka (Kafka down or slow, until the replay catches up).",
)
EVENT_SPOOL_FULL = Gauge("gateway_event_spool_full", "1 while the spool is at its size limit and new events are dropped.")
EVENT_DELIVERY_LATENCY = Histogram(
    "gateway_event_delivery_seconds", "Time from handing an event to the producer to Kafka's acknowledgement.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
