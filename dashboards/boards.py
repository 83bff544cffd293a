"""The six popwatch dashboards, each a function returning its :class:`Board`.

Every panel's queries are InfluxQL built with :mod:`dashboards.influxql`;
which question each dashboard answers, and how to read it, is in the README.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from grafana_foundation_sdk.builders import (
    barchart,
    bargauge,
    geomap,
    heatmap,
    statetimeline,
    table,
    timeseries,
)
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import geomap as geomap_model
from grafana_foundation_sdk.models import heatmap as heatmap_model

from collector.store.schema import ALERT_HISTORY
from dashboards.board import Board, transform
from dashboards.influxql import Col, Expr, FieldIs, Fn, Select, Tag
from dashboards.schema import Variable

P50: Final = Fn("percentile", "rtt_ms", "p50", 50)
P95: Final = Fn("percentile", "rtt_ms", "p95", 95)
P99: Final = Fn("percentile", "rtt_ms", "p99", 99)
ANYCAST: Final = Tag("topology", "anycast")
SOA: Final = Tag("qtype", "SOA")
CATCHMENT: Final = Tag("kind", "catchment")


def _series(unit: str = "ms", stack: common.StackingMode | None = None) -> timeseries.Panel:
    panel = timeseries.Panel().unit(unit).line_width(1).fill_opacity(10).span_nulls(True)
    panel.legend(
        cb.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.TABLE)
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(["mean", "max"])
    )
    if stack is not None:
        panel.stacking(cb.StackingConfig().mode(stack)).fill_opacity(60)
    return panel


def _bars(unit: str, thresholds: list[tuple[float | None, str]] | None = None) -> bargauge.Panel:
    panel = (
        bargauge.Panel()
        .unit(unit)
        .orientation(common.VizOrientation.HORIZONTAL)
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .reduce_options(cb.ReduceDataOptions().values(True).calcs(["lastNotNull"]))
    )
    if thresholds:
        steps = [model.Threshold(value=v, color=c) for v, c in thresholds]
        panel.thresholds(dash.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(steps))
    return panel


def _firing(select: Select) -> list[model.DataTransformerConfig]:
    """A state change per row, to each alert's latest state, kept when it is firing."""
    keys = [g for g in select.group_by if g not in ("state", "severity")]
    fields: dict[str, dict[str, object]] = {
        k: {"aggregations": [], "operation": "groupby"} for k in keys
    }
    for c in ("Time", "state", "severity", *select.outputs[: len(select.columns)]):
        fields[c] = {"aggregations": ["last"], "operation": "aggregate"}
    return [
        transform("sortBy", sort=[{"field": "Time", "desc": False}]),
        transform("groupBy", fields=fields),
        transform(
            "filterByValue",
            type="include",
            match="any",
            filters=[
                {
                    "fieldName": "state (last)",
                    "config": {"id": "equal", "options": {"value": "firing"}},
                }
            ],
        ),
    ]


def overview() -> Board:
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
        [(location, "table", ""), (median, "table", "")],
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
        [(cells, "table", ""), (ok, "table", "")],
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
        "side; anycast_gain is unicast / anycast (2 x: anycast answers twice as fast).",
        [(uni, "table", ""), (any_, "table", "")],
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
    for t in _firing(firing):
        panel.with_transformation(t)
    b.add(
        panel,
        "Firing alerts",
        "Alerts whose latest state change (in the alert measurement) is to firing.",
        [(firing, "table", "")],
        w=12,
    )
    b.add(
        _series(),
        "Median latency per region",
        "Median DNS round trip per region; alert state changes and catchment changes are "
        "annotations.",
        [
            (
                Select(
                    "dns",
                    (Fn("median", "rtt_ms", "median_ms"),),
                    group_by=("region",),
                    every=True,
                    fill="none",
                ),
                "time_series",
                "$tag_region",
            )
        ],
        w=24,
        time_series=True,
        catchment=True,
    )
    return b


