"""``popwatch-lab``: a small anycast internet on one machine, with popwatch running in it.

``up`` starts the lab's daemon (:mod:`popwatch_lab.daemon`), which builds the world and
keeps it; the other commands talk to the daemon, from any shell, through the run
directory (``--run-dir``, ``POPWATCH_LAB_DIR``, default /run/popwatch-lab).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from popwatch_lab import netns, network, procs, stack
from popwatch_lab.stack import MAX_S, MIN_INTERVAL_S, LabConfig
from popwatch_lab.wire import MAX_MS, figure
from popwatch_lab.world import ANYCAST_V4, ANYCAST_V6, WORLD, ZONE

DEFAULT_RUN_DIR = "/run/popwatch-lab"

EPILOG = f"""\
examples (in a root shell, with the venv activated):
  popwatch-lab up                      # build it; prints where to look
  popwatch-lab status                  # each region's site and latency
  popwatch-lab fail sin                # ap-south moves to ams after 5 s
  popwatch-lab restore sin
  popwatch-lab degrade iad --delay 150 --loss 0.05   # an attack absorbed at iad
  popwatch-lab bump-serial --sites ams iad           # sin lags behind
  popwatch-lab cut sa-east             # the probe in sa-east loses the backbone
  popwatch-lab steer ap-south iad      # Mumbai served from Ashburn: inflation
  popwatch-lab restore ap-south        # mend a cut region, lift a steer
  popwatch-lab exec ap-south -- kdig @{ANYCAST_V4} +nsid {ZONE} SOA
  popwatch-lab down                    # nothing left behind

