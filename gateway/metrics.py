"""Every Prometheus metric the gateway exports, defined once (names follow Prometheus conventions)."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
                   0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

REQUESTS = Counter(
    "gateway_model_requests_total",
    "Scoring calls by model, version, role (champion, challenger, direct) and status.",
    ["model", "version", "role", "status"],
)
SCORING_LATENCY = Histogram(
    "gateway_model_latency_seconds",
    "Time from handing a request to a worker to having its outputs, by model, version and role.",
    ["model", "version", "role"],
    buckets=LATENCY_BUCKETS,
)
HTTP_REQUESTS = Counter(
    "gateway_http_requests_total", "HTTP requests by endpoint and status code.", ["endpoint", "code"]
)
HTTP_LATENCY = Histogram(
    "gateway_http_request_duration_seconds",
    "Time from receiving a request to sending the response, by endpoint.",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
)
SHADOW_SKIPPED = Counter(
    "gateway_shadow_skipped_total",
    "Challenger calls not made, by reason (too many in flight).",
    ["model", "version", "reason"],
)
WORKER_RESTARTS = Counter(
    "gateway_worker_restarts_total", "Worker processes that exited and were restarted.", ["model", "version"]
)
SHADOW_IN_FLIGHT = Gauge(
    "gateway_shadow_in_flight", "Challenger calls started and not yet finished.", ["model", "version"]
)
FEEDBACK_RECORDS = Counter(
    "gateway_feedback_records_total",
    "Feedback records by outcome: received, joined (here), forwarded (to the replica that served), "
    "unmatched (no Kafka and not served here), rejected (did not fit the prediction).",
    ["outcome"],
)
