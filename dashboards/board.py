"""What every popwatch dashboard shares: the variables, the annotations, the layout, and
a record of each panel's queries (what the tests run against InfluxDB)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from grafana_foundation_sdk.builders import (
    barchart,
    bargauge,
    geomap,
    heatmap,
    statetimeline,
    table,
    timeseries,
)
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.models import dashboard as model

from dashboards.influxql import (
    AnnotationTarget,
    Col,
    Format,
    Query,
    Select,
    Tag,
    TagValues,
    datasource,
)
from dashboards.schema import VARIABLES, Measurement, Variable

TAG: Final = "popwatch"
FOLDER: Final = "popwatch"  # the folder's title and uid, in provisioning and `push`

#: the measurement each variable's values come from, and the variables narrowing it
_VARIABLE_SOURCES: Final[dict[Variable, tuple[Measurement | None, tuple[Variable, ...]]]] = {
    "region": (None, ()),
    "target": (None, ("region",)),
    "topology": (None, ()),
    "provider": (None, ()),
    "probe": ("probe", ("region",)),
    "qname": ("dns", ("target",)),
}


def variable_query(name: Variable) -> TagValues:
    measurement, by = _VARIABLE_SOURCES[name]
    return TagValues(name, measurement, by)


@dataclass(frozen=True)
class PanelQuery:
    """One query of one panel, and the columns the panel reads from its rows."""

    dashboard: str  # uid
    panel_id: int
    panel: str  # title
    ref_id: str
    select: Select
    fmt: Format
    uses: tuple[str, ...]


#: the SDK's panel builders the dashboards use
PanelBuilder = (
    barchart.Panel
    | bargauge.Panel
    | geomap.Panel
    | heatmap.Panel
    | statetimeline.Panel
    | table.Panel
    | timeseries.Panel
)


@dataclass(frozen=True)
class Target:
    """One query of a panel: its statement, how Grafana lays out its rows (``fmt``), and
    the legend of its series (``$tag_region``, ``$col``; empty for Grafana's own)."""

    select: Select
    fmt: Format
    legend: str = ""


def Table(select: Select) -> Target:
    """A table-format query: one row per series, the grouping tags as columns (what
    tables, geomaps and bar gauges read)."""
    return Target(select, "table")


def TimeSeries(select: Select, legend: str = "") -> Target:
    """A time-series query, its series named by ``legend``."""
    return Target(select, "time_series", legend)


def transform(kind: str, **options: Any) -> model.DataTransformerConfig:
    """A Grafana transformation (``merge``, ``calculateField``, ``groupBy``...)."""
    return model.DataTransformerConfig(id_val=kind, options=options)


class Board:
    """A dashboard being built: panels are added in reading order (the SDK lays them out
    left to right, ``w`` of 24 columns), each with its queries."""

    def __init__(self, uid: str, title: str, description: str) -> None:
        self.uid = uid
        self.builder = (
            dash.Dashboard(title)
            .uid(uid)
            .description(description)
            .tags([TAG])
            .time("now-6h", "now")
            .refresh("1m")
            .timezone("browser")
            .readonly()
            .link(
                dash.DashboardLink("popwatch")
                .type(model.DashboardLinkType.DASHBOARDS)
                .tags([TAG])
                .as_dropdown(True)
                .include_vars(True)
                .keep_time(True)
            )
        )
        for name in VARIABLES:
            self.builder.with_variable(
                dash.QueryVariable(name)
                .label(name)
                .query(variable_query(name).render())
                .datasource(datasource())
                .multi(True)
                .include_all(True)
                .all_value(".*")
                .current(model.VariableOption(selected=True, text=["All"], value=["$__all"]))
                .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
                .sort(model.VariableSort.ALPHABETICAL_ASC)
            )
        self.queries: list[PanelQuery] = []
        self.time_series: list[int] = []  # panels that get the alert annotations
        self.catchment: list[int] = []  # panels that get the catchment-event annotations
        self._next_id = 1

    def add(
        self,
        panel: PanelBuilder,
        title: str,
        description: str,
        queries: list[Target],
        w: int,
        h: int = 8,
        uses: dict[str, tuple[str, ...]] | None = None,
        time_series: bool = False,
        catchment: bool = False,
    ) -> Board:
        """Add ``panel`` with ``queries``, refIds A, B, ...

        ``uses`` overrides, per refId, the columns the panel reads (by default every
        column the query selects and groups by)."""
        pid = self._next_id
        self._next_id += 1
        panel.id(pid).title(title).description(description).datasource(datasource())
        panel.height(h).span(w)
        for i, q in enumerate(queries):
            ref = chr(ord("A") + i)
            panel.with_target(Query(q.select, ref, q.fmt, q.legend))
            read = (uses or {}).get(ref, q.select.outputs)
            self.queries.append(PanelQuery(self.uid, pid, title, ref, q.select, q.fmt, read))
        self.builder.with_panel(panel)
        if time_series:
            self.time_series.append(pid)
        if catchment:
            self.catchment.append(pid)
        return self

    def build(self) -> model.Dashboard:
        """The dashboard, with the annotations on the panels that take them."""
        self.builder.annotation(
            dash.AnnotationQuery()
            .name("Alerts")
            .datasource(datasource())
            .enable(True)
            .icon_color("red")
            .filter(dash.AnnotationPanelFilter().ids(self.time_series))
            .target(ALERT_ANNOTATION)
        )
        if self.catchment:
            self.builder.annotation(
                dash.AnnotationQuery()
                .name("Catchment changes")
                .datasource(datasource())
                .enable(True)
                .icon_color("orange")
                .filter(dash.AnnotationPanelFilter().ids(self.catchment))
                .target(CATCHMENT_ANNOTATION)
            )
        return self.builder.build()


#: every state change of an alert (what the alert engine writes to `alert`)
ALERT_ANNOTATION: Final = AnnotationTarget(
    Select(
        "alert",
        (
            Col("message"),
            Col("value"),
            Col("baseline"),
            Col("probes"),
            Col("rule"),
            Col("severity"),
            Col("state"),
            Col("region"),
            Col("target"),
        ),
    ),
    text="message",
    title="rule",
    tag_columns=("rule", "severity", "state", "region", "target"),
)

#: each probe's anycast site changing on a target (the alert engine's `event`s)
CATCHMENT_ANNOTATION: Final = AnnotationTarget(
    Select(
        "event",
        (
            Col("message"),
            Col("outage_ms"),
            Col("lost"),
            Col("from_site"),
            Col("to_site"),
            Col("probe"),
            Col("region"),
            Col("target"),
        ),
        where=(Tag("kind", "catchment"),),
    ),
    text="message",
    title="to_site",
    tag_columns=("region", "probe", "target", "from_site", "to_site"),
)

__all__ = [
    "ALERT_ANNOTATION",
    "CATCHMENT_ANNOTATION",
    "FOLDER",
    "Board",
    "PanelQuery",
    "Table",
    "Target",
    "TimeSeries",
    "transform",
    "variable_query",
]
