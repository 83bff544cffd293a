"""The collector's side of the ``ping`` check: one point per echo or handshake in ``ping``.

Network time alone, for the dashboards' server-time-against-network-time panels; the
alert rules do not judge it.
"""

from __future__ import annotations

from typing import Final

from collector.identity import Identity
from collector.kinds.base import IDENTITY_TAGS, Kind
from collector.store.lineproto import FieldValue, line
from probe.wire import PingRecord


def _str(v: object) -> str:
    return "" if v is None else str(v)


def _ping_line(r: PingRecord, who: Identity) -> str:
    tags = {
        "probe": who.probe,
        "region": who.region,
        "country": who.country,
        "target": r.target,
        "topology": _str(r.topology),
        "provider": _str(r.provider),
        "server": r.server,
        "family": _str(r.family),
        "method": r.method,
    }
    fields: dict[str, FieldValue | None] = {
        "rtt_ms": r.rtt_ms,
        "ok": r.error is None,
        "error": r.error,
    }
    return line("ping", tags, {k: v for k, v in fields.items() if v is not None}, r.ts)


KIND: Final = Kind(
    name="ping",
    record=PingRecord,
    measurement="ping",
    tags=(*IDENTITY_TAGS, "target", "topology", "provider", "server", "family", "method"),
    fields=("rtt_ms", "ok", "error"),
    to_line=_ping_line,
)

__all__ = ["KIND"]