def region() -> Board:
    b = Board(
        "popwatch-region",
        "popwatch / Region",
        "One region (or several) in depth: percentiles, the distribution, errors by "
        "rcode, each probe, and server time against network time.",
    )
    b.add(
        _series(),
        "Latency percentiles per target",
        "p50, p95 and p99 of the DNS round trip per target.",
        [
            (
                Select("dns", (P50, P95, P99), group_by=("target",), every=True, fill="none"),
                "time_series",
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
            (
                Select(
                    "dns",
                    (Fn("mean", "rtt_ms", "rtt_ms"),),
                    group_by=("probe", "target", "server"),
                    every=True,
                    fill="none",
                ),
                "time_series",
                "",
            )
        ],
        w=12,
    )
    b.add(
        _series("percentunit", common.StackingMode.PERCENT).unit("percentunit"),
        "Answers by rcode",
        "Each rcode's share of all queries (TIMEOUT and NETERR included): everything but "
        "NOERROR is the error ratio.",
        [
            (
                Select(
                    "dns",
                    (Fn("count", "ok", "queries"),),
                    group_by=("rcode",),
                    every=True,
                    fill="none",
                ),
                "time_series",
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
            (
                Select(
                    "dns",
                    (P50, P95, Fn("count", "rtt_ms", "answers")),
                    group_by=("probe", "target", "site"),
                ),
                "table",
                "",
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
        [(dns, "table", ""), (ping, "table", "")],
        w=12,
    )
    b.add(
        _series(),
        "DNS and ping round trip",
        "The same two medians over time, per target and server.",
        [
            (
                Select(
                    "dns",
                    (Fn("median", "rtt_ms", "dns_ms"),),
                    group_by=("target", "server"),
                    every=True,
                    fill="none",
                ),
                "time_series",
                "$tag_target $tag_server dns",
            ),
            (
                Select(
                    "ping",
                    (Fn("median", "rtt_ms", "ping_ms"),),
                    group_by=("target", "server"),
                    every=True,
                    fill="none",
                ),
                "time_series",
                "$tag_target $tag_server network",
            ),
        ],
        w=24,
        time_series=True,
    )
    return b


def _site_timeline(by: str) -> Select:
    return Select("dns", (Col("site"), Col("rtt_ms")), where=(ANYCAST,), group_by=(by, "target"))


def catchment() -> Board:
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
        [(_site_timeline("region"), "time_series", "$tag_region $tag_target $col")],
        w=24,
        uses={"A": ("site",)},
        catchment=True,
    )
    b.add(
        statetimeline.Panel().with_transformation(only_site).merge_values(True),
        "Site per probe",
        "The anycast site that answered each probe, per target.",
        [(_site_timeline("probe"), "time_series", "$tag_probe $tag_target $col")],
        w=24,
        h=10,
        uses={"A": ("site",)},
        catchment=True,
    )
    b.add(
        _bars("none").with_transformation(
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
            (
                Select(
                    "dns",
                    (Fn("last", "rtt_ms", "rtt_ms"),),
                    where=(ANYCAST,),
                    group_by=("probe", "site"),
                ),
                "table",
                "",
            )
        ],
        w=8,
        uses={"A": ("probe", "site")},
    )
    b.add(
        _bars("none"),
        "Flips per region",
        "Catchment changes (a probe's site changing on a target) per region.",
        [
            (
                Select(
                    "event",
                    (Fn("count", "outage_ms", "flips"),),
                    where=(CATCHMENT,),
                    group_by=("region",),
                ),
                "table",
                "",
            )
        ],
        w=8,
    )
    b.add(
        _series(),
        "Latency per site",
        "Median round trip of the answers each anycast site gave.",
        [
            (
                Select(
                    "dns",
                    (Fn("median", "rtt_ms", "median_ms"),),
                    where=(ANYCAST,),
                    group_by=("site",),
                    every=True,
                    fill="none",
                ),
                "time_series",
                "$tag_site",
            )
        ],
        w=8,
        time_series=True,
        catchment=True,
    )
    b.add(
        table.Panel()
        .override_by_name("outage_ms", [model.DynamicConfigValue("unit", "ms")])
        .sort_by([cb.TableSortByFieldState().display_name("Time").desc(True)]),
        "Failover outages",
        "Each catchment change: from which site to which, the time from the last answer "
        "of the old site to the first of the new (outage_ms), and the queries lost.",
        [
            (
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
                ),
                "table",
                "",
            )
        ],
        w=24,
    )
    return b


def propagation() -> Board:
    b = Board(
        "popwatch-propagation",
        "popwatch / Zone propagation",
        "The SOA serial each anycast site serves, and how far each lags the newest.",
    )
    b.add(
        _series("none").decimals(0),
        "SOA serial per site",
        "The highest SOA serial each site answered with: a site whose line steps up late "
        "lags on zone updates.",
        [
            (
                Select(
                    "dns",
                    (Fn("max", "serial", "serial"),),
                    where=(SOA,),
                    group_by=("site",),
                    every=True,
                    fill="none",
                ),
                "time_series",
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
            (
                Select(
                    "dns",
                    (Fn("last", "serial", "serial"),),
                    where=(SOA,),
                    group_by=("target", "site"),
                ),
                "table",
                "",
            )
        ],
        w=8,
    )
    lag = Fn("max", "lag_s", "lag_s")
    serial = Tag("kind", "serial")
    b.add(
        _bars("s", [(None, "green"), (60, "yellow"), (300, "red")]),
        "Lag per site",
        "The longest a site lagged the newest serial seen at any site (the alert engine's "
        "serial events; to_site is the site that lags).",
        [(Select("event", (lag,), where=(serial,), group_by=("to_site",)), "table", "")],
        w=8,
    )
    b.add(
        _series("s"),
        "Lag over time",
        "Each lagging site's lag, as the alert engine recorded it.",
        [
            (
                Select(
                    "event", (lag,), where=(serial,), group_by=("to_site",), every=True, fill="none"
                ),
                "time_series",
                "$tag_to_site",
            )
        ],
        w=8,
        time_series=True,
    )
    return b


def ttfb() -> Board:
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
        [(Select("http", phases, group_by=("region",)), "table", "")],
        w=12,
    )
    b.add(
        _series(stack=common.StackingMode.NORMAL),
        "Phases over time",
        "The same phases, stacked, over time.",
        [(Select("http", phases, every=True, fill="none"), "time_series", "$col")],
        w=12,
        time_series=True,
    )
    share = Expr("{0} / ({0} + {1} + {2} + {3})", phases, "dns_share")
    b.add(
        _series("percentunit").max(1).min(0),
        "DNS share of time to first byte",
        "Median DNS time over the median time to first byte (dns + connect + tls + "
        "server), per region.",
        [
            (
                Select("http", (share,), group_by=("region",), every=True, fill="none"),
                "time_series",
                "$tag_region",
            )
        ],
        w=12,
        time_series=True,
    )
    b.add(
        _series("none", common.StackingMode.NORMAL).draw_style(common.GraphDrawStyle.BARS),
        "Status codes",
        "Responses per HTTP status (a fetch that failed before a status has none).",
        [
            (
                Select(
                    "http",
                    (Fn("count", "ok", "responses"),),
                    group_by=("status",),
                    every=True,
                    fill="none",
                ),
                "time_series",
                "$tag_status",
            )
        ],
        w=12,
        time_series=True,
    )
    b.add(
        _bars("d", [(None, "red"), (14, "yellow"), (30, "green")]),
        "Certificate days left",
        "Days until each site's certificate expires, per address served.",
        [
            (
                Select("http", (Fn("last", "cert_days", "cert_days"),), group_by=("target", "ip")),
                "table",
                "",
            )
        ],
        w=12,
    )
    b.add(
        table.Panel().with_transformation(transform("organize", excludeByName={"Time": True})),
        "HTTP versions",
        "The HTTP version each probe last fetched each site over.",
        [
            (
                Select(
                    "http",
                    (Fn("last", "http_version", "http_version"),),
                    group_by=("target", "probe"),
                ),
                "table",
                "",
            )
        ],
        w=12,
    )
    return b


def fleet() -> Board:
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
            (
                Select(
                    "probe",
                    (
                        Fn("last", "uptime_s", "uptime_s"),
                        Col("spool_depth"),
                        Col("dropped"),
                        Col("rejected"),
                    ),
                    group_by=("probe", "region", "version"),
                ),
                "table",
                "",
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
        _series("none"),
        "Spool depth",
        "Batches each probe holds because the collector did not take them yet.",
        [
            (
                Select(
                    "probe",
                    (Fn("max", "spool_depth", "spool_depth"),),
                    group_by=("probe",),
                    every=True,
                    fill="none",
                ),
                "time_series",
                "$tag_probe",
            )
        ],
        w=12,
        time_series=True,
    )
    b.add(
        _series("none"),
        "Dropped and rejected",
        "Batches dropped from a full spool, and records the collector rejected, since "
        "each probe started.",
        [
            (
                Select(
                    "probe",
                    (Fn("max", "dropped", "dropped"), Fn("max", "rejected", "rejected")),
                    group_by=("probe",),
                    every=True,
                    fill="none",
                ),
                "time_series",
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
    for t in _firing(sick):
        panel.with_transformation(t)
    b.add(
        panel,
        "Sick probes",
        "Probes the alert engine marks as sick (degraded on most of their unrelated "
        "targets at once): left out of regional quorums until they recover.",
        [(sick, "table", "")],
        w=24,
        uses={"A": ("message", "value", "probes", "region", "state", "severity")},
    )
    return b


#: file name (without .json) -> the function that builds it
DASHBOARDS: Final[dict[str, Callable[[], Board]]] = {
    "overview": overview,
    "region": region,
    "catchment": catchment,
    "propagation": propagation,
    "ttfb": ttfb,
    "fleet": fleet,
}
