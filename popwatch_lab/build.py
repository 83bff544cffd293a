"""Building the lab's world, and the hands the commands work it with.

:class:`BuiltLab` makes the namespaces and links (:mod:`popwatch_lab.network`), starts the
data plane (the wire, or netem's classes), the nameservers, the web page, the stack
(InfluxDB, Alertmanager, the collector) and one probe per region, and takes it all down
again. It is the :class:`popwatch_lab.commands.Backend` of the daemon: the commands
change the world only through its methods.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from popwatch_lab import influx, knot, netem, netns, network, stack
from popwatch_lab.certs import make_cert
from popwatch_lab.procs import Proc, Procs
from popwatch_lab.stack import LabConfig
from popwatch_lab.world import (
    ANYCAST_V4,
    ANYCAST_V6,
    BACKBONE_NETNS,
    FIRST_SERIAL,
    WORLD,
    ZONE,
    Node,
    World,
    asn_text,
    zone_text,
)

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """popwatch's own command ``name``: next to this Python (a venv), else on PATH."""
    here = BIN / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed next to {sys.executable} nor on PATH")
    return found


def _yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _wait_http(url: str, proc: Proc, what: str, timeout: float = 30.0) -> None:
    """Until ``url`` answers; RuntimeError with the log's tail if ``proc`` died first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            pass
        if not proc.alive or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer {url}: {proc.log.read_text()[-1500:]}")
        time.sleep(0.1)


class BuiltLab:
    """One lab's network, servers and processes, under ``run_dir``."""

    def __init__(self, run_dir: Path, cfg: LabConfig, world: World = WORLD) -> None:
        self.run_dir = run_dir
        self.cfg = cfg
        self.world = world
        self.procs = Procs(run_dir)
        self.shaper: network.Shaper = "wire"
        self.wire: Proc | None = None  # the wire's process (None with netem)
        self.cert = run_dir / "web" / "cert.pem"  # the web page's (and its CA)
        self.tokens: dict[str, str] = {}  # region -> its probe's token
        self.netns_was_mount = os.path.ismount(netns.NETNS_DIR)
        self.down = False

    # ------------------------------------------------------------------ building

    def build_network(self, say: Callable[[str], None], params: dict[str, Any]) -> None:
        """Namespaces, links and addresses, shaped by ``params``; the region rules, no
        anycast route yet (:meth:`popwatch_lab.commands.Lab.apply_routes` adds them)."""
        (self.run_dir / "host.json").write_text(
            json.dumps({"netns_was_mount": self.netns_was_mount})
        )
        say("network: namespaces, links, addresses")
        network.create(self.world)
        self.shaper = network.choose_shaper(self.cfg.shaper)
        network.link_servers(self.world, self.shaper)
        say(f"delay: {'kernel netem' if self.shaper == 'netem' else 'user-space wire'}")
        self._shape(params, create=True)
        network.route_servers(self.world)
        network.add_region_rules(self.world)

    def start(self, say: Callable[[str], None]) -> None:
        """Everything that runs in the network: servers, the stack, the probes."""
        say("nameservers: Knot at every site and the unicast server; the web page")
        self.start_servers()
        say("stack: InfluxDB, Alertmanager, collector")
        self.start_stack()
        say("probes: one per region")
        self.start_probes()

    def knot_dir(self, node: Node) -> Path:
        return self.run_dir / "knot" / node.name

    def write_zone(self, node: Node, serial: int) -> None:
        path = self.knot_dir(node) / "lab.zone"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(zone_text(serial, self.world))
        os.replace(tmp, path)

    def start_servers(self) -> None:
        for node in self.world.servers:
            d = self.knot_dir(node)
            d.mkdir(parents=True)
            self.write_zone(node, FIRST_SERIAL)
            listen = [f"{node.v4}@53", f"{node.v6}@53"]
            if node.kind == "site":
                listen = [f"{ANYCAST_V4}@53", f"{ANYCAST_V6}@53", *listen]
            (d / "knot.conf").write_text(
                knot.config(d, listen, f"{node.name}.{ZONE}", node.name, ZONE, "lab.zone")
            )
            self.procs.start(f"knot-{node.name}", ["knotd", "-c", str(d / "knot.conf")], node.netns)
        web = self.cert.parent
        web.mkdir()
        u = self.world.unicast
        self.cert, key = make_cert(web, names=[f"www.{ZONE.rstrip('.')}"], ips=[u.v4, u.v6])
        page = [sys.executable, "-m", "popwatch_lab.page", "--cert", str(self.cert)]
        page += ["--key", str(key), "--listen", u.v4, "--listen", u.v6]
        self.procs.start("page", page, u.netns, ready=True)
        for node in self.world.servers:
            self.wait_dns(node)

    def wait_dns(self, node: Node, timeout: float = 15.0) -> None:
        """Until the server answers on its own address (asked from its own namespace)."""
        import dns.exception
        import dns.message
        import dns.query

        q = dns.message.make_query(ZONE, "SOA")
        deadline = time.monotonic() + timeout
        with netns.inside(node.netns):
            while True:
                try:
                    dns.query.udp(q, node.v4, timeout=0.2)
                    return
                except (OSError, dns.exception.Timeout):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"Knot at {node.name} does not answer") from None
                    time.sleep(0.05)

    def start_stack(self) -> None:
        core = self.world.core.netns
        idir = self.run_dir / "influxdb"
        idir.mkdir()
        (idir / "influxdb.conf").write_text(
            influx.config(idir, stack.INFLUXDB_URL.removeprefix("http://"), "127.0.0.1:8088")
        )
        p = self.procs.start("influxdb", ["influxd", "-config", str(idir / "influxdb.conf")], core)
        influx.wait_ready(stack.INFLUXDB_URL, p.popen, p.log)
        influx.query(stack.INFLUXDB_URL, f"CREATE DATABASE {stack.DATABASE}")
        if self.cfg.warm_baselines:
            influx.write(
                stack.INFLUXDB_URL, stack.DATABASE, stack.warm_baselines(self.cfg, time.time())
            )
        adir = self.run_dir / "alertmanager"
        adir.mkdir()
        (adir / "alertmanager.yml").write_text(stack.alertmanager_config())
        p = self.procs.start(
            "alertmanager",
            [
                "prometheus-alertmanager",
                f"--config.file={adir / 'alertmanager.yml'}",
                f"--storage.path={adir / 'data'}",
                f"--web.listen-address={stack.ALERTMANAGER_URL.removeprefix('http://')}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            core,
        )
        _wait_http(f"{stack.ALERTMANAGER_URL}/-/ready", p, "Alertmanager")
        cdir = self.run_dir / "collector"
        cdir.mkdir()
        targets = _yaml(self.run_dir / "targets.yaml", stack.targets(self.cfg, self.cert))
        asn = self.run_dir / "asn.dat"
        asn.write_text(asn_text(self.world))
        collector = stack.collector_config(self.cfg, cdir, targets, asn)
        conf = _yaml(self.run_dir / "collector.yaml", collector)
        for r in self.world.regions:
            pl = r.place
            self.tokens[r.name] = subprocess.run(
                [
                    tool("popwatch-collector"),
                    "probes",
                    "add",
                    stack.probe_id(r),
                    "--region",
                    r.name,
                    "--country",
                    pl.country,
                    "--city",
                    pl.city,
                    "--lat",
                    str(pl.lat),
                    "--lon",
                    str(pl.lon),
                    "--data-dir",
                    str(cdir),
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        env = {k: v for k, v in os.environ.items() if not k.startswith("POPWATCH_")}
        p = self.procs.start(
            "collector", [tool("popwatch-collector"), "run", "--config", str(conf)], core, env
        )
        _wait_http(f"{stack.COLLECTOR_URL}/healthz", p, "the collector")

    def start_probes(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("POPWATCH_")}
        for r in self.world.regions:
            d = self.run_dir / "probes" / r.name
            d.mkdir(parents=True)
            conf = _yaml(d / "probe.yaml", stack.probe_config(self.cfg, r, self.tokens[r.name], d))
            self.procs.start(
                f"probe-{r.name}",
                [tool("popwatch-probe"), "run", "--config", str(conf)],
                r.netns,
                env,
            )

    # ------------------------------------------------------------------ the Backend

    def _shape(self, params: dict[str, dict[str, Any]], create: bool) -> None:
        if self.shaper == "wire":
            spec_path = self.run_dir / "wire.json"
            network.write_spec(spec_path, network.wire_spec(self.world, params))
            if create:
                argv = [sys.executable, "-m", "popwatch_lab.wire", str(spec_path)]
                if self.cfg.realtime:
                    argv.append("--realtime")
                self.wire = self.procs.start("wire", argv, ready=True)
            elif self.wire is not None:
                self.wire.popen.send_signal(signal.SIGHUP)  # the wire re-reads its spec
            return
        peers = {r.name: [r.prefix_v4, r.prefix_v6] for r in self.world.regions}
        for node in self.world.servers:
            p = params[node.name]
            netem.apply(BACKBONE_NETNS, netem.commands(node.bb_dev, True, peers, p, create))
            netem.apply(node.edge_netns, netem.commands("bb", False, peers, p, create))

    def shape(self, params: dict[str, dict[str, Any]]) -> None:
        self._shape(params, create=False)

    def routed_site(self, region: Node) -> str | None:
        return network.routed_site(self.world, region)

    def set_route(self, region: Node, site: Node | None) -> None:
        network.set_route(region, site)

    def set_region_link(self, region: Node, up: bool) -> None:
        network.set_region_link(region, up)

    def set_serial(self, server: Node, serial: int) -> None:
        self.write_zone(server, serial)
        knot.knotc(self.knot_dir(server), "zone-reload", ZONE)

    def measure(self, region: Node) -> dict[str, Any]:
        """One SOA query with NSID from the region to the anycast address: RTT and site."""
        import dns.edns
        import dns.exception
        import dns.message
        import dns.query

        q = dns.message.make_query(ZONE, "SOA", use_edns=0)
        q.use_edns(0, options=[dns.edns.GenericOption(dns.edns.NSID, b"")])
        try:
            with netns.inside(region.netns):
                t0 = time.perf_counter()
                a = dns.query.udp(q, ANYCAST_V4, timeout=1.0)
                rtt = (time.perf_counter() - t0) * 1000
        except (OSError, dns.exception.Timeout) as exc:
            return {"error": type(exc).__name__}
        nsid = next((o.to_wire().decode() for o in a.options if o.otype == dns.edns.NSID), None)
        serial = a.answer[0][0].serial if a.answer else None
        return {"rtt_ms": round(rtt, 2), "nsid": nsid, "serial": serial}

    def processes(self) -> list[dict[str, Any]]:
        return [{"name": p.name, "pid": p.popen.pid, "alive": p.alive} for p in self.procs.started]

    def teardown(self) -> None:
        """Stop every process, delete every namespace, remove the run directory."""
        if self.down:
            return
        self.down = True
        self.procs.stop_all()
        network.destroy(self.world, self.netns_was_mount)
        shutil.rmtree(self.run_dir, ignore_errors=True)
