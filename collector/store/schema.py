"""The InfluxDB schema: every measurement popwatch writes, with its tags and fields.

The rows of the probes' records come from their kinds (``collector.kinds``); the rows of
what the alert engine writes (``alert``, ``event``, ``rollup_5m``) are here. Queries
built with ``collector.store.query`` are checked against this table when they are made,
and a test holds it to the table in docs/design.md (and the README's).
"""

from __future__ import annotations

from typing import Final

from collector.kinds import KINDS
from collector.kinds.base import words

#: measurement -> (tags, fields) of what the alert engine writes
ENGINE: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    # kind drill (and the ask tag, flips): a failover drill's site changes (collector/asks);
    # kind path (family, the path fields): a trace's path against the one before
    # (collector/alerts/paths.py)
    "event": (
        words("kind probe region target family from_site to_site ask"),
        words(
            "outage_ms lost flaps_1h flips serial lag_s message from_path to_path after_hop "
            "added gone grew_ms grew_from_hop"
        ),
    ),
    "alert": (
        words("rule severity region target topology probe site state"),
        words("value threshold baseline probes message"),
    ),
    # per probe, anycast target and lane (family, transport), each evaluation: the
    # serving site against the best site's unicast (collector/alerts/inflation.py)
    "inflation": (
        words("probe region target family transport site best closest"),
        words(
            "anycast_ms serving_ms best_ms inflation_ms gain_ms factor geo_ms at_best samples "
            "sites error"
        ),
    ),
    # the baselines' 5-minute medians (kind: the record kind, or "done": a bucket's marker)
    "rollup_5m": (
        words("kind probe region target site topology provider"),
        words("p50 p95 n buckets points"),
    ),
    # several evaluators: the webhook lease (one point per renewal, holder its evaluator)
    # and the delivery log (alert: its fingerprint, to: the webhook's hash) of
    # collector/alerts/lease.py
    "lease": (words("name"), words("holder")),
    "notified": (words("alert to"), words("state")),
}

#: measurement -> (tags, fields) of the asks (collector/asks): a request (no probe tag:
#: ``request`` its JSON, ``probes`` how many were chosen), and what each chosen probe said
#: of it (``probe``, ``state`` done or refused, ``measurements``, ``message``)
ASKS: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "ask": (
        words("id operator type probe state"),
        words("request probes measurements message"),
    ),
}

#: how far back a firing alert's last state change is looked for (the ``alert``
#: measurement holds state changes: an alert firing for a week changed state a week ago)
ALERT_HISTORY_DAYS: Final = 30
ALERT_HISTORY: Final = f"{ALERT_HISTORY_DAYS}d"  # as an InfluxQL duration
ALERT_HISTORY_S: Final = ALERT_HISTORY_DAYS * 86400

#: measurement -> (tags, fields)
SCHEMA: Final[dict[str, tuple[frozenset[str], frozenset[str]]]] = {
    **{k.measurement: (frozenset(k.tags), frozenset(k.fields)) for k in KINDS},
    **{m: (frozenset(t), frozenset(f)) for m, (t, f) in {**ENGINE, **ASKS}.items()},
}


def tags(measurement: str) -> frozenset[str]:
    return SCHEMA[measurement][0]


def fields(measurement: str) -> frozenset[str]:
    return SCHEMA[measurement][1]


__all__ = ["ALERT_HISTORY", "ALERT_HISTORY_S", "ASKS", "ENGINE", "SCHEMA", "fields", "tags"]
