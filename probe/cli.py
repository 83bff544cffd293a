"""``popwatch-probe``: measure DNS latency once from the shell, or run the probe agent."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import statistics
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from probe import __version__, net
from probe.checks.dns import DnsJob
from probe.config import (
    QTYPES,
    ConfigError,
    HttpTarget,
    ProbeConfig,
    Target,
    check_unique,
    load_config,
    load_targets,
    parse_hostport,
)
from probe.output import JsonLinesOutput
from probe.resolve import ResolveError, resolve
from probe.runner import Prober, run_job
from probe.wire import DnsRecord, HttpRecord, Measurement, encode

log = logging.getLogger("popwatch.probe")

ONCE_EXAMPLES = """\
examples:
  popwatch-probe once --server 192.0.2.53 --qname example.com --nsid
  popwatch-probe once --server ns1.example.net --qname example.com --qtype SOA --count 10
  popwatch-probe once --server [2001:db8::53]:5353 --qname example.com --tcp --chaos
  popwatch-probe once --server 192.0.2.53 --qname example.com --tls --tls-name dns.example.net
  popwatch-probe once --https https://dns.example.net/dns-query --qname example.com --rd
  popwatch-probe once --server 127.0.0.1:5300 --qname www.example.test --count 100 --json
  popwatch-probe once --https https://www.example.com/ --resolver 192.0.2.53 --count 5

With --https URL and no --qname, `once` fetches the page and prints its phases (dns,
connect, tls, ttfb, total) and DNS's share of the time to first byte; with --qname it
sends DNS queries over HTTPS (DoH) to that URL.

rtt_ms is the time between the query leaving and the answer arriving as the kernel saw
them (timestamping "kernel"), or perf_counter around send/recv where the kernel cannot
stamp ("user"). A lost answer is TIMEOUT and is never retried. Exit status is 0 when at
least one answer came, 1 when none did, 2 for bad arguments.
"""

RUN_EXAMPLES = """\
examples:
  popwatch-probe run --targets targets.yaml                 # JSON lines on stdout
  popwatch-probe run --config probe.yaml --output /var/lib/popwatch/out.jsonl
  POPWATCH_TARGETS=targets.yaml popwatch-probe run

