"""The status page at the collector's ``/`` (on the admin listener, with ``/metrics``):
its JSON from fixed InfluxQL over a real InfluxDB 1.6.7, and the page itself in headless
Chromium (Debian's ``chromium``).

The data is seeded through a real ``popwatch-collector run``: probes registered in two
regions with their coordinates post DNS, HTTP and heartbeat records to the ingest API,
and the alert history is written in the schema's shape, as the alert engine writes it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import servers
from support.influx import InfluxDB
from support.procs import Collector, register

from collector.alerts.anycast import Event
from collector.alerts.inflation import Figure
from collector.alerts.rules.base import labels
from collector.alerts.tracing import ask_id

DB = "status"
CHROMIUM = shutil.which("chromium")
PROBES = {  # id: (region, country, lat, lon, anycast site)
    "p-par-1": ("eu-west", "FR", 48.86, 2.35, "pop-fra1"),
    "p-fra-1": ("eu-west", "DE", 50.11, 8.68, "pop-iad1"),
    "p-iad-1": ("us-east", "US", 38.9, -77.04, "pop-iad1"),
}
#: a probe registered without coordinates (the README's own `probes add probe-1 --region
#: eu-central`), and one whose heartbeats stopped 20 minutes ago (its silence alert fires)
UNMAPPED, SILENT = "p-nocoord", "p-quiet"


def records(probe: str, now: int) -> list[dict[str, Any]]:
    """A few seconds of one probe: anycast and unicast answers, a page, heartbeats."""
    site = PROBES[probe][4]
    base = {
        "server": "192.0.2.53",
        "port": 53,
        "transport": "udp",
        "qtype": "SOA",
        "qname": "example.test.",
        "timestamping": "kernel",
        "answers": 1,
        "size": 90,
    }
    out: list[dict[str, Any]] = []
    for i in range(5):
        ts = now - (5 - i) * 10**9
        out += [
            {
                "kind": "dns",
                "ts": ts,
                "target": "ns-anycast",
                "topology": "anycast",
                "rcode": "NOERROR",
                "rtt_ms": 10.0 + i,
                "site": site,
                **base,
            },
            {
                "kind": "dns",
                "ts": ts,
                "target": "ns-unicast",
                "topology": "unicast",
                "rcode": "NOERROR",
                "rtt_ms": 80.0 + i,
                "site": "uni-ams1",
                **base,
            },
            {
                "kind": "http",
                "ts": ts,
                "target": "www",
                "url": "https://www.example.test/",
                "topology": "anycast",
                "status": 200,
                "dns_ms": 12.0,
                "connect_ms": 20.0,
                "tls_ms": 30.0,
                "ttfb_ms": 38.0,
                "total_ms": 110.0,
            },
            {
                "kind": "probe",
                "ts": ts,
                "version": "0.1.0",
                "uptime_s": 60.0 + i,
                "spool_depth": 0,
                "dropped": 0,
                "rejected": 0,
            },
        ]
    out.append(
        {
            "kind": "dns",
            "ts": now - 10**9,
            "target": "ns-anycast",
            "topology": "anycast",
            "rcode": "TIMEOUT",
            "error": "timeout: no answer",
            **base,
        }
    )
    return out


def post(url: str, token: str, recs: list[dict[str, Any]]) -> dict[str, Any]:
    body = {
        "schema": 1,
        "batch": str(uuid.uuid4()),
        "sent_at": time.time_ns(),
        "measurements": recs,
    }
    req = urllib.request.Request(
        f"{url}/api/v1/measurements",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        answer: dict[str, Any] = json.load(r)
        return answer


def heartbeat(ts: int) -> dict[str, Any]:
    return {
        "kind": "probe",
        "ts": ts,
        "version": "0.1.0",
        "uptime_s": 60.0,
        "spool_depth": 0,
        "dropped": 0,
        "rejected": 0,
    }


PATH_WORDS = (
    "eu-west (p-fra-1, IPv4): path changed after hop 2 (192.0.2.1); now ends at pop-iad1 "
    "(was pop-fra1); +70.0 ms from hop 3"
)
CONTROL_WORDS = "us-east (p-iad-1, IPv4, control): path unchanged (4 hops, ends at pop-iad1)"


def seed_alerts(influx: InfluxDB, now: int) -> None:
    """A latency alert firing in eu-west; one in us-east that fired and resolved; the
    quiet probe's silence alert firing."""
    lines = [
        f"alert,probe={SILENT},region=us-east,rule=silence,severity=warning,state=firing "
        f'value=1200.0,threshold=180.0,probes="{SILENT}",'
        f'message="probe {SILENT} (us-east) is silent" {now - 30 * 10**9}',
        "alert,region=eu-west,rule=latency,severity=critical,state=firing,target=ns-anycast "
        'value=48.5,baseline=12.25,probes="p-par-1,p-fra-1",'
        f'message="eu-west ns-anycast p50 48.5 ms against 12.25 ms" {now - 20 * 10**9}',
        "alert,region=us-east,rule=latency,severity=warning,state=firing,target=ns-unicast "
        f'value=80.0,baseline=30.0,probes="p-iad-1",message="us-east slow" {now - 19 * 10**9}',
        "alert,region=us-east,rule=latency,severity=warning,state=resolved,target=ns-unicast "
        f'value=31.0,baseline=30.0,probes="p-iad-1",message="us-east fine" {now - 9 * 10**9}',
    ]
    # the engine's inflation figures, as it writes them: p-fra-1 is served by pop-iad1,
    # 70 ms slower than its best site, pop-fra1; an older evaluation is not shown
    for at, anycast in ((now - 40 * 10**9, 99.0), (now - 10 * 10**9, 85.0)):
        for probe, site, ms in (("p-par-1", "pop-fra1", 15.0), ("p-fra-1", "pop-iad1", anycast)):
            lines.append(
                Figure(
                    at=at,
                    probe=probe,
                    region="eu-west",
                    target="ns-anycast",
                    family="4",
                    transport="udp",
                    period_s=600.0,
                    site=site,
                    best="pop-fra1",
                    closest="pop-fra1",
                    anycast_ms=ms,
                    best_ms=15.0,
                    geo_ms=0.0 if site == "pop-fra1" else 64.2,
                    samples=30,
                    sites=2,
                ).to_line()
            )
    # what the traces the eu-west alert asked for said, as the engine writes it; another
    # ask's (an alert no longer firing) is not shown
    fired = labels(alertname="latency", severity="critical", region="eu-west", target="ns-anycast")
    for ask, probe, region, message in (
        (ask_id(fired, now - 20 * 10**9), "p-fra-1", "eu-west", PATH_WORDS),
        (ask_id(fired, now - 20 * 10**9), "p-iad-1", "us-east", CONTROL_WORDS),
        ("0123456789abcdef", "p-fra-1", "eu-west", "eu-west (p-fra-1, IPv4): an old one"),
    ):
        lines.append(
            Event("path", now - 15 * 10**9, probe, region, "ns-anycast", message=message,
                  family="4", ask=ask).to_line()
        )  # fmt: skip
    query = urllib.parse.urlencode({"db": DB})
    req = urllib.request.Request(f"{influx.url}/write?{query}", data="\n".join(lines).encode())
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 204


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    """A real collector in front of a real InfluxDB holding the seeded data."""
    tmp = tmp_path_factory.mktemp("status")
    with InfluxDB() as influx:
        influx.start()
        tokens: dict[str, str] = {}
        for probe, (region, cc, lat, lon, _) in PROBES.items():
            flags = ("--country", cc, "--lat", str(lat), "--lon", str(lon))
            tokens |= register(tmp, {probe: region}, *flags)
        tokens |= register(tmp, {UNMAPPED: "eu-west"})
        tokens |= register(tmp, {SILENT: "us-east"}, "--lat", "40.7", "--lon", "-74.0")
        c = Collector(influx, tmp, DB)
        c.start()
        try:
            now = time.time_ns()
            for probe, token in tokens.items():
                if probe == UNMAPPED:
                    recs = [heartbeat(now - 2 * 10**9)]
                elif probe == SILENT:
                    recs = [heartbeat(now - 1200 * 10**9)]
                else:
                    recs = records(probe, now)
                answer = post(c.url, token, recs)
                assert answer["rejected"] == [], answer
            seed_alerts(influx, now)
            yield c
        finally:
            c.stop()


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_status_json_holds_what_the_page_shows(collector: Collector) -> None:
    """``/api/v1/status``: the probes with their coordinates, latency per region and
    target with availability, the current anycast site per region, DNS's share of TTFB,
    and only the alerts whose latest change is to firing."""
    status, _, body = get(f"{collector.admin_url}/api/v1/status")
    assert status == 200, body
    d = json.loads(body)
    assert {(p["probe"], p["region"], p["lat"], p["lon"]) for p in d["probes"]} == {
        (p, r, lat, lon) for p, (r, _, lat, lon, _) in PROBES.items()
    } | {(UNMAPPED, "eu-west", None, None), (SILENT, "us-east", 40.7, -74.0)}
    state = {p["probe"]: (p["state"], p["median_ms"]) for p in d["probes"]}
    assert all(state[p][0] == "ok" and state[p][1] is not None for p in PROBES)
    assert state[UNMAPPED] == ("ok", None)  # listed, though it has no coordinates
    assert state[SILENT] == ("silent", None)  # never a green dot while silent
    cells = {(r["region"], r["target"]): r for r in d["latency"]}
    assert set(cells) == {
        (r, t) for r in ("eu-west", "us-east") for t in ("ns-anycast", "ns-unicast")
    }
    assert cells[("us-east", "ns-unicast")]["p50_ms"] == pytest.approx(82.0)
    assert cells[("eu-west", "ns-anycast")]["availability"] == pytest.approx(10 / 12)
    assert [(s["region"], s["site"], s["probes"], s["current"]) for s in d["sites"]] == [
        ("eu-west", "pop-fra1", ["p-par-1"], True),
        ("eu-west", "pop-iad1", ["p-fra-1"], False),
        ("us-east", "pop-iad1", ["p-iad-1"], True),
    ]  # one probe at each eu-west site: the tie goes to the first by name
    assert d["inflation"] == [
        {
            "region": "eu-west",
            "target": "ns-anycast",
            "site": "pop-fra1",  # a tie between the probes' sites: the first by name
            "best": "pop-fra1",
            "inflation_ms": 35.0,  # the median of 0 and 70 ms
            "anycast_ms": 50.0,
            "best_ms": 15.0,
            "geo_ms": 32.1,
            "probes": 2,
            "at_best": 1,
        }
    ]
    share = {(t["region"], t["target"]): t["dns_share"] for t in d["ttfb"]}
    assert share == {
        ("eu-west", "www"): pytest.approx(0.12),
        ("us-east", "www"): pytest.approx(0.12),
    }
    assert [(a["rule"], a["region"], a["target"]) for a in d["alerts"]] == [
        ("latency", "eu-west", "ns-anycast"),
        ("silence", "us-east", ""),
    ]
    # the path difference its traces found: the alert's probe first, the control last
    assert [a["path"] for a in d["alerts"]] == [[PATH_WORDS, CONTROL_WORDS], []]


