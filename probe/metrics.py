"""The probe's own Prometheus metrics (served on ``metrics_listen`` when set)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MEASUREMENTS = Counter(
    "popwatch_probe_measurements",
    "Measurements taken, by check kind, transport (URL scheme for http) and outcome: the "
    "rcode for dns; the status, or the failed phase, for http.",
    ["kind", "transport", "outcome"],
)
LAG = Histogram(
    "popwatch_probe_schedule_lag_seconds",
    "How late a run started after its scheduled instant (waiting for a concurrency slot included).",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
)
SKIPPED = Counter(
    "popwatch_probe_runs_skipped",
    "Runs skipped because the probe was more than a whole interval behind.",
)
IN_FLIGHT = Gauge("popwatch_probe_in_flight", "Measurements running now.")
SERIES = Gauge("popwatch_probe_series", "Series scheduled (target x address x transport x query).")
RESOLVE_FAILURES = Counter(
    "popwatch_probe_resolve_failures", "Server host names that gave no address."
)
