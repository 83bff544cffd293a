"""The lab's daemon: it builds the world, runs it, changes it on command, and takes it
down. ``popwatch-lab up`` starts it; every other command talks to it over
``RUN/control.sock`` (one JSON request, one JSON answer).

It is the lab's control plane: a failed site goes dark at once (its link drops every
packet) and its route is withdrawn ``convergence_s`` later, when the regions it served
move to their next nearest site, the way BGP converges after a PoP goes down; a
restored site answers at once and is announced ``convergence_s`` later.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socketserver
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from popwatch_lab import influx, knot, netem, netns, network, stack
from popwatch_lab.certs import make_cert
from popwatch_lab.procs import Proc, Procs, sbin_on_path
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


class Lab:
    """One lab: its world, its processes, and what the commands have done to it."""

    def __init__(self, run_dir: Path, cfg: LabConfig, world: World = WORLD) -> None:
        self.run_dir = run_dir
        self.cfg = cfg
        self.world = world
        self.procs = Procs(run_dir)
        self.lock = threading.RLock()
        self.shaper: network.Shaper = "wire"
        self.started = time.time()
        #: what BGP sees: the sites announced now
        self.announced = set(world.site_names)
        #: per server: extra_ms, loss, dark (what the data plane does now)
        self.links: dict[str, dict[str, Any]] = {
            n.name: {"extra_ms": 0.0, "loss": 0.0, "dark": False} for n in world.servers
        }
        self.serials = {n.name: FIRST_SERIAL for n in world.servers}
        self.cut: set[str] = set()
        self.generation = dict.fromkeys(world.site_names, 0)
        self.history: list[dict[str, Any]] = []
        self.wire: Proc | None = None
        self.stop_event = threading.Event()
        self.netns_was_mount = os.path.ismount(netns.NETNS_DIR)
        self.down = False  # torn down

    # ------------------------------------------------------------------ building

    def build(self, say: Callable[[str], None]) -> None:
        (self.run_dir / "host.json").write_text(
            json.dumps({"netns_was_mount": self.netns_was_mount})
        )
        say("network: namespaces, links, addresses")
        network.create(self.world)
        self.shaper = network.choose_shaper(self.cfg.shaper)
        network.link_servers(self.world, self.shaper)
        say(f"delay: {'kernel netem' if self.shaper == 'netem' else 'user-space wire'}")
        self.shape(create=True)
        network.route_servers(self.world)
        network.add_region_rules(self.world)
        self.apply_routes()
        say("nameservers: Knot at every site and the unicast server; the web page")
        self.start_servers()
        say("stack: InfluxDB, Alertmanager, collector")
        self.start_stack()
        say("probes: one per region")
        self.start_probes()

    def params(self) -> dict[str, dict[str, Any]]:
        """Per server link: the path of each region ([rtt_ms, jitter_ms]) and its state."""
        out: dict[str, dict[str, Any]] = {}
        for server, rtts in self.world.rtt_matrix().items():
            paths = {r: [rtt, self.cfg.jitter(rtt)] for r, rtt in rtts.items()}
            out[server] = {"paths": paths, **self.links[server]}
        return out

    def shape(self, create: bool = False) -> None:
        """Give the data plane the links' parameters (the wire, or netem's classes)."""
        params = self.params()
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
            netem.apply(node.netns, netem.commands("bb", False, peers, p, create))

    def knot_dir(self, node: Node) -> Path:
        return self.run_dir / "knot" / node.name

    def write_zone(self, node: Node) -> None:
        path = self.knot_dir(node) / "lab.zone"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(zone_text(self.serials[node.name], self.world))
        os.replace(tmp, path)

    def start_servers(self) -> None:
        for node in self.world.servers:
            d = self.knot_dir(node)
            d.mkdir(parents=True)
            self.write_zone(node)
            listen = [f"{node.v4}@53", f"{node.v6}@53"]
            if node.kind == "site":
                listen = [f"{ANYCAST_V4}@53", f"{ANYCAST_V6}@53", *listen]
            (d / "knot.conf").write_text(
                knot.config(d, listen, f"{node.name}.{ZONE}", node.name, ZONE, "lab.zone")
            )
            self.procs.start(f"knot-{node.name}", ["knotd", "-c", str(d / "knot.conf")], node.netns)
        web = self.run_dir / "web"
        web.mkdir()
        u = self.world.unicast
        self.cert, key = make_cert(web, names=[f"www.{ZONE.rstrip('.')}"], ips=[u.v4, u.v6])
        self.procs.start(
            "page",
            [
                sys.executable,
                "-m",
                "popwatch_lab.page",
                "--cert",
                str(self.cert),
                "--key",
                str(key),
                "--listen",
                u.v4,
                "--listen",
                u.v6,
            ],
            u.netns,
            ready=True,
        )
        for node in self.world.servers:
            self.wait_dns(node)

    def wait_dns(self, node: Node, timeout: float = 15.0) -> None:
        """Until the server answers on its own address (asked from its own namespace)."""
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
            influx.config(
                idir,
                f"{stack.INFLUXDB_URL.removeprefix('http://')}",
                "127.0.0.1:8088",
            )
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
        conf = _yaml(
            self.run_dir / "collector.yaml",
            stack.collector_config(self.cfg, cdir, targets),
        )
        self.tokens = {}
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

    # ------------------------------------------------------------------ routing

    def apply_routes(self) -> list[dict[str, Any]]:
        """Point every region at its nearest announced site; the moves made."""
        moves = []
        for region, site in self.world.catchment(self.announced).items():
            node = self.world.region(region)
            before = network.routed_site(self.world, node)
            if before == site and site is not None:
                continue
            network.set_route(node, self.world.site(site) if site else None)
            if before is not None or site is not None:
                moves.append({"region": region, "from": before, "to": site})
        return moves

    def log(self, what: str, **more: Any) -> dict[str, Any]:
        entry = {"at": time.time(), "what": what, **more}
        self.history.append(entry)
        return entry

    def converge_later(self, site: str, announce: bool) -> float:
        """After ``convergence_s``, announce (or withdraw) ``site``; the time it is due."""
        self.generation[site] += 1
        gen = self.generation[site]
        due = time.time() + self.cfg.convergence_s

        def converge() -> None:
            with self.lock:
                if self.generation[site] != gen or self.stop_event.is_set():
                    return  # superseded by a later command
                if announce:
                    self.announced.add(site)
                else:
                    self.announced.discard(site)
                moves = self.apply_routes()
                self.log("announced" if announce else "withdrawn", site=site, moves=moves)

        timer = threading.Timer(self.cfg.convergence_s, converge)
        timer.daemon = True
        timer.start()
        return due

    # ------------------------------------------------------------------ commands

    def cmd_fail(self, site: str) -> dict[str, Any]:
        self.world.site(site)
        self.links[site]["dark"] = True
        self.shape()
        due = self.converge_later(site, announce=False)
        entry = self.log("failed", site=site, converges_at=due)
        return {"failed": site, "at": entry["at"], "converges_at": due}

    def cmd_restore(self, name: str) -> dict[str, Any]:
        node = self.world.names.get(name)
        if node is None or node.kind not in ("site", "region", "unicast"):
            raise KeyError(f"no site or region {name!r}")
        if node.kind == "region":
            network.set_region_link(node, up=True)
            self.cut.discard(name)
            entry = self.log("mended", region=name)
            return {"restored": name, "at": entry["at"]}
        self.links[name].update(extra_ms=0.0, loss=0.0, dark=False)
        self.shape()
        due = None
        if node.kind == "site":
            if name in self.announced:
                self.generation[name] += 1  # a pending withdrawal is off: no route moved
            else:
                due = self.converge_later(name, announce=True)
        entry = self.log("restored", site=name, converges_at=due)
        return {"restored": name, "at": entry["at"], "converges_at": due}

    def cmd_degrade(self, site: str, delay_ms: float, loss: float) -> dict[str, Any]:
        node = self.world.names.get(site)
        if node is None or node.kind not in ("site", "unicast"):
            raise KeyError(f"no site {site!r} (sites: {', '.join(self.world.site_names)})")
        if delay_ms < 0 or not 0 <= loss <= 1:
            raise ValueError("--delay must be >= 0 and --loss between 0 and 1")
        self.links[site].update(extra_ms=float(delay_ms), loss=float(loss))
        self.shape()
        entry = self.log("degraded", site=site, delay_ms=delay_ms, loss=loss)
        return {"degraded": site, "at": entry["at"]}

    def cmd_cut(self, region: str) -> dict[str, Any]:
        node = self.world.region(region)
        network.set_region_link(node, up=False)
        self.cut.add(region)
        entry = self.log("cut", region=region)
        return {"cut": region, "at": entry["at"]}

    def cmd_bump_serial(self, sites: list[str] | None) -> dict[str, Any]:
        names = sites or [n.name for n in self.world.servers]
        for name in names:
            node = self.world.names.get(name)
            if node is None or node.kind not in ("site", "unicast"):
                raise KeyError(f"no site {name!r} (sites: {', '.join(self.world.site_names)})")
        serial = max(self.serials.values()) + 1
        for name in names:
            node = self.world.names[name]
            self.serials[name] = serial
            self.write_zone(node)
            knot.knotc(self.knot_dir(node), "zone-reload", ZONE)
        entry = self.log("serial", serial=serial, sites=names)
        return {"serial": serial, "sites": names, "at": entry["at"]}

    def measure(self, region: Node) -> dict[str, Any]:
        """One SOA query with NSID from the region to the anycast address: RTT and site."""
        import dns.edns
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

    def cmd_status(self, measure: bool = True) -> dict[str, Any]:
        rtts = self.world.rtt_matrix()
        measured: dict[str, dict[str, Any]] = {}
        if measure:
            threads = []
            for r in self.world.regions:

                def one(r: Node = r) -> None:
                    measured[r.name] = self.measure(r)

                t = threading.Thread(target=one)
                t.start()
                threads.append(t)
            for t in threads:
                t.join()
        regions = []
        for r in self.world.regions:
            site = network.routed_site(self.world, r)
            regions.append(
                {
                    "name": r.name,
                    "probe": stack.probe_id(r),
                    "city": r.place.city,
                    "site": site,
                    "path_rtt_ms": rtts[site][r.name] if site else None,
                    "unicast_rtt_ms": rtts[self.world.unicast.name][r.name],
                    "extra_ms": self.links[site]["extra_ms"] if site else 0.0,
                    "cut": r.name in self.cut,
                    "measured": measured.get(r.name),
                }
            )
        servers = [
            {
                "name": n.name,
                "kind": n.kind,
                "city": n.place.city,
                "address": n.v4,
                "announced": n.name in self.announced if n.kind == "site" else None,
                "serial": self.serials[n.name],
                **self.links[n.name],
            }
            for n in self.world.servers
        ]
        return {
            "started": self.started,
            "run_dir": str(self.run_dir),
            "shaper": self.shaper,
            "config": json.loads(self.cfg.to_json()),
            "regions": regions,
            "servers": servers,
            "urls": urls(),
            "processes": [
                {"name": p.name, "pid": p.popen.pid, "alive": p.alive} for p in self.procs.started
            ],
            "history": self.history,
        }

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        with self.lock:
            if cmd == "status":
                return self.cmd_status(req.get("measure", True))
            if cmd == "fail":
                return self.cmd_fail(req["site"])
            if cmd == "restore":
                return self.cmd_restore(req["name"])
            if cmd == "degrade":
                return self.cmd_degrade(req["site"], req["delay_ms"], req.get("loss", 0.0))
            if cmd == "cut":
                return self.cmd_cut(req["region"])
            if cmd == "bump-serial":
                return self.cmd_bump_serial(req.get("sites"))
            if cmd == "down":
                self.stop_event.set()
                return {"down": True}
        raise ValueError(f"unknown command {cmd!r}")

    # ------------------------------------------------------------------ serving

    def listen(self) -> socketserver.UnixStreamServer:
        """The control socket, listening (before ``up`` is told the lab is ready)."""
        lab = self
        path = self.run_dir / "control.sock"

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline()
                try:
                    answer = {"ok": True, **lab.handle(json.loads(line))}
                except (KeyError, ValueError, RuntimeError, OSError) as exc:
                    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
                    answer = {"ok": False, "error": str(msg)}
                if lab.stop_event.is_set():
                    lab.teardown()
                self.wfile.write(json.dumps(answer).encode() + b"\n")

        server = socketserver.UnixStreamServer(str(path), Handler)
        os.chmod(path, 0o600)
        server.timeout = 0.5
        return server

    def serve(self, server: socketserver.UnixStreamServer) -> None:
        """Answer commands, one at a time, until ``down`` or SIGTERM."""
        signal.signal(signal.SIGTERM, lambda *_: self.stop_event.set())
        with server:
            while not self.stop_event.is_set():
                server.handle_request()

    def teardown(self) -> None:
        """Stop every process, delete every namespace, remove the run directory."""
        if self.down:
            return
        self.down = True
        self.procs.stop_all()
        network.destroy(self.world, self.netns_was_mount)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def urls() -> dict[str, str]:
    return {
        "status_page": f"{stack.ADMIN_URL}/",
        "collector": stack.COLLECTOR_URL,
        "influxdb": stack.INFLUXDB_URL,
        "alertmanager": stack.ALERTMANAGER_URL,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--config", required=True, help="LabConfig as JSON")
    args = ap.parse_args()
    sbin_on_path()
    lab = Lab(args.run_dir, LabConfig.from_json(args.config))

    def say(text: str) -> None:
        print(text, flush=True)

    try:
        lab.build(say)
        server = lab.listen()
    except Exception as exc:  # any failure: say it in one line, and clean up
        say(f"error: {exc}".replace("\n", " ")[:2000])
        lab.teardown()
        sys.exit(1)
    say("ready")
    # from now on nobody reads the pipe: standard output and error go to the log
    log = os.open(args.run_dir / "logs" / "daemon.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    with contextlib.suppress(KeyboardInterrupt):
        lab.serve(server)
    lab.teardown()


if __name__ == "__main__":
    main()
