"""The collector's side of the ``trace`` check: one point per hop in ``trace``, and one
summary point per trace (no ``hop`` tag): its ``path_id``, hop count, whether it reached
the destination, and the site that answered at the end.

A hop's point is at the trace's time plus its TTL in nanoseconds, so the hops of one
trace are distinct points of one series per hop number, and the summary is at the
trace's time.
"""

from __future__ import annotations

import statistics
from typing import Final

from collector.identity import Identity
from collector.kinds.base import IDENTITY_TAGS, Kind, record_tags, text
from collector.store.lineproto import FieldValue, line
from probe.wire import TraceRecord


def _trace_lines(r: TraceRecord, who: Identity) -> str:
    tags = {
        **record_tags(r, who),
        "server": r.server,
        "family": text(r.family),
        "method": r.method,
    }
    out = []
    for h in r.hops:
        fields: dict[str, FieldValue | None] = {
            "addr": h.addr,
            "rtt_ms": statistics.median(h.rtt_ms) if h.rtt_ms else None,
            "loss": round((h.sent - len(h.rtt_ms)) / h.sent, 6),
            "answered": h.kind,
        }
        out.append(
            line(
                "trace",
                {**tags, "hop": str(h.ttl)},
                {k: v for k, v in fields.items() if v is not None},
                r.ts + h.ttl,
            )
        )
    summary: dict[str, FieldValue | None] = {
        "path_id": r.path_id,
        "hops": len(r.hops),
        "reached": r.reached,
        "site": r.site,
        "error": r.error,
    }
    out.append(line("trace", tags, {k: v for k, v in summary.items() if v is not None}, r.ts))
    return "\n".join(out)


KIND: Final = Kind(
    name="trace",
    record=TraceRecord,
    measurement="trace",
    tags=(
        *IDENTITY_TAGS,
        "target",
        "topology",
        "provider",
        "server",
        "family",
        "method",
        "hop",
        "ask",
    ),
    fields=("addr", "rtt_ms", "loss", "answered", "path_id", "hops", "reached", "site", "error"),
    to_line=_trace_lines,
)

__all__ = ["KIND"]
