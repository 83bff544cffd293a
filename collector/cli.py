"""``popwatch-collector``: register probes, and run the ingest API in front of InfluxDB."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sqlite3
import ssl
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from importlib.resources import files
from pathlib import Path

import aiohttp
from aiohttp import web

from collector import __version__, certs
from collector.alerts import cli as alerts_cli
from collector.alerts.inflation import Sites
from collector.alerts.tracing import OPERATOR
from collector.app import CollectorState, create_admin_app, create_app
from collector.asks import cli as asks_cli
from collector.asks.board import Board
from collector.config import MEANING, SECTIONS, CollectorConfig, ConfigError, load_config, variable
from collector.ingest.api import SERVED
from collector.ingest.gate import GatedSite
from collector.ingest.registry import Registry, RegistryError, check_identity
from collector.store.detect import Api, Deferred, Mismatch, Target, Unreachable, choose
from collector.store.headroom import Headroom
from collector.store.influxql import InfluxQL
from collector.store.sink import GroupCommit, InfluxV1Sink, InfluxV2Sink, Sink, redact
from collector.store.spool import Spool, SpoolingSink
from collector.web import add_routes as add_status_page
from dashboards import cli as dashboards_cli
from probe.configfile import parse_hostport
from probe.targets import load_targets

log = logging.getLogger("popwatch.collector")

DEFAULT_DATA_DIR = CollectorConfig().data_dir


def _settings() -> str:
    """Every setting for ``run --help``: key, variable, default and meaning."""
    lines = []
    for key, default in zip(
        CollectorConfig.__struct_fields__, CollectorConfig.__struct_defaults__, strict=True
    ):
        shown = (
            "unset"
            if default is None
            else format(default, "g")
            if isinstance(default, float)
            else default
        )
        if key in SECTIONS:  # a section: its keys are in `popwatch-collector example`
            var = f"POPWATCH_{key.upper()}_<KEY>"
            lines.append(f"  {key}  ({var})\n      {MEANING[key]}")
            continue
        lines.append(f"  {key}  ({variable(key)}, default {shown})\n      {MEANING[key]}")
    return "\n".join(lines) + "\n"


RUN_EXAMPLES = """\
examples:
  popwatch-collector example > collector.yaml      # every key, documented; edit it
  popwatch-collector run --config collector.yaml

  # Debian's InfluxDB 1.6.7 on this host: the API is found by asking /ping (v1 here;
  # the database is created if missing)
  POPWATCH_DATA_DIR=./data POPWATCH_TARGETS=targets.yaml popwatch-collector run

  # InfluxDB 2.x or 3.x (the v2 API; on 1.8 the org may be left out)
  POPWATCH_INFLUXDB_URL=http://influxdb:8086 POPWATCH_INFLUXDB_TOKEN=... \\
    POPWATCH_INFLUXDB_ORG=ops POPWATCH_INFLUXDB_BUCKET=popwatch popwatch-collector run

Every setting is a key of the config file and a POPWATCH_<KEY> variable, the key in
capitals (the variable wins). Keys with units say them: _s seconds, _ms milliseconds,
_bytes bytes. `popwatch-collector example` prints every key with a longer explanation.

At start the collector checks its settings and stops with one line (exit status 2) when
one cannot work: the data directory, the targets file, the TLS files, the listen port,
and the InfluxDB API (influxdb_api auto asks InfluxDB's /ping for its version: v1 before
1.8, v2 from 1.8 on). If InfluxDB does not answer at start, the collector serves anyway:
points wait in the spool, and the API is chosen when InfluxDB first answers.

settings:
""" + _settings()

PROBES_EXAMPLES = """\
examples:
  popwatch-collector probes add probe-fra-1 --region eu-central --country DE \\
    --city Frankfurt --lat 50.11 --lon 8.68 --asn 64500 --data-dir ./data
  popwatch-collector probes list --data-dir ./data
  popwatch-collector probes revoke probe-fra-1 --data-dir ./data

The registry is DATA_DIR/registry.sqlite (--data-dir, else POPWATCH_DATA_DIR, else
/var/lib/popwatch): give `run` the same data directory. Only `add` creates it.
"""

ADD_EXAMPLES = """\
examples:
  popwatch-collector probes add probe-fra-1 --region eu-central --data-dir ./data
  popwatch-collector probes add probe-nyc-1 --region us-east --country US --city "New York" \\
    --lat 40.71 --lon -74.01 --asn 64501 --data-dir ./data