regions: {", ".join(WORLD.region_names)}; anycast sites: {", ".join(WORLD.site_names)};
the unicast server: {WORLD.unicast.name} (in {WORLD.unicast.place.city}).
"""


class LabError(Exception):
    """A command could not be done; the message is one line for the user."""


def number(what: str, top: float, bottom: float = 0.0) -> Any:
    """An argparse type: a finite number from ``bottom`` to ``top`` (a usage error,
    exit 2, otherwise: argparse's float takes "nan", "inf" and "-5")."""

    def parse(text: str) -> float:
        try:
            value = figure(float(text), what, top)
        except ValueError:
            value = -1.0
        if not bottom <= value:
            raise argparse.ArgumentTypeError(
                f"{text!r}: {what} is a number from {bottom:g} to {top:g}"
            )
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


def fail(msg: str, code: int = 1) -> NoReturn:
    print(f"popwatch-lab: {msg}", file=sys.stderr)
    sys.exit(code)


def run_dir(args: argparse.Namespace) -> Path:
    return Path(args.run_dir or os.environ.get("POPWATCH_LAB_DIR") or DEFAULT_RUN_DIR)


def request(rd: Path, req: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """One command to the daemon; its answer. LabError when no lab is up."""
    path = rd / "control.sock"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                # a busy daemon answers and closes before reading: its answer is queued
                s.sendall(json.dumps(req).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        raise LabError(f"no lab is up (nothing answers at {path}): popwatch-lab up") from None
    except PermissionError:
        raise LabError(f"{path}: permission denied (run it as root)") from None
    if not data:
        raise LabError("the lab's daemon closed the connection without an answer")
    answer: dict[str, Any] = json.loads(data)
    if not answer.get("ok"):
        raise LabError(str(answer.get("error")))
    return answer


def is_up(rd: Path) -> bool:
    try:
        request(rd, {"cmd": "status", "measure": False}, timeout=5)
    except LabError:
        return False
    return True


def can_make_namespaces() -> str | None:
    """Why this process cannot build the lab, or None when it can."""
    if os.geteuid() != 0:
        return "up needs root: it makes network namespaces and TUN devices (run it as root)"
    if shutil.which("ip") is None:
        return "up needs iproute2's ip command (apt-get install iproute2)"
    try:
        ok = subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0
    except OSError:
        ok = False
    if not ok:
        return "this system cannot make network namespaces (unshare --net failed)"
    if not os.path.exists("/dev/net/tun"):
        return "this system has no /dev/net/tun (TUN devices)"
    return None


def cleanup(rd: Path) -> list[str]:
    """Whatever a lab left behind: its processes, namespaces, host link and run
    directory. What was found, for the user."""
    found = procs.kill_recorded(rd)
    host = rd / "host.json"
    was_mount = json.loads(host.read_text())["netns_was_mount"] if host.exists() else True
    left = [n for n in WORLD.netns if netns.exists(n)]
    network.destroy(WORLD, was_mount)
    shutil.rmtree(rd, ignore_errors=True)
    return found + left


# ----------------------------------------------------------------------------- commands


def cmd_up(args: argparse.Namespace) -> int:
    why = can_make_namespaces()
    if why:
        fail(why, 2)
    rd = run_dir(args)
    if is_up(rd):
        fail("a lab is already up (popwatch-lab status); popwatch-lab down first")
    if rd.exists() or any(os.path.exists(f"/run/netns/{n}") for n in WORLD.netns):
        left = cleanup(rd)
        if left:
            print(f"popwatch-lab: cleaned up what a stopped lab left: {', '.join(left)}")
    rd.mkdir(parents=True, mode=0o700)
    cfg = LabConfig(
        convergence_s=args.convergence,
        interval_s=args.interval,
        shaper=args.shaper,
        realtime=not args.no_realtime,
        warm_baselines=not args.cold,
    )
    procs.sbin_on_path()
    with open(rd / "daemon.err", "ab") as err:  # the daemon's own errors, before its log
        daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "popwatch_lab.daemon",
                "--run-dir",
                str(rd),
                "--config",
                cfg.to_json(),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
            text=True,
        )
    with open(rd / "pids", "a") as f:
        f.write(f"{daemon.pid} {procs.start_time(daemon.pid)} daemon\n")
    assert daemon.stdout is not None
    error = None
    for line in daemon.stdout:
        line = line.rstrip("\n")
        if line == "ready":
            break
        if line.startswith("error: "):
            error = line.removeprefix("error: ")
        elif not args.quiet:
            print(f"  {line}", flush=True)
    else:
        daemon.wait()
        cleanup(rd)
        fail(error or f"the lab's daemon stopped (exit {daemon.returncode})")
    daemon.stdout.close()
    print_up(rd)
    return 0


def print_up(rd: Path) -> None:
    s = request(rd, {"cmd": "status", "measure": False})
    u = s["urls"]
    shaper = "netem" if s["shaper"] == "netem" else "the user-space wire (no netem here)"
    print(
        f"""popwatch-lab is up: {len(s["regions"])} regions, {len(WORLD.sites)} anycast sites of \
{ANYCAST_V4} / {ANYCAST_V6}, a unicast server; delay by {shaper}.

  status page   {u["status_page"]}
  InfluxDB      {u["influxdb"]}  (database {stack.DATABASE}, InfluxQL)
  Alertmanager  {u["alertmanager"]}
  collector     {u["collector"]}

Your own Grafana (on this host) gets the dashboards with:
  popwatch-collector dashboards push --grafana-url http://127.0.0.1:3000 --token TOKEN \\
    --influxdb-url {u["influxdb"]} --database {stack.DATABASE}

Then: popwatch-lab status; popwatch-lab fail sin; watch the status page, Alertmanager
and `popwatch-lab status`; popwatch-lab restore sin; popwatch-lab down."""
    )


def cmd_down(args: argparse.Namespace) -> int:
    rd = run_dir(args)
    pid = None
    pids = rd / "pids"
    if pids.exists():
        for line in pids.read_text().splitlines():
            if line.endswith(" daemon"):
                pid = int(line.split()[0])
    with contextlib.suppress(LabError):  # no daemon: clean up what is left all the same
        request(rd, {"cmd": "down"}, timeout=120)
    deadline = time.monotonic() + 30
    while pid and procs.start_time(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    left = cleanup(rd)
    if left:
        print(f"popwatch-lab: also cleaned up: {', '.join(left)}")
    print("popwatch-lab is down")
    return 0


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def cmd_status(args: argparse.Namespace) -> int:
    s = request(run_dir(args), {"cmd": "status", "measure": not args.no_measure})
    if args.json:
        print(json.dumps(s, indent=1))
        return 0
    up = time.strftime("%H:%M:%S", time.localtime(s["started"]))
    conv = s["config"]["convergence_s"]
    print(f"popwatch-lab up since {up}; convergence {conv:g} s; delay by {s['shaper']}\n")
    print(f"{'region':<11} {'probe':<19} {'site':<5} {'path RTT':>9}  {'measured':>10}  answered")
    for r in s["regions"]:
        m = r["measured"] or {}
        answered = (
            f"NSID {m['nsid']}, serial {m['serial']}" if "rtt_ms" in m else m.get("error", "")
        )
        note = "  (cut off)" if r["cut"] else ""
        if r.get("steered"):
            note += f"  (steered to {r['steered']}; nearest {r['nearest']})"
        path = None if r["path_rtt_ms"] is None else r["path_rtt_ms"] + r["extra_ms"]
        print(
            f"{r['name']:<11} {r['probe']:<19} {r['site'] or '-':<5} {_ms(path):>9}  "
            f"{_ms(m.get('rtt_ms')):>10}  {answered}{note}"
        )
    print(f"\n{'server':<6} {'city':<10} {'state':<22} serial")
    for v in s["servers"]:
        state = []
        if v["dark"]:
            state.append("failed")
        if v["announced"] is False:
            state.append("withdrawn")
        if v["extra_ms"] or v["loss"]:
            state.append(f"+{v['extra_ms']:g} ms, {v['loss'] * 100:g}% loss")
        label = v["kind"] if v["kind"] == "unicast" else "anycast"
        print(
            f"{v['name']:<6} {v['city']:<10} {', '.join(state) or 'up (' + label + ')':<22} "
            f"{v['serial']}"
        )
    dead = [p["name"] for p in s["processes"] if not p["alive"]]
    if dead:
        print(f"\nstopped processes: {', '.join(dead)} (logs in {s['run_dir']}/logs)")
    print(f"\nstatus page {s['urls']['status_page']}, Alertmanager {s['urls']['alertmanager']}")
    return 0


#: per command: what is done, and what is said when there was nothing to do
DONE = {"fail": "failed", "restore": "restored", "cut": "cut off"}
NOTHING_TO_DO = {
    "fail": "{} is failed already",
    "cut": "{} is cut off already",
    "restore": "{} is not {}: nothing to restore",
}


def _simple(cmd: str, key: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        name = getattr(args, key)
        answer = request(run_dir(args), {"cmd": cmd, key: name})
        conv = answer.get("converges_at")
        tail = f"; routes move in {max(0.0, conv - time.time()):.1f} s" if conv else ""
        if answer.get("changed", True):
            print(f"{name} {DONE[cmd]}{tail}")
        elif cmd == "restore" and conv:
            print(f"{name} is restored already{tail}")
        else:
            kind = WORLD.names[name].kind
            state = {"region": "cut off or steered", "site": "failed or degraded"}.get(
                kind, "degraded"
            )
            print(NOTHING_TO_DO[cmd].format(name, state) + tail)
        return 0

    return run


def cmd_degrade(args: argparse.Namespace) -> int:
    request(
        run_dir(args),
        {"cmd": "degrade", "site": args.site, "delay_ms": args.delay, "loss": args.loss},
    )
    print(f"{args.site} degraded: +{args.delay:g} ms round trip, {args.loss * 100:g}% loss")
    return 0


def cmd_steer(args: argparse.Namespace) -> int:
    a = request(run_dir(args), {"cmd": "steer", "region": args.region, "site": args.site})
    if not a["changed"]:
        print(f"{args.region} is steered to {args.site} already")
        return 0
    moved = ", ".join(f"{m['from']} -> {m['to']}" for m in a["moves"]) or "no route moved"
    print(f"{args.region} steered to {args.site} ({moved}); restore {args.region} lifts it")
    return 0


def cmd_bump_serial(args: argparse.Namespace) -> int:
    a = request(run_dir(args), {"cmd": "bump-serial", "sites": args.sites})
    print(f"serial {a['serial']} at {', '.join(a['sites'])}")
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    node = WORLD.names.get(args.node)
    if node is None:
        fail(f"no node {args.node!r} (one of {', '.join(WORLD.names)})", 2)
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        fail("exec needs a command after --", 2)
    os.execvp("ip", ["ip", "netns", "exec", node.netns, *argv])  # noqa: S606 - as asked


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="popwatch-lab",
        description="A small anycast internet on one machine (network namespaces), with "
        "real Knot sites, a unicast server, delays from a distance matrix, and popwatch "
        "(InfluxDB, collector with alerts, Alertmanager, one probe per region) inside it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = f"the lab's state (default $POPWATCH_LAB_DIR or {DEFAULT_RUN_DIR})"
    ap.add_argument("--run-dir", help=where)
    # also after the command: popwatch-lab up --run-dir DIR
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--run-dir", help=where, default=argparse.SUPPRESS)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            parents=[common],
            help=help,
            description=f"{help[0].upper()}{help[1:]}. {description}",
        )

    up = command(
        "up",
        "build the lab and start everything in it",
        "Needs root. Makes the namespaces, the links and their delays, Knot at every "
        "anycast site and the unicast server, the web page, InfluxDB, Alertmanager, the "
        "collector and one probe per region; then prints where to look. About 5 s.",
    )
    up.add_argument(
        "--convergence",
        type=number("seconds", MAX_S),
        default=LabConfig.convergence_s,
        metavar="S",
        help="seconds before a failed or restored site's routes "
        "move (default %(default)s, BGP-like)",
    )
    up.add_argument(
        "--interval",
        type=number("interval", MAX_S, MIN_INTERVAL_S),
        default=LabConfig.interval_s,
        metavar="S",
        help="every probe target's interval (default %(default)s)",
    )
    up.add_argument(
        "--shaper",
        choices=["auto", "netem", "wire"],
        default="auto",
        help="delay by kernel netem or the user-space wire (default: netem "
        "where the kernel has it)",
    )
    up.add_argument(
        "--no-realtime",
        action="store_true",
        help="run the wire at normal priority (default: SCHED_FIFO, which holds its delays "
        "within about 0.3 ms at p99 on a busy machine; see bench/lab_forwarder.py)",
    )
    up.add_argument(
        "--cold",
        action="store_true",
        help="give the alert engine no baselines: it then judges latency and catchment "
        "only after 30 minutes of the lab's own history (default: an hour of baselines at "
        "the map's round trips, written to the engine's rollup_5m, never as measurements)",
    )
    up.add_argument("--quiet", action="store_true", help="no progress lines")
    up.set_defaults(func=cmd_up)
    command(
        "down",
        "stop everything and leave nothing behind",
        "Stops every process of the lab and deletes its namespaces, its host link and its "
        "run directory; also what a crashed lab left.",
    ).set_defaults(func=cmd_down)
    st = command(
        "status",
        "each region's current site and latency",
        "Per region: the site the backbone routes it to, that path's round trip, and one "
        "SOA query timed now from the region (with its NSID and serial); per server: "
        "failed, withdrawn or degraded, and its serial.",
    )
    st.add_argument("--json", action="store_true", help="everything, as JSON")
    st.add_argument("--no-measure", action="store_true", help="no live query per region")
    st.set_defaults(func=cmd_status)
    f = command(
        "fail",
        "take an anycast site down; its routes follow later",
        "The site drops every packet at once; its routes are withdrawn --convergence "
        "seconds later (up's, default 5), and its regions move to their next nearest "
        "site, the way BGP converges after a PoP goes down.",
    )
    f.add_argument("site", choices=WORLD.site_names)
    f.set_defaults(func=_simple("fail", "site"))
    r = command(
        "restore",
        "bring back a failed or degraded site; mend a cut or steered region",
        "A failed site answers at once and is announced again --convergence seconds "
        "later; a degraded one loses its extra delay and loss; a cut region rejoins the "
        "backbone, and a steered one goes back to its nearest site at once. A site or "
        "region that is none of these is left as it is.",
    )
    r.add_argument("name", choices=[*WORLD.site_names, WORLD.unicast.name, *WORLD.region_names])
    r.set_defaults(func=_simple("restore", "name"))
    d = command(
        "degrade",
        "slow a site down (an attack it absorbs)",
        "Every path through the site gets --delay more milliseconds of round trip and "
        "loses --loss of the packets toward it; the routes stay. restore undoes it.",
    )
    d.add_argument("site", choices=[*WORLD.site_names, WORLD.unicast.name])
    d.add_argument(
        "--delay",
        type=number("milliseconds", MAX_MS),
        required=True,
        metavar="MS",
        help=f"extra round-trip milliseconds on every path through the site (0 to {MAX_MS:g})",
    )
    d.add_argument(
        "--loss",
        type=number("share", 1.0),
        default=0.0,
        metavar="P",
        help="share of the queries dropped on the way in (0 to 1)",
    )
    d.set_defaults(func=cmd_degrade)
    b = command(
        "bump-serial",
        "a new zone serial, at the named sites only",
        "Writes the zone with the next serial at the named servers and reloads their "
        "Knot; the others keep the old one, so their regions lag behind.",
    )
    b.add_argument(
        "--sites",
        nargs="+",
        choices=[*WORLD.site_names, WORLD.unicast.name],
        help="default: every site and the unicast server",
    )
    b.set_defaults(func=cmd_bump_serial)
    c = command(
        "cut",
        "cut a region (its probe) off the backbone",
        "The region's link to the backbone goes down: its probe reaches nothing, the "
        "collector included, and spools what it measures. restore mends it.",
    )
    c.add_argument("region", choices=WORLD.region_names)
    c.set_defaults(func=_simple("cut", "region"))
    sr = command(
        "steer",
        "send a region's anycast traffic to a site that is not its nearest",
        "As a routing policy would (a local preference, a peering): the backbone routes "
        "REGION's anycast packets to SITE at once, while SITE is announced (to the "
        "nearest announced site otherwise). The probes' site queries still reach every "
        "site at its own address, so the inflation figures show the difference. "
        "restore REGION lifts it.",
    )
    sr.add_argument("region", choices=WORLD.region_names)
    sr.add_argument("site", choices=WORLD.site_names)
    sr.set_defaults(func=cmd_steer)
    e = command(
        "exec",
        "run a command in a node's namespace (a region, say)",
        f"NODE is a region, a site, the unicast server, or core ({', '.join(WORLD.names)}).",
    )
    e.add_argument("node", metavar="NODE")
    e.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    e.set_defaults(func=cmd_exec)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        sys.exit(args.func(args))
    except LabError as exc:
        fail(str(exc))


if __name__ == "__main__":
    main()
