"""``popwatch-probe``: measure DNS latency once from the shell, or run the probe agent."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from probe import __version__, net
from probe.checks import CHECKS, AnyCheck, Job, check
from probe.config import ProbeConfig, check_unique, collector_tls, load_config, load_targets
from probe.configfile import ConfigError, parse_hostport
from probe.output import JsonLinesOutput
from probe.resolve import ResolveError, resolve
from probe.runner import Prober, run_job
from probe.wire import Measurement, encode

log = logging.getLogger("popwatch.probe")

#: on SIGTERM, how long the probe still tries to send its spool before it exits
SHUTDOWN_SEND_S = 3.0

ONCE_EXAMPLES = """\
examples:
  popwatch-probe once --server 192.0.2.53 --qname example.com --nsid
  popwatch-probe once --server ns1.example.net --qname example.com --qtype SOA --count 10
  popwatch-probe once --server [2001:db8::53]:5353 --qname example.com --tcp --chaos
  popwatch-probe once --server 192.0.2.53 --qname example.com --tls --tls-name dns.example.net
  popwatch-probe once --https https://dns.example.net/dns-query --qname example.com --rd
  popwatch-probe once --server 127.0.0.1:5300 --qname www.example.test --count 100 --json
  popwatch-probe once --https https://www.example.com/ --resolver 192.0.2.53 --count 5
  popwatch-probe once --ping icmp --server 192.0.2.53 --count 10
  popwatch-probe once --ping tcp --server 192.0.2.53:53 --count 10

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

  # ship to a collector (targets come from it, after any local ones)
  POPWATCH_COLLECTOR_URL=https://collector.example.net:8443 POPWATCH_TOKEN=pw1_... \\
    POPWATCH_DATA_DIR=/var/lib/popwatch popwatch-probe run

settings: every key of the config file is also a variable, POPWATCH_<KEY> (it wins):
  POPWATCH_COLLECTOR_URL   the collector's base URL; records are shipped there
  POPWATCH_TOKEN           this probe's token (popwatch-collector probes add ...)
  POPWATCH_TOKEN_FILE      or a file holding it (a Docker secret, say)
  POPWATCH_DATA_DIR        the spool lives in DATA_DIR/spool (default /var/lib/popwatch)
  POPWATCH_TARGETS         a targets file (the key targets_file)
  POPWATCH_PROBE_ID        this probe's id (the key id; default: the host name)
  POPWATCH_LOG_LEVEL       debug, info, warning or error
  POPWATCH_BATCH_RECORDS, POPWATCH_BATCH_S, POPWATCH_SPOOL_MAX_BYTES,
  POPWATCH_HEARTBEAT_S, POPWATCH_CONFIG_S, POPWATCH_METRICS_LISTEN, ...