The token goes to standard output, once; only its hash is kept. Give it to the probe as
POPWATCH_TOKEN (or in a file named by POPWATCH_TOKEN_FILE). To issue a new token, revoke
the probe and add it again.
"""

TOP_EXAMPLES = """\
examples:
  popwatch-collector probes add probe-fra-1 --region eu-central --data-dir ./data
  popwatch-collector operators add alice --data-dir ./data
  popwatch-collector ask --from region=eu-central dns 192.0.2.53 --qname example.com --nsid
  popwatch-collector run --config collector.yaml
  popwatch-collector example

`popwatch-collector COMMAND --help` explains each command.
"""


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir or os.environ.get("POPWATCH_DATA_DIR") or DEFAULT_DATA_DIR)


def _usable_dir(path: Path, hint: str) -> None:
    """Create ``path`` if it is missing and prove a file can be made in it; a
    ``ConfigError`` naming the path otherwise."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
        why = exc.strerror or str(exc)
        raise ConfigError(f"data_dir: cannot use {path}: {why}{where}; {hint}") from None


def _probes(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args)
    path = data_dir / "registry.sqlite"
    try:
        if args.probes_cmd == "add":
            country = args.country or ""
            check_identity(
                args.id, args.region, country, args.city or "", args.lat, args.lon, args.asn
            )
            _usable_dir(
                data_dir, "pass --data-dir or set POPWATCH_DATA_DIR to a writable directory"
            )
            registry = Registry(path)
        else:
            registry = Registry(path, create=False)
    except (RegistryError, ConfigError) as exc:
        print(f"popwatch-collector probes {args.probes_cmd}: {exc}", file=sys.stderr)
        return 2
    try:
        if args.probes_cmd == "add":
            token = registry.add(
                args.id, args.region, country, args.city or "", args.lat, args.lon, args.asn
            )
            print(token)
            print(
                f"probe {args.id} registered in region {args.region}; the token above is "
                "shown once: give it to the probe as POPWATCH_TOKEN",
                file=sys.stderr,
            )
        elif args.probes_cmd == "revoke":
            registry.revoke(args.id)
            print(f"probe {args.id} revoked; its token is refused from now on", file=sys.stderr)
        else:
            rows = registry.list()
            print(f"{'id':24} {'region':16} {'country':7} {'city':16} {'state':8} created")
            for r in rows:
                state = "revoked" if r.revoked_at else "active"
                created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.created_at))
                i = r.identity
                print(f"{i.probe:24} {i.region:16} {i.country:7} {i.city:16} {state:8} {created}Z")
            if not rows:
                print(f"no probes in {path}", file=sys.stderr)
    except RegistryError as exc:
        print(f"popwatch-collector probes {args.probes_cmd}: {exc}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:
        print(f"popwatch-collector probes {args.probes_cmd}: {path}: {exc}", file=sys.stderr)
        return 1
    finally:
        registry.close()
    return 0


def influx_sink(cfg: CollectorConfig, api: Api) -> Sink:
    """The InfluxDB sink for ``api``."""
    url = cfg.influxdb_url.rstrip("/")
    if api == "v1":
        return InfluxV1Sink(url, cfg.influxdb_bucket, cfg.influxdb_token, cfg.influxdb_timeout_s)
    if not cfg.influxdb_org:
        log.info(
            "influxdb_org is unset: fine for InfluxDB 1.8, but 2.x and 3.x need it "
            "(POPWATCH_INFLUXDB_ORG)"
        )
    return InfluxV2Sink(
        url,
        cfg.influxdb_bucket,
        cfg.influxdb_token,
        cfg.influxdb_org,
        cfg.influxdb_timeout_s,
    )


async def store(cfg: CollectorConfig) -> tuple[Sink, str]:
    """The InfluxDB sink, its API chosen (``auto``) or checked from ``/ping``'s version, and
    what to log about it. Raises ``ConfigError`` when the server cannot take the API;
    while InfluxDB does not answer, a ``Deferred`` sink chooses at its first answer."""
    target = Target(
        url=cfg.influxdb_url.rstrip("/"),
        wanted=cfg.influxdb_api,
        bucket=cfg.influxdb_bucket,
        token=cfg.influxdb_token,
        timeout_s=min(cfg.influxdb_timeout_s, 5.0),
    )
    timeout = aiohttp.ClientTimeout(total=target.timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            api, version = await choose(session, target)
    except Mismatch as exc:
        raise ConfigError(str(exc)) from None
    except Unreachable as exc:
        log.warning(
            "InfluxDB does not answer (%s): accepted points wait in the spool, and the "
            "write API (influxdb_api %s) is chosen when it answers",
            exc,
            cfg.influxdb_api,
        )
        return Deferred(target, lambda api: influx_sink(cfg, api)), (
            f"{cfg.influxdb_api} API, not chosen yet"
        )
    return influx_sink(cfg, api), f"InfluxDB {version or '(version not said)'}, {api} API"


def _tls(cfg: CollectorConfig) -> ssl.SSLContext | None:
    """The server's TLS context; a ``ConfigError`` naming the file that does not load."""
    if not (cfg.tls_cert and cfg.tls_key):
        return None
    for key, path in (("tls_cert", cfg.tls_cert), ("tls_key", cfg.tls_key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"tls_cert: {cfg.tls_cert} and tls_key {cfg.tls_key} do not load as a PEM "
            f"certificate chain and its private key ({exc.reason or exc})"
        ) from None
    return ctx


def _cert_warnings(cfg: CollectorConfig) -> list[Callable[[], list[str]]]:
    """The TLS certificate's expiry, logged at start and kept for /readyz's warnings
    from ``certs.EXPIRY_WARNING_S`` before it."""
    if not cfg.tls_cert:
        return []
    cert = Path(cfg.tls_cert)
    try:
        not_after = certs.expires_at(cert)
    except certs.CertError as exc:
        log.warning("cannot read the expiry of %s: %s", cert, exc)
        return []
    if warning := certs.expiry_warning(cert, not_after, time.time()):
        log.warning("%s", warning)

    def warnings() -> list[str]:
        found = certs.expiry_warning(cert, not_after, time.time())
        return [found] if found else []

    return [warnings]


async def _run(cfg: CollectorConfig) -> None:
    """Check what the settings name, then serve until SIGTERM or SIGINT."""
    data_dir = Path(cfg.data_dir)
    _usable_dir(data_dir, "set POPWATCH_DATA_DIR (or data_dir) to a writable directory")
    if cfg.targets:
        load_targets(cfg.targets)  # a bad file stops the start; later edits are re-read
    ssl_ctx = _tls(cfg)
    host, port = parse_hostport(cfg.listen, 8080)
    try:
        registry = Registry(data_dir / "registry.sqlite")
    except RegistryError as exc:
        raise ConfigError(f"data_dir: {exc}") from None
    try:
        sink, chosen = await store(cfg)
        spool = Spool(data_dir / "spool", cfg.spool_max_bytes)
        spooling = SpoolingSink(sink, spool, cfg.spool_after_ms / 1000)
        state = CollectorState(
            registry=registry,
            sink=GroupCommit(spooling),
            spool=spool,
            limits=cfg.limits,
            warnings=[spooling.warnings, *_cert_warnings(cfg)],
            targets_file=Path(cfg.targets) if cfg.targets else None,
        )
        board = Board(
            InfluxQL(
                cfg.influxdb_url,
                cfg.influxdb_bucket,
                cfg.influxdb_token,
                cfg.influxdb_timeout_s,
                client="asks",
            ),
            state.sink,
            cfg.limits,
        )
        runner = web.AppRunner(create_app(state, data_dir, board), access_log=None)
        await runner.setup()
        admin_app = create_admin_app(state, frozenset(h.lower() for h in cfg.admin_hosts))
        status_influx = InfluxQL(
            cfg.influxdb_url,
            cfg.influxdb_bucket,
            cfg.influxdb_token,
            cfg.influxdb_timeout_s,
            client="status",
        )
        add_status_page(admin_app, status_influx)  # the status page, at /
        admin = web.AppRunner(admin_app, access_log=None)
        await admin.setup()
        # Fewer, cheaper collections: what start-up built lives as long as the process,
        # and a request allocates thousands of short-lived objects (it cut the ingest p99)
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 100)
        try:
            # a backlog for many probes reconnecting at once (after a restart, say)
            site = GatedSite(runner, host, port, ssl_context=ssl_ctx, backlog=1024)
            try:
                await site.start()
            except OSError as exc:
                why = os.strerror(exc.errno) if exc.errno else str(exc)
                raise ConfigError(f"listen: cannot listen on {cfg.listen}: {why}") from None
            await _start_admin(admin, cfg.admin_listen)
            log.info(
                "collector listening on %s://%s:%d, writing to %s (%s, %s %s), spool %s",
                "https" if ssl_ctx else "http",
                host,
                port,
                redact(cfg.influxdb_url),
                chosen,
                "database" if "v1" in chosen else "bucket",
                cfg.influxdb_bucket,
                spool.dir,
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)

            def active() -> dict[str, str]:  # a revoked probe is never silent
                return {
                    r.identity.probe: r.identity.region for r in registry.list() if not r.revoked_at
                }

            def served() -> set[str] | None:  # the targets every probe is given
                targets = runner.app.get(SERVED)
                return targets.names() if targets is not None else None

            def sites() -> dict[str, Sites]:  # the served anycast targets' sites
                targets = runner.app.get(SERVED)
                if targets is None:
                    return {}
                return {name: Sites(s, p) for name, (s, p) in targets.sites().items()}

            def traced() -> dict[str, dict[str, object]]:  # the served targets' traces
                targets = runner.app.get(SERVED)
                return targets.traces() if targets is not None else {}

            async def asker(
                ask_id: str, kind: str, spec: dict[str, object], probes: list[str], at: int
            ) -> object:  # the alert engine's traces, asked as an operator's asks are
                return await board.make(ask_id, OPERATOR, kind, spec, probes, at)

            headroom = Headroom(
                InfluxQL(
                    cfg.influxdb_url,
                    cfg.influxdb_bucket,
                    cfg.influxdb_token,
                    cfg.influxdb_timeout_s,
                    client="headroom",
                ),
                cfg.influxdb_max_values_per_tag,
                cfg.influxdb_max_series_per_database,
            )
            state.warnings.append(headroom.warnings)
            async with (
                headroom.influx,
                board.influx,
                board.running(),  # asks: others' commands, drills' events
                headroom.watching(),
                alerts_cli.evaluator(  # if alerts.enabled
                    cfg, state.sink, active, served, sites, asker, traced
                ),
            ):
                await stop.wait()
                log.info("collector stopping (a signal): finishing writes, then exiting")
        finally:
            await admin.cleanup()
            await runner.cleanup()
    finally:
        registry.close()


async def _start_admin(admin: web.AppRunner, listen: str) -> None:
    """Serve /metrics and /readyz on ``admin_listen`` (plain HTTP, never the public port)."""
    host, port = parse_hostport(listen, 8081)
    try:
        await GatedSite(admin, host, port).start()
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigError(f"admin_listen: cannot listen on {listen}: {why}") from None
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "admin listener on http://%s:%d: the status page at /, /metrics and /readyz",
        shown,
        port,
    )


def _wrap(text: str) -> str:
    """A description, wrapped (the raw formatter keeps the examples' lines as written)."""
    return textwrap.fill(text, 88)


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="popwatch-collector",
        description=_wrap(
            "popwatch collector: authenticates probes and writes their measurements to InfluxDB."
        ),
        epilog=TOP_EXAMPLES,
        formatter_class=raw,
    )
    p.add_argument(
        "--version",
        action="version",
        version=f"popwatch-collector {__version__}",
        help="print the version and exit",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="serve the ingest API",
        description=_wrap(
            "Serve the ingest API: authenticate probes, validate their records, and "
            "write them to InfluxDB, or to the durable spool while InfluxDB is down or slow. "
            "SIGTERM stops it after in-flight writes land."
        ),
        epilog=RUN_EXAMPLES,
        formatter_class=raw,
    )
    run.add_argument(
        "--config",
        metavar="FILE",
        help="collector config file (YAML; `popwatch-collector example` prints one); "
        "POPWATCH_<KEY> variables override its keys",
    )
    probes = sub.add_parser(
        "probes",
        help="register, list and revoke probes",
        description=_wrap(
            "Register probes (each gets a token), list them, and revoke them. The "
            "registry lives in the collector's data directory."
        ),
        epilog=PROBES_EXAMPLES,
        formatter_class=raw,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        metavar="DIR",
        help="the collector's data directory, where registry.sqlite lives (default: "
        f"POPWATCH_DATA_DIR, else {DEFAULT_DATA_DIR})",
    )
    psub = probes.add_subparsers(dest="probes_cmd", required=True, metavar="ACTION")
    add = psub.add_parser(
        "add",
        parents=[common],
        help="register a probe and print its token once",
        description=_wrap(
            "Register a probe and print its token on standard output, once. The "
            "identity given here (id, region, country, ...) is what the probe's points are "
            "tagged with: the probe cannot claim another."
        ),
        epilog=ADD_EXAMPLES,
        formatter_class=raw,
    )
    pattern = "1-63 of A-Z a-z 0-9 _ . : -, a letter or digit first"
    add.add_argument("id", help=f"the probe's id, its `probe` tag ({pattern})")
    add.add_argument(
        "--region", required=True, help=f"the region it measures from, its `region` tag ({pattern})"
    )
    add.add_argument("--country", metavar="CC", help="two-letter ISO 3166 code, e.g. DE")
    add.add_argument("--city", help="free text, e.g. Frankfurt")
    add.add_argument("--lat", type=float, metavar="DEG", help="latitude, -90 to 90")
    add.add_argument("--lon", type=float, metavar="DEG", help="longitude, -180 to 180")
    add.add_argument("--asn", type=int, help="the network's AS number, 0 to 4294967295")
    psub.add_parser(
        "list",
        parents=[common],
        help="list probes",
        description=_wrap("List the registered probes, active and revoked."),
        epilog="example:\n  popwatch-collector probes list --data-dir ./data\n",
        formatter_class=raw,
    )
    rev = psub.add_parser(
        "revoke",
        parents=[common],
        help="refuse a probe's token from now on",
        description=_wrap("Revoke a probe: its token is refused from its next request on."),
        epilog="example:\n  popwatch-collector probes revoke probe-fra-1 --data-dir ./data\n",
        formatter_class=raw,
    )
    rev.add_argument("id", help="the id of the probe to revoke")
    sub.add_parser(
        "example",
        help="print the example config file: every key, its default and its meaning",
        description=_wrap(
            "Print collector/example.yaml: every key of the config file, with its "
            "default and its meaning. Save it, edit it, and pass it to `run --config`."
        ),
    )
    certs.add_parser(sub)
    dashboards_cli.add_parser(sub)
    alerts_cli.add_parser(sub)
    asks_cli.add_parsers(sub, common)  # ask, operators
    return p