def test_the_page_is_on_the_admin_listener_only(collector: Collector) -> None:
    """``/`` is the page on the admin listener (with a CSP that lets only its own inline
    script and style run), and not found on the public one."""
    status, headers, body = get(f"{collector.admin_url}/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "script-src 'sha256-" in headers["Content-Security-Policy"]
    assert b"{{WORLD}}" not in body and b'class="land" d="M' in body
    assert not re.search(rb"(src|href)=\"(https?:)?//", body), "an external asset"
    assert get(f"{collector.url}/")[0] == 404
    assert get(f"{collector.url}/api/v1/status")[0] == 404


def chromium(url: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on ``url``, its console on stderr."""
    assert CHROMIUM, "chromium is not installed (apt-get install chromium)"
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_page_in_chromium_shows_regions_sites_and_the_firing_alert(
    collector: Collector, tmp_path: Path
) -> None:
    """Rendered by Chromium, the page shows both regions, the anycast sites and the
    firing alert (not the resolved one), the probes on the map, and logs nothing to the
    console: no script error, no refused resource."""
    out = chromium(f"{collector.admin_url}/", tmp_path, "--dump-dom")
    assert out.returncode == 0, out.stderr[-2000:]
    console = [line for line in out.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
    dom = out.stdout
    for text in (
        "eu-west",
        "us-east",
        "pop-fra1",
        "pop-iad1",
        "ns-anycast",
        "eu-west ns-anycast p50 48.5 ms against 12.25 ms",
        "12.0 %",
        "Anycast inflation per region",
        "35.0 ms",
        "1 of 2",
        PATH_WORDS,
        CONTROL_WORDS,
    ):
        assert text in dom, text
    assert "us-east slow" not in dom
    # the probes with coordinates are on the map, the silent one greyed; the one
    # without coordinates is in the list, which says it is not on the map
    assert len(re.findall(r"<circle ", dom)) == len(PROBES) + 1
    assert len(re.findall(r'<circle [^>]*class="p-stale"', dom)) == 1
    assert "(1 without coordinates, not on the map)" in dom and UNMAPPED in dom
    assert re.search(r'id="meta">last 15m, 5 probes · updated', dom), "the data did not load"
    assert re.search(r"[0-9]{1,2}:[0-9]{2}:[0-9]{2}\s?(AM |PM )?(UTC|GMT)", dom), "no time zone"


def test_the_page_says_when_influxdb_does_not_answer(tmp_path: Path) -> None:
    """With InfluxDB gone the JSON is a 503 naming it, and the page shows that line
    instead of failing in the console."""

    class Gone:
        url = f"http://127.0.0.1:{servers.free_port()}"

    c = Collector(Gone(), tmp_path, DB)  # type: ignore[arg-type]
    c.start()
    try:
        status, _, body = get(f"{c.admin_url}/api/v1/status")
        assert status == 503 and "does not answer" in json.loads(body)["error"]
        out = chromium(f"{c.admin_url}/", tmp_path, "--dump-dom")
        assert "cannot read the status: InfluxDB at" in out.stdout
        assert [line for line in out.stderr.splitlines() if "CONSOLE" in line] == []
    finally:
        c.stop()
