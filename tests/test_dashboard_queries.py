"""Every query of every dashboard panel, variable and annotation, interpolated the way
Grafana does, against the real InfluxDB 1.6.7 holding data from real probes.

The data (tests/world.py): three ``popwatch-probe run`` processes in two regions ship
through a real ``popwatch-collector run`` into InfluxDB, measuring real Knot servers
(two anycast sites, each its own NSID, and a unicast one), a dead port, an HTTPS page in
a network namespace, and TCP pings; the alert and event history is written in the
schema's shape, as the alert engine writes it.

Grafana's interpolation: ``$timeFilter`` becomes ``time >= <ms>ms and time <= <ms>ms``,
``$__interval`` a duration and ``$__interval_ms`` its milliseconds, and a variable with
"All" its ``allValue`` (``.*``); selected values are escaped as regexes, one as is and
several as ``(a|b)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from support.world import DB, PROBES, QNAMES, World, needs_root

from dashboards.board import ALERT_ANNOTATION, CATCHMENT_ANNOTATION, variable_query
from dashboards.build import PanelQuery, boards, queries
from dashboards.schema import VARIABLES

pytestmark = pytest.mark.skipif(needs_root(), reason="needs root for the web page's netns")

ALL: list[str] = []  # "All"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("world"))
    try:
        yield w.run()
    finally:
        w.close()


def regex_escape(value: str) -> str:
    """Grafana's escapeStringForRegex (the ``regex`` format of a variable)."""
    return re.sub(r"([\\^$*+?.()|\[\]{}/])", r"\\\1", value)


def interpolate(query: str, world: World, values: dict[str, list[str]], interval_ms: int) -> str:
    """``query`` as Grafana's InfluxDB data source sends it."""
    start_ms, end_ms = world.start_ns // 10**6 - 60_000, world.end_ns // 10**6 + 60_000
    out = query.replace("$timeFilter", f"time >= {start_ms}ms and time <= {end_ms}ms")
    out = out.replace("$__interval_ms", str(interval_ms))
    out = out.replace(
        "$__interval", f"{interval_ms // 1000}s" if interval_ms >= 1000 else f"{interval_ms}ms"
    )

    def var(m: re.Match[str]) -> str:
        chosen = values.get(m.group(1), ALL)
        if not chosen:
            return ".*"  # the variables' allValue
        escaped = [regex_escape(v) for v in chosen]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"

    out = re.sub(r"\$\{?(" + "|".join(VARIABLES) + r")\}?(?![A-Za-z0-9_])", var, out)
    assert "$" not in out.replace("$/", "").replace("^", ""), out
    return out


def every_value(world: World) -> dict[str, list[str]]:
    """Each variable with every one of its values selected, as a user ticks them all."""
    out = {}
    for name in VARIABLES:
        rows = world.influx.query(interpolate(variable_query(name).render(), world, {}, 1000), DB)
        out[name] = sorted({r["value"] for r in rows})
    return out


def check(pq: PanelQuery, rows: list[dict[str, Any]], query: str) -> None:
    """Rows, and in them every column the panel reads with a value somewhere."""
    assert rows, f"{pq.dashboard} / {pq.panel} ({pq.ref_id}) would show No data: {query}"
    for column in pq.uses:
        assert any(r.get(column) not in (None, "") for r in rows), (
            f"{pq.dashboard} / {pq.panel} ({pq.ref_id}): no {column!r} in {rows[:3]} for {query}"
        )


def ids(pq: PanelQuery) -> str:
    return f"{pq.dashboard}:{pq.panel_id}:{pq.ref_id}"


@pytest.mark.parametrize("pq", queries(), ids=ids)
def test_every_panel_query_shows_data_with_all(world: World, pq: PanelQuery) -> None:
    """With every variable at "All", each query returns rows with its panel's columns."""
    q = interpolate(pq.select.render(), world, {}, 1000)
    check(pq, world.influx.query(q, DB), q)


@pytest.mark.parametrize("pq", queries(), ids=ids)
def test_every_panel_query_shows_data_with_every_value_selected(
    world: World, pq: PanelQuery
) -> None:
    """With every value of every variable ticked (regex-escaped, joined as ``(a|b)``), and
    a coarser ``$__interval``, each query still returns its panel's columns: the escaping
    matches names with dots (``example.test.``) and hyphens."""
    q = interpolate(pq.select.render(), world, every_value(world), 60_000)
    check(pq, world.influx.query(q, DB), q)


@pytest.mark.parametrize("pq", queries(), ids=ids)
def test_one_region_selected_narrows_every_query(world: World, pq: PanelQuery) -> None:
    """One region selected: each query still has rows, and only that region's."""
    q = interpolate(pq.select.render(), world, {"region": ["eu-west"]}, 1000)
    rows = world.influx.query(q, DB)
    check(pq, rows, q)
    if "region" in pq.select.group_by or "region" in pq.select.outputs:
        assert {r["region"] for r in rows} == {"eu-west"}, q


