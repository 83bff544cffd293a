"""Anycast inflation: the sites in a target list, the probe's site queries against real
Knot, the engine's figures from what a real InfluxDB 1.6.7 holds, and the rule.

The lab (tests/test_lab.py) shows it end to end: ``steer ap-south iad`` raises the alert
at Alertmanager with the map's difference, and with no steer no region is inflated.
"""

from __future__ import annotations

import math
import re
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from support import servers
from support.influx import InfluxDB

from collector.alerts.config import load_alerts, settings_for
from collector.alerts.inflation import (
    FIBRE_KM_PER_MS,
    Figure,
    Sites,
    distance_km,
    geo_inflation_ms,
    measure,
)
from collector.alerts.rules import Firing, Inputs
from collector.alerts.rules.inflation import RULE
from collector.alerts.window import Snapshot
from collector.store.influxql import InfluxQL
from probe.checks import dns as dns_check
from probe.configfile import ConfigError
from probe.targets import DnsTarget, Query, Site, load_targets

NS = 1_000_000_000
MUMBAI, SINGAPORE, ASHBURN = (19.08, 72.88), (1.35, 103.82), (39.04, -77.49)
AMSTERDAM, SAO_PAULO = (52.37, 4.90), (-23.55, -46.63)


# ----------------------------------------------------------------------------- geography


@pytest.mark.parametrize(
    ("probe", "serving", "closest", "serving_km", "closest_km"),
    [
        # great-circle distances worked out by the spherical law of cosines (R 6371 km),
        # a formula the code does not use; published figures agree to 0.1 %
        (MUMBAI, ASHBURN, SINGAPORE, 12854.6, 3903.9),
        (MUMBAI, AMSTERDAM, SINGAPORE, 6852.5, 3903.9),
        (SAO_PAULO, AMSTERDAM, ASHBURN, 9805.1, 7664.4),
    ],
)
def test_geographic_inflation_is_twice_the_extra_distance_over_light_in_fibre(
    probe: tuple[float, float],
    serving: tuple[float, float],
    closest: tuple[float, float],
    serving_km: float,
    closest_km: float,
) -> None:
    """Koch et al.'s geographic inflation, 2/c_f x (d_serving - d_closest) with c_f 2/3
    of c: the distances within 0.1 km of the hand-computed ones, and the milliseconds
    from those (89.6 ms for Mumbai served from Ashburn instead of Singapore)."""
    assert abs(distance_km(probe, serving) - serving_km) < 0.1
    assert abs(distance_km(probe, closest) - closest_km) < 0.1
    assert pytest.approx(199.86, abs=0.01) == FIBRE_KM_PER_MS
    expected = 2 * (serving_km - closest_km) / 199.862
    got = geo_inflation_ms(distance_km(probe, serving), distance_km(probe, closest))
    assert got == pytest.approx(expected, abs=0.01)
    assert math.isclose(geo_inflation_ms(serving_km, serving_km), 0.0)


# ----------------------------------------------------------------------------- config

SITES_OK = """targets:
  - name: anycast-ns
    topology: anycast
    server: 198.51.100.53
    identify: nsid
    queries: [{qname: example.com}]
    sites:
      - {id: ams, unicast: [192.0.2.11, "2001:db8::11"], lat: 52.37, lon: 4.90}
      - {id: sin, unicast: [192.0.2.12], city: Singapore}
"""


