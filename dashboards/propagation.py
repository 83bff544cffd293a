"""The Zone propagation dashboard: the SOA serial each anycast site serves, and how far
each lags."""

from __future__ import annotations

from grafana_foundation_sdk.builders import (
    table,
)

from dashboards.board import Board, Table, TimeSeries, transform
from dashboards.influxql import Fn, Select, Tag
from dashboards.panels import SOA, bars, series


def build() -> Board:
    b = Board(
        "popwatch-propagation",
        "popwatch / Zone propagation",
        "The SOA serial each anycast site serves, and how far each lags the newest.",
    )
    b.add(
        series("none").decimals(0),
        "SOA serial per site",
        "The highest SOA serial each site answered with: a site whose line steps up late "
        "lags on zone updates.",
        [
            TimeSeries(
                Select(
                    "dns",
                    (Fn("max", "serial", "serial"),),
                    where=(SOA,),
                    group_by=("site",),
                    every=True,
                    fill="none",
                ),
                "$tag_site",
            )
        ],
        w=24,
        time_series=True,
    )
    b.add(
        table.Panel()
        .decimals(0)
        .with_transformation(transform("organize", excludeByName={"Time": True})),
        "Serial now",
        "The latest serial per target and site.",
        [
            Table(
                Select(
                    "dns",
                    (Fn("last", "serial", "serial"),),
                    where=(SOA,),
                    group_by=("target", "site"),
                )
            )
        ],
        w=8,
    )
    lag = Fn("max", "lag_s", "lag_s")
    serial = Tag("kind", "serial")
    b.add(
        bars("s", [(None, "green"), (60, "yellow"), (300, "red")]),
        "Lag per site",
        "The longest a site lagged the newest serial seen at any site (the alert engine's "
        "serial events; to_site is the site that lags).",
        [Table(Select("event", (lag,), where=(serial,), group_by=("to_site",)))],
        w=8,
    )
    b.add(
        series("s"),
        "Lag over time",
        "Each lagging site's lag, as the alert engine recorded it.",
        [
            TimeSeries(
                Select(
                    "event", (lag,), where=(serial,), group_by=("to_site",), every=True, fill="none"
                ),
                "$tag_to_site",
            )
        ],
        w=8,
        time_series=True,
    )
    return b


__all__ = ["build"]
