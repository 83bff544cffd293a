"""The Region dashboard: one region in depth: percentiles, the distribution, errors by
rcode, each probe, and server time against network time."""

from __future__ import annotations

from grafana_foundation_sdk.builders import (
    heatmap,
    table,
)
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import heatmap as heatmap_model

from dashboards.board import Board, Table, TimeSeries, transform
from dashboards.influxql import Fn, Select
from dashboards.panels import P50, P95, P99, series


def build() -> Board:
    b = Board(
        "popwatch-region",
        "popwatch / Region",
        "One region (or several) in depth: percentiles, the distribution, errors by "
        "rcode, each probe, and server time against network time.",
    )
    b.add(
        series(),
        "Latency percentiles per target",
        "p50, p95 and p99 of the DNS round trip per target.",
        [
            TimeSeries(
                Select("dns", (P50, P95, P99), group_by=("target",), every=True, fill="none"),
                "$tag_target $col",
            )
        ],
        w=24,
        time_series=True,
        catchment=True,
    )
    b.add(
        heatmap.Panel()
        .calculate(True)
        .unit("ms")
        .color(
            heatmap.HeatmapColorOptions()
            .scheme("Oranges")
            .mode(heatmap_model.HeatmapColorMode.SCHEME)
        ),
        "Latency heatmap",
        "How the round trips of every probe, target and server spread, interval by "
        "interval (each cell counts series whose mean fell in its bucket).",
        [
            TimeSeries(
                Select(
                    "dns",
                    (Fn("mean", "rtt_ms", "rtt_ms"),),
                    group_by=("probe", "target", "server"),
                    every=True,
                    fill="none",
                )
            )
        ],
        w=12,
    )
    b.add(
        series("percentunit", common.StackingMode.PERCENT).unit("percentunit"),
        "Answers by rcode",
        "Each rcode's share of all queries (TIMEOUT and NETERR included): everything but "
        "NOERROR is the error ratio.",
        [
            TimeSeries(
                Select(
                    "dns",
                    (Fn("count", "ok", "queries"),),
                    group_by=("rcode",),
                    every=True,
                    fill="none",
                ),
                "$tag_rcode",
            )
        ],
        w=12,
        time_series=True,
    )
    b.add(
        table.Panel()
        .unit("ms")
        .override_by_name("answers", [model.DynamicConfigValue("unit", "none")])
        .with_transformation(transform("organize", excludeByName={"Time": True})),
        "Per probe",
        "Each probe's p50 and p95 per target and anycast site: one probe far off its "
        "region's figures is the probe's own network.",
        [
            Table(
                Select(
                    "dns",
                    (P50, P95, Fn("count", "rtt_ms", "answers")),
                    group_by=("probe", "target", "site"),
                )
            )
        ],
        w=12,
    )
    dns = Select("dns", (Fn("median", "rtt_ms", "dns_ms"),), group_by=("target", "server"))
    ping = Select("ping", (Fn("median", "rtt_ms", "ping_ms"),), group_by=("target", "server"))
    b.add(
        table.Panel()
        .unit("ms")
        .with_transformation(transform("merge"))
        .with_transformation(
            transform(
                "calculateField",
                mode="binary",
                alias="server_ms",
                binary={"left": "dns_ms", "operator": "-", "right": "ping_ms"},
            )
        )
        .with_transformation(transform("organize", excludeByName={"Time": True})),
        "Server time against network time",
        "DNS round trip minus the ping round trip to the same server: server_ms is the "
        "time the nameserver itself spent (targets with `ping:` set).",
        [Table(dns), Table(ping)],
        w=12,
    )
    b.add(
        series(),
        "DNS and ping round trip",
        "The same two medians over time, per target and server.",
        [
            TimeSeries(
                Select(
                    "dns",
                    (Fn("median", "rtt_ms", "dns_ms"),),
                    group_by=("target", "server"),
                    every=True,
                    fill="none",
                ),
                "$tag_target $tag_server dns",
            ),
            TimeSeries(
                Select(
                    "ping",
                    (Fn("median", "rtt_ms", "ping_ms"),),
                    group_by=("target", "server"),
                    every=True,
                    fill="none",
                ),
                "$tag_target $tag_server network",
            ),
        ],
        w=24,
        time_series=True,
    )
    return b


__all__ = ["build"]
