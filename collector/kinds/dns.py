"""The collector's side of the ``dns`` check: one point per query in ``dns``.

The hot path of ingest: a record's line is its series' cached head (measurement, sorted
escaped tags and ``ok``) plus its fields, about 1.6 µs a record here against 8 µs
through the generic ``line`` (tests/test_points.py holds the two equal).
"""

from __future__ import annotations

import argparse
from typing import Any, Final

from collector.identity import Identity
from collector.kinds.base import (
    IDENTITY_TAGS,
    Alerting,
    Askable,
    Kind,
    ask_name,
    ask_options,
    words,
)
from collector.store.lineproto import INT64_MAX, Unrepresentable, field, string_field, tag_value
from probe.targets import QTYPES, DnsTarget
from probe.wire import DnsRecord

#: rcodes that mean the server answered the question as asked (``ok`` true)
OK_RCODES: Final = frozenset({"NOERROR", "NXDOMAIN"})

# escaped "dns,<tags> ok=<bool>" per series: the tags of a series repeat in every record
_DnsKey = tuple[
    tuple[str, str, str],
    str | None,
    int | None,
    str | None,
    str,
    str,
    str,
    str,
    str | None,
    str,
    str,
    str | None,
    str,
]
_DNS_HEADS: dict[_DnsKey, str] = {}
_DNS_HEADS_CHARS = 0
# bounded in what the entries hold, not in entries: a series' key holds its strings (tag
# values of up to 1 KiB each) and the head repeats them escaped, so an entry costs about
# twice its head plus ~600 bytes of tuple and object overhead. Emptied when full.
_DNS_HEADS_MAX_CHARS: Final = 24_000_000


def _dns_head(key: _DnsKey) -> str:
    """The measurement, sorted escaped tags and the ``ok`` field of a dns series."""
    (
        ident,
        ask,
        family,
        provider,
        qname,
        qtype,
        rcode,
        server,
        site,
        target,
        stamping,
        topology,
        transport,
    ) = key
    country, probe, region = ident
    tags = (
        ("ask", ask or ""),
        ("country", country),
        ("family", "" if family is None else str(family)),
        ("probe", probe),
        ("provider", provider or ""),
        ("qname", qname),
        ("qtype", qtype),
        ("rcode", rcode),
        ("region", region),
        ("server", server),
        ("site", site or ""),
        ("target", target),
        ("timestamping", stamping),
        ("topology", topology or ""),
        ("transport", transport),
    )  # sorted by key, as InfluxDB prefers
    tag_part = "".join(f",{k}={tag_value(k, v)}" for k, v in tags if v)
    ok = "true" if rcode in OK_RCODES else "false"
    return f"dns{tag_part} ok={ok}"


def _dns_line(r: DnsRecord, who: Identity) -> str:
    """The hot path: a dns record's line, its series part cached.

    About 1.6 µs a record here, against 8 µs through the generic ``line`` (the two are
    held equal by tests/test_points.py).
    """
    key: _DnsKey = (
        (who.country, who.probe, who.region),
        r.ask,
        r.family,
        r.provider,
        r.qname,
        r.qtype,
        r.rcode,
        r.server,
        r.site,
        r.target,
        r.timestamping,
        r.topology,
        r.transport,
    )
    global _DNS_HEADS_CHARS
    head = _DNS_HEADS.get(key)
    if head is None:
        # raises Unrepresentable (a NUL, a tag over 1 KiB, ...): never cached
        head = _dns_head(key)
        cost = 2 * len(head) + 600
        if _DNS_HEADS_CHARS + cost > _DNS_HEADS_MAX_CHARS:
            _DNS_HEADS.clear()
            _DNS_HEADS_CHARS = 0
        _DNS_HEADS[key] = head
        _DNS_HEADS_CHARS += cost
    if r.error is not None and head.endswith(" ok=true"):
        # an answer that is not what was asked (a site's address answering as another
        # site): not ok, whatever its rcode
        head = head[: -len("true")] + "false"
    out = head + (",truncated=true" if r.truncated else ",truncated=false")
    # floats: the wire bounds them (0-3,600,000 ms); ints: only >= 0, so the top is
    # checked here; serial is bounded to 32 bits by the wire
    if (ms := r.rtt_ms) is not None:
        out += ",rtt_ms=" + field("rtt_ms", ms)
    if (ms := r.connect_ms) is not None:
        out += ",connect_ms=" + field("connect_ms", ms)
    if (ms := r.tls_ms) is not None:
        out += ",tls_ms=" + field("tls_ms", ms)
    if (n := r.answers) is not None:
        if n > INT64_MAX:
            raise Unrepresentable(f"field answers is {n}, outside the 64-bit integer range")
        out += f",answers={n}i"
    if (n := r.size) is not None:
        if n > INT64_MAX:
            raise Unrepresentable(f"field size is {n}, outside the 64-bit integer range")
        out += f",size={n}i"
    if (n := r.ttl) is not None:
        if n > INT64_MAX:
            raise Unrepresentable(f"field ttl is {n}, outside the 64-bit integer range")
        out += f",ttl={n}i"
    if (n := r.serial) is not None:
        out += f",serial={n}i"
    if r.http_version is not None:
        out += ",http_version=" + string_field("http_version", r.http_version)
    if r.error is not None:
        out += ",error=" + string_field("error", r.error)
    return f"{out} {r.ts}"


