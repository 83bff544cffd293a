"""The one InfluxQL builder: statements as data, checked against the schema, rendered once.

A :class:`Select` names its measurement, columns, conditions and grouping; it is checked
against :mod:`collector.store.schema` when it is made, so no query can name a
measurement, tag or field popwatch does not write, and it renders the one text the alert
engine, the status page and the dashboards send. Quoting lives here and nowhere else:
identifiers (:func:`ident`), string literals (:func:`literal`) and regexes
(:func:`regex`); tests/test_query.py proves each against a real InfluxDB with hostile
values. Only plain ``SELECT`` statements are built (no subqueries, no ``INTO``): the text
that InfluxDB 1.x, 2.x (v1 API) and 3.x all run.

Times are integers (epoch ns) or InfluxQL durations (``15m``); the dashboards put
Grafana's macros in the slots made for them (:class:`Macro`, ``every="$__interval"``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from collector.store.schema import SCHEMA, fields, tags

Func = Literal[
    "mean", "median", "count", "last", "first", "max", "min", "sum", "spread", "percentile"
]
_DURATION: Final = re.compile(r"^\d+(ns|u|µ|ms|s|m|h|d|w)$")
#: Grafana's macros, the only raw text a query may hold besides what is quoted here
MACROS: Final = frozenset({"$timeFilter", "$__interval"})


def ident(name: str) -> str:
    """A quoted identifier: a measurement, tag or field key."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def literal(value: str | float | bool) -> str:
    """A literal: a string in single quotes (backslash and quote escaped), a number, or a
    boolean."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return repr(value)


def regex(pattern: str) -> str:
    """A regex literal, ``/pattern/``, with ``/`` escaped (the pattern is taken as given)."""
    return "/" + pattern.replace("\\/", "/").replace("/", "\\/") + "/"


def regex_exact(value: str) -> str:
    """The regex pattern that matches exactly ``value`` (every metacharacter escaped)."""
    return "^" + re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", value) + "$"


def _duration(text: str) -> str:
    if text in MACROS or _DURATION.match(text):
        return text
    raise ValueError(f"{text!r} is not an InfluxQL duration (e.g. 15m) or a Grafana macro")


@dataclass(frozen=True, slots=True)
class Col:
    """A raw column: a field, or a tag selected as a column next to a field."""

    name: str
    alias: str | None = None

    def render(self) -> str:
        out = ident(self.name)
        return f"{out} AS {ident(self.alias)}" if self.alias else out

    @property
    def output(self) -> str:
        return self.alias or self.name

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.name,)


@dataclass(frozen=True, slots=True)
class Fn:
    """An aggregate or selector over one field: ``median("rtt_ms") AS "p50"``;
    ``percentile`` takes ``arg``."""

    fn: Func
    name: str
    alias: str | None = None
    arg: int | None = None

    def __post_init__(self) -> None:
        if (self.fn == "percentile") != (self.arg is not None):
            raise ValueError("percentile, and only percentile, takes an argument")

    def expression(self) -> str:
        extra = f", {self.arg}" if self.arg is not None else ""
        return f"{self.fn}({ident(self.name)}{extra})"

    def render(self) -> str:
        out = self.expression()
        return f"{out} AS {ident(self.alias)}" if self.alias else out

    @property
    def output(self) -> str:
        return self.alias or self.fn

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.name,)


@dataclass(frozen=True, slots=True)
class Expr:
    """Arithmetic over aggregates: ``template`` with ``{0}``, ``{1}``... for ``terms``,
    e.g. ``Expr("{0} / {1}", (Fn("median", "dns_ms"), Fn("median", "ttfb_ms")), "share")``."""

    template: str
    terms: tuple[Fn, ...]
    alias: str

    def render(self) -> str:
        return (
            self.template.format(*(t.expression() for t in self.terms)) + " AS " + ident(self.alias)
        )

    @property
    def output(self) -> str:
        return self.alias

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.terms)


Column = Col | Fn | Expr


@dataclass(frozen=True, slots=True)
class Tag:
    """``"key" = 'value'`` (or ``!=``) on a tag."""

    key: str
    value: str
    op: Literal["=", "!="] = "="

    def render(self) -> str:
        return f"{ident(self.key)} {self.op} {literal(self.value)}"


@dataclass(frozen=True, slots=True)
class FieldIs:
    """``"field" = value`` (or another comparison) on a field (``"ok" = true``)."""

    key: str
    value: str | float | bool
    op: Literal["=", "!=", ">", "<", ">=", "<="] = "="

    def render(self) -> str:
        return f"{ident(self.key)} {self.op} {literal(self.value)}"


@dataclass(frozen=True, slots=True)
class Matches:
    """``"key" =~ /pattern/`` on a tag; Grafana's variables fill ``^$region$``."""

    key: str
    pattern: str

    def render(self) -> str:
        return f"{ident(self.key)} =~ {regex(self.pattern)}"


@dataclass(frozen=True, slots=True)
class AnyOf:
    """Tag conditions joined by ``OR``, in parentheses."""

    conds: tuple[Tag, ...]

    def render(self) -> str:
        return "(" + " OR ".join(c.render() for c in self.conds) + ")"


@dataclass(frozen=True, slots=True)
class Between:
    """``time`` in (lo, hi] (epoch ns): an evaluation's window."""

    lo: int
    hi: int

    def render(self) -> str:
        return f"time > {int(self.lo)} AND time <= {int(self.hi)}"


