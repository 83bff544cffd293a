"""The collector's side of the ``http`` check: one point per page fetch in ``http``."""

from __future__ import annotations

from typing import Final

from collector.identity import Identity
from collector.kinds.base import IDENTITY_TAGS, Alerting, Kind, words
from collector.store.lineproto import FieldValue, line
from probe.wire import HttpRecord


def _str(v: object) -> str:
    return "" if v is None else str(v)


def _http_line(r: HttpRecord, who: Identity) -> str:
    tags = {
        "probe": who.probe,
        "region": who.region,
        "country": who.country,
        "target": r.target,
        "topology": _str(r.topology),
        "provider": _str(r.provider),
        "family": _str(r.family),
        "ip": _str(r.ip),
        "status": _str(r.status),
    }
    fields: dict[str, FieldValue | None] = {
        "dns_ms": r.dns_ms,
        "connect_ms": r.connect_ms,
        "tls_ms": r.tls_ms,
        "ttfb_ms": r.ttfb_ms,
        "total_ms": r.total_ms,
        "ok": r.error is None,
        "bytes": r.bytes,
        "redirects": r.redirects,
        "http_version": r.http_version,
        "cert_days": r.cert_days,
        "error": r.error,
    }
    return line("http", tags, {k: v for k, v in fields.items() if v is not None}, r.ts)


KIND: Final = Kind(
    name="http",
    record=HttpRecord,
    measurement="http",
    tags=(*IDENTITY_TAGS, "target", "topology", "provider", "family", "ip", "status"),
    fields=words(
        "dns_ms connect_ms tls_ms ttfb_ms total_ms ok bytes redirects http_version cert_days error"
    ),
    to_line=_http_line,
    # a failure: an error, or a status the target does not expect (``ok`` false)
    alerting=Alerting(value="ttfb_ms"),
    status=frozenset({"ttfb"}),
)

__all__ = ["KIND"]
