"""The collector's side of the ``trace`` check: one point per hop in ``trace``, and one
summary point per trace (no ``hop`` tag): its ``path_id``, hop count, whether it reached
the destination, and the site that answered at the end.

A hop's point is at the trace's time plus its TTL in nanoseconds, so the hops of one
trace are distinct points of one series per hop number, and the summary is at the
trace's time.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Final

from collector.identity import Identity
from collector.kinds.base import (
    IDENTITY_TAGS,
    Askable,
    Kind,
    flag_options,
    server_spec,
    server_tags,
)
from collector.store.lineproto import FieldValue, line
from probe.targets import TraceTarget
from probe.wire import TraceRecord


def _trace_lines(r: TraceRecord, who: Identity) -> str:
    tags = server_tags(r, who)
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


def _ask_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--method", choices=("udp", "icmp", "tcp"), help="a DNS query (default), echo or SYN"
    )
    p.add_argument("--port", type=int, help="the port for --method udp or tcp (default 53)")
    p.add_argument("--qname", help="the name the udp trace's query asks (default '.')")
    p.add_argument("--max-hops", type=int, dest="max_hops", help="TTLs tried (default 30)")
    p.add_argument(
        "--queries-per-hop", type=int, dest="queries_per_hop", help="per TTL (default 3)"
    )
    p.add_argument(
        "--hop-timeout", type=float, dest="hop_timeout_s", help="seconds per query (default 1)"
    )


ASK: Final = Askable(
    target_type=TraceTarget,
    spec=server_spec,
    host=lambda t: t.server,
    series=lambda t: len(t.families),
    add_arguments=_ask_arguments,
    options=lambda args: flag_options(
        args, ("method", "port", "qname", "max_hops", "queries_per_hop", "hop_timeout_s")
    ),
    columns=(
        ("hop", 4, "hop"),
        ("addr", 26, "addr"),
        ("rtt_ms", 9, "rtt_ms"),
        ("loss", 5, "loss"),
        ("hops", 5, "hops"),
        ("site", 8, "site"),
        ("path_id", 17, "path_id"),
    ),
    value="hops",  # a summary row's: the median path length per region
    example="trace 198.51.100.53 --method udp --qname example.com",
)

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
    ask=ASK,
)

__all__ = ["KIND"]
