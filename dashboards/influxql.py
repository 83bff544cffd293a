"""The dashboards' queries, and the Grafana query and annotation each becomes.

grafana-foundation-sdk has no InfluxDB query builder; popwatch has one,
:mod:`collector.store.query` (columns, conditions, quoting, the schema check). A
dashboard :class:`Select` is one of those plus what every panel adds: the template
variables, which filter as regexes, ``"tag" =~ /^$tag$/`` (the form Grafana interpolates
multi-value and "All" selections into), and ``$timeFilter`` (or a fixed ``since``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import dashboard as model

from collector.store import query as sq
from collector.store.query import Col, Column, Expr, FieldIs, Fn, Tag, ident
from collector.store.schema import tags
from dashboards.schema import VARIABLES, Measurement, Variable

#: the uids the provisioning files and ``dashboards push`` give the data sources
INFLUX_UID: Final = "popwatch-influxdb"
ALERTMANAGER_UID: Final = "popwatch-alertmanager"
#: not the records of an anycast target's sites at their own addresses
NOT_SITES: Final = Tag("topology", "site", "!=")

Format = Literal["time_series", "table"]


def var_filter(variable: Variable) -> sq.Matches:
    """The regex filter Grafana fills: one value, ``(a|b)``, or the ``.*`` of "All"."""
    return sq.Matches(variable, f"^${variable}$")


@dataclass(frozen=True)
class Select:
    """A panel's query: the store's ``Select`` (checked against the schema when made),
    filtered by every dashboard variable whose tag the measurement has, except those in
    ``skip``, and bounded by ``$timeFilter`` (or ``since``: ``time > now() - 30d``)."""

    measurement: Measurement
    columns: tuple[Column, ...]
    where: tuple[Tag | FieldIs, ...] = ()
    group_by: tuple[str, ...] = ()
    every: bool = False  # GROUP BY time($__interval)
    fill: Literal["none", "null"] | None = None
    skip: frozenset[Variable] = field(default_factory=frozenset)
    limit: int | None = None
    time_filter: bool = True  # `$timeFilter`; False for "since ever" panels (with `since`)
    since: str | None = None  # e.g. "30d": time > now() - 30d instead of $timeFilter

    def __post_init__(self) -> None:
        self.query  # noqa: B018 - checked against the schema now, not when rendered

    @property
    def variables(self) -> tuple[Variable, ...]:
        """The template variables this query is filtered by: those whose tag the
        measurement has, unless skipped or fixed by a condition (``"topology" =
        'anycast'``)."""
        t = tags(self.measurement)
        fixed = {w.key for w in self.where if isinstance(w, Tag) and w.op == "="}
        return tuple(v for v in VARIABLES if v in t and v not in self.skip and v not in fixed)

    @property
    def query(self) -> sq.Select:
        """The store's statement this panel query is."""
        conds: list[sq.Cond] = [*self.where, *(var_filter(v) for v in self.variables)]
        if self.measurement == "dns" and "topology" in self.variables:
            # the sites' own records (topology site) share their target's name: a panel
            # of a target's answers is of its own servers, unless it asks for sites
            conds.insert(len(self.where), NOT_SITES)
        if self.since:
            conds.append(sq.Ago(self.since))
        elif self.time_filter:
            conds.append(sq.Macro("$timeFilter"))
        return sq.Select(
            self.measurement,
            self.columns,
            tuple(conds),
            self.group_by,
            every="$__interval" if self.every else None,
            fill=self.fill,
            limit=self.limit,
        )

    def render(self) -> str:
        return self.query.render()

    @property
    def outputs(self) -> tuple[str, ...]:
        """The columns a panel reads: the selected ones, then the grouping tags."""
        return self.query.outputs

    @property
    def keys(self) -> tuple[set[str], set[str]]:
        """(tags, fields) this query names."""
        return self.query.keys


@dataclass(frozen=True)
class TagValues:
    """A variable's query: ``SHOW TAG VALUES [FROM m] WITH KEY = "key" [WHERE ...]``,
    narrowed by the variables listed in ``by``."""

    key: Variable
    measurement: Measurement | None = None
    by: tuple[Variable, ...] = ()

    def render(self) -> str:
        q = "SHOW TAG VALUES"
        if self.measurement:
            q += f" FROM {ident(self.measurement)}"
        q += f" WITH KEY = {ident(self.key)}"
        if self.by:
            q += " WHERE " + " AND ".join(var_filter(v).render() for v in self.by)
        return q


def datasource() -> model.DataSourceRef:
    return model.DataSourceRef(type_val="influxdb", uid=INFLUX_UID)


class InfluxDataquery(cogvariants.Dataquery):
    """One InfluxQL query of a panel, as Grafana's InfluxDB data source stores it."""

    def __init__(self, select: Select, ref_id: str, fmt: Format, alias: str | None) -> None:
        self.select = select
        self.ref_id = ref_id
        self.fmt = fmt
        self.alias = alias

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "refId": self.ref_id,
            "datasource": datasource().to_json(),
            "query": self.select.render(),
            "rawQuery": True,
            "resultFormat": self.fmt,
        }
        if self.alias:
            out["alias"] = self.alias
        return out


class Query(cogbuilder.Builder[cogvariants.Dataquery]):
    """The builder of an :class:`InfluxDataquery`, for the SDK's ``with_target``.

    ``alias`` names time series (``$tag_region``, ``$col``); ``fmt`` table gives one row
    per series (grouping tags as columns), which tables, geomaps and bar gauges read.
    """

    def __init__(
        self, select: Select, ref_id: str = "A", fmt: Format = "time_series", alias: str = ""
    ) -> None:
        self._internal = InfluxDataquery(select, ref_id, fmt, alias or None)

    def build(self) -> InfluxDataquery:
        return self._internal


class InfluxAnnotationTarget(model.AnnotationTarget):
    """The InfluxQL of an annotation, and which columns are its text and tags
    (``fromAnnotations``: Grafana's InfluxDB data source runs it as an annotation)."""

    def __init__(self, select: Select, text: str, title: str, tag_columns: tuple[str, ...]) -> None:
        super().__init__()
        self.select = select
        self.text = text
        self.title = title
        self.tag_columns = tag_columns

    def to_json(self) -> dict[str, object]:
        return {
            "refId": "Anno",
            "fromAnnotations": True,
            "queryType": "tags",
            "query": self.select.render(),
            "textColumn": self.text,
            "titleColumn": self.title,
            "tagsColumn": ",".join(self.tag_columns),
            "limit": 100,
        }


class AnnotationTarget(cogbuilder.Builder[model.AnnotationTarget]):
    def __init__(self, select: Select, text: str, title: str, tag_columns: tuple[str, ...]):
        self._internal = InfluxAnnotationTarget(select, text, title, tag_columns)

    def build(self) -> InfluxAnnotationTarget:
        return self._internal


__all__ = [
    "ALERTMANAGER_UID",
    "INFLUX_UID",
    "AnnotationTarget",
    "Col",
    "Expr",
    "FieldIs",
    "Fn",
    "InfluxAnnotationTarget",
    "InfluxDataquery",
    "Query",
    "Select",
    "Tag",
    "TagValues",
    "datasource",
    "var_filter",
]
