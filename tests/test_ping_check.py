"""The ping check: ICMP echo and TCP handshake round trips, on loopback and across a veth
pair to a host in a network namespace the test creates, held against a tcpdump capture
of the same packets.

Each rtt_ms is held to its captured round trip within 1 ms, a bound a busy two-core
machine cannot make flaky; the tight goal (p50 <= 3 µs, p99 <= 10 µs) is measured by
bench/ping_accuracy.py, not asserted here.

ICMP sockets need the test's group inside ``net.ipv4.ping_group_range``; the fixture
``ping_sockets`` widens it for one test and puts the old value back.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from support import pcap, servers

from collector.ingest.points import Identity, to_line
from probe.checks import check, check_for
from probe.checks.ping import CHECK, PingJob
from probe.config import load_config
from probe.errors import PING_GROUP_RANGE
from probe.targets import ConfigError, DnsTarget, PingTarget, derived_targets, load_targets
from probe.wire import PingRecord, decode_record, encode

ADDRS = ["127.0.0.1", "::1"]
PROBE = [str(Path(sys.executable).parent / "popwatch-probe")]
EVERYONE = "0 2147483647"  # every group id: ping sockets for all
NOBODY = "1 0"  # the kernel's default: no one, root included


def is_root() -> bool:
    return os.geteuid() == 0


def family(address: str) -> int:
    return 6 if ":" in address else 4


def make_target(server: str, **kw: Any) -> PingTarget:
    spec: dict[str, Any] = {"name": "p", "topology": "unicast", "server": server, "timeout": 1}
    spec.update(kw)
    return msgspec.convert(spec, PingTarget)


def job(server: str, **kw: Any) -> PingJob:
    [j] = CHECK.jobs(make_target(server, **kw), [(family(server), server)])
    return j


async def ping(server: str, count: int = 1, **kw: Any) -> list[PingRecord]:
    j = job(server, **kw)
    return [await CHECK.measure(j) for _ in range(count)]


# --------------------------------------------------------------------------- ping_group_range


def read_group_range() -> str:
    return " ".join(Path(PING_GROUP_RANGE).read_text().split())


def write_group_range(value: str) -> None:
    Path(PING_GROUP_RANGE).write_text(value + "\n")


def groups_allowed(value: str) -> bool:
    low, high = map(int, value.split())
    return any(low <= g <= high for g in {os.getegid(), *os.getgroups()})


@pytest.fixture
def ping_sockets() -> Iterator[None]:
    """ICMP sockets allowed for this process's group during the test, as before after it."""
    old = read_group_range()
    if groups_allowed(old):
        yield
        return
    if not is_root():
        pytest.skip(f"net.ipv4.ping_group_range is {old!r} and only root may widen it")
    write_group_range(EVERYONE)
    try:
        yield
    finally:
        write_group_range(old)


# --------------------------------------------------------------------------- capture


@contextlib.contextmanager
def capture(dev: str, bpf: str, path: Path) -> Iterator[None]:
    """tcpdump on ``dev`` with nanosecond stamps; every packet of it written, none dropped.
    Headers are enough, and small frames keep a burst inside the ring."""
    with pcap.capture(path, bpf, dev, snaplen=256, buffer_kib=8192) as cap:
        yield
    assert cap.dropped == 0, cap.report


def wire_exchanges(path: Path) -> list[pcap.Exchange]:
    """Echo request -> reply (by ID and sequence) and SYN -> SYN-ACK (by client address)."""
    return pcap.exchanges(pcap.read(path))


def assert_as_on_the_wire(records: list[PingRecord], wire: list[pcap.Exchange]) -> None:
    """Each record is kernel-stamped, and its rtt_ms is its wire round trip within 1 ms.

    1 ms is a bound that cannot flake on a busy two-core machine, not the goal: how close
    rtt_ms really is (p50 <= 3 µs, p99 <= 10 µs) is bench/ping_accuracy.py's to measure.
    """
    assert len(wire) == len(records), (wire, records)
    for r in records:
        assert r.error is None and r.rtt_ms is not None, r
        assert r.timestamping == "kernel", r
        nearest = min(wire, key=lambda w: abs(w.start_ns - r.ts))
        assert abs(nearest.start_ns - r.ts) < 5_000_000, (r, nearest)  # the same exchange
        assert abs(r.rtt_ms * 1e6 - nearest.rtt_ns) <= 1_000_000, (r, nearest)


# --------------------------------------------------------------------------- loopback


