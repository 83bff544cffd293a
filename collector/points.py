"""Wire records to points of the InfluxDB schema in DESIGN.md.

The probe's identity tags (probe, region, country) come from the registry, never from the
body. A record whose values line protocol cannot carry raises ``Unrepresentable``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from collector.lineproto import FieldValue, line
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


def to_line(record: Measurement, who: Identity) -> str:
    """The line-protocol line of one record."""
    base = {"probe": who.probe, "region": who.region, "country": who.country}
    if isinstance(record, DnsRecord):
        tags = {
            **base,
            "target": record.target,
            "topology": _str(record.topology),
            "provider": _str(record.provider),
            "server": record.server,
            "family": _str(record.family),
            "transport": record.transport,
            "qtype": record.qtype,
            "rcode": record.rcode,
            "site": _str(record.site),
            "timestamping": record.timestamping,
        }
        fields: dict[str, FieldValue | None] = {
            "rtt_ms": record.rtt_ms,
            "connect_ms": record.connect_ms,
            "tls_ms": record.tls_ms,
            "ok": record.rcode in _OK_RCODES,
            "truncated": record.truncated,
            "answers": record.answers,
            "size": record.size,
            "ttl": record.ttl,
            "serial": record.serial,
            "error": record.error,
        }
        return line("dns", tags, {k: v for k, v in fields.items() if v is not None}, record.ts)
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
