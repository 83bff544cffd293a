"""The TTFB dashboard: web pages phase by phase, and how much of the time to first byte is DNS."""

from __future__ import annotations

from grafana_foundation_sdk.builders import (
    barchart,
    table,
)
from grafana_foundation_sdk.models import common

from dashboards.board import Board, Table, TimeSeries, transform
from dashboards.influxql import Expr, Fn, Select
from dashboards.panels import bars, series


def build() -> Board:
    b = Board(
        "popwatch-ttfb",
        "popwatch / TTFB",
        "Web pages phase by phase: how much of the time to first byte is DNS.",
    )
    phases = (
        Fn("median", "dns_ms", "dns"),
        Fn("median", "connect_ms", "connect"),
        Fn("median", "tls_ms", "tls"),
        Fn("median", "ttfb_ms", "server"),
    )
    b.add(
        barchart.Panel()
        .unit("ms")
        .x_field("region")
        .stacking(common.StackingMode.NORMAL)
        .orientation(common.VizOrientation.HORIZONTAL)
        .with_transformation(transform("organize", excludeByName={"Time": True})),
        "Phases per region",
        "Median DNS, TCP connect, TLS and server wait (request sent to first byte), "
        "stacked: the bar is the time to first byte.",
        [Table(Select("http", phases, group_by=("region",)))],
        w=12,
    )
    b.add(
        series(stack=common.StackingMode.NORMAL),
        "Phases over time",
        "The same phases, stacked, over time.",
        [TimeSeries(Select("http", phases, every=True, fill="none"), "$col")],
        w=12,
        time_series=True,
    )
    share = Expr("{0} / ({0} + {1} + {2} + {3})", phases, "dns_share")
    b.add(
        series("percentunit").max(1).min(0),
        "DNS share of time to first byte",
        "Median DNS time over the median time to first byte (dns + connect + tls + "
        "server), per region.",
        [
            TimeSeries(
                Select("http", (share,), group_by=("region",), every=True, fill="none"),
                "$tag_region",
            )
        ],
        w=12,
        time_series=True,
    )
    b.add(
        series("none", common.StackingMode.NORMAL).draw_style(common.GraphDrawStyle.BARS),
        "Status codes",
        "Responses per HTTP status (a fetch that failed before a status has none).",
        [
            TimeSeries(
                Select(
                    "http",
                    (Fn("count", "ok", "responses"),),
                    group_by=("status",),
                    every=True,
                    fill="none",
                ),
                "$tag_status",
            )
        ],
        w=12,
        time_series=True,
    )
    b.add(
        bars("d", [(None, "red"), (14, "yellow"), (30, "green")]),
        "Certificate days left",
        "Days until each site's certificate expires, per address served.",
        [Table(Select("http", (Fn("last", "cert_days", "cert_days"),), group_by=("target", "ip")))],
        w=12,
    )
    b.add(
        table.Panel().with_transformation(transform("organize", excludeByName={"Time": True})),
        "HTTP versions",
        "The HTTP version each probe last fetched each site over.",
        [
            Table(
                Select(
                    "http",
                    (Fn("last", "http_version", "http_version"),),
                    group_by=("target", "probe"),
                )
            )
        ],
        w=12,
    )
    return b


__all__ = ["build"]
