"""The HTTP check against a real HTTPS server whose phases are slowed on purpose.

The server runs in a network namespace of its own behind the lab's user-space wire
(tests/support/web.py, popwatch_lab/wire.py); its host name resolves through a real Knot
on loopback.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from support import servers, web

from probe.checks.http import HttpJob, measure
from probe.config import HttpTarget
from probe.runner import run_job
from probe.wire import HttpRecord

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for netns and TUN")

DELAY = 0.050
HOST = "web.example.test"


@pytest.fixture(scope="module")
def lab() -> Iterator[web.WebLab]:
    with web.WebLab(connect_delay=DELAY, tls_delay=DELAY) as w:
        yield w.start()


@pytest.fixture(scope="module")
def dns(lab: web.WebLab) -> Iterator[servers.Knot]:
    """A Knot of its own that knows the web host (A only: there is no AAAA)."""
    with servers.Knot("knot-web", "id-web") as k:
        yield k.start(f"web A {lab.address}\n")


Fetch = Callable[..., HttpRecord]


@pytest.fixture
def target(lab: web.WebLab, dns: servers.Knot) -> Callable[..., HttpTarget]:
    def make(
        port: int = web.PLAIN_PORT, host: str = HOST, query: dict[str, Any] | None = None, **kw: Any
    ) -> HttpTarget:
        spec: dict[str, Any] = {
            "kind": "http",
            "name": "site",
            "topology": "anycast",
            "url": lab.url(port, host=host, **(query or {})),
            "resolver": f"127.0.0.1:{dns.port}",
            "family": 4,
            "tls_ca": str(lab.cert),
            "timeout": 2.0,
        }
        spec.update(kw)
        return msgspec.convert(spec, HttpTarget)

    return make


PHASES = ("dns_ms", "connect_ms", "tls_ms", "ttfb_ms", "total_ms")


@dataclass
class Phases:
    """Each phase over ``n`` fetches: its median, and how far that median could be off
    (the spread of the middle three fetches: what this machine's noise was just now)."""

    samples: dict[str, list[float]]

    @property
    def median(self) -> dict[str, float]:
        return {p: statistics.median(v) for p, v in self.samples.items()}

    @property
    def noise(self) -> dict[str, float]:
        out = {}
        for p, v in self.samples.items():
            s, mid = sorted(v), len(v) // 2
            out[p] = s[mid + 1] - s[mid - 1]
        return out


async def phases(t: HttpTarget, n: int = 7) -> Phases:
    """Every phase of ``n`` fetches (all must succeed)."""
    records = [await measure(HttpJob(t)) for _ in range(n)]
    assert all(r.error is None for r in records), records
    return Phases({p: [getattr(r, p) or 0.0 for r in records] for p in PHASES})


@pytest.mark.parametrize(
    ("port", "query", "phase"),
    [
        (web.CONNECT_PORT, {}, "connect_ms"),  # the wire holds the SYN-ACK
        (web.TLS_PORT, {}, "tls_ms"),  # the server waits before the handshake
        (web.PLAIN_PORT, {"ttfb": DELAY}, "ttfb_ms"),  # ... before the headers
        (web.PLAIN_PORT, {"body": DELAY}, "total_ms"),  # ... between headers and body
    ],
)
async def test_a_delay_shows_in_its_phase_only(
    target: Callable[..., HttpTarget], port: int, query: dict[str, Any], phase: str
) -> None:
    """A 50 ms delay lands in its own phase (within 3 ms) and in no other (within 3 ms
    of nothing); the whole fetch grows by it too (within 5 ms).

    Each "within" is of the medians of 7 fetches with the delay and 7 without, plus the
    noise the same test measured: how far each median could be off (the spread of its
    middle three fetches, with and without). On a quiet machine that is a millisecond
    or less; a busy one widens it instead of failing the test. The phase itself
    can never be shorter than the delay: that bound has no slack."""
    base = await phases(target())
    slow = await phases(target(port, query=query))
    b, s = base.median, slow.median
    extra = {p: s[p] - b[p] for p in PHASES}
    slack = {p: base.noise[p] + slow.noise[p] for p in PHASES}
    seen = {"extra": extra, "slack": slack, "base": base.samples, "slow": slow.samples}
    assert s[phase] >= DELAY * 1000, seen
    assert abs(extra[phase] - DELAY * 1000) <= 3.0 + slack[phase], seen
    for other in ("dns_ms", "connect_ms", "tls_ms", "ttfb_ms"):
        if other != phase:
            assert abs(extra[other]) < 3.0 + slack[other], (other, seen)
    # the time to first byte and the whole fetch grow by the same delay, body aside
    assert abs(extra["total_ms"] - DELAY * 1000) <= 5.0 + slack["total_ms"], seen


async def test_dns_phase_is_one_query_on_the_nameserver(
    target: Callable[..., HttpTarget], dns: servers.Knot
) -> None:
    """Each fetch resolves afresh: the nameserver sees one query per measurement."""
    t = target()
    before = dns.queries()
    records = [await measure(HttpJob(t)) for _ in range(10)]
    assert all(r.error is None and r.dns_ms and r.dns_ms > 0 for r in records)
    assert dns.queries() - before == 10


async def test_record_fields(target: Callable[..., HttpTarget], lab: web.WebLab) -> None:
    """status, bytes, ip, family, HTTP version and certificate days are reported."""
    r = await measure(HttpJob(target(query={"size": 1234})))
    assert r.error is None
    assert r.status == 200 and r.bytes == 1234 and r.redirects == 0
    assert r.ip == lab.address and r.family == 4
    assert r.http_version == "1.1"
    assert r.cert_days is not None and 1.9 < r.cert_days <= 2.0  # a 2-day certificate
    assert r.total_ms and r.ttfb_ms and r.total_ms >= r.ttfb_ms


async def test_plain_http_has_no_tls_phase(target: Callable[..., HttpTarget]) -> None:
    """http:// has no TLS phase (absent, not 0) and no certificate."""
    r = await measure(HttpJob(target(web.HTTP_PORT)))
    assert r.error is None and r.status == 200
    assert r.tls_ms is None and r.cert_days is None and r.connect_ms


async def test_ip_literal_has_no_dns_phase(
    target: Callable[..., HttpTarget], lab: web.WebLab
) -> None:
    """A URL with an IP address needs no lookup: dns_ms is absent."""
    r = await measure(HttpJob(target(host=lab.address)))
    assert r.error is None and r.dns_ms is None and r.connect_ms


async def test_redirect_chain_is_followed_and_counted(target: Callable[..., HttpTarget]) -> None:
    """A chain of 3 redirects ends in a 200 and says redirects=3; phases sum the hops:
    on the port whose SYN-ACKs the wire holds 50 ms, the connect phase is four holds or
    more (four connections), where the last hop alone would be one.

    A lower bound only: the wire never lets a SYN-ACK go early, and a loaded machine
    only adds to it (a ratio to a connect of 0.19 ms, 2.5 x, failed on a busy machine)."""
    r = await measure(HttpJob(target(web.CONNECT_PORT, query={"redirect": 3})))
    assert r.error is None and r.status == 200 and r.redirects == 3
    assert r.connect_ms and r.connect_ms >= 4 * DELAY * 1000, r


async def test_too_many_redirects(target: Callable[..., HttpTarget]) -> None:
    """More redirects than allowed is an http error that says how many."""
    r = await measure(HttpJob(target(query={"redirect": 5}, max_redirects=2)))
    assert r.error == "http: more than 2 redirects"
    assert r.ttfb_ms is not None  # the hops that were fetched are kept


async def test_redirect_not_followed_is_a_status_error(target: Callable[..., HttpTarget]) -> None:
    """With follow_redirects off, a 302 is a status mismatch unless it is expected."""
    r = await measure(HttpJob(target(query={"redirect": 1}, follow_redirects=False)))
    assert r.status == 302 and r.error == "status: got 302, expected 2xx"
    ok = await measure(
        HttpJob(target(query={"redirect": 1}, follow_redirects=False, expect_status=[301, 302]))
    )
    assert ok.error is None and ok.status == 302


async def test_status_mismatch_keeps_every_phase(target: Callable[..., HttpTarget]) -> None:
    """A 503 is error 'status: ...' with all phases, the status and the size kept."""
    r = await measure(HttpJob(target(query={"status": 503})))
    assert r.error == "status: got 503, expected 2xx"
    assert r.status == 503 and r.bytes == 1000
    assert r.dns_ms and r.connect_ms and r.tls_ms and r.ttfb_ms and r.total_ms


async def test_expected_status_and_body_regex(target: Callable[..., HttpTarget]) -> None:
    """expect_status and body_regex decide success."""
    ok = await measure(
        HttpJob(
            target(
                query={"status": 404, "text": "gone fishing"},
                expect_status=[404],
                body_regex="fish",
            )
        )
    )
    assert ok.error is None and ok.status == 404
    bad = await measure(HttpJob(target(query={"text": "hello"}, body_regex="^bye")))
    assert bad.error == "body: no match for '^bye'" and bad.status == 200


async def test_head_method(target: Callable[..., HttpTarget]) -> None:
    """HEAD fetches no body."""
    r = await measure(HttpJob(target(method="HEAD")))
    assert r.error is None and r.status == 200 and r.bytes == 0


async def test_dns_failure(target: Callable[..., HttpTarget]) -> None:
    """A name that does not resolve is 'dns: ...' with no later phase."""
    r = await measure(HttpJob(target(host="nope.example.test")))
    assert r.error is not None and r.error.startswith("dns: nope.example.test")
    assert r.connect_ms is None and r.tls_ms is None and r.ttfb_ms is None and r.dns_ms is None


async def test_ipv6_preference_without_aaaa_is_a_dns_failure(
    target: Callable[..., HttpTarget],
) -> None:
    """family: 6 asks only for AAAA; the host has none, so it fails in the DNS phase."""
    r = await measure(HttpJob(target(family=6)))
    assert r.error is not None and r.error.startswith("dns: ")


async def test_connect_refused(target: Callable[..., HttpTarget]) -> None:
    """A closed port is 'connect: ECONNREFUSED ...'; the DNS phase is kept."""
    r = await measure(HttpJob(target(port=444)))
    assert r.error is not None and r.error.startswith("connect: ECONNREFUSED")
    assert r.dns_ms is not None and r.connect_ms is None and r.tls_ms is None


async def test_tls_failure_keeps_connect(target: Callable[..., HttpTarget]) -> None:
    """An untrusted certificate is 'tls: certificate ...' with dns and connect kept."""
    r = await measure(HttpJob(target(tls_ca=None)))
    assert r.error is not None and r.error.startswith("tls: certificate")
    assert r.dns_ms is not None and r.connect_ms is not None and r.tls_ms is None


async def test_ttfb_timeout_keeps_earlier_phases(target: Callable[..., HttpTarget]) -> None:
    """A server slower than the timeout is 'timeout: ttfb ...' after dns, connect, tls."""
    r = await run_job(HttpJob(target(query={"ttfb": 1.5}, timeout=0.4)))
    assert isinstance(r, HttpRecord)
    assert r.error == "timeout: ttfb timed out"
    assert r.dns_ms and r.connect_ms and r.tls_ms
    assert r.ttfb_ms is None and r.total_ms is None and r.status is None


async def test_connect_timeout(target: Callable[..., HttpTarget]) -> None:
    """A SYN-ACK slower than the timeout is 'connect: connect timed out'."""
    r = await measure(HttpJob(target(web.CONNECT_PORT, timeout=0.02)))
    assert r.error == "connect: connect timed out"
    assert r.dns_ms is not None and r.connect_ms is None


PROBE = [str(Path(sys.executable).parent / "popwatch-probe")]


def test_once_https_prints_phases_and_dns_share(lab: web.WebLab, dns: servers.Knot) -> None:
    """`once --https URL --resolver` prints each fetch's phases and DNS's share of TTFB."""
    out = subprocess.run(
        [
            *PROBE,
            "once",
            "--https",
            lab.url(host=HOST, ttfb=0.01),
            "--resolver",
            f"127.0.0.1:{dns.port}",
            "--tls-ca",
            str(lab.cert),
            "-4",
            "--count",
            "3",
            "--interval",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:8] == [
        "#",
        "ip",
        "status",
        "dns_ms",
        "conn_ms",
        "tls_ms",
        "ttfb_ms",
        "total_ms",
    ]
    assert all(lab.address in line and " 200 " in line for line in lines[1:4])
    assert lines[4].startswith("3 fetches, 3 ok, 0 failed; median ms: dns ")
    assert "% of time to first byte" in lines[4]


def test_once_https_json_and_failure_exit(lab: web.WebLab, dns: servers.Knot) -> None:
    """--json prints http wire records; when every fetch fails the exit status is 1."""
    out = subprocess.run(
        [
            *PROBE,
            "once",
            "--https",
            lab.url(host=HOST, status=500),
            "--resolver",
            f"127.0.0.1:{dns.port}",
            "--tls-ca",
            str(lab.cert),
            "-4",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    record = json.loads(out.stdout)
    assert record["kind"] == "http" and record["status"] == 500
    assert record["error"] == "status: got 500, expected 2xx"


def test_run_measures_http_and_dns_targets(
    lab: web.WebLab, dns: servers.Knot, tmp_path: Path
) -> None:
    """`run` schedules http targets next to dns targets and writes both kinds of record."""
    targets = tmp_path / "targets.yaml"
    targets.write_text(
        f"""targets:
  - kind: http
    name: site
    topology: anycast
    url: {lab.url(host=HOST)}
    resolver: 127.0.0.1:{dns.port}
    family: 4
    tls_ca: {lab.cert}
    interval: 1
    timeout: 0.9
  - name: ns
    topology: anycast
    server: 127.0.0.1
    port: {dns.port}
    interval: 1
    timeout: 0.9
    queries: [{{qname: example.test}}]
"""
    )
    output = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [*PROBE, "run", "--targets", str(targets), "--output", str(output)],
        stderr=subprocess.PIPE,
        text=True,
    )
    servers.wait_for_records(
        output, lambda rs: min(sum(r["kind"] == k for r in rs) for k in ("http", "dns")) >= 3
    )
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    records = [json.loads(x) for x in output.read_text().splitlines()]
    gaps = servers.series_spacing(records, lambda r: r["kind"])
    # each target once a second: no run skipped (2 s), none doubled (0 s); half an
    # interval of margin either way, which a busy machine's start lag never eats
    assert gaps and all(0.5 < g < 1.5 for g in gaps), gaps
    assert all(r["status"] == 200 and r["ttfb_ms"] > 0 for r in records if r["kind"] == "http")


def test_the_summary_says_when_there_was_no_dns_phase() -> None:
    """A page fetched from an IP-literal URL has no DNS phase: the `once` summary says so
    rather than "DNS is 0.0% of time to first byte" (it did)."""
    from probe.checks.http import CHECK

    def rec(dns_ms: float | None) -> HttpRecord:
        return HttpRecord(
            ts=1,
            target="once",
            url="https://198.18.0.2/",
            status=200,
            dns_ms=dns_ms,
            connect_ms=1.0,
            tls_ms=2.0,
            ttfb_ms=1.0,
            total_ms=5.0,
        )

    literal = CHECK.summary([rec(None), rec(None)])
    assert literal.endswith("; no DNS phase (the URL's host is an IP address)"), literal
    assert "DNS is" not in literal
    named = CHECK.summary([rec(1.0), rec(1.0)])
    assert named.endswith("; DNS is 20.0% of time to first byte"), named


async def test_a_body_past_max_body_bytes_is_an_error_and_read_no_further(
    target: Callable[..., HttpTarget],
) -> None:
    """A body of exactly ``max_body_bytes`` is fetched; one byte more is error "body:
    more than ...", with the phases before it kept; a body that never ends is cut there
    too (the error is the size's, not a timeout), and the probe reads no more of it than
    that and a buffer (was: read whole into memory, however large)."""
    exact = await measure(HttpJob(target(query={"size": 100_000}, max_body_bytes=100_000)))
    assert exact.error is None and exact.bytes == 100_000
    over = await measure(HttpJob(target(query={"size": 100_001}, max_body_bytes=100_000)))
    assert over.error == "body: more than 100000 bytes (max_body_bytes); not read further"
    assert over.status == 200 and over.ttfb_ms and over.total_ms is None
    assert 100_000 < (over.bytes or 0) <= 100_001
    endless = target(query={"endless": 1}, max_body_bytes=1_000_000, body_regex="y", timeout=2.0)
    cut = await measure(HttpJob(endless))
    assert cut.error == "body: more than 1000000 bytes (max_body_bytes); not read further"
    assert 1_000_000 < (cut.bytes or 0) <= 1_000_000 + (1 << 20)
