"""A small typed InfluxQL builder, and the Grafana query and annotation it becomes.

grafana-foundation-sdk has no InfluxDB query builder, so this is one: a ``Select`` names
its measurement, columns, conditions and grouping as data, is checked against the schema
(:mod:`dashboards.schema`) when it is made, and renders the InfluxQL text
Grafana's InfluxDB data source runs (``rawQuery``). The dashboards' template variables
filter as regexes, ``"tag" =~ /^$tag$/``, the form Grafana interpolates multi-value and
"All" selections into; every query is bounded by ``$timeFilter``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import dashboard as model

from dashboards.schema import VARIABLES, Measurement, Variable, fields, tags

#: the uids the provisioning files and ``dashboards push`` give the data sources
INFLUX_UID: Final = "popwatch-influxdb"
ALERTMANAGER_UID: Final = "popwatch-alertmanager"

Func = Literal["mean", "median", "count", "last", "first", "max", "min", "sum", "spread"]
Format = Literal["time_series", "table"]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '\\"') + '"'


def _literal(value: str | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return repr(value)


@dataclass(frozen=True)
class Col:
    """A raw column: a field, or a tag selected as a column next to a field."""

    name: str
    alias: str | None = None

    def render(self) -> str:
        out = _ident(self.name)
        return f"{out} AS {_ident(self.alias)}" if self.alias else out

    @property
    def output(self) -> str:
        return self.alias or self.name

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.name,)


@dataclass(frozen=True)
class Fn:
    """An aggregate or selector over one field: ``median("rtt_ms") AS "p50"``;
    ``percentile`` takes ``arg``."""

    fn: Func | Literal["percentile"]
    name: str
    alias: str | None = None
    arg: int | None = None

    def __post_init__(self) -> None:
        if (self.fn == "percentile") != (self.arg is not None):
            raise ValueError("percentile, and only percentile, takes an argument")

    def expression(self) -> str:
        extra = f", {self.arg}" if self.arg is not None else ""
        return f"{self.fn}({_ident(self.name)}{extra})"

    def render(self) -> str:
        out = self.expression()
        return f"{out} AS {_ident(self.alias)}" if self.alias else out

    @property
    def output(self) -> str:
        return self.alias or self.fn

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.name,)


@dataclass(frozen=True)
class Expr:
    """Arithmetic over aggregates: ``template`` with ``{0}``, ``{1}``... for ``terms``,
    e.g. ``Expr("{0} / {1}", (Fn("median", "dns_ms"), Fn("median", "ttfb_ms")), "share")``."""

    template: str
    terms: tuple[Fn, ...]
    alias: str

    def render(self) -> str:
        return (
            self.template.format(*(t.expression() for t in self.terms))
            + " AS "
            + (_ident(self.alias))
        )

    @property
    def output(self) -> str:
        return self.alias

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.terms)


Column = Col | Fn | Expr


@dataclass(frozen=True)
class Tag:
    """``"key" = 'value'`` (or ``!=``) on a tag."""

    key: str
    value: str
    op: Literal["=", "!="] = "="

    def render(self) -> str:
        return f"{_ident(self.key)} {self.op} {_literal(self.value)}"


@dataclass(frozen=True)
class FieldIs:
    """``"field" = value`` on a field (``"ok" = true``)."""

    key: str
    value: str | float | bool
    op: Literal["=", "!=", ">", "<", ">=", "<="] = "="

    def render(self) -> str:
        return f"{_ident(self.key)} {self.op} {_literal(self.value)}"


def var_filter(variable: Variable) -> str:
    """The regex filter Grafana fills: one value, ``(a|b)``, or the ``.*`` of "All"."""
    return f"{_ident(variable)} =~ /^${variable}$/"


@dataclass(frozen=True)
class Select:
    """``SELECT columns FROM measurement WHERE ... GROUP BY ...``, checked against the
    schema. Every dashboard variable whose tag the measurement has filters it, except
    those in ``skip``."""

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
        t, f = tags(self.measurement), fields(self.measurement)
        for c in self.columns:
            for key in c.keys:
                ok = key in f or (isinstance(c, Col) and key in t)
                if not ok:
                    raise ValueError(f"{self.measurement} has no field {key!r}")
        if not any(k in f for c in self.columns for k in c.keys):
            raise ValueError(f"a query on {self.measurement} must select a field")
        for w in self.where:
            if isinstance(w, Tag) and w.key not in t:
                raise ValueError(f"{self.measurement} has no tag {w.key!r}")
            if isinstance(w, FieldIs) and w.key not in f:
                raise ValueError(f"{self.measurement} has no field {w.key!r}")
        for g in self.group_by:
            if g not in t:
                raise ValueError(f"{self.measurement} has no tag {g!r} to group by")

    @property
    def variables(self) -> tuple[Variable, ...]:
        """The template variables this query is filtered by: those whose tag the
        measurement has, unless skipped or fixed by a condition (``"topology" =
        'anycast'``)."""
        t = tags(self.measurement)
        fixed = {w.key for w in self.where if isinstance(w, Tag) and w.op == "="}
        return tuple(v for v in VARIABLES if v in t and v not in self.skip and v not in fixed)

    def render(self) -> str:
        conds = [w.render() for w in self.where]
        conds += [var_filter(v) for v in self.variables]
        if self.since:
            conds.append(f"time > now() - {self.since}")
        elif self.time_filter:
            conds.append("$timeFilter")
        columns = ", ".join(c.render() for c in self.columns)
        q = f"SELECT {columns} FROM {_ident(self.measurement)}"  # noqa: S608 - InfluxQL
        if conds:
            q += " WHERE " + " AND ".join(conds)
        groups = (["time($__interval)"] if self.every else []) + [_ident(g) for g in self.group_by]
        if groups:
            q += " GROUP BY " + ", ".join(groups)
        if self.fill:
            q += f" fill({self.fill})"
        if self.limit is not None:
            q += f" LIMIT {self.limit}"
        return q

    @property
    def outputs(self) -> tuple[str, ...]:
        """The columns a panel reads: the selected ones, then the grouping tags."""
        return tuple(c.output for c in self.columns) + self.group_by

    @property
    def keys(self) -> tuple[set[str], set[str]]:
        """(tags, fields) this query names."""
        t, f = tags(self.measurement), fields(self.measurement)
        named = {k for c in self.columns for k in c.keys} | {w.key for w in self.where}
        named |= set(self.group_by) | set(self.variables)
        return {k for k in named if k in t}, {k for k in named if k in f}


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
            q += f" FROM {_ident(self.measurement)}"
        q += f" WITH KEY = {_ident(self.key)}"
        if self.by:
            q += " WHERE " + " AND ".join(var_filter(v) for v in self.by)
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
