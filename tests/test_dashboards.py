"""The dashboards as files: the committed JSON is what the code generates, every query
names only the schema's measurements, tags and fields (the table in docs/design.md, which
the README's matches), the variables and annotations are as documented, and the
provisioning files parse and match what docker-compose.yml mounts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards import GRAFANA_VERSION
from dashboards.boards import DASHBOARDS
from dashboards.build import build_all, queries, render, stale
from dashboards.influxql import ALERTMANAGER_UID, INFLUX_UID
from dashboards.schema import SCHEMA, VARIABLES

ROOT = Path(__file__).parent.parent
JSON_DIR = ROOT / "dashboards" / "json"
PROVISIONING = ROOT / "dashboards" / "provisioning"


def schema_table(path: Path, heading: str) -> dict[str, tuple[set[str], set[str]]]:
    """measurement -> (tags, fields) from the markdown table under ``heading``;
    ``(`a`/`b`)`` value notes after a tag are dropped."""
    text = path.read_text()
    part = text[text.index(heading) :]
    part = part[: part.index("\n## ", 1)]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \| ([^|]+) \|$", part, re.M)

    def names(cell: str) -> set[str]:
        return {re.sub(r"\s*\(.*?\)", "", n).strip() for n in cell.split(",")}

    return {m: (names(t), names(f)) for m, t, f in rows}


def design_schema() -> dict[str, tuple[set[str], set[str]]]:
    return schema_table(ROOT / "docs" / "design.md", "## InfluxDB schema")


def committed() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in JSON_DIR.glob("*.json")}


def test_committed_json_is_what_the_code_generates() -> None:
    """``python -m dashboards`` regenerates dashboards/json; nothing differs."""
    assert stale(JSON_DIR) == [], "run: python -m dashboards"
    assert {p.name for p in JSON_DIR.glob("*.json")} == {f"{n}.json" for n in DASHBOARDS}
    for name, board in build_all().items():
        assert render_of(name) == (JSON_DIR / f"{name}.json").read_text()
        assert board["uid"] == f"popwatch-{name}"


def render_of(name: str) -> str:
    return render(DASHBOARDS[name]())


def test_the_code_schema_is_the_documented_one() -> None:
    """The builder's schema is docs/design.md's table, and the README's table says the
    same of every measurement it lists."""
    design = design_schema()
    assert design == {m: (set(t), set(f)) for m, (t, f) in SCHEMA.items()}
    readme = schema_table(ROOT / "README.md", "## What is in InfluxDB")
    assert {"dns", "http", "ping", "probe"} <= set(readme)
    for measurement, keys in readme.items():
        assert keys == design[measurement], measurement


def all_queries() -> list[tuple[str, str]]:
    """(where, InfluxQL) of every panel target, variable and annotation in the JSON."""
    out = []
    for name, board in committed().items():
        for panel in board["panels"]:
            for t in panel["targets"]:
                out.append((f"{name}: {panel['title']} {t['refId']}", t["query"]))
        for v in board["templating"]["list"]:
            out.append((f"{name}: ${v['name']}", v["query"]))
        for a in board["annotations"]["list"]:
            out.append((f"{name}: annotation {a['name']}", a["target"]["query"]))
    return out


@pytest.mark.parametrize(("where", "query"), all_queries(), ids=[w for w, _ in all_queries()])
def test_queries_name_only_the_schema(where: str, query: str) -> None:
    """Read from the JSON as Grafana gets it: the measurement is in docs/design.md's
    table, and every other double-quoted name is one of its tags or fields (aliases after
    AS aside)."""
    design = design_schema()
    m = re.search(r'\bFROM "(\w+)"', query)
    names = {n for alias, n in re.findall(r'(AS )?"([^"]+)"', query) if not alias}
    if m is None:  # SHOW TAG VALUES over every measurement
        keys = set().union(*(t for t, _ in design.values()))
    else:
        assert m.group(1) in design, where
        tags, fields = design[m.group(1)]
        keys = tags | fields | {m.group(1)}
    assert names <= keys, (where, names - keys)
    assert "$timeFilter" in query or "now() -" in query or query.startswith("SHOW"), where


def test_the_json_queries_are_the_registrys() -> None:
    """Each panel target in the JSON is a query of the registry the live tests run."""
    registry = {(q.dashboard, q.panel_id, q.ref_id): q.select.render() for q in queries()}
    seen = {}
    for board in committed().values():
        for panel in board["panels"]:
            for t in panel["targets"]:
                seen[(board["uid"], panel["id"], t["refId"])] = t["query"]
                assert t["datasource"] == {"type": "influxdb", "uid": INFLUX_UID}
                assert t["rawQuery"] is True
    assert seen == registry


def test_every_dashboard_has_the_six_variables_multi_valued_with_all() -> None:
    """region, target, topology, provider, probe, qname: each multi-value, with "All"
    (whose value is the regex .*), from the InfluxDB data source."""
    for name, board in committed().items():
        variables = board["templating"]["list"]
        assert [v["name"] for v in variables] == list(VARIABLES), name
        for v in variables:
            assert v["multi"] and v["includeAll"] and v["allValue"] == ".*", (name, v["name"])
            assert v["query"].startswith("SHOW TAG VALUES")
            assert v["datasource"]["uid"] == INFLUX_UID


def test_annotations_mark_the_panels_they_belong_to() -> None:
    """Alert state changes are on every time-series panel; catchment events on the
    catchment and latency panels."""
    latency = {"Median latency per region", "Latency percentiles per target", "Latency per site"}
    for name, board in committed().items():
        panels = {p["id"]: p for p in board["panels"]}
        notes = {a["name"]: a for a in board["annotations"]["list"]}
        series = {i for i, p in panels.items() if p["type"] == "timeseries"}
        assert set(notes["Alerts"]["filter"]["ids"]) == series, name
        assert notes["Alerts"]["filter"]["exclude"] is False
        assert notes["Alerts"]["target"]["fromAnnotations"] is True
        marked = {
            panels[i]["title"]
            for i in notes.get("Catchment changes", {}).get("filter", {}).get("ids", [])
        }
        want = {p["title"] for p in panels.values() if p["title"] in latency}
        if name == "catchment":
            want |= {"Site per region", "Site per probe", "Inflation per region"}
        assert marked == want, name


def test_the_issues_panels_exist_with_the_sdk_panel_types() -> None:
    """Each dashboard has the panels the issue lists, built with the SDK's panel types."""
    titles = {name: {p["title"]: p["type"] for p in b["panels"]} for name, b in committed().items()}
    assert titles["overview"]["Probes"] == "geomap"
    assert titles["overview"]["Region by target"] == "table"
    assert titles["overview"]["Unicast vs anycast"] == "table"
    assert titles["overview"]["Firing alerts"] == "table"
    assert titles["region"]["Latency heatmap"] == "heatmap"
    assert {
        "Latency percentiles per target",
        "Answers by rcode",
        "Per probe",
        "Server time against network time",
    } <= set(titles["region"])
    assert titles["catchment"]["Site per region"] == "state-timeline"
    assert titles["catchment"]["Site per probe"] == "state-timeline"
    assert titles["catchment"]["Each site's share of probes"] == "bargauge"
    assert {"Flips per region", "Latency per site", "Failover outages"} <= set(titles["catchment"])
    assert titles["catchment"]["Inflation per region"] == "timeseries"
    assert titles["catchment"]["Served by their best site"] == "bargauge"
    assert titles["catchment"]["Serving site x best site"] == "table"
    assert {"SOA serial per site", "Lag per site"} <= set(titles["propagation"])
    assert {
        "Phases per region",
        "DNS share of time to first byte",
        "Status codes",
        "Certificate days left",
        "HTTP versions",
    } <= set(titles["ttfb"])
    assert {"Probes", "Dropped and rejected", "Sick probes"} <= set(titles["fleet"])
    assert titles["paths"]["Hops"] == "table"
    assert titles["paths"]["Path per probe"] == "state-timeline"
    assert titles["paths"]["Round trip per hop"] == "timeseries"
    assert titles["paths"]["Path changes"] == "table"
    geomap = next(p for p in committed()["overview"]["panels"] if p["type"] == "geomap")
    assert all(t["resultFormat"] == "table" for t in geomap["targets"])
    assert geomap["options"]["layers"][0]["location"] == {
        "mode": "coords",
        "latitude": "lat",
        "longitude": "lon",
    }


