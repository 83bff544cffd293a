"""``popwatch-collector``: register probes, and run the ingest API in front of InfluxDB."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import ssl
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from collector import __version__
from collector.app import CollectorState, Limits, create_app
from collector.registry import Registry, RegistryError
from collector.sink import GroupCommit, InfluxV1Sink, InfluxV2Sink, Sink
from collector.spool import Spool, SpoolingSink
from probe.config import ConfigError, one_line, parse_hostport, read_yaml

log = logging.getLogger("popwatch.collector")

EXAMPLES = """\
examples:
  popwatch-collector probes add probe-fra-1 --region eu-central --country DE --city Frankfurt
  popwatch-collector probes list
  popwatch-collector probes revoke probe-fra-1

  # Debian's InfluxDB 1.6.7: the v1 API (the database is created if missing)
  POPWATCH_INFLUXDB_URL=http://127.0.0.1:8086 POPWATCH_INFLUXDB_API=v1 popwatch-collector run

  # InfluxDB 2.x or 3.x (the default v2 API; on 1.8 the org may be left out)
  POPWATCH_INFLUXDB_URL=http://influxdb:8086 POPWATCH_INFLUXDB_TOKEN=... \\
    POPWATCH_INFLUXDB_ORG=ops POPWATCH_INFLUXDB_BUCKET=popwatch popwatch-collector run

