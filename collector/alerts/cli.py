"""The engine inside ``popwatch-collector run``, and ``popwatch-collector alerts check``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Mapping

from collector.alerts.asn import AsnFileError, AsnTable
from collector.alerts.check import check, parse_time
from collector.alerts.engine import Engine, Writer, notifiers_for
from collector.alerts.inflation import Sites
from collector.alerts.tracing import Asker
from collector.config import CollectorConfig, ConfigError, load_config
from collector.store.influxql import InfluxQL
from probe.targets import DnsTarget, load_targets

log = logging.getLogger("popwatch.collector.alerts")

CHECK_EXAMPLES = """\
examples:
  popwatch-collector alerts check --config collector.yaml
  popwatch-collector alerts check --config collector.yaml --at 2026-11-25T14:30:00Z
  popwatch-collector alerts check --at -2h      # two hours ago

One line per alert whose condition holds at that time ("fires" when the alert
measurement says it is firing, else "would fire"), and per firing alert whose
condition no longer holds ("would resolve"), each with its value, baseline and probes.
Nothing is written or sent; for_s and keep_firing_for_s are not applied. Exit status 1 when
something fires or would fire, 0 when nothing does, 2 for a bad config.
"""


def influxql(cfg: CollectorConfig) -> InfluxQL:
    """The query client of the collector's InfluxDB (the database of ``influxdb_bucket``)."""
    return InfluxQL(
        cfg.influxdb_url, cfg.influxdb_bucket, cfg.influxdb_token, max(cfg.influxdb_timeout_s, 30)
    )


def holder_of(cfg: CollectorConfig) -> str:
    """This evaluator's name in the webhook lease: its host and data directory, the
    same when it restarts."""
    return f"{socket.gethostname()}:{os.path.abspath(cfg.data_dir)}"


@contextlib.asynccontextmanager
async def evaluator(
    cfg: CollectorConfig,
    writer: Writer,
    registered: Callable[[], dict[str, str]] | None = None,
    served: Callable[[], set[str] | None] | None = None,
    sites: Callable[[], Mapping[str, Sites]] | None = None,
    asker: Asker | None = None,
    traced: Callable[[], Mapping[str, dict[str, object]]] | None = None,
) -> AsyncIterator[Engine | None]:
    """The alert engine, evaluating until the block ends (None when ``alerts.enabled``
    is false). Its points go to ``writer``, the collector's sink; ``registered`` gives
    the active probes and their regions, ``served`` the targets served to them, ``sites``
    the served anycast targets' sites, ``asker`` and ``traced`` the traces on alert
    (collector.alerts.tracing)."""
    if not cfg.alerts.enabled:
        yield None
        return
    notifiers = notifiers_for(cfg.alerts)
    if not notifiers:
        log.warning(
            "alerts are enabled but go nowhere: set alerts.alertmanager_url "
            "(POPWATCH_ALERTMANAGER_URL) or alerts.webhooks; state changes are still "
            "written to the alert measurement"
        )
    asn = None
    if cfg.alerts.asn_file:
        try:
            asn = AsnTable.load(cfg.alerts.asn_file)
        except AsnFileError as exc:
            raise ConfigError(f"alerts.asn_file: {exc}") from None
        log.info("alert engine: %d prefixes from %s", len(asn), cfg.alerts.asn_file)
    stop = asyncio.Event()
    async with (
        influxql(cfg) as influx,
        Engine(
            cfg.alerts,
            influx,
            writer,
            notifiers,
            registered=registered,
            served=served,
            holder=holder_of(cfg),
            sites=sites,
            asker=asker,
            traced=traced,
            asn=asn,
        ) as engine,
    ):
        task = asyncio.get_running_loop().create_task(engine.run(stop), name="alert-engine")
        log.info(
            "alert engine: evaluating every %g s%s (other evaluators may run: they share "
            "the webhooks through a lease in InfluxDB)",
            cfg.alerts.evaluate_every_s,
            f", Alertmanager {cfg.alerts.alertmanager_url}" if cfg.alerts.alertmanager_url else "",
        )
        try:
            yield engine
        finally:
            stop.set()
            await task


def targets_sites(path: str) -> dict[str, Sites]:
    """The sites of the anycast targets of a targets file that list them."""
    return {
        t.name: Sites(tuple(t.sites), t.interval * t.site_every)
        for t in load_targets(path)
        if isinstance(t, DnsTarget) and t.sites
    }


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    alerts = sub.add_parser(
        "alerts",
        help="check the alert rules against what InfluxDB holds",
        description=textwrap.fill(
            "The alert engine runs inside `popwatch-collector run` when alerts.enabled is "
            "true. `alerts check` evaluates its rules once and prints what fires.",
            88,
        ),
    )
    asub = alerts.add_subparsers(dest="alerts_cmd", required=True, metavar="ACTION")
    chk = asub.add_parser(
        "check",
        help="evaluate once; print what fires or would resolve, and why",
        description=textwrap.fill(
            "Evaluate the alert rules once, at TIME (default now), over what InfluxDB "
            "holds, with the collector's settings (--config and POPWATCH_* variables).",
            88,
        ),
        epilog=CHECK_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    chk.add_argument("--config", metavar="FILE", help="collector config file (its alerts: section)")
    chk.add_argument(
        "--at",
        metavar="TIME",
        default="now",
        help="the evaluation time: now, -15m, epoch seconds, or ISO 8601 (UTC unless "
        "it says otherwise)",
    )


def main(args: argparse.Namespace) -> int:
    """``alerts check``."""
    try:
        cfg = load_config(args.config)
        at = parse_time(args.at)
    except ConfigError as exc:
        print(f"popwatch-collector: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    try:
        sites = targets_sites(cfg.targets) if cfg.targets else {}
    except ConfigError as exc:
        print(f"popwatch-collector: {exc}", file=sys.stderr)
        return 2

    async def once() -> int:
        async with influxql(cfg) as influx:
            return await check(influx, cfg.alerts, at, sites=sites)

    try:
        return asyncio.run(once())
    except Exception as exc:  # InfluxDB away, refused queries: one line, not a trace
        print(f"popwatch-collector alerts check: {exc}", file=sys.stderr)
        return 2


__all__ = ["add_parser", "evaluator", "influxql", "main"]
