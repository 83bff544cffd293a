"""The trace check over paths of real router hops (network namespaces, veth links):
hop addresses, kernel-stamped round trips, the end of the path, over IPv4 and IPv6, by
UDP (a DNS query) and ICMP; a silent destination, a loop, ECMP; as uid 10001 with every
capability dropped. The probe runs as ``popwatch-probe once --trace ... --json`` inside
the source namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.paths import LOOP_V4, LOOP_V6, SILENT_V4, SILENT_V6, Paths

ROOT = Path(__file__).resolve().parent.parent
MAIN = "import sys; from probe.cli import main; sys.argv[0] = 'popwatch-probe'; main()"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the paths need root (network namespaces)"),
]


@pytest.fixture(scope="module")
def reachable() -> Iterator[None]:
    """uid 10001 must reach the interpreter and the code: a directory on the way that
    others may not enter (``mktemp -d`` makes CI's clone's parent 0700) gets ``o+x``
    for the module's tests, and its mode back after."""
    changed: list[tuple[Path, int]] = []
    for top in (ROOT, Path(sys.prefix)):
        for d in [top, *top.parents]:
            mode = d.stat().st_mode
            if not mode & stat.S_IXOTH:
                changed.append((d, mode))
                d.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
    try:
        yield
    finally:
        for d, mode in changed:
            d.chmod(stat.S_IMODE(mode))


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
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to drop to uid 10001"
        argv = [
            setpriv,
            "--reuid=10001",
            "--regid=10001",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            *argv,
        ]
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
@pytest.mark.parametrize("method", ["udp", "icmp"])
def test_a_trace_names_each_router_and_the_end_of_the_path(
    paths: Paths, method: str, family: int
) -> None:
    """src -> r1 -> ra|rb -> r3 -> dst: four hops, each answered by the router at that
    distance (from the address of its link toward us), the last by dst itself; every
    round trip kernel-stamped, and positive; the path's id the hash of the addresses."""
    dst = paths.dst_v4 if family == 4 else paths.dst_v6
    r = trace(paths, method, dst, "--queries-per-hop", "3", "--hop-timeout", "0.5")
    assert r["reached"] is True and r["timestamping"] == "kernel", r
    hops = r["hops"]
    assert [h["ttl"] for h in hops] == [1, 2, 3, 4], hops
    addr = paths.v4 if family == 4 else paths.v6
    assert hops[0]["addr"] == addr(1, "r1")
    assert hops[1]["addr"] in {addr(2, "ra"), addr(3, "rb")}
    assert hops[2]["addr"] in {addr(4, "r3"), addr(5, "r3")}
    assert hops[3]["addr"] == dst
    assert [h.get("kind") for h in hops] == ["time-exceeded"] * 3 + [
        "unreachable" if method == "udp" else "reply"
    ]  # nothing listens on port 53 at dst: it says port-unreachable
    for h in hops:
        assert len(h["rtt_ms"]) == h["sent"] == 3, h
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


def test_each_trace_keeps_one_flow_and_so_one_path_through_ecmp(paths: Paths) -> None:
    """r1 hashes flows over ra and rb. Each trace is one flow (one socket, one source
    port): all three queries at hop 2 come back from the same router. Across traces
    (a new port each) both routers are seen."""
    seen = set()
    for _ in range(12):
        r = trace(paths, "udp", paths.dst_v4, "--max-hops", "2", "--hop-timeout", "0.3")
        hop2 = r["hops"][1]
        assert hop2["rtt_ms"] and not hop2.get("others"), hop2  # one router: one flow
        seen.add(hop2["addr"])
        if len(seen) == 2:
            break
    assert seen == {paths.v4(2, "ra"), paths.v4(3, "rb")}, seen


@pytest.mark.parametrize("method", ["udp", "icmp"])
def test_uid_10001_with_no_capabilities_traces(paths: Paths, reachable: None, method: str) -> None:
    """No raw socket, no capability: a probe running as uid 10001 with an empty
    bounding set traces the same path (ICMP: its group is in ping_group_range)."""
    r = trace(paths, method, paths.dst_v6, "--hop-timeout", "0.5", user=True)
    assert r["reached"] is True and len(r["hops"]) == 4, r
    assert r["timestamping"] == "kernel"