@pytest.mark.usefixtures("ping_sockets")
@pytest.mark.parametrize("address", ADDRS)
async def test_icmp_echo_on_loopback_is_the_wire_round_trip(address: str, tmp_path: Path) -> None:
    """ICMP echo over IPv4 and IPv6: kernel-stamped rtt_ms, as on the wire, no port."""
    path = tmp_path / "icmp.pcap"
    with capture("lo", "icmp or icmp6", path):
        records = await ping(address, count=10)
    assert_as_on_the_wire(records, wire_exchanges(path))
    for r in records:
        assert r.method == "icmp" and r.server == address and r.family == family(address)
        assert r.port is None and r.target == "p" and r.topology == "unicast"


@pytest.mark.parametrize("address", ADDRS)
async def test_tcp_handshake_to_knot_is_the_wire_round_trip(
    knot: servers.Knot, address: str, tmp_path: Path
) -> None:
    """TCP to a real Knot's DNS port: rtt_ms is the SYN -> SYN-ACK the capture shows."""
    path = tmp_path / "tcp.pcap"
    with capture("lo", f"tcp port {knot.port}", path):
        records = await ping(address, count=10, method="tcp", port=knot.port)
    assert_as_on_the_wire(records, wire_exchanges(path))
    for r in records:
        assert r.method == "tcp" and r.port == knot.port and r.family == family(address)


@pytest.mark.parametrize("address", ADDRS)
async def test_closed_tcp_port_is_refused(address: str) -> None:
    """A RST to the SYN is a failure record: error "refused: ...", no rtt_ms."""
    port = servers.free_port(socket.SOCK_STREAM)
    [r] = await ping(address, method="tcp", port=port)
    assert r.rtt_ms is None
    assert r.error is not None and r.error.startswith("refused: connect: ECONNREFUSED"), r
    assert CHECK.outcome(r) == "refused" and not CHECK.answered(r)
    assert r.port == port and r.method == "tcp"


@pytest.mark.parametrize("address", ADDRS)
async def test_icmp_forbidden_by_ping_group_range_says_so(address: str) -> None:
    """With ping_group_range "1 0" (IPv6 too obeys it) the record says so; nothing else is tried."""
    if not is_root():
        pytest.skip("setting net.ipv4.ping_group_range needs root")
    old = read_group_range()
    write_group_range(NOBODY)
    try:
        [r] = await ping(address)
    finally:
        write_group_range(old)
    assert r.rtt_ms is None
    assert r.error == (
        f"forbidden: ICMP sockets not allowed for gid {os.getegid()}: "
        "net.ipv4.ping_group_range is '1 0'"
    )
    assert CHECK.outcome(r) == "forbidden"


# --------------------------------------------------------------------------- a far host


NS_LISTENER = textwrap.dedent(
    """
    import selectors, socket, sys
    sel = selectors.DefaultSelector()
    for fam, addr in ((socket.AF_INET, sys.argv[1]), (socket.AF_INET6, sys.argv[2])):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.bind((addr, 53))
        s.listen(128)
        sel.register(s, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            conn, _ = key.fileobj.accept()
            conn.close()
    """
)


@dataclass(frozen=True, slots=True)
class FarHost:
    """A host in a network namespace of its own, one veth away, listening on TCP 53."""

    dev: str  # our end of the veth pair
    v4: str
    v6: str
    unused_v4: str  # on the link, but nobody has it: no reply ever comes
    unused_v6: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def far_host() -> Iterator[FarHost]:
    """The namespace, the veth pair and the listener, all removed again after the module."""
    if not is_root():
        pytest.skip("a network namespace and a veth pair need root")
    tag = secrets.token_hex(3)
    netns, dev, peer = f"pwping-{tag}", f"pwp-{tag}", f"pwq-{tag}"
    n = secrets.randbelow(250) + 1
    # RFC 2544 benchmarking space and a ULA prefix, only inside what this fixture creates
    v4, v6 = f"198.19.{n}.", f"fd00:7069:6e67:{n:x}::"
    host = FarHost(dev, v4 + "2", v6 + "2", v4 + "3", v6 + "3")
    listener: subprocess.Popen[bytes] | None = None
    try:
        _ip("netns", "add", netns)
        _ip("link", "add", dev, "type", "veth", "peer", "name", peer, "netns", netns)
        _ip("addr", "add", f"{v4}1/24", "dev", dev)
        _ip("addr", "add", f"{v6}1/64", "dev", dev, "nodad")
        _ip("link", "set", dev, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", netns, "addr", "add", f"{host.v4}/24", "dev", peer)
        _ip("-n", netns, "addr", "add", f"{host.v6}/64", "dev", peer, "nodad")
        _ip("-n", netns, "link", "set", peer, "up")
        listener = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", NS_LISTENER, host.v4, host.v6],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert listener.stdout is not None
        if listener.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"listener in {netns}: {listener.communicate()[1]!r}")
        yield host
    finally:
        if listener is not None:
            listener.kill()
            listener.communicate()
        for args in (["link", "del", dev], ["netns", "del", netns]):
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip(*args)


