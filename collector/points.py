"""Wire records to points of the InfluxDB schema in DESIGN.md.

The probe's identity tags (probe, region, country) come from the registry, never from the
body. A record whose values line protocol cannot carry raises ``Unrepresentable``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Final

from collector.lineproto import FieldValue, field, line, tag_value
from probe.wire import DnsRecord, HttpRecord, Measurement, ProbeRecord

# rcodes that mean the server answered the question as asked
_OK_RCODES: Final = frozenset({"NOERROR", "NXDOMAIN"})


@dataclass(frozen=True, slots=True)
class Identity:
    """Who sent a batch, from the registry."""

    probe: str
    region: str
    country: str = ""
    city: str = ""
    lat: float | None = None
    lon: float | None = None
    asn: int | None = None


def _str(v: object) -> str:
    return "" if v is None else str(v)


@functools.lru_cache(maxsize=4096)
def _identity_tags(who: Identity) -> tuple[tuple[str, str], ...]:
    return (("country", who.country), ("probe", who.probe), ("region", who.region))


def _dns_line(r: DnsRecord, who: Identity) -> str:
    """The hot path: a dns record's line built directly (about 5 µs, not 30)."""
    country, probe, region = (v for _, v in _identity_tags(who))
    tags = (
        ("country", country),
        ("family", "" if r.family is None else str(r.family)),
        ("probe", probe),
        ("provider", r.provider or ""),
        ("qtype", r.qtype),
        ("rcode", r.rcode),
        ("region", region),
        ("server", r.server),
        ("site", r.site or ""),
        ("target", r.target),
        ("timestamping", r.timestamping),
        ("topology", r.topology or ""),
        ("transport", r.transport),
    )  # sorted by key, as InfluxDB prefers
    parts = [
        f"ok={'true' if r.rcode in _OK_RCODES else 'false'}",
        f"truncated={'true' if r.truncated else 'false'}",
    ]
    for name in ("rtt_ms", "connect_ms", "tls_ms"):
        v = getattr(r, name)
        if v is not None:
            parts.append(f"{name}={field(name, v)}")
    for name in ("answers", "size", "ttl", "serial"):
        v = getattr(r, name)
        if v is not None:
            parts.append(f"{name}={v}i")
    if r.error is not None:
        parts.append(f"error={field('error', r.error)}")
    tag_part = "".join(f",{k}={tag_value(k, v)}" for k, v in tags if v)
    return f"dns{tag_part} {','.join(parts)} {r.ts}"


def to_line(record: Measurement, who: Identity) -> str:
    """The line-protocol line of one record."""
    base = {"probe": who.probe, "region": who.region, "country": who.country}
    if isinstance(record, DnsRecord):
        return _dns_line(record, who)
    if isinstance(record, ProbeRecord):
        probe_fields: dict[str, FieldValue | None] = {
            "lat": who.lat,
            "lon": who.lon,
            "uptime_s": record.uptime_s,
            "spool_depth": record.spool_depth,
            "dropped": record.dropped,
            "rejected": record.rejected,
        }
        return line(
            "probe",
            {**base, "version": record.version},
            {k: v for k, v in probe_fields.items() if v is not None},
            record.ts,
        )
    assert isinstance(record, HttpRecord)
    tags = {
        **base,
        "target": record.target,
        "topology": _str(record.topology),
        "ip": _str(record.ip),
        "status": _str(record.status),
    }
    fields = {
        "dns_ms": record.dns_ms,
        "connect_ms": record.connect_ms,
        "tls_ms": record.tls_ms,
        "ttfb_ms": record.ttfb_ms,
        "total_ms": record.total_ms,
        "ok": record.error is None,
        "bytes": record.bytes,
        "error": record.error,
    }
    return line("http", tags, {k: v for k, v in fields.items() if v is not None}, record.ts)
