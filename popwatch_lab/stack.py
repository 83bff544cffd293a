"""The popwatch stack inside the lab, as configuration: what the collector, its alert
engine, Alertmanager and each region's probe are told. Pure text, no processes.

Timings are short on purpose: probes measure every second and the alert engine
evaluates every two, so a failover, an attack or a lagging zone shows within seconds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from popwatch_lab.wire import MAX_MS, figure
from popwatch_lab.world import ANYCAST_V4, CORE_ADDRESS, WORLD, ZONE, Node, World, path_rtt_ms
from probe.wire import NS

COLLECTOR_PORT: Final = 8080
ADMIN_PORT: Final = 8081
INFLUXDB_PORT: Final = 8086
ALERTMANAGER_PORT: Final = 9093
DATABASE: Final = "popwatch"
#: the longest convergence delay or interval ``up`` takes (s), and the shortest interval
MAX_S: Final = 3600.0
MIN_INTERVAL_S: Final = 0.1

COLLECTOR_URL: Final = f"http://{CORE_ADDRESS}:{COLLECTOR_PORT}"
ADMIN_URL: Final = f"http://{CORE_ADDRESS}:{ADMIN_PORT}"
INFLUXDB_URL: Final = f"http://{CORE_ADDRESS}:{INFLUXDB_PORT}"
ALERTMANAGER_URL: Final = f"http://{CORE_ADDRESS}:{ALERTMANAGER_PORT}"


def urls() -> dict[str, str]:
    """Where the lab's faces are, from the host."""
    return {
        "status_page": f"{ADMIN_URL}/",
        "collector": COLLECTOR_URL,
        "influxdb": INFLUXDB_URL,
        "alertmanager": ALERTMANAGER_URL,
    }


@dataclass(frozen=True)
class LabConfig:
    """What ``popwatch-lab up`` was asked for."""

    convergence_s: float = 5.0  # a withdrawn or restored site reaches the routes after this
    interval_s: float = 1.0  # every probe target's interval
    shaper: str = "auto"  # auto (netem where the kernel has it), netem, wire
    realtime: bool = True  # run the wire under SCHED_FIFO (where it may)
    jitter_ms: float = 0.05  # every path's jitter (standard deviation, one way) ...
    jitter_share: float = 0.01  # ... plus this share of its one-way delay
    evaluate_every_s: float = 2.0  # the alert engine's cycle
    for_s: float = 4.0  # seconds a condition holds before its alert fires (2 evaluations)
    keep_firing_for_s: float = 4.0  # seconds it is gone before the alert resolves
    heartbeat_s: float = 2.0  # the probes' heartbeat
    warm_baselines: bool = True  # give the alert engine an hour of baselines at the start

    def __post_init__(self) -> None:
        """Every figure finite and in range: a NaN convergence never comes due."""
        figure(self.convergence_s, "convergence_s", MAX_S)
        figure(self.interval_s, "interval_s", MAX_S)
        if self.interval_s < MIN_INTERVAL_S:
            raise ValueError(f"interval_s must be at least {MIN_INTERVAL_S:g}")
        figure(self.jitter_ms, "jitter_ms", MAX_MS)
        figure(self.jitter_share, "jitter_share", 1.0)
        figure(self.evaluate_every_s, "evaluate_every_s", MAX_S)
        figure(self.heartbeat_s, "heartbeat_s", MAX_S)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LabConfig:
        return cls(**json.loads(text))

    def jitter(self, rtt_ms: float) -> float:
        """The one-way jitter (ms, standard deviation) of a path of this round trip."""
        return round(self.jitter_ms + self.jitter_share * rtt_ms / 2, 3)


def probe_id(region: Node) -> str:
    return f"probe-{region.name}"


def targets(cfg: LabConfig, tls_ca: Path, world: World = WORLD) -> dict[str, Any]:
    """The targets the collector serves to every probe."""
    every = {"interval": cfg.interval_s, "timeout": round(cfg.interval_s * 0.9, 3)}
    soa = [{"qname": ZONE, "qtype": "SOA"}]
    # each path traced every 20 s: the baseline an alert's trace is compared with
    trace = {"method": "udp", "every": 20, "max_hops": 8, "queries_per_hop": 3,
             "hop_timeout_s": 0.3}  # fmt: skip
    return {
        "targets": [
            {
                "name": "anycast",
                "kind": "dns",
                "topology": "anycast",
                "provider": "lab-anycast",
                "server": f"anycast.{ZONE}",
                "families": [4, 6],
                "transports": ["udp", "tcp"],
                "identify": "nsid",
                "ping": "icmp",
                "trace": trace,
                "queries": soa,
                # each site also at its own address, every site_every (10) intervals
                "sites": [
                    {
                        "id": s.name,
                        "unicast": [s.v4, s.v6],
                        "lat": s.place.lat,
                        "lon": s.place.lon,
                    }
                    for s in world.sites
                ],
                **every,
            },
            {
                "name": "unicast",
                "kind": "dns",
                "topology": "unicast",
                "provider": "lab-unicast",
                "server": f"unicast.{ZONE}",
                "families": [4, 6],
                "transports": ["udp"],
                "identify": "nsid",
                "trace": trace,
                "queries": soa,
                **every,
            },
            {
                "name": "www",
                "kind": "http",
                "topology": "anycast",
                # the site's DNS is the anycast service (topology and provider name the
                # DNS behind a page): when that fails both targets do, and the probe is
                # not taken for sick
                "provider": "lab-anycast",
                "url": f"https://www.{ZONE.rstrip('.')}/",
                "resolver": ANYCAST_V4,
                "tls_ca": str(tls_ca),
                **every,
            },
        ]
    }