@pytest.mark.usefixtures("ping_sockets")
@pytest.mark.parametrize("fam", [4, 6])
@pytest.mark.parametrize("method", ["icmp", "tcp"])
async def test_far_host_across_a_veth_is_the_wire_round_trip(
    far_host: FarHost, fam: int, method: str, tmp_path: Path
) -> None:
    """ICMP and TCP to a host in another namespace: kernel-stamped, as the veth saw it."""
    address = far_host.v4 if fam == 4 else far_host.v6
    await ping(address, method=method)  # resolves the neighbour before the capture
    path = tmp_path / "far.pcap"
    bpf = "icmp or icmp6" if method == "icmp" else "tcp port 53"
    with capture(far_host.dev, bpf, path):
        records = await ping(address, count=10, method=method)
    assert_as_on_the_wire(records, wire_exchanges(path))
    assert all(r.server == address and r.family == fam for r in records)


@pytest.mark.usefixtures("ping_sockets")
@pytest.mark.parametrize("fam", [4, 6])
@pytest.mark.parametrize(("method", "error"), [("icmp", "echo"), ("tcp", "connect")])
async def test_no_reply_is_a_timeout(far_host: FarHost, fam: int, method: str, error: str) -> None:
    """An address nobody answers for: error "timeout: ...", no rtt_ms, within the timeout."""
    address = far_host.unused_v4 if fam == 4 else far_host.unused_v6
    t0 = time.monotonic()
    [r] = await ping(address, method=method, timeout=0.3)
    assert time.monotonic() - t0 < 1.0
    assert r.rtt_ms is None and r.error == f"timeout: {error} timed out", r
    assert CHECK.outcome(r) == "timeout"


# --------------------------------------------------------------------------- targets, seam


def test_a_dns_target_asks_for_a_ping_of_its_addresses() -> None:
    """`ping: tcp` on a DNS target derives a ping target: same name and series, DNS port."""
    spec: dict[str, Any] = {
        "name": "ns",
        "topology": "anycast",
        "provider": "example-dns",
        "server": "ns1.example.test",
        "port": 5300,
        "families": [6],
        "interval": 10,
        "timeout": 0.5,
        "queries": [{"qname": "example.test"}],
    }
    plain = msgspec.convert(spec, DnsTarget)
    pinged = msgspec.convert({**spec, "name": "ns2", "ping": "tcp"}, DnsTarget)
    assert plain.ping is None
    [derived] = derived_targets([plain, pinged])
    assert derived == PingTarget(
        name="ns2",
        topology="anycast",
        provider="example-dns",
        server="ns1.example.test",
        method="tcp",
        port=5300,
        families=[6],
        interval=10,
        timeout=0.5,
    )
    assert check_for(derived) is CHECK and check("ping") is CHECK


def test_the_example_config_pings_what_it_says() -> None:
    """probe/example.yaml: `ping: icmp` on unicast-ns derives its ping, and nothing else."""
    cfg = load_config(Path(__file__).parent.parent / "probe" / "example.yaml", env={})
    [derived] = derived_targets(cfg.targets)
    assert (derived.name, derived.method, derived.server) == (
        "unicast-ns",
        "icmp",
        "ns1.example.net",
    )
    [own] = [t for t in cfg.targets if isinstance(t, PingTarget)]
    assert (own.method, own.port, own.families) == ("icmp", 53, [4])  # an IPv4 literal


async def test_derived_tcp_ping_measures_the_dns_port(knot: servers.Knot) -> None:
    """The derived ping of a DNS target reaches the DNS server's own port."""
    dns = msgspec.convert(
        {
            "name": "knot",
            "topology": "unicast",
            "server": "127.0.0.1",
            "port": knot.port,
            "ping": "tcp",
            "queries": [{"qname": "example.test"}],
        },
        DnsTarget,
    )
    [target] = derived_targets([dns])
    [j] = CHECK.jobs(target, [(4, "127.0.0.1"), (6, "::1")])  # an IP server: its family only
    r = await CHECK.measure(j)
    assert r.error is None and r.port == knot.port and r.target == "knot"