#: the options whose value may be a relative time such as ``-2h``
RELATIVE_TIME_OPTIONS = ("--at",)


def join_relative_times(argv: Sequence[str]) -> list[str]:
    """``--at -2h`` as ``--at=-2h``: argparse takes a value starting with ``-`` for an
    option (``expected one argument``), so the README's and ``--help``'s form would fail.
    Only a value that is ``-`` and a digit is joined, and only after an option of
    ``RELATIVE_TIME_OPTIONS``."""
    out: list[str] = []
    rest = iter(argv)
    for arg in rest:
        if arg == "--":
            out.append(arg)
            out.extend(rest)
            break
        if arg in RELATIVE_TIME_OPTIONS:
            value = next(rest, None)
            if value is not None and len(value) > 1 and value[0] == "-" and value[1].isdigit():
                out.append(f"{arg}={value}")
                continue
            out.append(arg)
            if value is not None:
                out.append(value)
            continue
        out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(join_relative_times(argv))
    if args.command == "probes":
        return _probes(args)
    if args.command == "certs":
        return certs.run(args)
    if args.command == "alerts":
        return alerts_cli.main(args)
    if args.command == "operators":
        return asks_cli.operators(args, _data_dir(args))
    if args.command == "ask":
        return asks_cli.ask(args)
    if args.command == "dashboards":
        return dashboards_cli.main(args)
    if args.command == "example":
        sys.stdout.write(files("collector").joinpath("example.yaml").read_text())
        return 0
    try:
        cfg = load_config(args.config)
        logging.basicConfig(
            level=getattr(logging, cfg.log_level.upper()),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        asyncio.run(_run(cfg))
    except ConfigError as exc:
        print(f"popwatch-collector: {exc}", file=sys.stderr)
        return 2
    except (OSError, sqlite3.Error) as exc:
        print(f"popwatch-collector run: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