Every key of the config and targets files is documented in probe/example.yaml
(`popwatch-probe example` prints it). SIGTERM or Ctrl-C stops after in-flight
measurements finish and the output is flushed.
"""


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# --------------------------------------------------------------------------- once


def _once_target(args: argparse.Namespace) -> tuple[Target, str, str]:
    """A Target built from ``once`` flags, the transport, and the host to resolve."""
    transport = "udp"
    doh_port, doh_path, tls_name = 443, "/dns-query", args.tls_name
    if args.https:
        url = urllib.parse.urlsplit(args.https)
        if url.scheme != "https" or not url.hostname:
            raise ValueError(f"--https {args.https!r}: expected https://HOST[:PORT]/PATH")
        transport = "https"
        doh_port = url.port or 443
        doh_path = url.path or "/dns-query"
        if url.query:
            doh_path += "?" + url.query
        tls_name = tls_name or url.hostname
    elif args.tls:
        transport = "tls"
    elif args.tcp:
        transport = "tcp"
    default_port = {"udp": 53, "tcp": 53, "tls": 853, "https": doh_port}[transport]
    if args.server:
        host, port = parse_hostport(args.server, default_port)
    elif args.https:
        host, port = urllib.parse.urlsplit(args.https).hostname or "", doh_port
    else:
        raise ValueError("--server is required (or --https URL)")
    families = [4] if args.ipv4 else [6] if args.ipv6 else [4, 6]
    spec: dict[str, Any] = {
        "name": "once",
        "topology": "resolver" if args.rd else "unicast",
        "server": host,
        "queries": [{"qname": args.qname, "qtype": args.qtype}],
        "port": port if transport in ("udp", "tcp") else 53,
        "tls_port": port if transport == "tls" else 853,
        "doh_port": port if transport == "https" else doh_port,
        "doh_path": doh_path,
        "tls_name": tls_name,
        "tls_ca": args.tls_ca,
        "tls_verify": not args.insecure,
        "transports": [transport],
        "families": families,
        "interval": max(args.interval, args.timeout + 0.001, 1.0),
        "timeout": args.timeout,
        "identify": "chaos" if args.chaos else "nsid" if args.nsid else "none",
        "rd": args.rd,
        "dnssec": args.dnssec,
        "edns": not args.no_edns,
        "edns_bufsize": args.bufsize,
    }
    try:
        target = msgspec.convert(spec, Target)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc).split(" - at ")[0]) from None
    return target, transport, host


_COLS = (
    "#",
    "server",
    "proto",
    "rcode",
    "rtt_ms",
    "conn_ms",
    "tls_ms",
    "site",
    "size",
    "ttl",
    "serial",
    "stamp",
)


def _row(i: int, r: DnsRecord) -> list[str]:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    return [
        str(i),
        f"{r.server}:{r.port}" if r.family == 4 else f"[{r.server}]:{r.port}",
        r.transport + (" TC" if r.truncated else ""),
        r.rcode,
        f(r.rtt_ms),
        f(r.connect_ms),
        f(r.tls_ms),
        r.site or "-",
        "-" if r.size is None else str(r.size),
        "-" if r.ttl is None else str(r.ttl),
        "-" if r.serial is None else str(r.serial),
        r.timestamping + (f"  {r.error}" if r.error else ""),
    ]


_WIDTHS = (4, 24, 6, 9, 9, 8, 8, 16, 5, 6, 11, 6)


def _print_row(cells: Sequence[str]) -> None:
    print("  ".join(c.ljust(w) for c, w in zip(cells, _WIDTHS, strict=True)).rstrip(), flush=True)


def _summary(records: list[DnsRecord]) -> str:
    rtts = sorted(r.rtt_ms for r in records if r.rtt_ms is not None)
    lost = len(records) - len(rtts)
    line = f"{len(records)} queries, {len(rtts)} answered, {lost} without answer"
    if rtts:
        p95 = rtts[min(len(rtts) - 1, math.ceil(0.95 * len(rtts)) - 1)]
        line += (
            f"; rtt_ms min {rtts[0]:.3f} median {statistics.median(rtts):.3f} "
            f"p95 {p95:.3f} max {rtts[-1]:.3f}"
        )
    return line


async def _once(args: argparse.Namespace) -> int:
    target, transport, host = _once_target(args)
    net.warm_up()
    try:
        addresses = await resolve(host, target.families)
    except ResolveError as exc:
        print(f"popwatch-probe once: {exc}", file=sys.stderr)
        return 1
    _, address = addresses[0]
    job = DnsJob(target, address, transport, target.queries[0].qname, target.queries[0].qtype)
    if not args.json:
        _print_row(_COLS)
    records = [
        r
        for r in await _repeat(job, args, lambda i, r: _print_row(_row(i, r)))
        if isinstance(r, DnsRecord)
    ]
    if not args.json:
        print(_summary(records))
    return 0 if any(r.rtt_ms is not None for r in records) else 1


async def _repeat(
    job: Any, args: argparse.Namespace, show: Callable[[int, Any], None]
) -> list[Measurement]:
    """Run ``job`` --count times, --interval apart; print each record as it comes."""
    records: list[Measurement] = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(args.count):
        # absolute schedule: run i starts at start + i*interval, however long i-1 took
        delay = start + i * args.interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        record = await run_job(job)
        records.append(record)
        if args.json:
            sys.stdout.buffer.write(encode(record) + b"\n")
            sys.stdout.buffer.flush()
        else:
            show(i + 1, record)
    return records


_HTTP_COLS = (
    "#",
    "ip",
    "status",
    "dns_ms",
    "conn_ms",
    "tls_ms",
    "ttfb_ms",
    "total_ms",
    "bytes",
    "redir",
    "error",
)
_HTTP_WIDTHS = (4, 16, 6, 9, 9, 9, 9, 9, 8, 5, 0)


def _print_http_row(cells: Sequence[str]) -> None:
    print(
        "  ".join(c.ljust(w) for c, w in zip(cells, _HTTP_WIDTHS, strict=True)).rstrip(), flush=True
    )


def _http_row(i: int, r: HttpRecord) -> list[str]:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    return [
        str(i),
        r.ip or "-",
        "-" if r.status is None else str(r.status),
        f(r.dns_ms),
        f(r.connect_ms),
        f(r.tls_ms),
        f(r.ttfb_ms),
        f(r.total_ms),
        "-" if r.bytes is None else str(r.bytes),
        "-" if r.redirects is None else str(r.redirects),
        r.error or "",
    ]


def _http_summary(records: list[HttpRecord]) -> str:
    ok = [r for r in records if r.error is None]
    line = f"{len(records)} fetches, {len(ok)} ok, {len(records) - len(ok)} failed"
    done = [r for r in ok if r.ttfb_ms is not None]
    if done:

        def med(name: str) -> float:
            return statistics.median(getattr(r, name) or 0.0 for r in done)

        to_first_byte = med("dns_ms") + med("connect_ms") + med("tls_ms") + med("ttfb_ms")
        line += (
            f"; median ms: dns {med('dns_ms'):.3f} connect {med('connect_ms'):.3f} "
            f"tls {med('tls_ms'):.3f} ttfb {med('ttfb_ms'):.3f} total {med('total_ms'):.3f}"
        )
        if to_first_byte > 0:
            line += f"; DNS is {100 * med('dns_ms') / to_first_byte:.1f}% of time to first byte"
    return line


async def _once_http(args: argparse.Namespace) -> int:
    from probe.checks.http import HttpJob  # aiohttp loads only when a page is fetched

    spec: dict[str, Any] = {
        "kind": "http",
        "name": "once",
        "topology": "unicast",
        "url": args.https,
        "method": args.method,
        "expect_status": args.expect or [],
        "body_regex": args.body_regex,
        "follow_redirects": not args.no_redirects,
        "max_redirects": args.max_redirects,
        "interval": max(args.interval, args.timeout + 0.001, 1.0),
        "timeout": args.timeout,
        "family": 4 if args.ipv4 else 6 if args.ipv6 else None,
        "resolver": args.resolver,
        "tls_ca": args.tls_ca,
        "tls_verify": not args.insecure,
    }
    try:
        target = msgspec.convert(spec, HttpTarget)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc).split(" - at ")[0]) from None
    job = HttpJob(target)
    if not args.json:
        _print_http_row(_HTTP_COLS)
    records = [
        r
        for r in await _repeat(job, args, lambda i, r: _print_http_row(_http_row(i, r)))
        if isinstance(r, HttpRecord)
    ]
    if not args.json:
        print(_http_summary(records))
    return 0 if any(r.error is None for r in records) else 1


# --------------------------------------------------------------------------- run


async def _run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if args.targets:
        cfg.targets = [*cfg.targets, *load_targets(args.targets)]
        check_unique(f"{args.config or '(config)'} + {args.targets}", cfg.targets)
    if args.output:
        cfg.output = args.output
    if args.id:
        cfg.id = args.id
    if args.concurrency:
        cfg.concurrency = args.concurrency
    _setup_logging(cfg.log_level)
    if not cfg.targets and not cfg.collector_url:
        print(
            "popwatch-probe run: no targets: pass --targets FILE, set POPWATCH_TARGETS, "
            "list targets in the config file, or set POPWATCH_COLLECTOR_URL to take them "
            "from the collector",
            file=sys.stderr,
        )
        return 2
    if cfg.metrics_listen:
        from prometheus_client import start_http_server

        mhost, mport = parse_hostport(cfg.metrics_listen, 9553)
        start_http_server(mport, mhost)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if cfg.collector_url and cfg.token:
        await _run_shipping(cfg, stop)
        return 0
    async with contextlib.AsyncExitStack() as stack:
        sink = await stack.enter_async_context(JsonLinesOutput(cfg.output))
        prober = Prober(cfg, sink)
        await prober.run(stop)
    return 0


async def _run_shipping(cfg: ProbeConfig, stop: asyncio.Event) -> None:
    """Measure and ship to the collector; on stop, spool the rest and try to send it."""
    from probe.shipper import Shipper

    assert cfg.collector_url
    assert cfg.token
    shipper = Shipper(
        cfg.collector_url,
        cfg.token,
        Path(cfg.data_dir) / "spool",
        batch_records=cfg.batch_records,
        batch_seconds=cfg.batch_seconds,
        spool_max_bytes=cfg.spool_max_bytes,
    )
    log.info(
        "shipping to %s; spool %s holds %d batches from before",
        cfg.collector_url,
        shipper.dir,
        shipper.depth,
    )
    from probe.remote import heartbeats, pull_config

    sender_stop = asyncio.Event()
    prober = Prober(cfg, shipper)
    async with asyncio.TaskGroup() as tg:
        sender = tg.create_task(shipper.run(sender_stop))
        tg.create_task(heartbeats(shipper, cfg.heartbeat_seconds, stop))
        tg.create_task(pull_config(cfg.collector_url, cfg.token, prober, cfg.config_seconds, stop))
        try:
            await prober.run(stop)
        finally:
            shipper.close()  # the last records go to disk before anything else
            sender_stop.set()
        await sender
    log.info(
        "shipped: %d accepted, %d rejected, %d dropped; %d batches left in the spool",
        shipper.accepted,
        shipper.rejected,
        shipper.dropped,
        shipper.depth,
    )


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="popwatch-probe",
        description="popwatch probe: exact DNS latency measurements of unicast and anycast "
        "nameservers, with the anycast site (PoP) that answered.",
    )
    p.add_argument("--version", action="version", version=f"popwatch-probe {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    once = sub.add_parser(
        "once",
        help="time queries against one server now and print them",
        description="Time COUNT queries against one server and print each result "
        "(a table, or wire records with --json).",
        epilog=ONCE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    once.add_argument(
        "--server",
        metavar="HOST[:PORT]",
        help="server IP or host name; [v6]:PORT for a port with IPv6",
    )
    once.add_argument(
        "--qname",
        help="name to query, e.g. example.com (omit with --https URL to fetch the page instead)",
    )
    once.add_argument(
        "--qtype", default="SOA", type=str.upper, choices=QTYPES, help="query type (default SOA)"
    )
    proto = once.add_mutually_exclusive_group()
    proto.add_argument("--tcp", action="store_true", help="DNS over TCP (default UDP)")
    proto.add_argument("--tls", action="store_true", help="DNS over TLS (default port 853)")
    proto.add_argument(
        "--https",
        metavar="URL",
        help="with --qname: DNS over HTTPS to URL (HTTP/1.1 POST); without: "
        "fetch URL and time its phases",
    )
    ident = once.add_mutually_exclusive_group()
    ident.add_argument(
        "--nsid", action="store_true", help="ask for NSID on the timed query itself (site = NSID)"
    )
    ident.add_argument(
        "--chaos",
        action="store_true",
        help="after each query ask CHAOS TXT id.server/hostname.bind on the same "
        "flow (site = that answer)",
    )
    once.add_argument("--count", type=int, default=1, help="how many queries (default 1)")
    once.add_argument(
        "--interval", type=float, default=1.0, help="seconds between query starts (default 1)"
    )
    once.add_argument(
        "--timeout", type=float, default=2.0, help="seconds to wait for each phase (default 2)"
    )
    once.add_argument("--rd", action="store_true", help="set RD (ask a resolver to recurse)")
    once.add_argument("--dnssec", action="store_true", help="set the DO bit")
    once.add_argument("--no-edns", action="store_true", help="send no OPT record")
    once.add_argument(
        "--bufsize", type=int, default=1232, help="EDNS UDP buffer size (default 1232)"
    )
    once.add_argument("--tls-name", help="name to verify the TLS certificate against (and SNI)")
    once.add_argument("--tls-ca", metavar="FILE", help="CA bundle (PEM) for --tls/--https")
    once.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    fam = once.add_mutually_exclusive_group()
    fam.add_argument("-4", dest="ipv4", action="store_true", help="use IPv4 only")
    fam.add_argument("-6", dest="ipv6", action="store_true", help="use IPv6 only")
    web = once.add_argument_group("page fetches (--https URL without --qname)")
    web.add_argument(
        "--resolver",
        metavar="IP[:PORT]",
        help="resolver or nameserver for the DNS phase (default: the system's)",
    )
    web.add_argument("--method", default="GET", type=str.upper, choices=["GET", "HEAD"])
    web.add_argument(
        "--expect",
        type=int,
        action="append",
        metavar="STATUS",
        help="a status that counts as success (repeat it; default any 2xx)",
    )
    web.add_argument("--body-regex", metavar="RE", help="the body must match this")
    web.add_argument("--no-redirects", action="store_true", help="do not follow redirects")
    web.add_argument("--max-redirects", type=int, default=10, help="(default 10)")
    once.add_argument(
        "--json", action="store_true", help="print one wire record per line (what `run` would ship)"
    )

    run = sub.add_parser(
        "run",
        help="run the probe: measure every target on its schedule",
        description="Measure every target on its schedule and write wire records as JSON "
        "lines. POPWATCH_* variables override the config file.",
        epilog=RUN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--config", metavar="FILE", help="probe config file (YAML)")
    run.add_argument("--targets", metavar="FILE", help="targets file (YAML); adds to the config's")
    run.add_argument("--output", metavar="FILE|-", help="where records go (default -, stdout)")
    run.add_argument("--id", help="probe id (default: host name); seeds the start offsets")
    run.add_argument("--concurrency", type=int, help="measurements in flight at most")

    sub.add_parser("example", help="print the example config with every key documented")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "example":
            from importlib.resources import files

            sys.stdout.write(files("probe").joinpath("example.yaml").read_text())
            return 0
        if args.command == "once":
            if args.count < 1:
                parser.error("--count must be at least 1")
            if args.interval < 0 or args.timeout <= 0:
                parser.error("--interval must be >= 0 and --timeout > 0")
            if args.https and not args.qname:
                return asyncio.run(_once_http(args))
            if not args.qname:
                parser.error("--qname is required (or --https URL to fetch a page)")
            return asyncio.run(_once(args))
        return asyncio.run(_run(args))
    except ConfigError as exc:
        print(f"popwatch-probe: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"popwatch-probe {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main"]