Every key of the config and targets files is documented in probe/example.yaml
(`popwatch-probe example` prints it). SIGTERM or Ctrl-C stops after in-flight
measurements finish and the output is flushed; a shipping probe keeps what it could
not send in its spool for the next start.
"""


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# --------------------------------------------------------------------------- once


def _once_check(args: argparse.Namespace) -> AnyCheck:
    """The check whose flags were given (each kind says which of its flags select it)."""
    for kind in CHECKS:
        chk = check(kind)
        if chk.once is not None and chk.once.wanted(args):
            return chk
    hints = " or ".join(c.once.hint for c in map(check, CHECKS) if c.once is not None)
    raise ValueError(f"nothing to measure: give {hints}")


def _print_row(widths: Sequence[int], cells: Sequence[str]) -> None:
    print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip(), flush=True)


async def _once(args: argparse.Namespace) -> int:
    """Measure one target of the kind the flags ask for, --count times, and print it."""
    chk = _once_check(args)
    assert chk.once is not None
    target = chk.once.target(args)
    addresses: list[tuple[int, str]] = []
    if (host := chk.host(target)) is not None:
        try:
            addresses = await resolve(host[0], host[1])
        except ResolveError as exc:
            print(f"popwatch-probe once: {exc}", file=sys.stderr)
            return 1
    jobs = chk.jobs(target, addresses)
    if not jobs:
        print(f"popwatch-probe once: {target.name}: nothing to measure", file=sys.stderr)
        return 1
    net.warm_up()
    widths = [4, *(w for _, w in chk.columns)]
    if not args.json:
        _print_row(widths, ["#", *(name for name, _ in chk.columns)])
    records = await _repeat(jobs[0], args, lambda i, r: _print_row(widths, [str(i), *chk.row(r)]))
    if not args.json:
        print(chk.summary(records))
    return 0 if any(chk.answered(r) for r in records) else 1


async def _repeat(
    job: Job, args: argparse.Namespace, show: Callable[[int, Measurement], None]
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


# --------------------------------------------------------------------------- run


def _setup_error(key: str, what: str, exc: OSError, hint: str = "") -> ConfigError:
    """One line for a setting that cannot be put to use: the key, what failed, and why."""
    why = exc.strerror or str(exc)
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) not in what else ""
    return ConfigError(f"{key}: {what}: {why}{where}" + (f"; {hint}" if hint else ""))


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
        try:
            start_http_server(mport, mhost)
        except OSError as exc:
            raise _setup_error(
                "metrics_listen", f"cannot listen on {cfg.metrics_listen}", exc
            ) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if cfg.collector_url and cfg.token:
        await _run_shipping(cfg, stop)
        return 0
    try:
        output = JsonLinesOutput(cfg.output)
    except OSError as exc:
        raise _setup_error("output", f"cannot write {cfg.output}", exc) from None
    async with contextlib.AsyncExitStack() as stack:
        sink = await stack.enter_async_context(output)
        prober = Prober(cfg, sink)
        await prober.run(stop)
    return 0


async def _run_shipping(cfg: ProbeConfig, stop: asyncio.Event) -> None:
    """Measure and ship to the collector; on stop, spool the rest and try to send it."""
    from probe.shipper import Shipper

    assert cfg.collector_url
    assert cfg.token
    tls = collector_tls(cfg)  # checked when the config loaded
    try:
        shipper = Shipper(
            cfg.collector_url,
            cfg.token,
            Path(cfg.data_dir) / "spool",
            batch_records=cfg.batch_records,
            batch_s=cfg.batch_s,
            spool_max_bytes=cfg.spool_max_bytes,
            tls=tls,
            insecure=cfg.insecure,
        )
    except OSError as exc:
        what = f"cannot use {Path(cfg.data_dir) / 'spool'} for the spool"
        raise _setup_error(
            "data_dir", what, exc, "set POPWATCH_DATA_DIR to a writable directory"
        ) from None
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
        beats = tg.create_task(heartbeats(shipper, cfg.heartbeat_s, stop))
        pulls = tg.create_task(
            pull_config(cfg.collector_url, cfg.token, prober, cfg.config_s, stop, tls, cfg.insecure)
        )
        asks = None
        if cfg.asks:  # the command long-poll: on-demand measurements (probe/asks.py)
            from probe.asks import Asks

            asks = tg.create_task(
                Asks(
                    cfg.collector_url,
                    cfg.token,
                    shipper,
                    max_qps=cfg.ask_max_qps,
                    wait_s=cfg.command_wait_s,
                    resolver=cfg.resolver,
                    tls=tls,
                    insecure=cfg.insecure,
                ).run(stop)
            )
        try:
            await prober.run(stop)
        finally:
            shipper.close()  # the last records go to disk before anything else
            sender_stop.set()
            beats.cancel()
            pulls.cancel()  # a pull may be waiting on a collector that does not answer
            if asks is not None:
                asks.cancel()  # a long-poll waits up to command_wait_s
        # the spool keeps what is not sent: a last try must not outlast a container
        # runtime's grace period (Docker's is 10 s)
        try:
            async with asyncio.timeout(SHUTDOWN_SEND_S):
                await sender
        except TimeoutError:
            log.info(
                "stopping: %d batches not sent within %g s stay in the spool",
                shipper.depth,
                SHUTDOWN_SEND_S,
            )
    log.info(
        "shipped: %d accepted, %d rejected, %d dropped; %d batches left in the spool",
        shipper.accepted,
        shipper.rejected,
        shipper.dropped,
        shipper.depth,
    )


# --------------------------------------------------------------------------- main


def build_parser(with_checks: bool = True) -> argparse.ArgumentParser:
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
    once.set_defaults(subparser=once)  # for its usage errors after parsing
    once.add_argument(
        "--server",
        metavar="HOST[:PORT]",
        help="server IP or host name; [v6]:PORT for a port with IPv6",
    )
    once.add_argument("--count", type=int, default=1, help="how many measurements (default 1)")
    once.add_argument(
        "--interval", type=float, default=1.0, help="seconds between starts (default 1)"
    )
    once.add_argument(
        "--timeout", type=float, default=2.0, help="seconds to wait for each phase (default 2)"
    )
    once.add_argument("--tls-ca", metavar="FILE", help="CA bundle (PEM) for TLS connections")
    once.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    fam = once.add_mutually_exclusive_group()
    fam.add_argument("-4", dest="ipv4", action="store_true", help="use IPv4 only")
    fam.add_argument("-6", dest="ipv6", action="store_true", help="use IPv6 only")
    once.add_argument(
        "--json", action="store_true", help="print one wire record per line (what `run` would ship)"
    )
    if with_checks:  # each kind adds its own flags (and imports its module)
        for kind in CHECKS:
            chk = check(kind)
            if chk.once is not None:
                chk.once.add_arguments(once)

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

    sub.add_parser(
        "example",
        help="print the example config with every key documented",
        description="Print probe/example.yaml: every key of the probe's config file and of "
        "a target, with its default and what it means. Start a config from it: "
        "popwatch-probe example > probe.yaml",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # the check modules (aiohttp among their imports) load only for `once`, whose flags
    # they define: `run` imports a check when a target first needs it
    parser = build_parser(with_checks=argv[:1] == ["once"])
    args = parser.parse_args(argv)
    try:
        if args.command == "example":
            from importlib.resources import files

            sys.stdout.write(files("probe").joinpath("example.yaml").read_text())
            return 0
        if args.command == "once":
            once: argparse.ArgumentParser = args.subparser  # its usage, not the top level's
            if args.count < 1:
                once.error("--count must be at least 1")
            if args.interval < 0 or args.timeout <= 0:
                once.error("--interval must be >= 0 and --timeout > 0")
            args.families = [4] if args.ipv4 else [6] if args.ipv6 else [4, 6]
            args.run_interval = max(args.interval, args.timeout + 0.001, 1.0)
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
