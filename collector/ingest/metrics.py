"""The public API's own Prometheus metrics, on the admin listener's ``/metrics``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ACCEPTED = Counter("popwatch_collector_accepted", "Records accepted and written.")
REJECTED = Counter("popwatch_collector_rejected", "Records rejected, each with a reason.")
DUPLICATES = Counter("popwatch_collector_duplicate_batches", "Batches received again.")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
INGEST_SECONDS = Histogram(
    "popwatch_collector_ingest_seconds",
    "POST /api/v1/measurements: body read to answer, by status.",
    ["status"],
    buckets=_LATENCY_BUCKETS,
)
LAST_SEEN = Gauge(
    "popwatch_collector_probe_last_seen_timestamp_seconds",
    "When each probe last sent an accepted batch.",
    ["probe", "region"],
)
SPOOL_FULL = Counter(
    "popwatch_collector_spool_full", "Batches answered 503 because the spool was full."
)
RATE_LIMITED = Counter(
    "popwatch_collector_rate_limited", "Batches answered 429: a probe over its rate."
)
CONNECTIONS = Gauge("popwatch_collector_connections", "Open connections to the public API.")
ADMIN_CONNECTIONS = Gauge(
    "popwatch_collector_admin_connections", "Open connections to the admin listener."
)
CONNECTIONS_REFUSED = Counter(
    "popwatch_collector_connections_refused",
    "Connections refused or closed by the gate (collector.ingest.gate), by reason.",
    ["reason"],
)
BAD_REQUESTS = Counter(
    "popwatch_collector_bad_requests", "Requests aiohttp could not parse (answered 400)."
)
OVER_SERIES_BUDGET = Counter(
    "popwatch_collector_series_budget_rejected",
    "Records rejected because their probe was over its budget of new tag values.",
)
