"""Asks end to end on loopback: real ``popwatch-collector run`` processes, real
``popwatch-probe run`` processes long-polling them, a real Knot to measure, a real
InfluxDB 1.6.7 between the collectors, and a real HAProxy as the load balancer.

One fleet for the module (five probes in three regions, one operator); the tests run in
file order. The lab's regions and its failover are tests/test_lab_asks.py.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import servers
from support.influx import InfluxDB
from support.need import need
from support.procs import COLLECTOR, PROBE, STARTED, Collector, register

from popwatch_lab import influx as influxdb

#: probe -> (region, country)
FLEET = {
    "p-eu-1": ("eu-central", "DE"),
    "p-eu-2": ("eu-central", "DE"),
    "p-us-1": ("us-east", "US"),
    "p-ap-1": ("ap-south", "IN"),
    "p-capped": ("ap-south", "IN"),  # its own cap is 5 asked measurements a second
}
#: the bounds this fleet's collectors are started with (POPWATCH_LIMITS_*)
LIMITS = {
    "max_ask_probes": "4",
    "max_ask_qps_per_probe": "20",
    "max_ask_qps_per_target": "30",
    "max_ask_duration_s": "60",
}


def http(
    method: str,
    url: str,
    token: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """(status, JSON body or None, headers) of one request."""
    h = {"Content-Type": "application/json", **(headers or {})}
    if token:
        h["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=h, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw, status, hdrs = r.read(), r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        raw, status, hdrs = e.read(), e.code, dict(e.headers)
    return status, (json.loads(raw) if raw else None), hdrs


@dataclass
class Fleet:
    influx: InfluxDB
    db: str
    knot: servers.Knot
    data: Path
    tmp: Path
    tokens: dict[str, str]
    operator: str
    collector: Collector
    probes: dict[str, subprocess.Popen[bytes]]
    log: Path

    def ask(self, base: str | None = None, **kw: Any) -> tuple[int, Any, dict[str, str]]:
        body = {
            "type": "dns",
            "target": "127.0.0.1",
            "options": {"qname": "example.test", "nsid": True, "port": self.knot.port},
            **kw,
        }
        return http("POST", f"{base or self.collector.url}/api/v1/asks", self.operator, body)

    def finished(self, ask_id: str, base: str | None = None, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            status, body, _ = http(
                "GET", f"{base or self.collector.url}/api/v1/asks/{ask_id}", self.operator
            )
            assert status == 200, body
            if body["status"] == "finished":
                return body
            assert time.monotonic() < deadline, f"ask {ask_id} not finished: {body}"
            time.sleep(0.2)


def waiting(admin_url: str) -> float:
    """How many command long-polls wait on a collector (its /metrics)."""
    with urllib.request.urlopen(f"{admin_url}/metrics", timeout=5) as r:
        m = re.search(rb"^popwatch_collector_command_waits (\S+)$", r.read(), re.M)
    return float(m.group(1)) if m else 0.0


def wait_polling(admin_url: str, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while waiting(admin_url) < n:
        assert time.monotonic() < deadline, f"fewer than {n} probes long-poll {admin_url}"
        time.sleep(0.1)


def start_probe(
    tmp: Path, collector_url: str, probe: str, token: str, extra: str = ""
) -> subprocess.Popen[bytes]:
    conf = tmp / f"{probe}.yaml"
    conf.write_text(f"id: {probe}\nbatch_s: 0.5\nheartbeat_s: 5\ncommand_wait_s: 25\n{extra}")
    env = {
        **os.environ,
        "POPWATCH_COLLECTOR_URL": collector_url,
        "POPWATCH_TOKEN": token,
        "POPWATCH_DATA_DIR": str(tmp / probe),
    }
    return subprocess.Popen(
        [PROBE, "run", "--config", str(conf)], env=env, stderr=subprocess.DEVNULL
    )


@pytest.fixture(scope="module")
def fleet(
    influx: InfluxDB, knot: servers.Knot, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("asks")
    data = tmp / "collector"
    db = "asks_" + uuid.uuid4().hex[:8]
    tokens: dict[str, str] = {}
    for probe, (region, country) in FLEET.items():
        tokens |= register(data, {probe: region}, "--country", country)
    operator = subprocess.run(
        [COLLECTOR, "operators", "add", "ops", "--data-dir", str(data)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    log = tmp / "collector.log"
    collector = Collector(influx, data, db, log=log)
    collector.env.update({f"POPWATCH_LIMITS_{k.upper()}": v for k, v in LIMITS.items()})
    collector.start()
    probes = {
        p: start_probe(tmp, collector.url, p, t, "ask_max_qps: 5\n" if p == "p-capped" else "")
        for p, t in tokens.items()
    }
    try:
        wait_polling(collector.admin_url, len(probes))
        yield Fleet(influx, db, knot, data, tmp, tokens, operator, collector, probes, log)
    finally:
        for proc in probes.values():
            proc.terminate()
        for proc in probes.values():
            proc.wait(15)
        collector.stop()


# ----------------------------------------------------------------------------- asking


def test_an_ask_reaches_the_chosen_probes_and_their_results_come_back(fleet: Fleet) -> None:
    """Two probes of eu-central asked for a DNS query: 202 with an id and a Location;
    both answer with Knot's NSID within 2 s of the POST, the results are in InfluxDB
    with the ask's tag, the GET has an ETag that gives 304, and an audit line says who
    asked what from whom."""
    t0 = time.time()
    status, made, headers = fleet.ask(locations=[{"region": "eu-central"}], limit=2)
    assert status == 202, made
    assert headers["Location"] == f"/api/v1/asks/{made['id']}" == made["location"]
    assert sorted(p["probe"] for p in made["probes"]) == ["p-eu-1", "p-eu-2"]
    body = fleet.finished(made["id"])
    results = body["results"]
    assert sorted(r["probe"] for r in results) == ["p-eu-1", "p-eu-2"]
    assert {r["site"] for r in results} == {fleet.knot.nsid}
    assert {r["rcode"] for r in results} == {"NOERROR"}
    assert all(r["time"] / 1e9 - t0 < 2.0 for r in results), (t0, results)
    assert {p["state"] for p in body["probes"]} == {"done"}
    q = "SELECT rtt_ms, probe FROM dns WHERE ask = '{}'"
    stored = fleet.influx.query(q.format(made["id"]), db=fleet.db)
    assert sorted(r["probe"] for r in stored) == ["p-eu-1", "p-eu-2"]
    url = f"{fleet.collector.url}/api/v1/asks/{made['id']}"
    status, _, h = http("GET", url, fleet.operator)
    status2, _, _ = http("GET", url, fleet.operator, headers={"If-None-Match": h["ETag"]})
    assert (status, status2) == (200, 304)
    audit = [ln for ln in fleet.log.read_text().splitlines() if f"ask {made['id']} by ops" in ln]
    assert len(audit) == 1 and "127.0.0.1" in audit[0] and "p-eu-1" in audit[0], audit


def test_a_trace_can_be_asked_for(fleet: Fleet) -> None:
    """``type: trace`` (udp, a DNS query with NSID to Knot's port): each probe's trace,
    its hop points and its summary, with the ask's tag; a loopback path is one hop that
    is the server, which names its site. Options the trace target refuses are a 400
    naming the key."""
    status, made, _ = fleet.ask(
        type="trace",
        options={"port": fleet.knot.port, "qname": "example.test", "max_hops": 4},
        locations=[{"region": "eu-central"}],
        limit=2,
    )
    assert status == 202, made
    body = fleet.finished(made["id"])
    summaries = [r for r in body["results"] if "path_id" in r]
    hops = [r for r in body["results"] if "hop" in r]
    assert sorted(r["probe"] for r in summaries) == ["p-eu-1", "p-eu-2"], body
    assert {(r["reached"], r["hops"], r["site"]) for r in summaries} == {
        (True, 1, fleet.knot.nsid)
    }, summaries
    assert {(r["hop"], r["addr"], r["answered"]) for r in hops} == {("1", "127.0.0.1", "reply")}
    assert {p["state"] for p in body["probes"]} == {"done"}
    status, refused, _ = fleet.ask(type="trace", options={"max_hops": 99})
    assert status == 400 and refused["error"].startswith("options.max_hops"), refused


def test_the_stream_sends_one_event_per_result_then_finished(fleet: Fleet) -> None:
    """``/stream`` is Server-Sent Events: a ``result`` event for each of 3 rounds of two
    probes, then ``finished``."""
    status, made, _ = fleet.ask(
        locations=[{"region": "eu-central"}], limit=2, count=3, interval_s=0.2
    )
    assert status == 202, made
    req = urllib.request.Request(
        f"{fleet.collector.url}{made['location']}/stream",
        headers={"Authorization": f"Bearer {fleet.operator}"},
    )
    events: list[tuple[str, Any]] = []
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        event = ""
        for raw in r:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                events.append((event, json.loads(line[6:])))
                if event == "finished":
                    break
    kinds = [e for e, _ in events]
    assert kinds == ["result"] * 6 + ["finished"], kinds
    assert len({(d["probe"], d["time"]) for e, d in events if e == "result"}) == 6


def test_selection_by_country_probe_and_limit(fleet: Fleet) -> None:
    """country picks its probes, probe one probe, each location its own limit, and the
    global limit caps them all."""
    _, made, _ = fleet.ask(locations=[{"country": "us"}], limit=3)
    assert [p["probe"] for p in made["probes"]] == ["p-us-1"]
    _, made, _ = fleet.ask(locations=[{"probe": "p-eu-2"}, {"probe": "p-ap-1"}], limit=2)
    assert sorted(p["probe"] for p in made["probes"]) == ["p-ap-1", "p-eu-2"]
    _, made, _ = fleet.ask(
        locations=[{"region": "eu-central", "limit": 1}, {"region": "ap-south", "limit": 1}],
        limit=4,
    )
    regions = sorted(p["region"] for p in made["probes"])
    assert regions == ["ap-south", "eu-central"], made
    status, body, _ = fleet.ask(locations=[{"region": "mars"}])
    assert status == 422 and "no probe matches" in body["error"]


def test_a_sick_probe_is_skipped_and_the_answer_says_so(fleet: Fleet) -> None:
    """A probe whose ``probe`` alert fires is skipped with healthy_only (the default),
    and the answer names it with the reason; a resolved one is asked again; with
    healthy_only false it is asked.

    The alert point is written here as the engine writes it (collector/alerts/state.py:
    rule, severity, region, probe, state): making the engine itself judge a probe sick
    needs half an hour of baselines (tests/test_alerts.py covers it writing these)."""
    now = time.time_ns()
    point = "alert,probe=p-eu-1,region=eu-central,rule=probe,severity=info,state={} value=1 {}"

    def write(line: str) -> None:
        influxdb.write(fleet.influx.url, fleet.db, [line])

    write(point.format("firing", now - 10**9))
    status, made, _ = fleet.ask(locations=[{"region": "eu-central"}], limit=2)
    assert status == 202
    assert [p["probe"] for p in made["probes"]] == ["p-eu-2"]
    assert made["skipped"] == [
        {
            "probe": "p-eu-1",
            "reason": "sick: its probe alert fires (the alert engine judges the probe's own "
            "network bad)",
        }
    ]
    _, made, _ = fleet.ask(locations=[{"region": "eu-central"}], limit=2, healthy_only=False)
    assert sorted(p["probe"] for p in made["probes"]) == ["p-eu-1", "p-eu-2"]
    silent = (
        "alert,probe=p-us-1,region=us-east,rule=silence,severity=warning,state=firing value=9 {}"
    )
    write(silent.format(now))
    status, body, _ = fleet.ask(locations=[{"region": "us-east"}])
    assert status == 422 and body["skipped"][0]["reason"].startswith("silent"), body
    write(point.format("resolved", now))
    write(silent.format(now + 1).replace("firing", "resolved"))
    _, made, _ = fleet.ask(locations=[{"region": "eu-central"}], limit=2)
    assert sorted(p["probe"] for p in made["probes"]) == ["p-eu-1", "p-eu-2"]
    assert made["skipped"] == []


# ----------------------------------------------------------------------------- tokens


def test_asks_take_operator_tokens_only(fleet: Fleet) -> None:
    """No token, a probe's token, a wrong one and a revoked operator's are refused on
    the asks API (401/403, each saying why); an operator's token is refused on the probe
    API."""
    url = f"{fleet.collector.url}/api/v1/asks"
    body = {"type": "dns", "target": "127.0.0.1"}
    status, answer, _ = http("POST", url, None, body)
    assert status == 401 and "operator token" in answer["error"]
    status, answer, _ = http("POST", url, fleet.tokens["p-eu-1"], body)
    assert status == 403 and "a probe token" in answer["error"]
    status, _, _ = http("POST", url, fleet.operator[:-1] + "x", body)
    assert status == 401
    spare = subprocess.run(
        [COLLECTOR, "operators", "add", "spare", "--data-dir", str(fleet.data)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    status, _, _ = http("GET", f"{url}/0123456789abcdef", spare)
    assert status == 404  # known operator, no such ask
    subprocess.run(
        [COLLECTOR, "operators", "revoke", "spare", "--data-dir", str(fleet.data)], check=True
    )
    status, answer, _ = http("GET", f"{url}/0123456789abcdef", spare)
    assert status == 401 and "revoked" in answer["error"]
    status, answer, _ = http(
        "GET", f"{fleet.collector.url}/api/v1/commands?wait_s=0", fleet.operator
    )
    assert status == 403 and "operator token" in answer["error"]


# ----------------------------------------------------------------------------- limits


@pytest.mark.parametrize(
    ("ask", "status", "key"),
    [
        ({"limit": 5}, 403, "limits.max_ask_probes"),
        ({"count": 10, "interval_s": 0.02}, 403, "limits.max_ask_qps_per_probe"),
        ({"count": 100, "interval_s": 1}, 403, "limits.max_ask_duration_s"),
    ],
)
def test_each_bound_refuses_naming_its_key(
    fleet: Fleet, ask: dict[str, Any], status: int, key: str
) -> None:
    """An ask past a bound is refused before any probe hears of it, naming the key."""
    got, body, _ = fleet.ask(**ask)
    assert got == status and body["error"].startswith(f"over {key}"), body


def test_the_rate_to_one_target_over_the_fleet_is_bounded(fleet: Fleet) -> None:
    """Asks running at once may send 30 queries/s to one target (the fleet's
    limits.max_ask_qps_per_target here): two asks of 3 probes at 5/s to ::1 pass, a
    third is 429 naming the key, and another target is not held up; nor may one probe
    be asked for more than 20/s over its asks."""
    time.sleep(3)  # the asks of the tests before have sent all they will (and timed out)
    burst: dict[str, Any] = {
        "locations": [{"region": "eu-central"}, {"probe": "p-ap-1"}],
        "limit": 3,
    }
    burst |= {"count": 10, "interval_s": 0.2, "target": "::1"}
    first, _, _ = fleet.ask(**burst)
    second, _, _ = fleet.ask(**burst)
    third, body, headers = fleet.ask(**burst)
    assert (first, second, third) == (202, 202, 429), body
    assert body["error"].startswith("over limits.max_ask_qps_per_target") and headers["Retry-After"]
    other, _, _ = fleet.ask(locations=[{"probe": "p-us-1"}])
    assert other == 202
    # the per-probe rate too: p-eu-1 runs 10/s now; 15/s more would pass its 20/s
    status, body, _ = fleet.ask(locations=[{"probe": "p-eu-1"}], count=10, interval_s=1 / 15)
    assert status == 429 and body["error"].startswith("over limits.max_ask_qps_per_probe")
    time.sleep(4.5)  # the bursts end: 10 x 0.2 s, and their timeout


def test_a_probe_enforces_its_own_cap(fleet: Fleet) -> None:
    """p-capped's own ask_max_qps is 5: asked for 10 a second (which the collector
    allows), it refuses, and the ask says why; asked for 2 a second, it measures."""
    status, made, _ = fleet.ask(locations=[{"probe": "p-capped"}], count=5, interval_s=0.1)
    assert status == 202
    body = fleet.finished(made["id"])
    (probe,) = body["probes"]
    assert probe["state"] == "refused" and "ask_max_qps" in probe["message"], probe
    assert body["results"] == []
    status, made, _ = fleet.ask(locations=[{"probe": "p-capped"}], count=3, interval_s=0.5)
    body = fleet.finished(made["id"])
    assert len(body["results"]) == 3 and body["probes"][0]["state"] == "done"


def test_the_allowed_networks_bound_every_ask(
    fleet: Fleet, influx: InfluxDB, tmp_path: Path
) -> None:
    """With limits.ask_target_networks, an address outside them is refused (403 naming
    the key), one inside is asked."""
    other = Collector(influx, fleet.data, fleet.db)
    other.env["POPWATCH_LIMITS_ASK_TARGET_NETWORKS"] = "::1/128, 10.0.0.0/8"
    other.start()
    status, body, _ = fleet.ask(base=other.url)
    assert status == 403 and body["error"].startswith("over limits.ask_target_networks"), body
    status, body, _ = fleet.ask(base=other.url, target="::1", locations=[{"probe": "p-us-1"}])
    assert status == 202, body


# ----------------------------------------------------------------------------- drills


def test_a_drill_reports_its_figures_and_writes_events(fleet: Fleet) -> None:
    """A short drill against one Knot: no site change, no loss; the figures in the
    answer, and an ``event`` of kind drill with the ask's tag in InfluxDB."""
    status, made, _ = fleet.ask(
        locations=[{"probe": "p-ap-1"}], count=20, interval_s=0.1, drill=True
    )
    assert status == 202, made
    body = fleet.finished(made["id"])
    (fig,) = body["figures"]
    assert (fig["queries"], fig["lost"], fig["flips"]) == (20, 0, 0), fig
    assert fig["sites"] == [fleet.knot.nsid]
    deadline = time.monotonic() + 10
    q = "SELECT * FROM event WHERE kind = 'drill' AND ask = '{}'"
    q = q.format(made["id"])
    while not (rows := fleet.influx.query(q, db=fleet.db)):
        assert time.monotonic() < deadline, "no drill event"
        time.sleep(0.2)
    assert [(r["probe"], r["flips"], r["lost"]) for r in rows] == [("p-ap-1", 0, 0)]


