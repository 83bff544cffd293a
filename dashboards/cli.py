"""``popwatch-collector dashboards build | push``: the subcommand's parser and handler."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import textwrap
from pathlib import Path

from dashboards import GRAFANA_VERSION

PUSH_EXAMPLES = """\
examples:
  popwatch-collector dashboards push --grafana-url http://grafana:3000 --token glsa_...
  popwatch-collector dashboards push --grafana-url http://admin:admin@127.0.0.1:3000 \\
    --influxdb-url http://influxdb:8086
  popwatch-collector dashboards push --grafana-url http://grafana:3000 --token glsa_... \\
    --no-datasource

The data source is popwatch's InfluxDB in InfluxQL mode, uid popwatch-influxdb: its URL
(as Grafana reaches it), database and token default to the collector's settings
(influxdb_url, influxdb_bucket, influxdb_token; --config and POPWATCH_* variables). With a
token it is sent as `Authorization: Token ...` (InfluxDB 2.x/3.x, which also need a DBRP
mapping from the database to the bucket). The dashboards go to the folder "popwatch";
pushing again updates them in place.
"""

BUILD_EXAMPLES = """\
examples:
  popwatch-collector dashboards build --out dashboards/json
  popwatch-collector dashboards build --out dashboards/json --check
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``dashboards`` to the top-level parser's subcommands."""
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "dashboards",
        help="build the Grafana dashboards, or push them to a Grafana",
        description=textwrap.fill(
            "popwatch's Grafana dashboards (InfluxQL, generated for Grafana "
            f"{GRAFANA_VERSION}): write their JSON, or push them with the data source to a "
            "running Grafana.",
            88,
        ),
    )
    dsub = p.add_subparsers(dest="dashboards_cmd", required=True, metavar="ACTION")
    push = dsub.add_parser(
        "push",
        help="create or update the data source, the folder and the dashboards in a Grafana",
        description=textwrap.fill(
            "Create or update the InfluxDB data source (unless --no-datasource), the "
            "folder 'popwatch' and every dashboard in a running Grafana, through its HTTP "
            "API. Idempotent: the same uids, overwritten in place.",
            88,
        ),
        epilog=PUSH_EXAMPLES,
        formatter_class=raw,
    )
    push.add_argument("--grafana-url", required=True, metavar="URL", help="Grafana's base URL")
    push.add_argument(
        "--token",
        metavar="T",
        help="a Grafana service account token (or put user:password in the URL)",
    )
    push.add_argument("--no-datasource", action="store_true", help="leave the data sources alone")
    push.add_argument(
        "--influxdb-url",
        metavar="URL",
        help="InfluxDB's URL as Grafana reaches it (default: the collector's influxdb_url)",
    )
    push.add_argument(
        "--database",
        metavar="DB",
        help="the database the data source queries (default: the collector's "
        "influxdb_bucket, without a /retention)",
    )
    push.add_argument(
        "--config", metavar="FILE", help="the collector's config file, for the defaults above"
    )
    push.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="seconds for the whole push"
    )
    build = dsub.add_parser(
        "build",
        help="write the dashboards' JSON",
        description="Write each dashboard's JSON model to DIR/NAME.json.",
        epilog=BUILD_EXAMPLES,
        formatter_class=raw,
    )
    build.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="where the JSON files go"
    )
    build.add_argument(
        "--check", action="store_true", help="only compare with DIR; exit 1 if it differs"
    )


#: the packages of the optional extra ``popwatch[dashboards]``, by the command needing them
EXTRA: dict[str, tuple[str, ...]] = {
    "build": ("grafana_foundation_sdk",),
    "push": ("grafana_foundation_sdk", "grafana_client"),
}


def missing(command: str) -> list[str]:
    """The packages of the dashboards extra ``command`` needs that cannot be imported."""
    out = []
    for name in EXTRA[command]:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(name)
    return out


def main(args: argparse.Namespace) -> int:
    """Run ``dashboards build`` or ``dashboards push``; the exit status."""
    if gone := missing(args.dashboards_cmd):
        print(
            f"popwatch-collector dashboards {args.dashboards_cmd}: needs the dashboards "
            f"extra ({', '.join(gone)} is not installed): pip install 'popwatch[dashboards]', "
            "or from a clone, pip install --require-hashes -r requirements-dashboards.lock",
            file=sys.stderr,
        )
        return 2
    if args.dashboards_cmd == "build":
        from dashboards.build import stale, write

        if args.check:
            bad = stale(args.out)
            for name in bad:
                print(f"{args.out / name}: differs from what the code generates", file=sys.stderr)
            return 1 if bad else 0
        for path in write(args.out):
            print(path)
        return 0
    return _push(args)


def _push(args: argparse.Namespace) -> int:
    from collector.config import ConfigError, load_config
    from dashboards.push import InfluxSource, PushError, run
    from probe.configfile import url_fault

    if fault := url_fault(args.grafana_url):  # the collector's own URL check
        print(f"popwatch-collector dashboards push: --grafana-url: {fault}", file=sys.stderr)
        return 2
    source = None
    if not args.no_datasource:
        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            print(f"popwatch-collector dashboards push: {exc}", file=sys.stderr)
            return 2
        source = InfluxSource(
            url=args.influxdb_url or cfg.influxdb_url,
            database=args.database or cfg.influxdb_bucket.partition("/")[0],
            token=cfg.influxdb_token,
        )
    try:
        for line in run(args.grafana_url, args.token, source, args.timeout):
            print(line)
    except PushError as exc:
        print(f"popwatch-collector dashboards push: {args.grafana_url}: {exc}", file=sys.stderr)
        return 1
    return 0