def test_sites_in_the_target_list_are_read_with_their_places(tmp_path: Path) -> None:
    """The README's example: ids, unicast addresses, lat/lon or a city of the table."""
    path = tmp_path / "targets.yaml"
    path.write_text(SITES_OK)
    (t,) = load_targets(path)
    assert isinstance(t, DnsTarget) and t.site_every == 10
    assert [(s.id, s.unicast, s.lat, s.lon) for s in t.sites] == [
        ("ams", ["192.0.2.11", "2001:db8::11"], 52.37, 4.90),
        ("sin", ["192.0.2.12"], 1.35, 103.82),
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("id: sin", "id: ams"),
            "targets[0]: sites[1].id: 'ams' is already the id of sites[0]",
        ),
        (
            ("[192.0.2.12]", "[192.0.2.300]"),
            "targets[0].sites[1]: site 'sin': unicast '192.0.2.300' is not an IP address",
        ),
        (
            ("city: Singapore", "lat: 91.35, lon: 103.82"),
            "targets[0].sites[1].lat: expected a number <= 90, got 91.35",
        ),
        (
            ("[192.0.2.12]", "[192.0.2.11]"),
            "targets[0]: sites[1].unicast: '192.0.2.11' is already an address of sites[0]",
        ),
        (
            ("city: Singapore", "city: Atlantis"),
            "targets[0].sites[1]: site 'sin': city 'Atlantis' is not in popwatch's table",
        ),
        (
            ("city: Singapore", "lat: 1.35"),
            "targets[0].sites[1]: site 'sin': give both lat and lon, or a city",
        ),
        (
            ("topology: anycast", "topology: unicast"),
            "targets[0]: sites are for an anycast target, not topology 'unicast'",
        ),
    ],
)
def test_bad_sites_are_one_line_naming_the_key(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text(SITES_OK.replace(*change))
    with pytest.raises(ConfigError) as err:
        load_targets(path)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: {expected}"), text


# ----------------------------------------------------------------------------- the probe


def _target(server: str = "127.0.0.1", **kw: Any) -> DnsTarget:
    return DnsTarget(
        name="any",
        topology="anycast",
        server=server,
        queries=[Query(qname="example.test", qtype="SOA")],
        transports=["udp", "tcp"],
        interval=6,
        timeout=1,
        **kw,
    )


def test_a_target_without_sites_has_only_its_own_series() -> None:
    """No ``sites``: address x transport x query, as before; with them, each site's
    addresses of the target's families too, at one in ``site_every`` intervals."""
    plain = dns_check.jobs(_target(), [(4, "127.0.0.1")])
    assert [(j.address, j.transport, j.site, j.interval) for j in plain] == [
        ("127.0.0.1", "udp", "", 6),
        ("127.0.0.1", "tcp", "", 6),
    ]
    assert {j.base["topology"] for j in plain} == {"anycast"}
    sited = _target(sites=[Site(id="a", unicast=["127.0.0.2", "::1"], lat=0, lon=0)], site_every=5)
    jobs = dns_check.jobs(sited, [(4, "127.0.0.1")])
    extra = [j for j in jobs if j.site]
    assert [(j.address, j.transport, j.interval) for j in extra] == [
        ("127.0.0.2", "udp", 30),
        ("127.0.0.2", "tcp", 30),
    ]  # the target's server is IPv4: its families are [4], so ::1 is not asked
    assert {j.base["topology"] for j in extra} == {"site"}
    assert len({j.key for j in jobs}) == len(jobs)


async def test_site_queries_name_their_site_and_say_when_it_does_not_answer(
    knot: servers.Knot,
) -> None:
    """Against real Knot (NSID knot-fra1): the site queried at its own address gives a
    ``topology: site`` record naming it; a site whose address does not answer gives a
    record naming it with an error and no rtt_ms; a site that answers as another gives
    an error saying so."""
    dead = servers.free_port()
    t = _target(
        identify="nsid",
        sites=[
            Site(id="knot-fra1", unicast=["127.0.0.1"], port=knot.port, lat=50.1, lon=8.7),
            Site(id="gone", unicast=["127.0.0.1"], port=dead, lat=1.35, lon=103.8),
            Site(id="sin", unicast=["::1"], port=knot.port, lat=1.35, lon=103.8),
        ],
    )
    t6 = _target(identify="nsid", server="::1", sites=t.sites)
    jobs = [j for j in dns_check.jobs(t, [(4, "127.0.0.1")]) if j.site and j.transport == "udp"]
    jobs += [j for j in dns_check.jobs(t6, [(6, "::1")]) if j.site and j.transport == "udp"]
    records = {j.site: await dns_check.measure(j) for j in jobs}
    good, gone, wrong = records["knot-fra1"], records["gone"], records["sin"]
    assert (good.topology, good.site, good.rcode, good.error) == (
        "site",
        "knot-fra1",
        "NOERROR",
        None,
    )
    assert good.rtt_ms is not None and good.port == knot.port
    assert (gone.topology, gone.site, gone.rtt_ms) == ("site", "gone", None)
    assert gone.rcode in ("NETERR", "TIMEOUT") and gone.error
    assert wrong.site == "sin" and wrong.family == 6
    assert wrong.error == "identity: site sin's unicast ::1 answered as knot-fra1"


# ----------------------------------------------------------------------------- the engine


def _line(
    topology: str,
    site: str,
    ts: int,
    rtt_ms: float | None,
    transport: str = "udp",
    error: str = "",
) -> str:
    tags = (
        f"dns,family=4,probe=p1,qname=example.test.,qtype=SOA,"
        f"rcode={'NOERROR' if rtt_ms is not None else 'TIMEOUT'},region=ap,site={site},"
        f"target=any,topology={topology},transport={transport}"
    )
    if rtt_ms is None:
        return f'{tags} ok=false,error="{error or "timeout: no answer within 1 s"}" {ts}'
    return f"{tags} ok=true,rtt_ms={rtt_ms} {ts}"


def _write(influx: InfluxDB, db: str, lines: list[str]) -> None:
    influx.query(f'CREATE DATABASE "{db}"')
    q = urllib.parse.urlencode({"db": db, "precision": "ns"})
    req = urllib.request.Request(f"{influx.url}/write?{q}", data="\n".join(lines).encode())
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 204


SITES = Sites(
    (
        Site(id="sin", unicast=["192.0.2.12"], lat=SINGAPORE[0], lon=SINGAPORE[1]),
        Site(id="ams", unicast=["192.0.2.11"], lat=AMSTERDAM[0], lon=AMSTERDAM[1]),
        Site(id="iad", unicast=["192.0.2.13"], lat=ASHBURN[0], lon=ASHBURN[1]),
    ),
    10.0,
)


async def _figures(
    influx: InfluxDB, at: int, lines: list[str], targets: dict[str, Sites] | None = None
) -> list[Figure]:
    db = "t" + uuid.uuid4().hex[:8]
    heartbeat = f"probe,probe=p1,region=ap lat={MUMBAI[0]},lon={MUMBAI[1]},uptime_s=1 {at - NS}"
    _write(influx, db, [*lines, heartbeat])
    async with InfluxQL(influx.url, db) as q:
        return await measure(q, at, {"any": SITES} if targets is None else targets, 60, 3)


def _steady(at: int, sites: dict[str, list[float | None]], serving: str, ms: float) -> list[str]:
    """Anycast answers from ``serving`` every second of the last 40 s, and the sites'
    unicast answers (None: no answer) every 10 s, the last one last."""
    lines = [_line("anycast", serving, at - k * NS, ms) for k in range(40, 0, -1)]
    for site, values in sites.items():
        for i, v in enumerate(values):
            ts = at - (len(values) - i) * 10 * NS + 3 * NS
            lines.append(_line("site", site, ts, v))
    return lines


async def test_a_steered_probe_is_inflated_by_the_difference_to_its_best_site(
    influx: InfluxDB,
) -> None:
    """Served by iad at 128.6 ms while sin answers its own address at 39.0 ms: serving
    iad, best sin, closest sin, 89.6 ms of inflation and of geographic inflation; the
    points carry both sites and the figures; a second lane (tcp) is its own figure."""
    at = 1_800_000_000 * NS
    lines = _steady(
        at, {"sin": [39.0, 39.1, 38.9, 39.0], "ams": [68.5] * 4, "iad": [128.6] * 4}, "iad", 128.6
    )
    lines += [_line("anycast", "iad", at - k * NS, 130.0, "tcp") for k in range(5, 0, -1)]
    figures = await _figures(influx, at, lines)
    by = {f.transport: f for f in figures}
    f = by["udp"]
    assert (f.site, f.best, f.closest, f.samples, f.sites) == ("iad", "sin", "sin", 40, 3)
    assert f.inflation_ms == pytest.approx(128.6 - 39.0, abs=0.06)
    assert f.serving_ms == pytest.approx(128.6)
    assert f.factor == pytest.approx(128.6 / 39.0, abs=0.01)
    assert f.geo_ms == pytest.approx(89.57, abs=0.05)
    # no site measured over tcp yet: no best site, rather than a wrong one
    assert by["tcp"].best == "" and by["tcp"].error == (
        "waiting for the sites' queries: sin: 0 of 3 queries made; ams: 0 of 3 queries made; "
        "iad: 0 of 3 queries made"
    )
    text = f.to_line()
    assert text.startswith("inflation,best=sin,closest=sin,family=4,probe=p1,region=ap,site=iad")
    assert "at_best=0i" in text


async def test_a_site_that_does_not_answer_is_never_the_best(influx: InfluxDB) -> None:
    """sin, the nearest, stops answering at its own address (its last query timed out,
    though its earlier ones were fast): the best site is ams, never sin. A site with
    too few queries yet (iad, 2 of 3) leaves the figure without a best site rather than
    the best of the others. When no site answers, the figure has no best site and says
    why, site by site."""
    at = 1_800_000_000 * NS
    lines = _steady(
        at, {"sin": [39.0, 39.0, 39.0, None], "ams": [68.5] * 4, "iad": [None] * 4}, "ams", 68.6
    )
    (f,) = await _figures(influx, at, lines)
    assert (f.site, f.best, f.sites) == ("ams", "ams", 1)
    assert f.inflation_ms == pytest.approx(0.1, abs=0.01)
    young = _steady(at, {"sin": [39.0] * 4, "ams": [68.5] * 4, "iad": [128.6] * 2}, "ams", 68.6)
    (w,) = await _figures(influx, at, young)
    assert w.best == "" and w.error == "waiting for the sites' queries: iad: 2 of 3 queries made"
    none = _steady(at, {"sin": [None] * 4, "ams": [None] * 4, "iad": [None] * 3}, "sin", 39.0)
    (g,) = await _figures(influx, at, none)
    assert g.best == "" and g.best_ms is None and g.inflation_ms is None
    assert g.error == (
        "no site answered at its unicast address: sin: 0 of 4 answered "
        "(timeout: no answer within 1 s); ams: 0 of 4 answered (timeout: no answer within "
        "1 s); iad: 0 of 3 answered (timeout: no answer within 1 s)"
    )
    assert "best=" not in g.to_line() and 'error="no site answered' in g.to_line()


async def test_the_readmes_inflation_query_runs_on_the_figures(influx: InfluxDB) -> None:
    """The README's query for the inflation figures returns the steered probe's row."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    (shown,) = re.findall(r"`(SELECT [^`]+FROM \"inflation\"[^`]+)`", readme)
    at = time.time_ns() - 60 * NS
    lines = _steady(at, {"sin": [39.0] * 4, "iad": [128.6] * 4, "ams": [68.5] * 4}, "iad", 128.6)
    db = "t" + uuid.uuid4().hex[:8]
    _write(influx, db, lines)
    async with InfluxQL(influx.url, db) as q:
        figures = await measure(q, at, {"any": SITES}, 60, 3)
    _write(influx, db, [f.to_line() for f in figures])
    (row,) = influx.query(shown, db=db)
    assert (row["region"], row["site"], row["best"], row["mean"]) == ("ap", "iad", "sin", 0)
    assert row["median"] == pytest.approx(89.6, abs=0.1)


async def test_a_target_without_sites_gets_no_figures(influx: InfluxDB) -> None:
    at = 1_800_000_000 * NS
    lines = _steady(at, {"sin": [39.0] * 4}, "sin", 39.0)
    assert await _figures(influx, at, lines, targets={}) == []
    assert await _figures(influx, at, lines, targets={"other": SITES}) == []


# ----------------------------------------------------------------------------- the rule


def _figure(probe: str, site: str, best: str, anycast: float, best_ms: float) -> Figure:
    return Figure(
        at=NS,
        probe=probe,
        region="ap",
        target="any",
        family="4",
        transport="udp",
        period_s=60.0,
        site=site,
        best=best,
        anycast_ms=anycast,
        best_ms=best_ms,
        samples=10,
        sites=3,
    )


def _assess(
    figures: list[Figure], registered: dict[str, str] | None = None, **rule: Any
) -> list[Any]:
    """The rule's conditions over ``figures`` (quorum 2), ``registered`` the probes."""
    cfg = load_alerts({"quorum": 2, "rules": {"inflation": rule}})
    inp = Inputs(
        cfg=cfg,
        snap=Snapshot(NS, 0, {}, {}),
        settings=lambda t, tp, p: settings_for(cfg, t, tp, p),
        baseline=lambda *a: None,
        usual_site=lambda *a: None,
        firing=Firing(),
        registered=registered,
        inflation=figures,
    )
    return RULE.assess(inp, [], set())


def test_the_rule_needs_a_quorum_past_both_min_ms_and_factor() -> None:
    """Two of a region's probes served by iad at 128 ms against sin at 39 ms fire one
    alert naming both sites, waiting two rounds of the site queries (120 s); one probe of
    two does not; 25 ms over a 100 ms best (factor 1.25) does not; neither does 15 ms."""
    steered = [_figure("p1", "iad", "sin", 128.6, 39.0), _figure("p2", "iad", "sin", 128.0, 39.2)]
    (c,) = _assess(steered)
    assert dict(c.labels) == {
        "alertname": "inflation",
        "severity": "warning",
        "region": "ap",
        "target": "any",
        "topology": "anycast",
    }
    assert dict(c.extra)["serving_site"] == "iad" and dict(c.extra)["best_site"] == "sin"
    assert c.value == pytest.approx(((128.6 - 39.0) + (128.0 - 39.2)) / 2)
    assert c.for_s == 120.0 and c.probes == ("p1", "p2")
    assert "served by iad" in c.summary and "best site sin" in c.summary
    assert _assess([steered[0], _figure("p2", "sin", "sin", 39.0, 39.0)]) == []
    assert _assess([_figure(p, "ams", "sin", 125.0, 100.0) for p in ("p1", "p2")]) == []
    assert _assess([_figure(p, "ams", "sin", 30.0, 15.0) for p in ("p1", "p2")]) == []
    (c,) = _assess([_figure(p, "ams", "sin", 30.0, 15.0) for p in ("p1", "p2")], min_ms=10)
    assert c.value == 15.0


def test_the_quorum_counts_the_regions_probes_not_only_those_with_a_figure() -> None:
    """One probe of three with a figure (the others still waiting for site queries)
    does not make the region's alert alone."""
    steered = [_figure("p1", "iad", "sin", 128.6, 39.0)]
    assert _assess(steered, registered={"p1": "ap", "p2": "ap", "p3": "ap"}) == []
    assert len(_assess(steered, registered={"p1": "ap"})) == 1  # the region's one probe


async def test_a_window_too_short_for_the_site_queries_says_so(influx: InfluxDB) -> None:
    """Sites measured every 300 s cannot give 3 samples in a 60 s window: the figure
    says which key to raise, rather than waiting for ever in silence."""
    at = 1_800_000_000 * NS
    lines = _steady(at, {"sin": [39.0] * 4, "ams": [68.5] * 4, "iad": [128.6] * 4}, "iad", 128.6)
    slow = {"any": Sites(SITES.sites, 300.0)}
    (f,) = await _figures(influx, at, lines, targets=slow)
    assert f.best == "" and "raise alerts.rules.inflation.window_s" in f.error, f.error


async def test_a_serving_site_the_target_does_not_list_is_said(influx: InfluxDB) -> None:
    at = 1_800_000_000 * NS
    lines = _steady(at, {"sin": [39.0] * 4, "ams": [68.5] * 4, "iad": [128.6] * 4}, "lhr9", 70.0)
    (f,) = await _figures(influx, at, lines)
    assert (f.site, f.best, f.serving_ms, f.geo_ms) == ("lhr9", "sin", None, None)
    assert f.error.startswith("serving site lhr9 is not one of the target's sites"), f.error


def test_an_answer_as_another_site_is_not_ok_and_asks_cannot_list_sites() -> None:
    """A site's address that answered as another site is written ok=false, so it is
    never a site's answer in the figures; an ask's options may not list sites."""
    from collector.identity import Identity
    from collector.kinds.base import ask_options
    from collector.kinds.dns import KIND
    from probe.wire import DnsRecord

    record = DnsRecord(
        ts=NS,
        target="any",
        server="192.0.2.12",
        port=53,
        transport="udp",
        qname="example.test.",
        qtype="SOA",
        rcode="NOERROR",
        timestamping="kernel",
        rtt_ms=39.0,
        site="sin",
        topology="site",
        error="identity: site sin's unicast 192.0.2.12 answered as ams",
    )
    who = Identity(probe="p1", region="ap", country="IN")
    assert " ok=false," in KIND.to_line(record, who)
    assert " ok=true," in KIND.to_line(msgspec.structs.replace(record, error=None), who)
    for key in ("sites", "site_every"):
        with pytest.raises(ValueError, match=key):
            ask_options({key: 1})