def test_single_values_of_the_other_variables_narrow_too(world: World) -> None:
    """A qname, a probe, a topology and a provider, each alone, select only their rows."""
    for name, value, measurement in (
        ("qname", "www.example.test.", "dns"),
        ("probe", PROBES[2].id, "dns"),
        ("topology", "unicast", "ping"),
        ("provider", "solo", "dns"),
        ("target", "www", "http"),
    ):
        q = interpolate(
            f'SELECT count("ok") FROM "{measurement}" WHERE "{name}" =~ /^${name}$/ '  # noqa: S608
            f'AND $timeFilter GROUP BY "{name}"',
            world,
            {name: [value]},
            1000,
        )
        rows = world.influx.query(q, DB)
        assert [r[name] for r in rows] == [value], q


@pytest.mark.parametrize("name", VARIABLES)
def test_every_variable_lists_values(world: World, name: str) -> None:
    """Each variable's query lists its values, narrowed by the variables it depends on."""
    values = every_value(world)[name]
    expected = {
        "region": {"eu-west", "us-east"},
        "target": {"ns-anycast", "ns-unicast", "ns-dead", "www", "www-missing"},
        "topology": {"anycast", "unicast"},
        "provider": {"acme", "solo"},
        "probe": {p.id for p in PROBES},
        "qname": {q + "." for q in QNAMES},
    }[name]
    assert expected <= set(values)
    narrowed = interpolate(variable_query(name).render(), world, {"region": ["us-east"]}, 1000)
    assert world.influx.query(narrowed, DB)


@pytest.mark.parametrize(
    ("annotation", "columns"),
    [
        (ALERT_ANNOTATION, {"eu-west", "us-east"}),
        (CATCHMENT_ANNOTATION, {"eu-west"}),
    ],
    ids=["alerts", "catchment"],
)
def test_annotations_return_their_text_title_and_tags(
    world: World, annotation: Any, columns: set[str]
) -> None:
    """The alert and catchment annotations return rows with their text and title, and
    their tag columns (a probe alert has no target)."""
    target = annotation.build()
    q = interpolate(target.select.render(), world, {}, 1000)
    rows = world.influx.query(q, DB)
    assert {r["region"] for r in rows} == columns
    for column in (target.text, target.title):
        assert all(r.get(column) not in (None, "") for r in rows), (column, rows)
    for column in target.tag_columns:
        assert any(r.get(column) not in (None, "") for r in rows), (column, rows)


def test_firing_alerts_are_found_from_the_latest_state_change(world: World) -> None:
    """The firing-alerts query gives, per alert, its latest change of each state: the
    eu-west alert's last change is to firing, the us-east one's to resolved."""
    pq = next(q for q in queries() if q.panel == "Firing alerts")
    rows = world.influx.query(interpolate(pq.select.render(), world, {}, 1000), DB)
    latest: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: r["time"]):
        latest[(r["rule"], r["region"], r["target"])] = r
    firing = {k for k, r in latest.items() if r["state"] == "firing"}
    assert firing == {("latency", "eu-west", "ns-anycast"), ("probe", "eu-west", "")}


def test_the_world_has_what_the_panels_are_about(world: World) -> None:
    """The data is what the dashboards need to show anything: both anycast sites, both
    serials, failures, and HTTP phases with a certificate."""
    sites = world.influx.query(
        "SELECT count(rtt_ms) FROM dns WHERE topology = 'anycast' GROUP BY site, region", DB
    )
    assert {(r["region"], r["site"]) for r in sites} == {
        ("eu-west", "pop-fra1"),
        ("eu-west", "pop-iad1"),
        ("us-east", "pop-iad1"),
    }
    serials = world.influx.query("SELECT max(serial) FROM dns GROUP BY site", DB)
    assert len({r["max"] for r in serials}) == 2
    rcodes = {
        r["rcode"] for r in world.influx.query("SELECT count(ok) FROM dns GROUP BY rcode", DB)
    }
    assert {"NOERROR", "NXDOMAIN"} < rcodes and rcodes - {"NOERROR", "NXDOMAIN"}
    http = world.influx.query("SELECT * FROM http WHERE status = '200' LIMIT 1", DB)
    assert http and all(http[0][k] is not None for k in ("dns_ms", "tls_ms", "cert_days"))


def test_every_panel_of_every_dashboard_is_queried() -> None:
    """The registry of queries covers every panel the dashboards have."""
    for board in boards().values():
        panels = {p.id_val for p in board.builder.build().panels or []}
        assert panels == {q.panel_id for q in board.queries}, board.uid
