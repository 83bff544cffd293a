"""The InfluxDB schema the dashboards may query: docs/design.md's table, as data.

A test holds this table to the one in docs/design.md (and the README's), so a query
built from it cannot name a measurement, tag or field the collector does not write.
"""

from __future__ import annotations

from typing import Final, Literal

Measurement = Literal["dns", "http", "ping", "probe", "event", "alert"]


def _keys(words: str) -> frozenset[str]:
    return frozenset(words.split())


#: measurement -> (tags, fields), as in docs/design.md's "InfluxDB schema" table
SCHEMA: Final[dict[Measurement, tuple[frozenset[str], frozenset[str]]]] = {
    "dns": (
        _keys(
            "probe region country target topology provider server family transport "
            "qname qtype rcode site timestamping"
        ),
        _keys("rtt_ms connect_ms tls_ms ok truncated answers size ttl serial http_version error"),
    ),
    "http": (
        _keys("probe region country target topology provider family ip status"),
        _keys(
            "dns_ms connect_ms tls_ms ttfb_ms total_ms ok bytes redirects http_version "
            "cert_days error"
        ),
    ),
    "ping": (
        _keys("probe region country target topology provider server family method"),
        _keys("rtt_ms ok error"),
    ),
    "probe": (
        _keys("probe region country version"),
        _keys("lat lon uptime_s spool_depth dropped rejected"),
    ),
    "event": (
        _keys("kind probe region target from_site to_site"),
        _keys("outage_ms lost flaps_1h serial lag_s message"),
    ),
    "alert": (
        _keys("rule severity region target topology probe site state"),
        _keys("value baseline probes message"),
    ),
}

Variable = Literal["region", "target", "topology", "provider", "probe", "qname"]

#: the dashboards' template variables; each is the tag of the same name
VARIABLES: Final[tuple[Variable, ...]] = (
    "region",
    "target",
    "topology",
    "provider",
    "probe",
    "qname",
)


def tags(measurement: Measurement) -> frozenset[str]:
    return SCHEMA[measurement][0]


def fields(measurement: Measurement) -> frozenset[str]:
    return SCHEMA[measurement][1]
