"""The trace check over paths of real router hops (network namespaces, veth links):
hop addresses, kernel-stamped round trips, the end of the path, over IPv4 and IPv6, by
UDP (a DNS query), ICMP and TCP (SYNs); a router that does not answer, a silent
destination, a loop, ECMP; as uid 10001
with every capability dropped; a path change as the alert engine reads it back from
InfluxDB. The probe runs as ``popwatch-probe once --trace ... --json`` inside
the source namespace.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from support.paths import LOOP_V4, LOOP_V6, SILENT_V4, SILENT_V6, Paths
from support.unprivileged import as_user, others_may_enter

ROOT = Path(__file__).resolve().parent.parent
MAIN = "import sys; from probe.cli import main; sys.argv[0] = 'popwatch-probe'; main()"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the paths need root (network namespaces)"),
]


@pytest.fixture(scope="module")
def reachable() -> Iterator[None]:
    """uid 10001 must reach the interpreter and the code (for the module's tests)."""
    with others_may_enter(ROOT, Path(sys.prefix)):
        yield


@pytest.fixture(scope="module")
def paths() -> Iterator[Paths]:
    """The paths, their neighbour caches warm (one trace each way and family first: a
    router's first ICMPv6 errors wait for neighbour discovery, and some are lost)."""
    with Paths() as p:
        for dst in (p.dst_v4, p.dst_v6):
            trace(p, "udp", dst, "--queries-per-hop", "2", "--hop-timeout", "0.3")
        yield p


def trace(
    paths: Paths, method: str, server: str, *flags: str, user: bool = False
) -> dict[str, Any]:
    """One trace from ``src``: its wire record."""
    argv = [sys.executable, "-c", MAIN, "once", "--trace", method, server, "--json", *flags]
    if user:
        argv = as_user(argv)
    out = subprocess.run(
        paths.exec("src", *argv), capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    assert lines, (out.returncode, out.stdout, out.stderr)
    record: dict[str, Any] = json.loads(lines[-1])
    return record


def routers(paths: Paths, family: int) -> tuple[set[str], set[str], str]:
    """The addresses r1 answers from (its link toward src), those of ra or rb (their
    links toward r1), and r3's (toward ra or rb: either)."""
    addr = paths.v4 if family == 4 else paths.v6
    r1 = {addr(1, "r1")}
    middle = {addr(2, "ra"), addr(3, "rb")}
    return r1, middle, "r3"


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("method", ["udp", "icmp", "tcp"])
def test_a_trace_names_each_router_and_the_end_of_the_path(
    paths: Paths, method: str, family: int
) -> None:
    """src -> r1 -> ra|rb -> r3 -> dst: four hops, each answered by the router at that
    distance (from the address of its link toward us), the last by dst itself; every
    round trip positive, kernel-stamped (tcp: a SYN has no TX stamp, and the record says
    so); one router at each TTL (one flow, tcp's too: each SYN from the same port); the
    path's id the hash of the addresses."""
    dst = paths.dst_v4 if family == 4 else paths.dst_v6
    r = trace(paths, method, dst, "--queries-per-hop", "3", "--hop-timeout", "0.5")
    stamps = "user" if method == "tcp" else "kernel"
    assert r["reached"] is True and r["timestamping"] == stamps, r
    hops = r["hops"]
    assert [h["ttl"] for h in hops] == [1, 2, 3, 4], hops
    addr = paths.v4 if family == 4 else paths.v6
    assert hops[0]["addr"] == addr(1, "r1")
    assert hops[1]["addr"] in {addr(2, "ra"), addr(3, "rb")}
    assert hops[2]["addr"] in {addr(4, "r3"), addr(5, "r3")}
    assert hops[3]["addr"] == dst
    assert [h.get("kind") for h in hops] == ["time-exceeded"] * 3 + [
        "unreachable" if method == "udp" else "reply"
    ]  # nothing listens on port 53 at dst: it says port-unreachable (tcp: RST)
    for h in hops:
        assert len(h["rtt_ms"]) == h["sent"] == 3 and not h.get("others"), h
        assert all(0 < v < 50 for v in h["rtt_ms"]), h
    assert len(r["path_id"]) == 16


@pytest.mark.parametrize("family", [4, 6])
def test_a_silent_destination_and_a_loop_are_what_the_trace_shows(
    paths: Paths, family: int
) -> None:
    """An address r3 blackholes: r1 and ra|rb answer, then nothing, to max_hops; not
    reached. A prefix r1 and ra send to each other: their addresses alternate."""
    silent = SILENT_V4 if family == 4 else SILENT_V6
    r = trace(paths, "udp", silent, "--max-hops", "5", "--queries-per-hop", "1",
              "--hop-timeout", "0.3")  # fmt: skip
    hops = r["hops"]
    assert r["reached"] is False and len(hops) == 5, r
    assert hops[0]["addr"] and hops[1]["addr"]
    assert [h.get("addr") for h in hops[2:]] == [None, None, None]
    assert all(not h.get("rtt_ms") for h in hops[2:])
    loop = LOOP_V4 if family == 4 else LOOP_V6
    r = trace(paths, "icmp", loop, "--max-hops", "6", "--queries-per-hop", "1",
              "--hop-timeout", "0.3")  # fmt: skip
    addrs = [h.get("addr") for h in r["hops"]]
    addr = paths.v4 if family == 4 else paths.v6
    # a router answers from the address of the link toward us (IPv4) or of the link the
    # query came in on (IPv6: r1's link to ra, once the query has looped)
    node = {addr(1, "r1"): "r1", addr(2, "r1"): "r1", addr(2, "ra"): "ra"}
    assert r["reached"] is False
    assert [node.get(a or "") for a in addrs] == ["r1", "ra"] * 3, addrs


@pytest.mark.parametrize("family", [4, 6])
def test_a_router_that_does_not_answer_is_a_hop_without_an_address(
    paths: Paths, family: int
) -> None:
    """r3 drops its own time-exceeded messages (iptables in its namespace): hop 3 has no
    address and no round trip, the hops around it do, and dst is still reached; the
    path_id is the hash with ``*`` at hop 3."""
    tool, rule = (
        ("iptables", ["-p", "icmp", "--icmp-type", "time-exceeded"]) if family == 4 else
        ("ip6tables", ["-p", "ipv6-icmp", "--icmpv6-type", "time-exceeded"])
    )  # fmt: skip
    cmd = paths.exec("r3", tool, "-w", "5", "{}", "OUTPUT", *rule, "-j", "DROP")
    subprocess.run([c if c != "{}" else "-A" for c in cmd], check=True, capture_output=True)
    try:
        dst = paths.dst_v4 if family == 4 else paths.dst_v6
        r = trace(paths, "udp", dst, "--queries-per-hop", "2", "--hop-timeout", "0.3")
    finally:
        subprocess.run([c if c != "{}" else "-D" for c in cmd], check=True, capture_output=True)
    hops = r["hops"]
    assert r["reached"] is True and len(hops) == 4, r
    assert [bool(h.get("addr")) for h in hops] == [True, True, False, True], hops
    assert not hops[2].get("rtt_ms") and hops[2]["sent"] == 2, hops[2]
    text = "|".join(h.get("addr") or "*" for h in hops)
    assert r["path_id"] == hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.mark.parametrize("family", [4, 6])
def test_each_trace_keeps_one_flow_and_so_one_path_through_ecmp(paths: Paths, family: int) -> None:
    """r1 hashes flows over ra and rb (IPv6: the flow label too). Each trace is one flow
    (one socket, one source port; tcp: a socket per SYN, all bound to one port, flow
    label 0): all three queries at hop 2 come back from the same router. Across traces
    (a new port each) both routers are seen, by each method."""
    dst = paths.dst_v4 if family == 4 else paths.dst_v6
    addr = paths.v4 if family == 4 else paths.v6
    for method in ("udp", "tcp"):
        seen = set()
        for _ in range(16):
            r = trace(paths, method, dst, "--max-hops", "2", "--hop-timeout", "0.3")
            hop2 = r["hops"][1]
            assert hop2["rtt_ms"] and not hop2.get("others"), hop2  # one router: one flow
            seen.add(hop2["addr"])
            if len(seen) == 2:
                break
        assert seen == {addr(2, "ra"), addr(3, "rb")}, (method, seen)


@pytest.mark.parametrize("method", ["udp", "icmp", "tcp"])
def test_uid_10001_with_no_capabilities_traces(paths: Paths, reachable: None, method: str) -> None:
    """No raw socket, no capability: a probe running as uid 10001 with an empty
    bounding set traces the same path (ICMP: its group is in ping_group_range)."""
    r = trace(paths, method, paths.dst_v6, "--hop-timeout", "0.5", user=True)
    assert r["reached"] is True and len(r["hops"]) == 4, r
    assert all(h.get("addr") for h in r["hops"]), r
    assert r["timestamping"] == ("user" if method == "tcp" else "kernel")


def _pin(paths: Paths, family: int, via: str | None) -> None:
    """r1's route to dst, and r3's back (r3 answers from its link toward us), through
    ``via`` (ra or rb) alone, or (None) both again."""
    fam, dst, back = (
        ("-4", "10.77.6.0/24", "10.77.0.0/16") if family == 4 else
        ("-6", "fd00:77:0:6::/64", "fd00:77::/32")
    )  # fmt: skip
    addr = paths.v4 if family == 4 else paths.v6
    for node, to, hops in (
        ("r1", dst, {"ra": ["via", addr(2, "ra")], "rb": ["via", addr(3, "rb")]}),
        ("r3", back, {"ra": ["via", addr(4, "ra")], "rb": ["via", addr(5, "rb")]}),
    ):
        spec = ["nexthop", *hops["ra"], "nexthop", *hops["rb"]] if via is None else hops[via]
        paths.ip(node, fam, "route", "replace", to, *spec)


@pytest.mark.parametrize("family", [4, 6])
async def test_a_changed_path_is_a_path_event_that_says_where(
    paths: Paths, influx: Any, family: int
) -> None:
    """Traced through ra, then (r1's route moved) through rb: written as the collector
    writes them, read back from a real InfluxDB, the second trace is a ``path`` event
    from the first's path_id to its own, changed after hop 1 (r1) and still ending at
    dst; ``last_before`` finds the first as the second's baseline, and the difference
    names the routers added and gone; a third trace on the same path is no event, and a
    move back counts as a second flap."""
    from collector.alerts import paths as pathmod
    from collector.identity import Identity
    from collector.kinds import to_line
    from collector.store.influxql import InfluxQL
    from probe.wire import TraceRecord

    dst = paths.dst_v4 if family == 4 else paths.dst_v6
    addr = paths.v4 if family == 4 else paths.v6
    who = Identity(probe="p1", region="ap", country="IN")
    db = f"paths{family}"
    influx.query(f'CREATE DATABASE "{db}"')

    def traced(via: str) -> TraceRecord:
        _pin(paths, family, via)
        r = trace(paths, "udp", dst, "--queries-per-hop", "2", "--hop-timeout", "0.5")
        record = msgspec.convert(r, TraceRecord)
        assert record.hops[1].addr == (addr(2, "ra") if via == "ra" else addr(3, "rb")), r
        body = to_line(record, who).encode()
        q = urllib.parse.urlencode({"db": db, "precision": "ns"})
        req = urllib.request.Request(f"{influx.url}/write?{q}", data=body)
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 204
        return record

    follow = pathmod.Baselines()
    try:
        async with InfluxQL(influx.url, db) as q:
            first = traced("ra")
            assert await follow.update(q, first.ts + 1000, 0) == []  # the first: no news
            second = traced("rb")
            [event] = await follow.update(q, second.ts + 1000, 0)
            third = traced("rb")
            assert await follow.update(q, third.ts + 1000, 0) == []
            back = traced("ra")
            [again] = await follow.update(q, back.ts + 1000, 0)
            base = await pathmod.last_before(q, "p1", first.target, second.ts)
    finally:
        _pin(paths, family, None)
    assert (event.kind, event.probe, event.region, event.family) == (
        "path",
        "p1",
        "ap",
        str(family),
    )
    assert (event.from_path, event.to_path) == (first.path_id, second.path_id)
    assert first.path_id != second.path_id
    assert event.after_hop == 1 and event.flaps_1h == 1 and again.flaps_1h == 2
    assert event.message == (
        f"ap (p1, IPv{family}): path changed after hop 1 ({addr(1, 'r1')}); still ends at "
        f"{dst}; hops added {addr(3, 'rb')}, {addr(5, 'r3')}, gone {addr(2, 'ra')}, "
        f"{addr(4, 'r3')}"
    ), event.message
    [(key, before)] = base.items()
    assert key == (str(family), "udp") and before.path_id == first.path_id
    assert [h.addr for h in before.hops] == [h.addr for h in first.hops]
    d = pathmod.compare(
        before,
        pathmod.Trace(
            before.key,
            second.ts,
            second.path_id,
            True,
            "",
            tuple(pathmod.Hop(h.ttl, h.addr, None) for h in second.hops),
        ),
    )
    # rb, and r3 answering from its link toward rb, for ra and r3's link toward ra
    added, gone = (addr(3, "rb"), addr(5, "r3")), (addr(2, "ra"), addr(4, "r3"))
    assert (d.after, d.added, d.gone) == (1, added, gone), d
