"""The alert engine's own metrics, on the collector's ``/metrics``."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

EVALUATION_SECONDS: Final = Histogram(
    "popwatch_alerts_evaluation_seconds",
    "One evaluation cycle: its start -> its last InfluxDB answer and state write",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
EVALUATION_FAILURES: Final = Counter(
    "popwatch_alerts_evaluation_failures_total",
    "Evaluations skipped because InfluxDB did not answer",
)
FIRING: Final = Gauge("popwatch_alerts_firing", "Alerts firing now", ["rule"])
NOTIFICATIONS: Final = Counter(
    "popwatch_alerts_notifications_total",
    "Deliveries to a notifier, by outcome (sent, failed: retried later, dropped)",
    ["notifier", "outcome"],
)
CATCHMENT_EVENTS: Final = Counter(
    "popwatch_alerts_catchment_events_total", "Anycast site changes seen, per probe"
)