def test_the_cli_prints_a_live_table_and_a_summary(fleet: Fleet) -> None:
    """``popwatch-collector ask`` prints a row per result (probe, region, site, rcode,
    rtt_ms) and a line per region; --json one result per line."""
    env = {**os.environ, "POPWATCH_OPERATOR_TOKEN": fleet.operator}
    argv = [
        COLLECTOR, "ask", "--collector", fleet.collector.url, "--from", "region=eu-central",
        "--from", "region=us-east", "--limit", "3", "dns", "127.0.0.1",
        "--port", str(fleet.knot.port), "--qname", "example.test", "--nsid",
    ]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["probe", "region", "site", "rcode", "rtt_ms"]
    rows = [ln.split() for ln in lines[1:4]]
    assert sorted(r[0] for r in rows) == ["p-eu-1", "p-eu-2", "p-us-1"]
    assert {r[2] for r in rows} == {fleet.knot.nsid} and {r[3] for r in rows} == {"NOERROR"}
    assert any(ln.startswith("eu-central: 2 results, 2 answered") for ln in lines), lines
    assert any(ln.startswith("us-east: 1 results, 1 answered") for ln in lines), lines
    js = subprocess.run([*argv[:2], "--json", *argv[2:]], capture_output=True, text=True, env=env)
    assert js.returncode == 0 and len(js.stdout.splitlines()) == 3
    assert {json.loads(ln)["site"] for ln in js.stdout.splitlines()} == {fleet.knot.nsid}
    bad = subprocess.run(
        [*argv[:2], "--from", "planet=mars", *argv[2:]], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "planet" in bad.stderr
    helped = subprocess.run([COLLECTOR, "ask", "--help"], capture_output=True, text=True)
    assert "--drill --from region=ap-south --duration 120 --interval 0.1" in helped.stdout


# ----------------------------------------------------------------------------- collectors


def test_the_long_poll_survives_the_collector_restarting(fleet: Fleet) -> None:
    """The collector stops and starts again: every probe's long-poll comes back, and an
    ask made then reaches them."""
    fleet.collector.stop()
    fleet.collector.start()
    STARTED.remove(fleet.collector)  # the module's collector: the fixture stops it
    wait_polling(fleet.collector.admin_url, len(fleet.probes), timeout=40)
    status, made, _ = fleet.ask(locations=[{"region": "eu-central"}], limit=2)
    assert status == 202
    assert len(fleet.finished(made["id"])["results"]) == 2


def haproxy(tmp: Path, backends: list[int]) -> tuple[subprocess.Popen[bytes], int]:
    """HAProxy round-robin over ``backends`` (each request balanced on its own)."""
    need("haproxy")
    port = servers.free_port()
    cfg = tmp / "haproxy.cfg"
    servers_ = "\n".join(f"  server c{i} 127.0.0.1:{p}" for i, p in enumerate(backends))
    cfg.write_text(
        "global\n  maxconn 4096\ndefaults\n  mode http\n  option http-server-close\n"
        "  timeout connect 2s\n  timeout client 90s\n  timeout server 90s\n"
        f"frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\n"
        f"backend b\n  balance roundrobin\n{servers_}\n"
    )
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stderr=subprocess.DEVNULL)
    servers.wait_http(f"http://127.0.0.1:{port}/healthz")
    return proc, port


