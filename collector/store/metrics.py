"""The store's own Prometheus metrics: InfluxDB writes and queries, the spool."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
WRITE_SECONDS = Histogram(
    "popwatch_collector_write_seconds", "InfluxDB write latency.", buckets=_LATENCY_BUCKETS
)
POINTS_REFUSED = Counter(
    "popwatch_collector_influx_partial_writes", "Writes where InfluxDB refused some points."
)
POINTS_SET_ASIDE = Counter(
    "popwatch_collector_points_set_aside",
    "Lines InfluxDB refused, set aside in the spool's refused/ with the reason.",
)
SPOOL_BYTES = Gauge("popwatch_collector_spool_bytes", "Bytes of points waiting in the spool.")
SPOOL_SEGMENTS = Gauge("popwatch_collector_spool_segments", "Segment files in the spool.")
SPOOLED = Counter("popwatch_collector_spooled", "Records written to the spool, not InfluxDB.")
SPOOLED_UNTRIED = Counter(
    "popwatch_collector_spooled_untried",
    "Requests whose points went to the spool without a write attempt: InfluxDB stayed "
    "MAX_HEDGED_BYTES behind for MAX_HEDGE_WAIT_S.",
)
REPLAYED = Counter("popwatch_collector_replayed", "Records replayed from the spool to InfluxDB.")
QUERY_SECONDS = Histogram(
    "popwatch_collector_query_seconds",
    "One InfluxQL query: request sent -> answer read, by client (alerts, status)",
    ["client"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
POINTS_REFUSED_BY = Counter(
    "popwatch_collector_points_refused",
    "Lines InfluxDB refused (set aside), by cause: max-values-per-tag, "
    "max-series-per-database, field-type-conflict, unparsable, too-large, other.",
    ["reason"],
)
