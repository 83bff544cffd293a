"""Check the claims: each thing anycast is said to do, measured in the lab, with its figure.

It brings the lab up (``popwatch-lab up``), lets the probes measure for a minute, and
then, one claim at a time, does what the claim is about and reads back what popwatch
measured, from InfluxDB and Alertmanager, against what the lab's map says:

1. **The nearest site answers**: per region, the site that answered, the map's nearest,
   the measured anycast median against the map's round trip, and the inflation figure
   (anycast against the best site's own unicast answers).
2. **A failed site moves its region to the next one, with an outage equal to the
   convergence delay**: ``fail sin``; ap-south's catchment event (from, to, outage, queries
   lost) against the convergence delay.
3. **An attack at one site leaves the other regions alone**: ``degrade iad --delay 150
   --loss 0.05`` for 30 s; each region's anycast median before and during, and the
   latency alerts (only iad's regions).
4. **Zone updates reach every site**: ``bump-serial``; per site, the seconds until its
   answers (anycast, and its own unicast address) carry the new serial.
5. **Routing serves each region from its best site; when it does not, popwatch says by
   how much**: ``steer ap-south iad``; the inflation alert's sites and figure against the
   map's difference.

With ``--quiet-minutes M`` it first leaves the lab alone for M minutes and counts the
inflation alerts that fired (none should: every region is served from its best site)
and each region's largest inflation figure over that time, against the wire's error.

Needs root, and no lab up already. ``python bench/claims.py [--json] [--quiet-minutes
10]``: about 5 minutes, plus the quiet ones.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from popwatch_lab import influx
from popwatch_lab.stack import ALERTMANAGER_URL, DATABASE, INFLUXDB_URL, LabConfig
from popwatch_lab.world import WORLD

NS = 1_000_000_000
LAB = str(Path(sys.executable).parent / "popwatch-lab")
T = TypeVar("T")


def lab(*args: str) -> str:
    proc = subprocess.run([LAB, *args], capture_output=True, text=True, timeout=180)
    if proc.returncode:
        raise SystemExit(f"popwatch-lab {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def query(q: str) -> list[dict[str, Any]]:
    return influx.query(INFLUXDB_URL, q, DATABASE)


def alerts() -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{ALERTMANAGER_URL}/api/v2/alerts?active=true", timeout=5) as r:  # noqa: S310
        return [a for a in json.load(r) if a["status"]["state"] == "active"]


def wait(what: str, get: Callable[[], T | None], timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = get()
        if got:
            return got
        if time.monotonic() > deadline:
            raise SystemExit(f"after {timeout:g} s still waiting for {what}")
        time.sleep(0.5)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def anycast_medians(since: float, until: float) -> dict[str, float]:
    rows = query(
        "SELECT median(rtt_ms) AS m FROM dns WHERE target = 'anycast' AND topology = 'anycast' "  # noqa: S608
        f"AND transport = 'udp' AND time > {int(since * NS)} AND time <= {int(until * NS)} "
        "GROUP BY region"
    )
    return {r["region"]: r["m"] for r in rows}


def latest_inflation(since: float) -> dict[str, list[dict[str, Any]]]:
    rows = query(f"SELECT * FROM inflation WHERE time > {int(since * NS)}")  # noqa: S608
    last = max((r["time"] for r in rows), default=0)
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["time"] == last:
            out.setdefault(r["region"], []).append(r)
    return out


def nearest(t0: float) -> list[dict[str, Any]]:
    log("1. the nearest site answers")
    rtt = WORLD.rtt_matrix()
    catchment = WORLD.catchment(set(WORLD.site_names))
    medians = anycast_medians(t0, time.time())
    figures = wait(
        "inflation figures",
        lambda: f if len(f := latest_inflation(time.time() - 5)) == len(WORLD.regions) else None,
        60,
    )
    rows = []
    for region in WORLD.region_names:
        site = catchment[region]
        assert site is not None
        answered = sorted({r["site"] for r in figures[region]})
        rows.append(
            {
                "region": region,
                "nearest": site,
                "answered": ", ".join(answered),
                "map_ms": rtt[site][region],
                "measured_ms": round(medians[region], 2),
                "inflation_ms": round(
                    statistics.median(r["inflation_ms"] for r in figures[region]), 2
                ),
                "at_best": f"{sum(r['at_best'] for r in figures[region])} of {len(figures[region])}",
            }
        )
    return rows


def quiet(minutes: float) -> list[dict[str, Any]]:
    """No steer, no failure, for ``minutes``: the inflation alerts that fired, and each
    region's inflation figures over the time (median of its lanes per evaluation)."""
    log(f"0. {minutes:g} minutes with every region at its nearest site")
    t = time.time()
    time.sleep(minutes * 60)
    fired = query(f"SELECT * FROM alert WHERE rule = 'inflation' AND time > {int(t * NS)}")  # noqa: S608
    rows = query(f"SELECT * FROM inflation WHERE time > {int(t * NS)}")  # noqa: S608
    out = []
    for region in WORLD.region_names:
        mine = [r for r in rows if r["region"] == region and r.get("inflation_ms") is not None]
        per_eval: dict[int, list[float]] = {}
        for r in mine:
            per_eval.setdefault(r["time"], []).append(r["inflation_ms"])
        medians = [statistics.median(v) for v in per_eval.values()]
        out.append(
            {
                "region": region,
                "evaluations": len(medians),
                "inflation_p50_ms": round(statistics.median(medians), 2) if medians else None,
                "inflation_max_abs_ms": round(max(map(abs, medians)), 2) if medians else None,
                "not_at_best": sum(1 for r in mine if r.get("at_best") == 0),
                "inflation_alerts": sum(1 for a in fired if a.get("region") == region),
            }
        )
    return out


