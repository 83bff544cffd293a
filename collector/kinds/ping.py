"""The collector's side of the ``ping`` check: one point per echo or handshake in ``ping``.

Network time alone, for the dashboards' server-time-against-network-time panels; the
alert rules do not judge it.
"""

from __future__ import annotations

import argparse
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
from probe.targets import PingTarget
from probe.wire import PingRecord


def _ping_line(r: PingRecord, who: Identity) -> str:
    tags = server_tags(r, who)
    fields: dict[str, FieldValue | None] = {
        "rtt_ms": r.rtt_ms,
        "ok": r.error is None,
        "error": r.error,
    }
    return line("ping", tags, {k: v for k, v in fields.items() if v is not None}, r.ts)


def _ask_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=("icmp", "tcp"), help="echo (default) or TCP handshake")
    p.add_argument("--port", type=int, help="the TCP port for --method tcp (default 53)")
    p.add_argument("--timeout", type=float, help="seconds to wait for each reply (default 2)")


ASK: Final = Askable(
    target_type=PingTarget,
    spec=server_spec,
    host=lambda t: t.server,
    series=lambda t: len(t.families),
    add_arguments=_ask_arguments,
    options=lambda args: flag_options(args, ("method", "port", "timeout")),
    columns=(("rtt_ms", 9, "rtt_ms"), ("error", 24, "error")),
    value="rtt_ms",
    example="ping 198.51.100.53 --method tcp --port 53",
)

KIND: Final = Kind(
    name="ping",
    record=PingRecord,
    measurement="ping",
    tags=(*IDENTITY_TAGS, "target", "topology", "provider", "server", "family", "method", "ask"),
    fields=("rtt_ms", "ok", "error"),
    to_line=_ping_line,
    ask=ASK,
)

__all__ = ["KIND"]