def test_an_ask_made_at_one_collector_reaches_a_probe_polling_another(
    fleet: Fleet, influx: InfluxDB, tmp_path: Path
) -> None:
    """Collector B (its own data directory, a copy of the registry, the same InfluxDB):
    a probe long-polling B gets an ask made at A, its results are read at B and at A;
    and behind HAProxy balancing every request between A and B, a probe and an operator
    that only know the load balancer ask and answer as with one collector."""
    tokens = register(fleet.data, {"p-b": "us-west", "p-lb": "sa-east"})
    data_b = tmp_path / "b"
    data_b.mkdir()
    # a copy of the registry, as docs/scaling.md has it (through SQLite: it is in WAL mode)
    with (
        sqlite3.connect(fleet.data / "registry.sqlite") as src,
        sqlite3.connect(data_b / "registry.sqlite") as dst,
    ):
        src.backup(dst)
    b = Collector(influx, data_b, fleet.db)
    b.env.update({f"POPWATCH_LIMITS_{k.upper()}": v for k, v in LIMITS.items()})
    b.start()
    lone = start_probe(tmp_path, b.url, "p-b", tokens["p-b"])
    lb, port = haproxy(tmp_path, [fleet.collector.port, b.port])
    behind = start_probe(tmp_path, f"http://127.0.0.1:{port}", "p-lb", tokens["p-lb"])
    try:
        wait_polling(b.admin_url, 1)
        t0 = time.time()
        status, made, _ = fleet.ask(locations=[{"probe": "p-b"}])  # at A
        assert status == 202
        body = fleet.finished(made["id"], base=b.url)  # read at B
        assert [r["probe"] for r in body["results"]] == ["p-b"]
        assert all(r["time"] / 1e9 - t0 < 2.0 for r in body["results"]), (t0, body)
        assert fleet.finished(made["id"])["results"] == body["results"]
        lb_url = f"http://127.0.0.1:{port}"
        for _ in range(4):  # asks land on A and B in turn, the long-poll too
            status, made, _ = fleet.ask(base=lb_url, locations=[{"probe": "p-lb"}])
            assert status == 202, made
            got = fleet.finished(made["id"], base=lb_url)["results"]
            assert [r["probe"] for r in got] == ["p-lb"], got
    finally:
        for proc in (lone, behind, lb):
            proc.terminate()
            proc.wait(15)
        b.stop()