def failover(convergence_s: float) -> dict[str, Any]:
    log("2. a failed site moves its region to the next one")
    t = time.time()
    lab("fail", "sin")
    event = wait(
        "ap-south's catchment event",
        lambda: query(
            "SELECT * FROM event WHERE kind = 'catchment' AND region = 'ap-south' "  # noqa: S608
            f"AND time > {int(t * NS)}"
        ),
        60,
    )[-1]
    lab("restore", "sin")
    wait("ap-south back at sin", lambda: not alerts(), 120)
    return {
        "region": "ap-south",
        "from": event["from_site"],
        "to": event["to_site"],
        "outage_ms": event["outage_ms"],
        "convergence_ms": convergence_s * 1000,
        "lost": event["lost"],
    }


def attack() -> list[dict[str, Any]]:
    log("3. an attack at one site leaves the other regions alone")
    before_t = time.time()
    time.sleep(20)
    before = anycast_medians(before_t, time.time())
    lab("degrade", "iad", "--delay", "150", "--loss", "0.05")
    t = time.time()
    time.sleep(30)
    during = anycast_medians(t + 2, time.time())
    fired = {(a["labels"]["alertname"], a["labels"].get("region", "")) for a in alerts()}
    lab("restore", "iad")
    rows = [
        {
            "region": r,
            "site": WORLD.catchment(set(WORLD.site_names))[r],
            "before_ms": round(before[r], 2),
            "during_ms": round(during[r], 2),
            "alerts": ", ".join(sorted(n for n, reg in fired if reg == r)) or "none",
        }
        for r in WORLD.region_names
    ]
    wait("the alerts to resolve", lambda: not alerts(), 150)
    return rows


def propagation() -> list[dict[str, Any]]:
    log("4. zone updates reach every site")
    out = lab("bump-serial")
    serial = int(out.split()[1])
    t = time.time()
    time.sleep(15)
    rows = []
    for topology, what in (("anycast", "anycast answers"), ("site", "its own address")):
        got = query(
            f"SELECT first(serial) FROM dns WHERE serial = {serial} AND topology = '{topology}' "  # noqa: S608
            f"AND time > {int((t - 5) * NS)} GROUP BY site"
        )
        for r in got:
            rows.append({"site": r["site"], "via": what, "lag_s": round(r["time"] / NS - t, 2)})
    return sorted(rows, key=lambda r: (r["via"], r["site"]))


def steer() -> dict[str, Any]:
    log("5. a region not served from its best site: steer ap-south iad")
    rtt = WORLD.rtt_matrix()
    t = time.time()
    lab("steer", "ap-south", "iad")
    fired = wait(
        "the inflation alert",
        lambda: [a for a in alerts() if a["labels"]["alertname"] == "inflation"],
        120,
    )
    took = time.time() - t
    notes = fired[0]["annotations"]
    lab("restore", "ap-south")
    wait("the alerts to resolve", lambda: not alerts(), 150)
    return {
        "region": fired[0]["labels"]["region"],
        "serving": notes["serving_site"],
        "best": notes["best_site"],
        "inflation_ms": float(notes["inflation_ms"]),
        "map_ms": round(rtt["iad"]["ap-south"] - rtt["sin"]["ap-south"], 2),
        "geo_inflation_ms": float(notes.get("geo_inflation_ms", "nan")),
        "alert_after_s": round(took, 1),
        "others": sorted({a["labels"].get("region", "") for a in fired} - {"ap-south"}),
    }


def table(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="the figures as one JSON object")
    ap.add_argument(
        "--quiet-minutes",
        type=float,
        default=0.0,
        metavar="M",
        help="first leave the lab alone this long and count the inflation alerts (0: skip)",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the lab needs root (network namespaces)")
    log("popwatch-lab up")
    lab("up", "--quiet")
    try:
        t0 = time.time()
        time.sleep(60)  # a minute of measurements, four rounds of site queries
        result: dict[str, Any] = {}
        if args.quiet_minutes:
            result["quiet"] = quiet(args.quiet_minutes)
        result |= {
            "nearest": nearest(t0),
            "failover": failover(LabConfig().convergence_s),
            "attack": attack(),
            "propagation": propagation(),
            "steer": steer(),
        }
    finally:
        lab("down")
    if args.json:
        print(json.dumps(result, indent=1))
        return
    if "quiet" in result:
        print(f"0. {args.quiet_minutes:g} minutes, no steer\n" + table(result["quiet"]) + "\n")
    print("1. the nearest site answers\n" + table(result["nearest"]))
    print("\n2. a failed site moves its region to the next one\n" + table([result["failover"]]))
    print("\n3. an attack at one site leaves the other regions alone\n" + table(result["attack"]))
    print("\n4. zone updates reach every site\n" + table(result["propagation"]))
    print("\n5. steer ap-south iad\n" + table([result["steer"]]))


if __name__ == "__main__":
    main()