def compose_grafana() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service: dict[str, Any] = doc["services"]["grafana"]
    return service


def mounts() -> dict[str, Path]:
    """docker-compose.yml's grafana bind mounts: container path -> repository path."""
    out = {}
    for m in compose_grafana()["volumes"]:
        src, dst = m.split(":")[:2]
        if src.startswith("./"):
            out[dst] = ROOT / src
    return out


def provisioned() -> dict[str, dict[str, Any]]:
    """Every provisioning file Grafana gets from the mounts, parsed: container path ->
    document (a mounted directory contributes each of its YAML files)."""
    out = {}
    for dst, src in mounts().items():
        if not dst.startswith("/etc/grafana/provisioning/"):
            continue
        files = sorted(src.glob("*.yaml")) if src.is_dir() else [src]
        for f in files:
            path = f"{dst}/{f.name}" if src.is_dir() else dst
            out[path] = yaml.safe_load(f.read_text())
    return out


def test_provisioning_parses_and_matches_the_compose_mounts() -> None:
    """What docker-compose.yml mounts into Grafana exists and parses: one InfluxDB data
    source with the dashboards' uid, the Alertmanager one, and a provider that reads the
    mounted JSON directory into the folder "popwatch"; the image is the Grafana release
    the SDK targets. Every provisioning file in the repository parses."""
    m = mounts()
    assert all(src.exists() for src in m.values()), m
    docs = provisioned()
    assert all(d["apiVersion"] == 1 for d in docs.values())
    sources = [ds for d in docs.values() for ds in d.get("datasources", [])]
    assert sorted(ds["uid"] for ds in sources) == sorted([INFLUX_UID, ALERTMANAGER_UID])
    (provider,) = [p for d in docs.values() for p in d.get("providers", [])]
    assert provider["folder"] == "popwatch" and provider["type"] == "file"
    assert m[provider["options"]["path"]] == JSON_DIR
    image = compose_grafana()["image"]
    assert image.startswith("grafana/") and image.split(":")[1].startswith(GRAFANA_VERSION + ".")
    for f in [*(ROOT / "dashboards").rglob("*.yaml")]:
        assert yaml.safe_load(f.read_text())["apiVersion"] == 1, f