Every setting is a key of the config file and a POPWATCH_* variable (the variable wins):
listen, data_dir, targets, influxdb_url, influxdb_api (v2, the default, for InfluxDB
1.8+/2.x/3.x; v1 for InfluxDB <= 1.7), influxdb_token, influxdb_org, influxdb_bucket
(the database with v1), influxdb_timeout, spool_after_ms (a write InfluxDB has not
confirmed by then goes to the spool), spool_max_bytes (past it, probes get 503 and keep
their data), tls_cert, tls_key, log_level, max_body_bytes, max_decoded_bytes,
records_per_second and burst_records (per probe). See the README's configuration
reference.
"""


class CollectorConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    listen: str = "0.0.0.0:8080"
    data_dir: str = "/var/lib/popwatch"
    targets: str | None = None  # the targets file served on /api/v1/config
    influxdb_url: str = "http://127.0.0.1:8086"
    influxdb_api: Literal["v1", "v2"] = "v2"
    influxdb_token: str | None = None
    influxdb_org: str | None = None
    influxdb_bucket: str = "popwatch"
    tls_cert: str | None = None
    tls_key: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 5_000_000
    max_decoded_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 20_000_000
    records_per_second: Annotated[float, msgspec.Meta(gt=0)] = 2_000.0  # per probe
    burst_records: Annotated[float, msgspec.Meta(gt=0)] = 200_000.0  # per probe
    influxdb_timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0  # one write, seconds
    # a write InfluxDB has not confirmed by then is made durable in the spool instead
    spool_after_ms: Annotated[float, msgspec.Meta(gt=0)] = 25.0
    spool_max_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1_000_000_000

    def __post_init__(self) -> None:
        parse_hostport(self.listen, 8080)
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")


def load_config(path: str | None, env: dict[str, str] | None = None) -> CollectorConfig:
    env = dict(os.environ) if env is None else env
    data: dict[str, Any] = {}
    source = "(environment)"
    if path:
        source = path
        data = read_yaml(Path(path))
    for key in CollectorConfig.__struct_fields__:
        var = f"POPWATCH_{key.upper()}"
        if var in env:
            data[key] = env[var]
    try:
        return msgspec.convert(data, CollectorConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(one_line(source, exc)) from None


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir or os.environ.get("POPWATCH_DATA_DIR") or "/var/lib/popwatch")


def _probes(args: argparse.Namespace) -> int:
    registry = Registry(_data_dir(args) / "registry.sqlite")
    try:
        if args.probes_cmd == "add":
            token = registry.add(
                args.id,
                args.region,
                args.country or "",
                args.city or "",
                args.lat,
                args.lon,
                args.asn,
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
    except RegistryError as exc:
        print(f"popwatch-collector probes {args.probes_cmd}: {exc}", file=sys.stderr)
        return 2
    finally:
        registry.close()
    return 0


def build_sink(cfg: CollectorConfig, data_dir: Path) -> tuple[Sink, Spool]:
    """InfluxDB (v1 or v2 API) behind the spool, behind group commit."""
    store: Sink
    if cfg.influxdb_api == "v2" and not cfg.influxdb_org:
        log.info(
            "influxdb_org is unset: fine for InfluxDB 1.8, but 2.x and 3.x need it "
            "(POPWATCH_INFLUXDB_ORG)"
        )
    if cfg.influxdb_api == "v1":
        store = InfluxV1Sink(
            cfg.influxdb_url, cfg.influxdb_bucket, cfg.influxdb_token, cfg.influxdb_timeout
        )
    else:
        store = InfluxV2Sink(
            cfg.influxdb_url,
            cfg.influxdb_bucket,
            cfg.influxdb_token,
            cfg.influxdb_org,
            cfg.influxdb_timeout,
        )
    spool = Spool(data_dir / "spool", cfg.spool_max_bytes)
    return GroupCommit(SpoolingSink(store, spool, cfg.spool_after_ms / 1000)), spool


async def _run(cfg: CollectorConfig, data_dir: Path) -> None:
    registry = Registry(data_dir / "registry.sqlite")
    sink, spool = build_sink(cfg, data_dir)
    state = CollectorState(
        registry=registry,
        sink=sink,
        spool=spool,
        limits=Limits(
            max_body_bytes=cfg.max_body_bytes,
            max_decoded_bytes=cfg.max_decoded_bytes,
            records_per_second=cfg.records_per_second,
            burst_records=cfg.burst_records,
        ),
        targets_file=Path(cfg.targets) if cfg.targets else None,
    )
    app = create_app(state, data_dir)
    host, port = parse_hostport(cfg.listen, 8080)
    ssl_ctx = None
    if cfg.tls_cert and cfg.tls_key:
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    # Fewer, cheaper collections: what start-up built lives as long as the process, and a
    # request allocates thousands of short-lived objects (it cut the ingest p99 here)
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 100)
    try:
        # a backlog for many probes reconnecting at once (after a restart, say)
        site = web.TCPSite(runner, host, port, ssl_context=ssl_ctx, backlog=1024)
        await site.start()
        log.info(
            "collector listening on %s://%s:%d, writing to %s (%s API, %s %s), spool %s",
            "https" if ssl_ctx else "http",
            host,
            port,
            cfg.influxdb_url,
            cfg.influxdb_api,
            "database" if cfg.influxdb_api == "v1" else "bucket",
            cfg.influxdb_bucket,
            spool.dir,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
        registry.close()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="popwatch-collector",
        description="popwatch collector: authenticates probes and writes their measurements "
        "to InfluxDB.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"popwatch-collector {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="serve the ingest API",
        description="Serve the ingest API: authenticate probes, validate their records, and "
        "write them to InfluxDB, or to the durable spool while InfluxDB is down or slow. "
        "SIGTERM stops it after in-flight writes land.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--config", metavar="FILE", help="collector config file (YAML)")
    probes = sub.add_parser("probes", help="register, list and revoke probes")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        help="where the registry lives (env POPWATCH_DATA_DIR, default /var/lib/popwatch)",
    )
    psub = probes.add_subparsers(dest="probes_cmd", required=True, metavar="ACTION")
    add = psub.add_parser("add", parents=[common], help="register a probe and print its token once")
    add.add_argument("id")
    add.add_argument("--region", required=True)
    add.add_argument("--country", help="ISO 3166 code, e.g. DE")
    add.add_argument("--city")
    add.add_argument("--lat", type=float)
    add.add_argument("--lon", type=float)
    add.add_argument("--asn", type=int)
    psub.add_parser("list", parents=[common], help="list probes")
    rev = psub.add_parser("revoke", parents=[common], help="refuse a probe's token from now on")
    rev.add_argument("id")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "probes":
        return _probes(args)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"popwatch-collector: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, cfg.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    data_dir = Path(cfg.data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        asyncio.run(_run(cfg, data_dir))
    except OSError as exc:
        print(f"popwatch-collector run: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
