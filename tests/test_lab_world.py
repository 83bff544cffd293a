"""The lab's world without the lab: its map, routing decision, delay matrix, the
forwarder's per-packet behaviour, netem's commands, and the configuration it gives
popwatch. No root needed (tests/test_lab.py runs the lab itself)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from collector.alerts.asn import AsnTable
from collector.alerts.config import load_alerts
from collector.config import load_config
from popwatch_lab import netem, stack
from popwatch_lab.stack import LabConfig
from popwatch_lab.wire import Link, Wire, peer_key, prefix_key
from popwatch_lab.world import (
    ANYCAST_PREFIX_V4,
    ANYCAST_V4,
    ANYCAST_V6,
    UNICAST_REGION,
    WORLD,
    asn_text,
    distance_km,
    path_rtt_ms,
    zone_text,
)
from probe.config import load_config as load_probe_config
from probe.targets import load_targets, trace_of


def test_about_one_millisecond_of_round_trip_per_100_km() -> None:
    """A path's round trip is its great-circle length at 1 ms per 100 km: Frankfurt to
    New York (about 6,200 km) is about 62 ms, and no path is shorter than 1 ms."""
    fra, nyc = WORLD.region("eu-central").place, WORLD.region("us-east").place
    assert 6100 < distance_km(fra, nyc) < 6300
    assert path_rtt_ms(WORLD.region("us-east"), WORLD.unicast) == pytest.approx(62, abs=1)
    assert path_rtt_ms(WORLD.region("eu-central"), WORLD.unicast) == 1.0


def test_the_world_has_what_the_lab_promises() -> None:
    """At least 4 regions and 3 sites; every address in 198.18.0.0/15 or fd00::/8."""
    assert len(WORLD.regions) >= 4 and len(WORLD.sites) >= 3
    lab4, lab6 = ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("fd00::/8")
    for node in WORLD.names.values():
        for a in (node.v4, node.bb_v4, node.v6, node.bb_v6, ANYCAST_V4, ANYCAST_V6):
            addr = ipaddress.ip_address(a)
            assert addr in (lab4 if addr.version == 4 else lab6), a
        assert len(node.bb_dev) <= 15 and node.netns.startswith("pwl-")


def test_each_region_routes_to_its_nearest_announced_site() -> None:
    """With every site announced each region gets its nearest; a withdrawn site's
    regions move to their next nearest; with none announced there is no route."""
    all_sites = set(WORLD.site_names)
    assert WORLD.catchment(all_sites) == {
        "eu-central": "ams",
        "us-east": "iad",
        "ap-south": "sin",
        "sa-east": "iad",
    }
    assert WORLD.catchment(all_sites - {"sin"})["ap-south"] == "ams"
    assert WORLD.catchment(all_sites - {"ams"})["eu-central"] == "iad"
    assert WORLD.catchment(all_sites - {"iad"}) == {
        "eu-central": "ams",
        "us-east": "ams",
        "ap-south": "sin",
        "sa-east": "ams",
    }
    assert set(WORLD.catchment(set()).values()) == {None}


def test_by_the_map_anycast_beats_unicast_away_from_the_unicast_site() -> None:
    """The world is built so the claim can be shown: every region but the unicast
    server's own is nearer its anycast site than the unicast server."""
    rtt = WORLD.rtt_matrix()
    for region, site in WORLD.catchment(set(WORLD.site_names)).items():
        assert site is not None
        nearer = rtt[site][region] < rtt[WORLD.unicast.name][region]
        assert nearer == (region != UNICAST_REGION), region


def test_the_zone_names_the_lab_addresses_and_its_serial() -> None:
    """Every site serves the same zone; only the serial differs after a bump."""
    z1, z2 = zone_text(2026010100), zone_text(2026010101)
    assert ANYCAST_V4 in z1 and ANYCAST_V6 in z1 and WORLD.unicast.v4 in z1
    assert z1.replace("2026010100", "2026010101") == z2


# ----------------------------------------------------------------------------- the wire


def _v4(src: str, dst: str, payload: bytes = b"") -> bytes:
    """A minimal IPv4 header (the wire reads only the version and addresses)."""
    head = bytes([0x45, 0, 0, 20 + len(payload), 0, 0, 0, 0, 64, 17, 0, 0])
    return head + socket.inet_aton(src) + socket.inet_aton(dst) + payload


def _v6(src: str, dst: str, payload: bytes = b"") -> bytes:
    head = bytes([0x60, 0, 0, 0, 0, len(payload), 17, 64])
    pton = socket.inet_pton
    return head + pton(socket.AF_INET6, src) + pton(socket.AF_INET6, dst) + payload