def datasource(path: Path) -> dict[str, Any]:
    (ds,) = yaml.safe_load(path.read_text())["datasources"]
    assert isinstance(ds, dict)
    return ds


def test_the_data_sources_for_influxdb_1_and_2_and_alertmanager() -> None:
    """The InfluxDB data source has the dashboards' uid in InfluxQL mode (no Flux) in
    both variants; the 2.x/3.x one sends its token as ``Authorization: Token ...``; the
    Alertmanager one is Prometheus'."""
    v1 = datasource(PROVISIONING / "datasources" / "influxdb.yaml")
    v2 = datasource(ROOT / "dashboards" / "influxdb-v2.yaml")
    for ds in (v1, v2):
        assert ds["uid"] == INFLUX_UID and ds["type"] == "influxdb"
        assert ds["jsonData"]["dbName"] == "popwatch"
        assert "version" not in ds["jsonData"]  # InfluxQL, the default query language
        assert ds["url"] == "http://influxdb:8086"
    assert "secureJsonData" not in v1
    assert v2["jsonData"]["httpHeaderName1"] == "Authorization"
    assert v2["secureJsonData"]["httpHeaderValue1"] == "Token ${INFLUXDB_TOKEN}"
    assert "INFLUXDB_TOKEN" in compose_grafana()["environment"]
    am = datasource(PROVISIONING / "datasources" / "alertmanager.yaml")
    assert am["uid"] == ALERTMANAGER_UID and am["type"] == "alertmanager"
    assert am["jsonData"]["implementation"] == "prometheus"


def test_the_readmes_dashboard_queries_are_the_dashboards() -> None:
    """Each dashboard's section in the README shows one of that dashboard's queries, as
    the code renders it (so the live tests run it)."""
    text = (ROOT / "README.md").read_text()
    part = text[text.index("## Dashboards") : text.index("## The status page")]
    shown = {
        title: " ".join(sql.split())
        for title, sql in re.findall(r"^### (.+?)\n.*?```sql\n(.*?)```", part, re.M | re.S)
    }
    uids = {
        "Overview": "popwatch-overview",
        "Region": "popwatch-region",
        "Anycast catchment": "popwatch-catchment",
        "Zone propagation": "popwatch-propagation",
        "TTFB": "popwatch-ttfb",
        "Fleet": "popwatch-fleet",
        "Paths": "popwatch-paths",
    }
    assert set(shown) == set(uids)
    for title, sql in shown.items():
        rendered = {q.select.render() for q in queries() if q.dashboard == uids[title]}
        assert sql.replace("( ", "(") in rendered, title
