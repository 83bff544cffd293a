"""Asks in the lab: an operator asks ap-south's probe for the anycast address, and times
a failover with a drill, against the convergence delay and a tcpdump capture at the
probe.

One ``popwatch-lab up`` for the module (as tests/test_lab.py: its own lab, taken down at
the end); the tests run in file order and each leaves sin up. Needs root; skipped
without it, or when a lab is already up on this machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import pcap
from test_lab import LAB, RUN_DIR, lab

from popwatch_lab.stack import COLLECTOR_URL
from popwatch_lab.world import ANYCAST_V4, WORLD, ZONE

COLLECTOR = str(Path(sys.executable).parent / "popwatch-collector")
CONVERGENCE_S = 5.0  # the lab's default

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (network namespaces)"),
]


@pytest.fixture(scope="module")
def operator() -> Iterator[str]:
    """The lab, up, and an operator's token for its collector."""
    if (RUN_DIR / "control.sock").exists():
        pytest.skip("a lab is already up on this machine (popwatch-lab down first)")
    lab("up", "--quiet")
    try:
        yield subprocess.run(
            [COLLECTOR, "operators", "add", "lab-ops", "--data-dir", str(RUN_DIR / "collector")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    finally:
        subprocess.run([LAB, "down"], capture_output=True, timeout=120)


def post(token: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{COLLECTOR_URL}/api/v1/asks",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            out: dict[str, Any] = json.load(r)
    except urllib.error.HTTPError as e:
        pytest.fail(f"ask refused: {e.code} {e.read().decode()}")
    return out


def finished(token: str, ask_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        req = urllib.request.Request(
            f"{COLLECTOR_URL}/api/v1/asks/{ask_id}", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            body: dict[str, Any] = json.load(r)
        if body["status"] == "finished":
            return body
        assert time.monotonic() < deadline, f"ask {ask_id} not finished: {body['probes']}"
        time.sleep(0.2)


def dns_ask(**kw: Any) -> dict[str, Any]:
    return {
        "type": "dns",
        "target": ANYCAST_V4,
        "options": {"qname": ZONE, "nsid": True},
        "locations": [{"region": "ap-south"}],
        **kw,
    }


def test_ap_south_is_answered_by_sin_within_two_seconds(operator: str) -> None:
    """Asked from region=ap-south, a DNS query to the anycast address is answered by
    sin, sent within 2 s of the POST."""
    t0 = time.time()
    made = post(operator, dns_ask())
    assert [p["probe"] for p in made["probes"]] == ["probe-ap-south"], made
    body = finished(operator, made["id"], 30)
    (result,) = body["results"]
    assert result["site"] == "sin" and result["rcode"] == "NOERROR", result
    assert result["time"] / 1e9 - t0 < 2.0, (t0, result)


def ns_queries(path: Path) -> list[tuple[float, bool, int, int, str | None]]:
    """(time s, is an answer, querier's port, query id, NSID) of each NS query of the
    lab's zone and its answer in a capture: the drill's own, not the scheduled SOA."""
    import dns.edns
    import dns.message
    import dns.rdatatype

    out = []
    for d in pcap.dns(p for p in pcap.read(path) if p.family == 4):
        try:
            msg = dns.message.from_wire(d.message)
        except Exception:  # noqa: S112 - a truncated capture
            continue
        if not msg.question or msg.question[0].rdtype != dns.rdatatype.NS:
            continue
        nsid = next((o.to_wire().decode() for o in msg.options if o.otype == dns.edns.NSID), None)
        port = d.dst[1] if d.qr else d.src[1]
        out.append((d.ts_ns / 1e9, d.qr, port, d.qid, nsid))
    return out


def test_a_drill_times_the_failover_to_the_convergence_delay(operator: str, tmp_path: Path) -> None:
    """A drill from ap-south (10 queries a second, NS queries so the capture tells them
    from the scheduled SOA ones) while ``fail sin`` runs: one site change, sin to ams;
    its outage is the convergence delay within 0.2 s and, within 50 ms, what a tcpdump
    capture at the probe shows (the first query unanswered to the first ams answered);
    the queries it counts lost are the capture's; the figures are an ``event``. After
    it, with sin still failed, an ask from ap-south is answered by ams."""
    region = WORLD.region("ap-south")
    path = tmp_path / "drill.pcap"
    drill = dns_ask(count=150, interval_s=0.1, drill=True)
    drill["options"] = {**drill["options"], "qtype": "NS"}
    with pcap.capture(path, f"udp and host {ANYCAST_V4}", "bb", netns=region.netns):
        time.sleep(1)
        made = post(operator, drill)
        time.sleep(3)
        lab("fail", "sin")
        try:
            body = finished(operator, made["id"], 60)
            # the failover may have the alert engine judge ap-south's probe sick (its
            # anycast answers fail, and the page whose DNS that is): ask it anyway
            after = post(operator, dns_ask(healthy_only=False))
            answered = finished(operator, after["id"], 30)
        finally:
            lab("restore", "sin")
    (fig,) = body["figures"]
    assert fig["sites"] == ["sin", "ams"] and fig["flips"] == 1, fig
    (change,) = fig["changes"]
    assert abs(change["outage_ms"] / 1000 - CONVERGENCE_S) <= 0.2, change
    assert [r["site"] for r in answered["results"]] == ["ams"], answered

    packets = ns_queries(path)
    answers = {(port, qid): nsid for _, is_answer, port, qid, nsid in packets if is_answer}
    queries = sorted((t, answers.get((port, qid), "")) for t, a, port, qid, _ in packets if not a)
    assert len(queries) == 150, len(queries)
    last_sin = max(i for i, (_, site) in enumerate(queries) if site == "sin")
    first_ams = min(i for i, (_, site) in enumerate(queries) if site == "ams")
    first_lost = last_sin + 1
    seen_ms = (queries[first_ams][0] - queries[first_lost][0]) * 1000
    assert abs(change["outage_ms"] - seen_ms) <= 50, (change, seen_ms)
    assert change["lost"] == first_ams - first_lost, (change, first_ams - first_lost)

    from popwatch_lab import influx
    from popwatch_lab.stack import DATABASE, INFLUXDB_URL

    q = "SELECT * FROM event WHERE kind = 'drill' AND ask = '{}'"
    q = q.format(made["id"])
    deadline = time.monotonic() + 15
    while not (rows := influx.query(INFLUXDB_URL, q, DATABASE)):
        assert time.monotonic() < deadline, "no drill event"
        time.sleep(0.5)
    (event,) = rows
    assert (event["from_site"], event["to_site"], event["region"]) == ("sin", "ams", "ap-south")
    assert event["outage_ms"] == change["outage_ms"] and event["lost"] == change["lost"]