@dataclass(frozen=True, slots=True)
class Span:
    """``time`` in [lo, hi) (epoch ns): whole buckets."""

    lo: int
    hi: int

    def render(self) -> str:
        return f"time >= {int(self.lo)} AND time < {int(self.hi)}"


@dataclass(frozen=True, slots=True)
class Ago:
    """``time > now() - 15m``: the last ``duration``."""

    duration: str

    def __post_init__(self) -> None:
        _duration(self.duration)

    def render(self) -> str:
        return f"time > now() - {self.duration}"


@dataclass(frozen=True, slots=True)
class Macro:
    """A Grafana macro that stands for a condition (``$timeFilter``)."""

    text: Literal["$timeFilter"]

    def render(self) -> str:
        return self.text


Cond = Tag | FieldIs | Matches | AnyOf | Between | Span | Ago | Macro


def _tag_keys(cond: Cond) -> tuple[str, ...]:
    if isinstance(cond, Tag | Matches):
        return (cond.key,)
    if isinstance(cond, AnyOf):
        return tuple(c.key for c in cond.conds)
    return ()


@dataclass(frozen=True, slots=True)
class Select:
    """``SELECT columns FROM measurement WHERE ... GROUP BY ...``, checked against the
    schema. ``group_by`` ``("*",)`` groups by every tag; ``every`` adds
    ``GROUP BY time(every)``."""

    measurement: str
    columns: tuple[Column, ...]
    where: tuple[Cond, ...] = ()
    group_by: tuple[str, ...] = ()
    every: str | None = None
    fill: Literal["none", "null"] | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.measurement not in SCHEMA:
            raise ValueError(f"no measurement {self.measurement!r} in the schema")
        t, f = tags(self.measurement), fields(self.measurement)
        for c in self.columns:
            for key in c.keys:
                if not (key in f or (isinstance(c, Col) and key in t)):
                    raise ValueError(f"{self.measurement} has no field {key!r}")
        if not any(k in f for c in self.columns for k in c.keys):
            raise ValueError(f"a query on {self.measurement} must select a field")
        for w in self.where:
            for key in _tag_keys(w):
                if key not in t:
                    raise ValueError(f"{self.measurement} has no tag {key!r}")
            if isinstance(w, FieldIs) and w.key not in f:
                raise ValueError(f"{self.measurement} has no field {w.key!r}")
        for g in self.group_by:
            if g != "*" and g not in t:
                raise ValueError(f"{self.measurement} has no tag {g!r} to group by")
        if self.every is not None:
            _duration(self.every)

    def render(self) -> str:
        columns = ", ".join(c.render() for c in self.columns)
        q = f"SELECT {columns} FROM {ident(self.measurement)}"  # noqa: S608 - InfluxQL, quoted
        if self.where:
            q += " WHERE " + " AND ".join(w.render() for w in self.where)
        groups = [f"time({self.every})"] if self.every else []
        groups += ["*" if g == "*" else ident(g) for g in self.group_by]
        if groups:
            q += " GROUP BY " + ", ".join(groups)
        if self.fill:
            q += f" fill({self.fill})"
        if self.limit is not None:
            q += f" LIMIT {int(self.limit)}"
        return q

    @property
    def outputs(self) -> tuple[str, ...]:
        """The columns a reader gets: the selected ones, then the grouping tags."""
        return tuple(c.output for c in self.columns) + tuple(g for g in self.group_by if g != "*")

    @property
    def keys(self) -> tuple[set[str], set[str]]:
        """(tags, fields) this query names."""
        t, f = tags(self.measurement), fields(self.measurement)
        named = {k for c in self.columns for k in c.keys}
        named |= {k for w in self.where for k in _tag_keys(w)}
        named |= {w.key for w in self.where if isinstance(w, FieldIs)}
        named |= set(self.group_by)
        return {k for k in named if k in t}, {k for k in named if k in f}


@dataclass(frozen=True, slots=True)
class Cardinality:
    """How many values a tag has (per measurement), or with ``key`` None how many series
    the database holds: InfluxDB's own estimate (``SHOW ... CARDINALITY``), what its
    ``max-values-per-tag`` and ``max-series-per-database`` limits count."""

    key: str | None = None

    def __post_init__(self) -> None:
        if self.key is not None and not any(self.key in t for t, _ in SCHEMA.values()):
            raise ValueError(f"no tag {self.key!r} in the schema")

    def render(self) -> str:
        if self.key is None:
            return "SHOW SERIES CARDINALITY"
        return f"SHOW TAG VALUES CARDINALITY WITH KEY = {ident(self.key)}"


Statement = Select | Cardinality


def statements(selects: Iterable[Statement]) -> str:
    """Several statements in one request, ``;``-separated (answered in order)."""
    return "; ".join(s.render() for s in selects)


__all__ = [
    "MACROS",
    "Ago",
    "AnyOf",
    "Between",
    "Cardinality",
    "Col",
    "Column",
    "Cond",
    "Expr",
    "FieldIs",
    "Fn",
    "Macro",
    "Matches",
    "Select",
    "Span",
    "Statement",
    "Tag",
    "ident",
    "literal",
    "regex",
    "regex_exact",
    "statements",
]