def test_a_server_name_without_address_is_one_resolve_failure() -> None:
    """An unresolvable server is a record per run: error "resolve: ...", no rtt_ms."""
    target = make_target("ns.example.test", method="tcp", port=5300)
    [r] = CHECK.unresolved(target, "ns.example.test: NXDOMAIN", 1_764_000_000_000_000_000)
    assert r.error == "resolve: ns.example.test: NXDOMAIN" and r.rtt_ms is None
    assert (r.server, r.method, r.port, r.family) == ("ns.example.test", "tcp", 5300, None)
    assert CHECK.outcome(r) == "resolve"


def test_ping_targets_are_validated_when_loaded(tmp_path: Path) -> None:
    """A ping target in a targets file is checked like a DNS target: one-line errors."""
    path = tmp_path / "t.yaml"
    path.write_text(
        "targets:\n  - {kind: ping, name: a, topology: unicast, server: ns.example.test}\n"
    )
    [t] = load_targets(path)
    assert isinstance(t, PingTarget) and t.method == "icmp" and t.families == [4, 6]
    for bad, fault in (
        ("method: udp", "targets[0].method: 'udp' is not one of icmp, tcp"),
        ("timeout: 5", "targets[0]: timeout (5s) must be shorter than interval (2s)"),
        ("families: [4, 4]", "targets[0]: families lists a value twice: [4, 4]"),
        ("port: 0", "targets[0].port: expected an integer >= 1, got 0"),
    ):
        interval = "interval: 2, " if bad.startswith("timeout") else ""
        path.write_text(
            "targets:\n  - {kind: ping, name: a, topology: unicast, server: 192.0.2.53, "
            f"{interval}{bad}}}\n"
        )
        with pytest.raises(ConfigError) as info:
            load_targets(path)
        assert str(info.value) == f"{path}: {fault}"


def test_ping_records_become_ping_points() -> None:
    """A ping record is a `ping` point: the schema's tags, rtt_ms, ok and error."""
    who = Identity(probe="p-fra", region="eu-central", country="DE")
    good = PingRecord(
        ts=1_764_000_000_000_000_000,
        target="ns",
        server="192.0.2.53",
        method="tcp",
        port=53,
        timestamping="kernel",
        rtt_ms=12.5,
        topology="anycast",
        provider="example-dns",
        family=4,
    )
    assert decode_record(encode(good)) == good
    assert to_line(good, who) == (
        "ping,country=DE,family=4,method=tcp,probe=p-fra,provider=example-dns,"
        "region=eu-central,server=192.0.2.53,target=ns,topology=anycast "
        "rtt_ms=12.5,ok=true 1764000000000000000"
    )
    lost = msgspec.structs.replace(good, rtt_ms=None, error="timeout: connect timed out")
    assert to_line(lost, who).endswith(
        ' ok=false,error="timeout: connect timed out" 1764000000000000000'
    )


# --------------------------------------------------------------------------- the command


@pytest.mark.usefixtures("ping_sockets")
def test_once_ping_icmp_json() -> None:
    """`once --ping icmp --count 3 --json` prints three ping records, kernel-stamped."""
    out = subprocess.run(
        [*PROBE, "once", "--ping", "icmp", "--server", "127.0.0.1", "--count", "3", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(records) == 3
    for r in records:
        assert r["kind"] == "ping" and r["method"] == "icmp" and r["server"] == "127.0.0.1"
        assert r["timestamping"] == "kernel" and 0 < r["rtt_ms"] < 50 and "error" not in r


def test_once_ping_tcp_table(knot: servers.Knot) -> None:
    """`once --ping tcp` prints a row per handshake and the rtt summary line."""
    out = subprocess.run(
        [*PROBE, "once", "--ping", "tcp", "--server", f"[::1]:{knot.port}", "--count", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    head, *rows, summary = out.stdout.splitlines()
    assert head.split() == ["#", "server", "method", "rtt_ms", "stamp"]
    assert [row.split()[1:3] for row in rows] == [[f"[::1]:{knot.port}", "tcp"]] * 2
    assert summary.startswith("2 pings, 2 answered, 0 without answer; rtt_ms min ")


def test_once_ping_icmp_with_a_port_is_a_usage_error() -> None:
    """A port means nothing to ICMP echo: exit 2 with a one-line reason."""
    out = subprocess.run(
        [*PROBE, "once", "--ping", "icmp", "--server", "127.0.0.1:53"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "popwatch-probe once: --ping icmp has no port: drop it from --server, or use --ping tcp"
    )
