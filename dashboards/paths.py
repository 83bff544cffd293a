"""The Paths dashboard: the hops of each probe's latest trace, its path over time, the
round trip to each hop, and the path changes the alert engine found."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import (
    statetimeline,
    table,
)
from grafana_foundation_sdk.models import dashboard as model

from dashboards.board import Board, Table, TimeSeries, transform
from dashboards.influxql import Col, Fn, Select, Tag
from dashboards.panels import series

#: the scheduled traces (an ask's, the engine's on alert, are in the event table)
SCHEDULED = Tag("ask", "")
SUMMARY = Tag("hop", "")  # a trace's summary point has no hop
HOPS = Tag("hop", "", "!=")
PATH = Tag("kind", "path")


def build() -> Board:
    b = Board(
        "popwatch-paths",
        "popwatch / Paths",
        "The path each probe's traces take to each target, hop by hop: the latest, how it "
        "changes, and where the time goes.",
    )
    b.add(
        table.Panel().with_transformation(transform("organize", excludeByName={"Time": True})),
        "Latest trace per probe",
        "Each probe's last scheduled trace of each target and family: its path_id (a hash "
        "of the hop addresses: the same id, the same path), its hops, whether it reached "
        "the server, and the site whose NSID answered at the end.",
        [
            Table(
                Select(
                    "trace",
                    (
                        Fn("last", "path_id", "path_id"),
                        Fn("last", "hops", "hops"),
                        Fn("last", "reached", "reached"),
                        Fn("last", "site", "site"),
                    ),
                    where=(SUMMARY, SCHEDULED),
                    group_by=("probe", "region", "target", "family", "method"),
                )
            )
        ],
        w=12,
    )
    b.add(
        table.Panel()
        .override_by_name("rtt_ms", [model.DynamicConfigValue("unit", "ms")])
        .override_by_name("loss", [model.DynamicConfigValue("unit", "percentunit")])
        .with_transformation(transform("organize", excludeByName={"Time": True})),
        "Hops",
        "Each hop of the latest traces: the address that answered at that TTL, the median "
        "round trip of its answers (kernel stamps) and the share of queries it did not "
        "answer. A hop past the end of a shorter, newer path keeps its last answer: read "
        "it with the hop count beside.",
        [
            Table(
                Select(
                    "trace",
                    (
                        Fn("last", "addr", "addr"),
                        Fn("last", "rtt_ms", "rtt_ms"),
                        Fn("last", "loss", "loss"),
                    ),
                    where=(HOPS, SCHEDULED),
                    group_by=("probe", "target", "family", "hop"),
                )
            )
        ],
        w=12,
    )
    b.add(
        statetimeline.Panel().merge_values(True),
        "Path per probe",
        "The path_id of each probe's traces over time: a change of colour is a path "
        "change (the alert engine writes it as an event, below).",
        [
            TimeSeries(
                Select(
                    "trace",
                    (Col("path_id"),),
                    where=(SUMMARY, SCHEDULED),
                    group_by=("probe", "target", "family"),
                ),
                "$tag_probe $tag_target IPv$tag_family",
            )
        ],
        w=24,
    )
    b.add(
        series(),
        "Round trip per hop",
        "The median round trip to each hop: the hop where the line steps up is where the "
        "time goes.",
        [
            TimeSeries(
                Select(
                    "trace",
                    (Fn("median", "rtt_ms", "rtt_ms"),),
                    where=(HOPS, SCHEDULED),
                    group_by=("probe", "target", "hop"),
                    every=True,
                    fill="none",
                ),
                "$tag_probe $tag_target hop $tag_hop",
            )
        ],
        w=24,
        time_series=True,
    )
    b.add(
        table.Panel()
        .override_by_name("grew_ms", [model.DynamicConfigValue("unit", "ms")])
        .sort_by([cb.TableSortByFieldState().display_name("Time").desc(True)]),
        "Path changes",
        "Each path difference the alert engine found: a scheduled trace against the one "
        "before it (flaps_1h: the probe's path changes in the hour), and the traces an "
        "alert asked for against the last one from before its onset (ask set; the "
        "control probe's say so).",
        [
            Table(
                Select(
                    "event",
                    (
                        Col("message"),
                        Col("after_hop"),
                        Col("grew_ms"),
                        Col("grew_from_hop"),
                        Col("flaps_1h"),
                        Col("from_site"),
                        Col("to_site"),
                        Col("probe"),
                        Col("region"),
                        Col("target"),
                        Col("ask"),
                    ),
                    where=(PATH,),
                )
            )
        ],
        w=24,
        uses={"A": ("message", "probe", "region", "target")},
    )
    return b


__all__ = ["build"]