def _ask_spec(target: str, options: dict[str, Any]) -> dict[str, Any]:
    """A DnsTarget spec from an ask: ``qname`` (default the root, ``.``: any server
    answers it, if only to refuse, and says its NSID) and ``qtype`` (default SOA) make
    its one query, ``transport`` its one transport, ``nsid`` or ``chaos`` how the site is told
    (neither: not asked); any other key is a key of a dns target."""
    opts = ask_options(options)
    spec: dict[str, Any] = {
        "name": ask_name(target),
        "topology": opts.pop("topology", "unicast"),
        "server": target,
        "interval": 3600,  # never scheduled: the ask's count and interval_s say when
    }
    qname, qtype = opts.pop("qname", "."), opts.pop("qtype", "SOA")
    if "queries" not in opts:
        spec["queries"] = [{"qname": qname, "qtype": str(qtype).upper() if qtype else qtype}]
    if "transport" in opts:
        spec["transports"] = [opts.pop("transport")]
    nsid, chaos = opts.pop("nsid", False), opts.pop("chaos", False)
    spec["identify"] = "nsid" if nsid else "chaos" if chaos else "none"
    return {**spec, **opts}


def _ask_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--qname", default=".", help="the name to ask (default the root, '.')")
    p.add_argument(
        "--qtype", default="SOA", type=str.upper, choices=QTYPES, metavar="QTYPE",
        help=f"one of {', '.join(QTYPES)} (default SOA)",
    )  # fmt: skip
    g = p.add_mutually_exclusive_group()
    g.add_argument("--tcp", action="store_true", help="over TCP (default UDP)")
    g.add_argument("--tls", action="store_true", help="over TLS (port 853)")
    ident = p.add_mutually_exclusive_group()
    ident.add_argument("--nsid", action="store_true", help="ask for NSID: the site that answers")
    ident.add_argument("--chaos", action="store_true", help="ask CHAOS id.server after each query")
    p.add_argument("--port", type=int, help="the port (default 53)")
    p.add_argument("--rd", action="store_true", help="set RD (ask a resolver to recurse)")
    p.add_argument("--dnssec", action="store_true", help="set the DO bit")
    p.add_argument("--timeout", type=float, help="seconds to wait for each answer (default 2)")


def _ask_options(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"qname": args.qname, "qtype": args.qtype}
    if args.tcp or args.tls:
        out["transport"] = "tcp" if args.tcp else "tls"
    for key in ("nsid", "chaos", "rd", "dnssec"):
        if getattr(args, key):
            out[key] = True
    for key in ("port", "timeout"):
        if getattr(args, key) is not None:
            out[key] = getattr(args, key)
    return out


ASK: Final = Askable(
    target_type=DnsTarget,
    spec=_ask_spec,
    host=lambda t: t.server,
    series=lambda t: len(t.transports) * len(t.queries) * len(t.families),
    add_arguments=_ask_arguments,
    options=_ask_options,
    columns=(("site", 10, "site"), ("rcode", 9, "rcode"), ("rtt_ms", 9, "rtt_ms")),
    value="rtt_ms",
    example="dns 198.51.100.53 --qname example.com --nsid",
)

KIND: Final = Kind(
    name="dns",
    record=DnsRecord,
    measurement="dns",
    tags=(
        *IDENTITY_TAGS,
        *words("target topology provider server family transport qname qtype rcode site"),
        "timestamping",
        "ask",
    ),
    fields=words(
        "rtt_ms connect_ms tls_ms ok truncated answers size ttl serial http_version error"
    ),
    to_line=_dns_line,
    alerting=Alerting(value="rtt_ms", by_rcode=True, site=True, serial=True),
    status=frozenset({"latency", "median", "sites"}),
    ask=ASK,
)

__all__ = ["KIND", "OK_RCODES"]
