"""The one InfluxQL builder (collector.store.query) and client (collector.store.influxql),
against a real InfluxDB 1.6.7: quoting holds for any value line protocol can carry, so a
tag value read from InfluxDB (a target, a site, an NSID) can never change a statement,
and a query that names what the schema lacks cannot even be built.

Proven once here for everything that reads InfluxDB: the alert engine, the status page,
``alerts check`` and the dashboards all render through the same functions.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support.influx import InfluxDB

from collector.store.influxql import InfluxQL
from collector.store.lineproto import Unrepresentable, line, tag_value
from collector.store.query import (
    Ago,
    AnyOf,
    Between,
    Col,
    FieldIs,
    Fn,
    Matches,
    Select,
    Tag,
    ident,
    literal,
    regex_exact,
)
from popwatch_lab import influx as influxconf

DB = "quoting"
_ts = itertools.count(1_700_000_000_000_000_000, 1_000)
FIXTURE = HealthCheck.function_scoped_fixture


@pytest.fixture(scope="module")
def db(influx: InfluxDB) -> InfluxDB:
    influx.query(f"CREATE DATABASE {DB}")
    return influx


def representable(value: str) -> bool:
    try:
        tag_value("target", value)
    except Unrepresentable:
        return False
    return value != ""


#: what hostile servers and probes put in tags: quotes, backslashes, regex characters,
#: line-protocol separators, InfluxQL words
hostile = st.text(
    alphabet=st.sampled_from(list("a'\"\\/,= .*+?^$|()[]{}-_:é\t;"))
    | st.characters(exclude_categories=["Cs"]),
    min_size=1,
    max_size=20,
).filter(representable)


def run(db: InfluxDB, select: Select) -> list[list[object]]:
    async def go() -> list[list[object]]:
        async with InfluxQL(db.url, DB) as client:
            return [row for s in await client.one(select) for row in s.values]

    return asyncio.run(go())


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=hostile, other=hostile)
@example(value="a\\\\b'c", other="a\\b'c")  # two backslashes, and a quote
@example(value="\\'x", other="'x")
@example(value="a.*", other="ab")  # a regex metacharacter, matched as itself
def test_a_tag_literal_matches_exactly_its_value(db: InfluxDB, value: str, other: str) -> None:
    """``Tag(key, v)`` selects the points whose tag is exactly ``v``, and ``Matches`` with
    ``regex_exact(v)`` the same, whatever ``v`` holds; a neighbour's point is not selected."""
    ts = next(_ts)
    target = f"q{ts}-{value}"
    neighbour = f"q{ts}-{other}x"
    influxconf.write(
        db.url,
        DB,
        [
            line("dns", {"target": target, "site": value}, {"rtt_ms": 1.5}, ts),
            line("dns", {"target": neighbour, "site": other}, {"rtt_ms": 9.5}, ts + 1),
        ],
    )
    span = Between(ts - 1, ts + 1)
    assert run(db, Select("dns", (Col("rtt_ms"),), (Tag("target", target), span))) == [[ts, 1.5]]
    assert run(
        db, Select("dns", (Col("rtt_ms"),), (Matches("target", regex_exact(target)), span))
    ) == [[ts, 1.5]]
    either = AnyOf((Tag("site", value), Tag("site", other + "-never")))
    assert run(db, Select("dns", (Col("rtt_ms"),), (either, Tag("target", target), span))) == [
        [ts, 1.5]
    ]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(message=hostile)
@example(message="it\\'s \\\\ done")
def test_a_string_field_literal_compares_exactly(db: InfluxDB, message: str) -> None:
    """``FieldIs`` on a string field (an alert's message, from a target's name) compares
    with exactly that string."""
    ts = next(_ts)
    influxconf.write(
        db.url, DB, [line("alert", {"rule": "r"}, {"message": message, "value": 1.0}, ts)]
    )
    got = run(
        db, Select("alert", (Col("value"),), (FieldIs("message", message), Between(ts - 1, ts)))
    )
    assert got == [[ts, 1.0]]


def test_quoting_by_hand() -> None:
    """The three quotings, on the characters that matter."""
    assert ident('we"ird\\') == '"we\\"ird\\\\"'
    assert literal("it's a \\ test") == "'it\\'s a \\\\ test'"
    assert literal(True) == "true" and literal(2.5) == "2.5"
    assert regex_exact("a.b/c(d)") == r"^a\.b/c\(d\)$"
    assert Matches("target", "^a/b$").render() == '"target" =~ /^a\\/b$/'


def test_a_query_outside_the_schema_cannot_be_built() -> None:
    """A measurement, field, tag or grouping the schema lacks is refused when the query is
    made, never sent; durations are checked too."""
    with pytest.raises(ValueError, match="no measurement 'nope'"):
        Select("nope", (Col("rtt_ms"),))
    with pytest.raises(ValueError, match="dns has no field 'ttfb_ms'"):
        Select("dns", (Fn("median", "ttfb_ms"),))
    with pytest.raises(ValueError, match="http has no tag 'site'"):
        Select("http", (Col("ttfb_ms"),), (Tag("site", "x"),))
    with pytest.raises(ValueError, match="has no tag 'nope' to group by"):
        Select("dns", (Col("rtt_ms"),), group_by=("nope",))
    with pytest.raises(ValueError, match="must select a field"):
        Select("dns", (Col("site"),))
    with pytest.raises(ValueError, match="not an InfluxQL duration"):
        Ago("15 minutes; DROP DATABASE x")
    q = Select(
        "dns",
        (Fn("percentile", "rtt_ms", "p95", 95), Col("site")),
        (Tag("topology", "anycast"), Ago("15m")),
        group_by=("region",),
        every="300s",
        fill="none",
    )
    assert q.render() == (
        'SELECT percentile("rtt_ms", 95) AS "p95", "site" FROM "dns" WHERE '
        '"topology" = \'anycast\' AND time > now() - 15m GROUP BY time(300s), "region" '
        "fill(none)"
    )
