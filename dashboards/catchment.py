"""The Anycast catchment dashboard: which site serves whom, how that changes, and what a
failover cost."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import (
    statetimeline,
    table,
)
from grafana_foundation_sdk.models import dashboard as model

from dashboards.board import Board, Table, TimeSeries, transform
from dashboards.influxql import Col, Fn, Select
from dashboards.panels import ANYCAST, CATCHMENT, bars, series


def _site_timeline(by: str) -> Select:
    return Select("dns", (Col("site"), Col("rtt_ms")), where=(ANYCAST,), group_by=(by, "target"))


def build() -> Board:
    b = Board(
        "popwatch-catchment",
        "popwatch / Anycast catchment",
        "Which anycast site serves each region and each probe, how that changes, and what "
        "a failover cost.",
    )
    only_site = transform("filterFieldsByName", include={"pattern": ".* site$"})
    b.add(
        statetimeline.Panel().with_transformation(only_site).merge_values(True),
        "Site per region",
        "The anycast site that answered each region's queries, per target (a region whose "
        "probes disagree shows both).",
        [TimeSeries(_site_timeline("region"), "$tag_region $tag_target $col")],
        w=24,
        uses={"A": ("site",)},
        catchment=True,
    )
    b.add(
        statetimeline.Panel().with_transformation(only_site).merge_values(True),
        "Site per probe",
        "The anycast site that answered each probe, per target.",
        [TimeSeries(_site_timeline("probe"), "$tag_probe $tag_target $col")],
        w=24,
        h=10,
        uses={"A": ("site",)},
        catchment=True,
    )
    b.add(
        bars("none").with_transformation(
            transform(
                "groupBy",
                fields={
                    "site": {"aggregations": [], "operation": "groupby"},
                    "probe": {"aggregations": ["distinctCount"], "operation": "aggregate"},
                },
            )
        ),
        "Each site's share of probes",
        "How many probes each site answered over the time range.",
        [
            Table(
                Select(
                    "dns",
                    (Fn("last", "rtt_ms", "rtt_ms"),),
                    where=(ANYCAST,),
                    group_by=("probe", "site"),
                )
            )
        ],
        w=8,
        uses={"A": ("probe", "site")},
    )
    b.add(
        bars("none"),
        "Flips per region",
        "Catchment changes (a probe's site changing on a target) per region.",
        [
            Table(
                Select(
                    "event",
                    (Fn("count", "outage_ms", "flips"),),
                    where=(CATCHMENT,),
                    group_by=("region",),
                )
            )
        ],
        w=8,
    )
    b.add(
        series(),
        "Latency per site",
        "Median round trip of the answers each anycast site gave.",
        [
            TimeSeries(
                Select(
                    "dns",
                    (Fn("median", "rtt_ms", "median_ms"),),
                    where=(ANYCAST,),
                    group_by=("site",),
                    every=True,
                    fill="none",
                ),
                "$tag_site",
            )
        ],
        w=8,
        time_series=True,
        catchment=True,
    )
    b.add(
        series(),
        "Inflation per region",
        "How much slower each region's anycast answers are than its best site's unicast "
        "answers (the engine's inflation figures: the serving site's median against the "
        "lowest median of the sites queried at their own addresses). Near 0: routing "
        "serves the region from its best site.",
        [
            TimeSeries(
                Select(
                    "inflation",
                    (Fn("median", "inflation_ms", "inflation_ms"),),
                    group_by=("region", "target"),
                    every=True,
                    fill="none",
                ),
                "$tag_region $tag_target",
            )
        ],
        w=12,
        time_series=True,
        catchment=True,
    )
    b.add(
        bars("percentunit", [(None, "red"), (0.5, "orange"), (0.9, "green")]),
        "Served by their best site",
        "The share of probes (and lanes: family and transport) whose serving site is "
        "their best site, per region.",
        [
            Table(
                Select(
                    "inflation",
                    (Fn("mean", "at_best", "at_best"),),
                    group_by=("region",),
                )
            )
        ],
        w=6,
    )
    b.add(
        table.Panel().with_transformation(
            transform(
                "groupingToMatrix",
                columnField="best",
                rowField="site",
                valueField="figures",
                emptyValue="null",
            )
        ),
        "Serving site x best site",
        "Rows: the site that served; columns: the site that would have been fastest; "
        "cells: how many figures (a probe and lane per evaluation) over the time range. "
        "Off the diagonal is inflation.",
        [
            Table(
                Select(
                    "inflation",
                    (Fn("count", "inflation_ms", "figures"),),
                    group_by=("site", "best"),
                )
            )
        ],
        w=6,
        uses={"A": ("site", "best", "figures")},
    )
    b.add(
        table.Panel()
        .override_by_name("outage_ms", [model.DynamicConfigValue("unit", "ms")])
        .sort_by([cb.TableSortByFieldState().display_name("Time").desc(True)]),
        "Failover outages",
        "Each catchment change: from which site to which, the time from the last answer "
        "of the old site to the first of the new (outage_ms), and the queries lost.",
        [
            Table(
                Select(
                    "event",
                    (
                        Col("outage_ms"),
                        Col("lost"),
                        Col("from_site"),
                        Col("to_site"),
                        Col("probe"),
                        Col("region"),
                        Col("target"),
                        Col("message"),
                    ),
                    where=(CATCHMENT,),
                )
            )
        ],
        w=24,
    )
    return b


__all__ = ["build"]