def probe_config(cfg: LabConfig, region: Node, token: str, data_dir: Path) -> dict[str, Any]:
    """One region's probe: it ships to the collector and pulls its targets from it."""
    return {
        "id": probe_id(region),
        "collector_url": COLLECTOR_URL,
        "token": token,
        "data_dir": str(data_dir),
        "batch_s": 0.5,
        "heartbeat_s": cfg.heartbeat_s,
        "config_s": 5,
        # server host names are looked up at the unicast server (never failed by the lab)
        "resolver": WORLD.unicast.v4,
        "resolve_interval_s": 30,
        "log_level": "warning",
        "insecure": True,  # plain http to the core: the lab's own network
    }


def alerts(cfg: LabConfig) -> dict[str, Any]:
    """The alert engine's section: the defaults, made fast enough to watch."""
    return {
        "enabled": True,
        "evaluate_every_s": cfg.evaluate_every_s,
        "alertmanager_url": ALERTMANAGER_URL,
        "resend_s": 10,
        "quorum": 2,  # or every probe of a region with fewer (one per region here)
        "for_s": cfg.for_s,
        "keep_firing_for_s": cfg.keep_firing_for_s,
        "rules": {
            "latency": {"window_s": 10, "min_delta_ms": 20},
            "errors": {"window_s": 10},
            "silence": {"heartbeat_s": cfg.heartbeat_s, "missed": 3},
            "propagation": {"max_serial_lag_s": 5},
            # four rounds of the sites' queries (every 10 s)
            "inflation": {"window_s": 40},
        },
    }


def collector_config(
    cfg: LabConfig, data_dir: Path, targets_file: Path, asn_file: Path | None = None
) -> dict[str, Any]:
    """``popwatch-collector run --config``: the collector, its admin listener (the status
    page) and its alert engine (with the lab's prefix -> ASN table, ``asn_file``)."""
    return {
        "listen": f"{CORE_ADDRESS}:{COLLECTOR_PORT}",
        "data_dir": str(data_dir),
        "targets": str(targets_file),
        "influxdb_url": INFLUXDB_URL,
        "influxdb_api": "v1",
        "influxdb_bucket": DATABASE,
        "log_level": "warning",
        "admin_listen": f"{CORE_ADDRESS}:{ADMIN_PORT}",
        "alerts": {**alerts(cfg), **({"asn_file": str(asn_file)} if asn_file else {})},
    }


def alertmanager_config() -> str:
    """Every alert to one receiver with no integration: the lab shows them on
    Alertmanager's own page and API (``/api/v2/alerts``)."""
    return """route:
  receiver: lab
  group_by: ['alertname', 'region', 'target']
  group_wait: 1s
  group_interval: 5s
  repeat_interval: 1h
receivers:
  - name: lab
"""


#: the alert engine's baseline store (collector/alerts/rollup.py): one row per series
#: and 5-minute bucket, and one ``kind=done`` marker per bucket
ROLLUP: Final = "rollup_5m"
ROLLUP_BUCKET_S: Final = 300
WARM_BUCKETS: Final = 12  # an hour: the engine wants 30 minutes before it has a baseline


def warm_baselines(cfg: LabConfig, now_s: float, world: World = WORLD) -> list[str]:
    """Line protocol for the hour before ``now_s`` in the alert engine's ``rollup_5m``:
    each probe's median per target and site at the round trip the map gives its path
    (dns ``rtt_ms``; http ``ttfb_ms``, one round trip to the origin after TLS, plus 1 ms).

    A fresh lab has no history, and the engine wants 30 minutes of it before it judges
    a latency or knows a probe's usual site: these rows are that history, as if the lab
    had run for an hour undisturbed. They are baselines only, never measurements.
    """
    catchment = world.catchment(set(world.site_names))
    rtt = world.rtt_matrix()
    uni = world.unicast.name
    answers = ROLLUP_BUCKET_S / cfg.interval_s  # per series and bucket
    lines = []
    for r in world.regions:
        site = catchment[r.name]
        assert site is not None
        # kind, target, site, topology, provider, median, answers in a bucket
        rows = [
            ("dns", "anycast", site, "anycast", "lab-anycast", rtt[site][r.name], 4 * answers),
            ("dns", "unicast", uni, "unicast", "lab-unicast", rtt[uni][r.name], 2 * answers),
            (
                "http",
                "www",
                "",
                "anycast",
                "lab-anycast",
                path_rtt_ms(r, world.unicast) + 1,
                answers,
            ),
        ]
        for kind, target, s, topology, provider, p50, n in rows:
            tags = {
                "kind": kind,
                "probe": probe_id(r),
                "provider": provider,
                "region": r.name,
                "site": s,
                "target": target,
                "topology": topology,
            }
            tagtext = ",".join(f"{k}={v}" for k, v in sorted(tags.items()) if v)
            for b in _warm_buckets(now_s):
                ts = b * ROLLUP_BUCKET_S * NS
                lines.append(f"{ROLLUP},{tagtext} p50={float(p50)},n={int(n)}i {ts}")
    for b in _warm_buckets(now_s):
        per_bucket = 3 * len(world.regions)
        ts = b * ROLLUP_BUCKET_S * NS
        lines.append(f"{ROLLUP},kind=done buckets={per_bucket}i {ts}")
    return lines


def _warm_buckets(now_s: float) -> range:
    """The bucket indexes of the hour before the bucket ``now_s`` is in."""
    current = int(now_s) // ROLLUP_BUCKET_S
    return range(current - WARM_BUCKETS, current)
