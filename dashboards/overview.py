"""The Overview dashboard: where the probes are, how each region sees each target, and
how much anycast beats unicast."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import (
    geomap,
    table,
)
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import geomap as geomap_model

from collector.store.schema import ALERT_HISTORY
from dashboards.board import Board, Table, TimeSeries, transform
from dashboards.influxql import Col, FieldIs, Fn, Select, Tag
from dashboards.panels import ANYCAST, P50, P95, keep_firing, series
from dashboards.schema import Variable


def build() -> Board:
    b = Board(
        "popwatch-overview",
        "popwatch / Overview",
        "Where the probes are, how each region sees each target, and how much anycast "
        "beats unicast.",
    )
    location = Select(
        "probe", (Fn("last", "lat", "lat"), Fn("last", "lon", "lon")), group_by=("probe", "region")
    )
    median = Select("dns", (Fn("median", "rtt_ms", "median_ms"),), group_by=("probe",))
    markers = (
        cb.MapLayerOptions()
        .type("markers")
        .name("probes")
        .location(
            cb.FrameGeometrySource()
            .mode(common.FrameGeometrySourceMode.COORDS)
            .latitude("lat")
            .longitude("lon")
        )
        .config(
            {
                "showLegend": True,
                "style": {
                    "color": {"field": "median_ms", "fixed": "green"},
                    "size": {"fixed": 8},
                    "text": {"field": "probe", "mode": "field"},
                    "textConfig": {"fontSize": 10, "offsetY": -12},
                },
            }
        )
        .tooltip(True)
    )
    b.add(
        geomap.Panel()
        .view(geomap.MapViewConfig().id("zero").lat(20).lon(0).zoom(1))
        .basemap(cb.MapLayerOptions().type("default").name("Basemap"))
        .tooltip(geomap.TooltipOptions().mode(geomap_model.TooltipMode.DETAILS))
        .layers([markers])
        .unit("ms")
        .with_transformation(transform("joinByField", byField="probe", mode="outer")),
        "Probes",
        "Each probe where its registry entry puts it, coloured by its median DNS round "
        "trip over the time range (table queries: geomap's coordinate mode is fragile with "
        "InfluxDB time series).",
        [Table(location), Table(median)],
        w=12,
        h=10,
    )
    cells = Select("dns", (P50, P95, Fn("count", "ok", "records")), group_by=("region", "target"))
    ok = Select(
        "dns",
        (Fn("count", "ok", "ok_records"),),
        where=(FieldIs("ok", True),),
        group_by=("region", "target"),
    )
    b.add(
        table.Panel()
        .unit("ms")
        .with_transformation(transform("merge"))
        .with_transformation(
            transform(
                "calculateField",
                mode="binary",
                alias="availability",
                binary={"left": "ok_records", "operator": "/", "right": "records"},
            )
        )
        .with_transformation(
            transform("organize", excludeByName={"Time": True, "ok_records": True})
        )
        .override_by_name("availability", [model.DynamicConfigValue("unit", "percentunit")])
        .override_by_name("records", [model.DynamicConfigValue("unit", "none")]),
        "Region by target",
        "p50 and p95 of the DNS round trip, and availability: the share of answers that "
        "were NOERROR or NXDOMAIN.",
        [Table(cells), Table(ok)],
        w=12,
        h=10,
    )
    skip: frozenset[Variable] = frozenset({"topology", "target", "provider"})
    uni = Select(
        "dns",
        (Fn("median", "rtt_ms", "unicast_ms"),),
        where=(Tag("topology", "unicast"),),
        group_by=("region",),
        skip=skip,
    )
    any_ = Select(
        "dns",
        (Fn("median", "rtt_ms", "anycast_ms"),),
        where=(ANYCAST,),
        group_by=("region",),
        skip=skip,
    )
    best = Select(
        "inflation",
        (Fn("median", "best_ms", "best_possible_ms"),),
        group_by=("region",),
        skip=skip,
    )
    b.add(
        table.Panel()
        .unit("ms")
        .with_transformation(transform("merge"))
        .with_transformation(
            transform(
                "calculateField",
                mode="binary",
                alias="anycast_gain",
                binary={"left": "unicast_ms", "operator": "/", "right": "anycast_ms"},
            )
        )
        .with_transformation(transform("organize", excludeByName={"Time": True}))
        .override_by_name(
            "anycast_gain",
            [model.DynamicConfigValue("unit", "x"), model.DynamicConfigValue("decimals", 2)],
        ),
        "Unicast vs anycast",
        "Median DNS round trip per region to unicast and to anycast nameservers, side by "
        "side; anycast_gain is unicast / anycast (2 x: anycast answers twice as fast); "
        "best_possible_ms is the median round trip to the region's best anycast site at "
        "its own unicast address (for anycast targets that list their sites): what "
        "anycast would give if routing always chose it.",
        [Table(uni), Table(any_), Table(best)],
        w=12,
    )
    firing = Select(
        "alert",
        (Fn("last", "message", "message"), Col("value"), Col("baseline"), Col("probes")),
        group_by=("rule", "severity", "region", "target", "state"),
        # a regional alert has no probe, a probe alert no topology: filtering by either
        # would hide the other kind
        skip=frozenset({"topology", "probe"}),
        since=ALERT_HISTORY,
    )
    panel = table.Panel()
    for t in keep_firing(firing):
        panel.with_transformation(t)
    b.add(
        panel,
        "Firing alerts",
        "Alerts whose latest state change (in the alert measurement) is to firing.",
        [Table(firing)],
        w=12,
    )
    b.add(
        series(),
        "Median latency per region",
        "Median DNS round trip per region; alert state changes and catchment changes are "
        "annotations.",
        [
            TimeSeries(
                Select(
                    "dns",
                    (Fn("median", "rtt_ms", "median_ms"),),
                    group_by=("region",),
                    every=True,
                    fill="none",
                ),
                "$tag_region",
            )
        ],
        w=24,
        time_series=True,
        catchment=True,
    )
    return b


__all__ = ["build"]
