"""The collector's side of the ``http`` check: one point per page fetch in ``http``."""

from __future__ import annotations

import argparse
import urllib.parse
from typing import Any, Final

from collector.identity import Identity
from collector.kinds.base import (
    IDENTITY_TAGS,
    Alerting,
    Askable,
    Kind,
    ask_name,
    ask_options,
    flag_options,
    record_tags,
    text,
    words,
)
from collector.store.lineproto import FieldValue, line
from probe.targets import HttpTarget
from probe.wire import HttpRecord


def _http_line(r: HttpRecord, who: Identity) -> str:
    tags = {
        **record_tags(r, who),
        "family": text(r.family),
        "ip": text(r.ip),
        "status": text(r.status),
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


def _host(url: str) -> str:
    try:
        return urllib.parse.urlsplit(url).hostname or ""
    except ValueError:
        return ""


def _ask_spec(target: str, options: dict[str, Any]) -> dict[str, Any]:
    """An HttpTarget spec from an ask: the target is the URL; options are its keys."""
    opts = ask_options(options)
    return {
        "name": ask_name(_host(target)),
        "topology": opts.pop("topology", "unicast"),
        "url": target,
        "interval": 3600,
        **opts,
    }


def _ask_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=("GET", "HEAD"), help="default GET")
    p.add_argument("--resolver", metavar="IP[:PORT]", help="the resolver of the DNS phase")
    p.add_argument("--family", type=int, choices=(4, 6), help="connect over IPv4 or IPv6 only")
    p.add_argument("--timeout", type=float, help="seconds for each phase (default 5)")


ASK: Final = Askable(
    target_type=HttpTarget,
    spec=_ask_spec,
    host=lambda t: _host(t.url),
    series=lambda t: 1,
    add_arguments=_ask_arguments,
    options=lambda args: flag_options(args, ("method", "resolver", "family", "timeout")),
    columns=(("status", 6, "status"), ("ttfb_ms", 9, "ttfb_ms"), ("total_ms", 9, "total_ms")),
    value="ttfb_ms",
    example="http https://www.example.com/ --family 4",
)

KIND: Final = Kind(
    name="http",
    record=HttpRecord,
    measurement="http",
    tags=(*IDENTITY_TAGS, "target", "topology", "provider", "family", "ip", "status", "ask"),
    fields=words(
        "dns_ms connect_ms tls_ms ttfb_ms total_ms ok bytes redirects http_version cert_days error"
    ),
    to_line=_http_line,
    # a failure: an error, or a status the target does not expect (``ok`` false)
    alerting=Alerting(value="ttfb_ms"),
    status=frozenset({"ttfb"}),
    ask=ASK,
)

__all__ = ["KIND"]