def test_a_packet_is_known_by_its_region_prefix() -> None:
    """Toward the server the source names the path, back from it the destination; in
    both families."""
    eu = WORLD.region("eu-central")
    keys = {prefix_key(eu.prefix_v4): "v4", prefix_key(eu.prefix_v6): "v6"}
    assert keys[peer_key(_v4(eu.v4, ANYCAST_V4), True) or b""] == "v4"
    assert keys[peer_key(_v4(ANYCAST_V4, eu.v4), False) or b""] == "v4"
    assert keys[peer_key(_v6(eu.v6, ANYCAST_V6), True) or b""] == "v6"
    assert keys[peer_key(_v6(ANYCAST_V6, eu.v6), False) or b""] == "v6"
    assert peer_key(b"\x45", True) is None
    with pytest.raises(ValueError, match="/24 and /64"):
        prefix_key("198.18.0.0/16")


class Pipes:
    """A wire over datagram socket pairs instead of TUN devices (TUN needs root; a
    datagram socket keeps packet boundaries the same way)."""

    def __init__(self, spec: dict[str, object]) -> None:
        self.outer_a, self.outer_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.inner_a, self.inner_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (self.outer_b, self.inner_b):
            s.setblocking(False)
        link = Link("ams", self.outer_b.fileno(), self.inner_b.fileno())
        self.wire = Wire({"ams": link}, spec)
        self.thread = threading.Thread(target=self.wire.run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.wire.stop()
        self.thread.join(5)
        for s in (self.outer_a, self.outer_b, self.inner_a, self.inner_b):
            s.close()


def _spec(**params: object) -> dict[str, object]:
    eu, sa = WORLD.region("eu-central"), WORLD.region("sa-east")
    return {
        "peers": {r.name: [r.prefix_v4, r.prefix_v6] for r in (eu, sa)},
        "params": {"ams": {"paths": {"eu-central": [4.0, 0.0], "sa-east": [100.0, 0.0]}, **params}},
    }


def test_the_wire_holds_each_packet_for_its_paths_delay() -> None:
    """A packet from eu-central waits half the eu-central path's round trip (2 ms), one
    from sa-east 50 ms, and the near one is not held up behind the far one; extra delay
    adds half of itself each way.

    Each lower bound is the delay itself (the wire cannot beat it); an upper bound is
    there only to tell one outcome from another (behind the far packet or not, half the
    extra delay or all of it), tens of milliseconds away: a loaded machine is late by
    less than that."""
    eu, sa = WORLD.region("eu-central"), WORLD.region("sa-east")
    pipes = Pipes(_spec())
    try:
        t0 = time.perf_counter()
        pipes.outer_a.send(_v4(sa.v4, ANYCAST_V4, b"far"))
        pipes.outer_a.send(_v4(eu.v4, ANYCAST_V4, b"near"))
        pipes.inner_a.settimeout(2)
        first = pipes.inner_a.recv(2048)
        t_first = time.perf_counter() - t0
        second = pipes.inner_a.recv(2048)
        t_second = time.perf_counter() - t0
        assert first.endswith(b"near") and second.endswith(b"far")
        assert 0.002 <= t_first < 0.050  # its own 2 ms, not the far packet's 50
        assert 0.050 <= t_second < 0.100
        pipes.wire.apply(_spec(extra_ms=200.0))
        t0 = time.perf_counter()
        pipes.inner_a.send(_v4(ANYCAST_V4, eu.v4, b"back"))
        pipes.outer_a.settimeout(2)
        assert pipes.outer_a.recv(2048).endswith(b"back")
        assert 0.102 <= time.perf_counter() - t0 < 0.202  # 2 ms + half of 200, not all
    finally:
        pipes.close()


def test_the_wire_keeps_a_paths_order_under_jitter() -> None:
    """With jitter as large as the delay, the packets of one path still leave in the
    order they came."""
    eu = WORLD.region("eu-central")
    spec = _spec()
    spec["params"]["ams"]["paths"]["eu-central"] = [4.0, 2.0]  # type: ignore[index]
    pipes = Pipes(spec)
    try:
        for i in range(200):
            pipes.outer_a.send(_v4(eu.v4, ANYCAST_V4, str(i).encode()))
        pipes.inner_a.settimeout(2)
        got = [int(pipes.inner_a.recv(2048)[20:]) for _ in range(200)]
        assert got == list(range(200))
    finally:
        pipes.close()


def test_the_wire_loses_inbound_packets_and_a_dark_link_everything() -> None:
    """``loss`` drops that share of the packets toward the server and none back; a dark
    link drops both ways."""
    eu = WORLD.region("eu-central")
    pipes = Pipes(_spec(loss=0.5))
    try:
        n, got_in, got_out = 2000, 0, 0
        for _ in range(n // 50):  # in batches: a socket pair holds only so many
            for _ in range(50):
                pipes.outer_a.send(_v4(eu.v4, ANYCAST_V4))
                pipes.inner_a.send(_v4(ANYCAST_V4, eu.v4))
            time.sleep(0.01)
            got_in += _drain(pipes.inner_a)
            got_out += _drain(pipes.outer_a)
        got_in += _until_marker(pipes.outer_a, pipes.inner_a, _v4(eu.v4, ANYCAST_V4, b"end"))
        got_out += _until_marker(pipes.inner_a, pipes.outer_a, _v4(ANYCAST_V4, eu.v4, b"end"))
        assert got_out == n
        assert 0.4 * n < got_in < 0.6 * n
        pipes.wire.apply(_spec(dark=True))
        pipes.outer_a.send(_v4(eu.v4, ANYCAST_V4, b"dark"))
        pipes.inner_a.send(_v4(ANYCAST_V4, eu.v4, b"dark"))
        time.sleep(0.1)
        assert _drain(pipes.inner_a, b"dark") == _drain(pipes.outer_a, b"dark") == 0
    finally:
        pipes.close()


def _until_marker(tx: socket.socket, rx: socket.socket, marker: bytes) -> int:
    """The packets that arrive on ``rx`` before ``marker``, sent on ``tx`` (again every
    0.2 s until one gets through: the path may lose it). A path keeps its order, so once
    a marker is through, so is every packet sent before it: no guess at how long the
    wire may take."""
    tx.send(marker)
    n, deadline = 0, time.monotonic() + 30
    while time.monotonic() < deadline:
        if not select.select([rx], [], [], 0.2)[0]:
            tx.send(marker)
            continue
        if rx.recv(2048) == marker:
            return n
        n += 1
    raise AssertionError(f"no marker through the wire in 30 s ({n} packets)")


def _drain(s: socket.socket, payload: bytes | None = None) -> int:
    """How many packets (with ``payload``, if given) are waiting on ``s`` now; it stays
    blocking for the next sends."""
    n = 0
    while True:
        try:
            pkt = s.recv(2048, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return n
        n += payload is None or pkt.endswith(payload)


def _tcp(src: str, dst: str, sport: int, flags: int) -> bytes:
    """An IPv4 packet with a bare TCP header (ports and flags are what the wire reads)."""
    tcp = sport.to_bytes(2, "big") + (40000).to_bytes(2, "big") + bytes(9) + bytes([flags])
    tcp += bytes(6)
    head = bytes([0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0])
    return head + socket.inet_aton(src) + socket.inet_aton(dst) + tcp


def test_the_wire_holds_syn_acks_of_the_ports_it_is_told() -> None:
    """``synack_ms`` holds the SYN-ACKs the server sends from that port (the web tests'
    slow connect phase) and nothing else: not a SYN-ACK from another port, not a packet
    sent behind the held one, not a packet toward the server."""
    spec: dict[str, object] = {
        "peers": {},
        "params": {"ams": {"paths": {}, "synack_ms": {"9443": 50.0}}},
    }
    server, client = "198.18.7.2", "198.18.7.1"
    pipes = Pipes(spec)
    try:
        pipes.outer_a.settimeout(2)
        t0 = time.perf_counter()
        pipes.inner_a.send(_tcp(server, client, 9443, 0x12))  # SYN-ACK: held
        pipes.inner_a.send(_tcp(server, client, 443, 0x12))  # SYN-ACK, other port
        pipes.inner_a.send(_tcp(server, client, 9443, 0x10))  # a plain ACK behind it
        firsts = [pipes.outer_a.recv(2048) for _ in range(2)]
        t_firsts = time.perf_counter() - t0
        held = pipes.outer_a.recv(2048)
        t_held = time.perf_counter() - t0
        assert [int.from_bytes(p[20:22], "big") for p in firsts] == [443, 9443]
        assert firsts[1][33] == 0x10 and held[33] == 0x12
        assert int.from_bytes(held[20:22], "big") == 9443
        assert t_firsts < 0.050 <= t_held < 0.100  # the others not held; it, its 50 ms
        t0 = time.perf_counter()
        pipes.outer_a.send(_tcp(client, server, 9443, 0x12))  # toward the server: not held
        pipes.inner_a.settimeout(2)
        pipes.inner_a.recv(2048)
        assert time.perf_counter() - t0 < 0.050
    finally:
        pipes.close()


def test_the_wires_jitter_has_the_asked_spread() -> None:
    """The jitter is normal with the asked standard deviation around the path's delay."""
    spec = _spec()
    spec["params"]["ams"]["paths"]["eu-central"] = [20.0, 1.0]  # type: ignore[index]
    wire = Wire({"ams": Link("ams", -1, -2)}, spec)
    pkt = _v4(WORLD.region("eu-central").v4, ANYCAST_V4)
    held = [wire.delay(wire.links["ams"], pkt, True) for _ in range(4000)]
    ms = [h[1] * 1000 for h in held if h]
    assert statistics.mean(ms) == pytest.approx(10.0, abs=0.1)
    assert statistics.stdev(ms) == pytest.approx(1.0, abs=0.1)


NAN, INF = float("nan"), float("inf")


def _bad_path(rtt: float) -> dict[str, object]:
    spec = _spec()
    spec["params"]["ams"]["paths"]["eu-central"] = [rtt, 0.0]  # type: ignore[index]
    return spec


@pytest.mark.parametrize(
    "spec",
    [
        _spec(extra_ms=NAN),
        _spec(extra_ms=INF),
        _spec(extra_ms=-1.0),
        _spec(extra_ms=1e300),
        _spec(extra_ms="5"),
        _spec(loss=NAN),
        _spec(loss=1.5),
        _spec(synack_ms={"443": NAN}),
        _spec(dark="yes"),
        _bad_path(NAN),
        _bad_path(-4.0),
    ],
)
def test_the_wire_takes_no_figure_that_is_not_finite_or_in_range(spec: dict[str, object]) -> None:
    """A NaN, infinite, negative or huge delay, or a loss outside 0 to 1: the spec is
    refused whole, and a running wire keeps the parameters it had."""
    with pytest.raises(ValueError, match="must be"):
        Wire({"ams": Link("ams", -1, -2)}, spec)
    wire = Wire({"ams": Link("ams", -1, -2)}, _spec(extra_ms=10.0))
    before = vars(wire.links["ams"]).copy()
    with pytest.raises(ValueError, match="must be"):
        wire.apply(spec)
    assert vars(wire.links["ams"]) == before


def test_a_nan_spec_on_sighup_leaves_the_wire_forwarding_and_idle(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The daemon once wrote a degrade's NaN delay into the spec: the wire took it, held
    every packet for ever and spun at 100 % of a core. Now a reload it cannot take
    leaves it as it was: packets still pass with their delay, and it sleeps when idle."""
    eu = WORLD.region("eu-central")
    pipes = Pipes(_spec())
    try:
        spec_path = tmp_path / "wire.json"
        spec_path.write_text(json.dumps(_spec(extra_ms=NAN)))  # json writes NaN
        pipes.wire.spec_path = spec_path
        pipes.wire.on_hup()
        os.write(pipes.wire.wake_w, b"x")  # as the signal's wake-up byte does
        pipes.inner_a.settimeout(2)
        for _ in range(3):
            t0 = time.perf_counter()
            pipes.outer_a.send(_v4(eu.v4, ANYCAST_V4, b"after"))
            assert pipes.inner_a.recv(2048).endswith(b"after")
            assert time.perf_counter() - t0 >= 0.002  # the old 2 ms, not NaN
        cpu = time.process_time()
        time.sleep(0.5)
        assert time.process_time() - cpu < 0.2  # asleep in select, not spinning
        assert pipes.thread.is_alive()
    finally:
        pipes.close()
    assert "extra_ms must be a number from 0 to 60000, not nan" in capfd.readouterr().err


# ----------------------------------------------------------------------------- netem


def test_netem_gives_each_region_its_class() -> None:
    """Where the kernel has netem: an HTB class per region, matched by its prefixes
    (source toward the server, destination back), holding half the round trip; loss
    toward the server only; a dark link loses everything; later changes only change."""
    peers = {"eu-central": ["198.18.10.0/24", "fd00:1:0:10::/64"]}
    params = {"paths": {"eu-central": [4.0, 0.1]}, "extra_ms": 10.0, "loss": 0.25}
    toward = [" ".join(c) for c in netem.commands("s-ams", True, peers, params, create=True)]
    assert "qdisc add dev s-ams root handle 1: htb default 999" in toward
    assert (
        "filter add dev s-ams parent 1: protocol ip prio 1 u32 match ip src 198.18.10.0/24 "
        "flowid 1:10" in toward
    )
    assert any("match ip6 src fd00:1:0:10::/64" in c for c in toward)
    assert (
        "qdisc add dev s-ams parent 1:10 handle 10: netem delay 7.000ms 0.100ms "
        "distribution normal loss 25.0000%" in toward
    )
    back = [" ".join(c) for c in netem.commands("bb", False, peers, params, create=False)]
    assert back == [
        "qdisc change dev bb parent 1:999 handle 999: netem delay 5.000ms",
        "qdisc change dev bb parent 1:10 handle 10: netem delay 7.000ms 0.100ms "
        "distribution normal",
    ]
    dark = netem.commands("bb", False, peers, {**params, "dark": True}, create=False)
    assert all("loss 100.0000%" in " ".join(c) for c in dark)


# ----------------------------------------------------------------------------- the stack


def test_the_lab_configures_popwatch_with_what_popwatch_accepts(tmp_path: Path) -> None:
    """The targets, the collector's config and each probe's config load with
    popwatch's own loaders: the anycast service over udp and tcp with NSID and SOA, the
    unicast server, and the HTTPS page resolved by the lab's nameservers."""
    import yaml

    cfg = LabConfig()
    targets_file = tmp_path / "targets.yaml"
    targets_file.write_text(yaml.safe_dump(stack.targets(cfg, tmp_path / "ca.pem")))
    targets = {t.name: t for t in load_targets(targets_file)}
    anycast = targets["anycast"]
    assert anycast.topology == "anycast" and anycast.identify == "nsid"  # type: ignore[union-attr]
    assert set(anycast.transports) == {"udp", "tcp"}  # type: ignore[union-attr]
    assert anycast.queries[0].qtype == "SOA"  # type: ignore[union-attr]
    assert targets["unicast"].topology == "unicast"
    assert targets["www"].resolver == ANYCAST_V4  # type: ignore[union-attr]
    assert anycast.trace is not None and trace_of(anycast).timeout < anycast.trace.every  # type: ignore[union-attr, arg-type]
    conf = tmp_path / "collector.yaml"
    asn = tmp_path / "asn.dat"
    asn.write_text(asn_text())
    conf.write_text(yaml.safe_dump(stack.collector_config(cfg, tmp_path, targets_file, asn)))
    loaded = load_config(conf, env={})
    assert loaded.targets == str(targets_file) and loaded.alerts.asn_file == str(asn)
    table = AsnTable.load(asn)  # the regions' links the backbone's, each site its own
    sin, ap = WORLD.site("sin"), WORLD.region("ap-south")
    assert table.path([ap.bb_v4, sin.edge_v4, ANYCAST_V4]) == [64500, 64522, 64553]
    assert table.path([ap.bb_v6, sin.edge_v6, ANYCAST_V6]) == [64500, 64522, 64553]
    region = WORLD.region("ap-south")
    probe = tmp_path / "probe.yaml"
    probe.write_text(yaml.safe_dump(stack.probe_config(cfg, region, "t0ken", tmp_path)))
    p = load_probe_config(probe, env={})
    assert p.id == "probe-ap-south" and p.collector_url == stack.COLLECTOR_URL


def test_alert_section_is_accepted_by_the_alert_engine() -> None:
    """The lab's ``alerts:`` section loads with the engine's own loader."""
    a = load_alerts(stack.alerts(LabConfig()), env={})
    assert a.enabled and a.evaluate_every_s == 2.0


def test_anycast_prefix_is_what_routes_carry() -> None:
    """The anycast address is inside the prefix the backbone routes."""
    assert ipaddress.ip_address(ANYCAST_V4) in ipaddress.ip_network(ANYCAST_PREFIX_V4)


# ----------------------------------------------------------------------------- the CLI


def as_nobody(argv: list[str]) -> tuple[int, str, str]:
    """``popwatch-lab ARGV`` as a plain user (nobody, when this runs as root): its exit
    status, standard output and standard error.

    It runs in a forked child of this process that drops to uid and gid 65534 and calls
    the command's ``main``: a new process as nobody would have to reach the venv's
    interpreter and this clone's code, which a clone under a directory of mode 0700
    (``mktemp -d`` makes them) keeps it from. The child needs nothing from the disk."""
    from popwatch_lab.cli import main

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: never back into pytest
            code = 70
            try:
                if os.geteuid() == 0:
                    os.setgroups([])
                    os.setresgid(65534, 65534, 65534)
                    os.setresuid(65534, 65534, 65534)
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - until _exit
                sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
                try:
                    main(argv)
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return os.waitstatus_to_exitcode(status), out.read().decode(), err.read().decode()


def test_up_without_root_says_so_in_one_line_and_exits_2() -> None:
    """Run as a plain user, ``popwatch-lab up`` prints one line saying it needs root and
    exits 2, touching nothing; wherever the clone lives."""
    code, out, err = as_nobody(["up", "--run-dir", "/nonexistent/popwatch-lab"])
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "needs root" in lines[0], err
    assert not Path("/nonexistent/popwatch-lab").exists()


def test_every_command_has_help_with_a_description() -> None:
    """``popwatch-lab COMMAND --help`` works for every command, and says what the
    command does, after its usage (it showed the usage and the options only)."""
    lab = str(Path(sys.executable).parent / "popwatch-lab")
    cmds = ("up", "down", "status", "fail", "restore", "degrade", "bump-serial", "cut", "exec")
    for cmd in cmds:
        out = subprocess.run([lab, cmd, "--help"], capture_output=True, text=True, check=True)
        assert out.stdout.startswith("usage: popwatch-lab"), cmd
        description = out.stdout.split("\n\n")[1]
        assert not description.startswith(("options:", "positional arguments:")), out.stdout
        assert len(description) > 80 and description.count(". ") >= 1, (cmd, description)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["degrade", "iad", "--delay", "-5"], "argument --delay: '-5': milliseconds is a "),
        (["degrade", "iad", "--delay", "nan"], "argument --delay: 'nan': milliseconds is a "),
        (["degrade", "iad", "--delay", "inf"], "argument --delay: 'inf': milliseconds"),
        (["degrade", "iad", "--delay", "1e400"], "argument --delay: '1e400': milliseconds"),
        (["degrade", "iad", "--delay", "61000"], "argument --delay: '61000': milliseconds"),
        (["degrade", "iad", "--delay", "x"], "argument --delay: 'x': milliseconds is a "),
        (["degrade", "iad", "--delay", "5", "--loss", "1.5"], "argument --loss: '1.5': share"),
        (["degrade", "iad", "--delay", "5", "--loss", "nan"], "argument --loss: 'nan': share"),
        (["up", "--convergence", "nan"], "argument --convergence: 'nan': seconds is a "),
        (["up", "--convergence", "-1"], "argument --convergence: '-1': seconds is a "),
        (["up", "--interval", "0"], "argument --interval: '0': interval is a number from 0.1"),
        (["up", "--interval", "inf"], "argument --interval: 'inf': interval is a number"),
    ],
)
def test_a_figure_that_is_no_figure_is_a_usage_error(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A negative, NaN, infinite or out-of-range figure is a usage error (exit 2, as
    every usage error) before anything is asked of the lab: ``degrade iad --delay -5``
    exited 1 from the daemon's refusal, and ``--delay nan`` was taken."""
    from popwatch_lab.cli import main

    with pytest.raises(SystemExit) as exit:
        main(["--run-dir", "/nonexistent/popwatch-lab", *argv])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: popwatch-lab ") and says in err.splitlines()[-1], err


README = Path(__file__).parent.parent / "README.md"


def readme_lab_section() -> str:
    text = README.read_text()
    start = text.index("## See it work: the lab")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_every_lab_command_the_readme_shows_is_one() -> None:
    """Each ``popwatch-lab`` line of the README's "See it work" section parses with the
    command's own parser (the lab tests then do what they say)."""
    import re
    import shlex

    from popwatch_lab.cli import parser

    blocks = re.findall(r"```sh\n(.*?)```", readme_lab_section(), re.S)
    lines = [ln for b in blocks for ln in b.splitlines() if "popwatch-lab" in ln]
    assert len(lines) >= 10
    seen = set()
    for ln in lines:
        argv = shlex.split(ln.split("#")[0])
        assert argv[:1] == ["popwatch-lab"], ln  # in a root shell, the venv activated
        args = parser().parse_args(argv[1:])
        seen.add(args.command)
    assert seen >= {"up", "status", "fail", "restore", "degrade", "bump-serial", "cut", "down"}
    # nor does the command's own --help say sudo: sudo's PATH has no venv
    assert "sudo" not in (parser().epilog or "")
