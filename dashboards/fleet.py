"""The Fleet dashboard: the probes themselves (last heard from, version, what they hold
back), and which ones the alert engine thinks are sick."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import (
    table,
)
from grafana_foundation_sdk.models import dashboard as model

from collector.store.schema import ALERT_HISTORY
from dashboards.board import Board, Table, TimeSeries
from dashboards.influxql import Col, Fn, Select, Tag
from dashboards.panels import keep_firing, series


def build() -> Board:
    b = Board(
        "popwatch-fleet",
        "popwatch / Fleet",
        "The probes themselves: when each was last heard from, what it runs, what it "
        "holds back, and which ones the alert engine thinks are sick.",
    )
    b.add(
        table.Panel()
        .override_by_name("Time", [model.DynamicConfigValue("displayName", "last seen")])
        .override_by_name("uptime_s", [model.DynamicConfigValue("unit", "s")])
        .sort_by([cb.TableSortByFieldState().display_name("last seen").desc(False)]),
        "Probes",
        "Each probe's last heartbeat (oldest first), version, uptime and spool depth.",
        [
            Table(
                Select(
                    "probe",
                    (
                        Fn("last", "uptime_s", "uptime_s"),
                        Col("spool_depth"),
                        Col("dropped"),
                        Col("rejected"),
                    ),
                    group_by=("probe", "region", "version"),
                )
            )
        ],
        w=24,
        uses={
            "A": (
                "time",
                "uptime_s",
                "spool_depth",
                "dropped",
                "rejected",
                "probe",
                "region",
                "version",
            )
        },
    )
    b.add(
        series("none"),
        "Spool depth",
        "Batches each probe holds because the collector did not take them yet.",
        [
            TimeSeries(
                Select(
                    "probe",
                    (Fn("max", "spool_depth", "spool_depth"),),
                    group_by=("probe",),
                    every=True,
                    fill="none",
                ),
                "$tag_probe",
            )
        ],
        w=12,
        time_series=True,
    )
    b.add(
        series("none"),
        "Dropped and rejected",
        "Batches dropped from a full spool, and records the collector rejected, since "
        "each probe started.",
        [
            TimeSeries(
                Select(
                    "probe",
                    (Fn("max", "dropped", "dropped"), Fn("max", "rejected", "rejected")),
                    group_by=("probe",),
                    every=True,
                    fill="none",
                ),
                "$tag_probe $col",
            )
        ],
        w=12,
        time_series=True,
    )
    sick = Select(
        "alert",
        (Fn("last", "message", "message"), Col("value"), Col("probes")),
        where=(Tag("rule", "probe"),),
        group_by=("region", "target", "state", "severity"),
        # a probe alert is about a probe (its tag), not a target or a topology
        skip=frozenset({"target", "topology"}),
        since=ALERT_HISTORY,
    )
    panel = table.Panel()
    for t in keep_firing(sick):
        panel.with_transformation(t)
    b.add(
        panel,
        "Sick probes",
        "Probes the alert engine marks as sick (degraded on most of their unrelated "
        "targets at once): left out of regional quorums until they recover.",
        [Table(sick)],
        w=24,
        uses={"A": ("message", "value", "probes", "region", "state", "severity")},
    )
    return b


__all__ = ["build"]
