"""First run as a new user meets it: no traceback, no silent misconfiguration, no stuck probe.

Real processes throughout: `popwatch-probe run` and `popwatch-collector run` against
Debian's InfluxDB 1.6.7 and Knot. Where a case is about a non-root user, the command runs
as ``nobody`` (``setpriv``), with only the capability to read and search directories so
that it can reach the test environment's Python under ``/root``: it still cannot create
anything where ``nobody`` may not write.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from support import servers
from support.influx import InfluxDB
from support.procs import AS_NOBODY, PROBE, Collector, probe_env, register, stored


def _probe(*args: str, env: dict[str, str] | None = None, as_nobody: bool = False) -> str:
    """Run ``popwatch-probe ARGS`` to its end: it must exit 2 with exactly one line."""
    cmd = [*AS_NOBODY, PROBE, *args] if as_nobody else [PROBE, *args]
    out = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=30, cwd="/", check=False
    )
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr  # one line, no traceback
    return lines[0]


def _targets(path: Path, port: int = 53, interval: float = 60) -> Path:
    path.write_text(
        "targets:\n  - {name: t, topology: unicast, server: 127.0.0.1, "
        f"port: {port}, interval: {interval}, queries: [{{qname: example.test}}]}}\n"
    )
    path.chmod(0o644)
    return path


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to nobody needs root")
def test_shipping_probe_as_non_root_with_the_default_data_dir(tmp_path: Path) -> None:
    """`run` as a non-root user with the default data dir says which path it cannot use
    and how to choose another, in one line, exit 2 (was: a PermissionError traceback)."""
    env = {**os.environ, "POPWATCH_COLLECTOR_URL": "http://127.0.0.1:9", "POPWATCH_TOKEN": "x"}
    env.pop("POPWATCH_DATA_DIR", None)
    line = _probe("run", env=env, as_nobody=True)
    assert line == (
        "popwatch-probe: data_dir: cannot use /var/lib/popwatch/spool for the spool: "
        "Permission denied; set POPWATCH_DATA_DIR to a writable directory"
    )


def test_output_to_an_unwritable_path(tmp_path: Path) -> None:
    """`run --output` to a path that cannot be opened names the path (one line, exit 2)."""
    targets = _targets(tmp_path / "t.yaml")
    bad = tmp_path / "no-such-dir" / "out.jsonl"
    line = _probe("run", "--targets", str(targets), "--output", str(bad))
    assert line == f"popwatch-probe: output: cannot write {bad}: No such file or directory"


def test_metrics_listen_on_a_port_in_use(tmp_path: Path) -> None:
    """`metrics_listen` on a port another socket holds names the port (one line, exit 2)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        conf = tmp_path / "probe.yaml"
        conf.write_text(f"metrics_listen: 127.0.0.1:{port}\n")
        targets = _targets(tmp_path / "t.yaml")
        line = _probe("run", "--config", str(conf), "--targets", str(targets))
    assert line == (
        f"popwatch-probe: metrics_listen: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "http://127.0.0.1:8080/api/v1/measurements",
            "has a path; give the collector's base URL (http://127.0.0.1:8080): the probe "
            "adds /api/v1/measurements and /api/v1/config itself",
        ),
        ("127.0.0.1:8080", "is not an http(s) URL with a host"),
    ],
)
def test_collector_url_is_checked_at_start(url: str, expected: str) -> None:
    """A collector URL with an API path, or without a scheme, is refused at start with a
    hint (was: a bare 404 on every batch, and "no targets" from the config pull)."""
    env = {**os.environ, "POPWATCH_COLLECTOR_URL": url, "POPWATCH_TOKEN": "x"}
    line = _probe("run", env=env)
    assert line == f"popwatch-probe: POPWATCH_COLLECTOR_URL: {url!r} {expected}" or (
        f"POPWATCH_COLLECTOR_URL: {url!r} {expected}" in line
    )


def test_a_probe_started_before_its_collector_measures_within_seconds(
    influx: InfluxDB, tmp_path: Path
) -> None:
    """With no local targets and the collector down, the probe asks again with a backoff
    capped near 30 s, not after config_s (300 s): once the collector is up, the served
    targets are measured and stored within seconds."""
    data = tmp_path / "collector"
    (token,) = register(data, {"probe-early": "eu-central"}).values()
    with servers.Knot("knot-early", "id-early") as knot:
        knot.start()
        served = _targets(tmp_path / "served.yaml", knot.port, interval=5)
        collector = Collector(influx, data, "early")
        collector.env["POPWATCH_TARGETS"] = str(served)
        conf = tmp_path / "probe.yaml"
        conf.write_text("id: probe-early\nbatch_s: 0.3\n")
        probe = subprocess.Popen(
            [PROBE, "run", "--config", str(conf)],
            env=probe_env(collector, token, tmp_path / "probe"),
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(4)  # the collector is down: the probe retries (1 s, 2 s, ...)
            collector.start()
            up = time.monotonic()
            rows: list[dict[str, object]] = []
            while not rows and time.monotonic() - up < 40:
                time.sleep(0.5)
                rows = stored(influx, "early")
            took = time.monotonic() - up
        finally:
            probe.send_signal(signal.SIGTERM)
            _, err = probe.communicate(timeout=30)
    assert rows, err
    assert {r["target"] for r in rows} == {"t"}
    # the first pull after the collector came up is at most one backoff away (8 s by
    # then; 30 s at most), plus the first slot of a 5 s series: measured, batched, stored
    assert took < 25, took
    assert "next try in" in err  # the retries said what they were doing


def test_local_targets_are_kept_and_served_ones_added(influx: InfluxDB, tmp_path: Path) -> None:
    """A probe with its own targets that also takes the collector's measures both: local
    first, then served; a served target with a local target's name is left out, with a
    warning (was: the served list silently replaced the probe's own)."""
    data = tmp_path / "collector"
    (token,) = register(data, {"probe-both": "us-east"}).values()
    with servers.Knot("knot-both", "id-both") as knot:
        knot.start()

        def target(name: str, qname: str) -> str:
            return (
                f"  - {{name: {name}, topology: unicast, server: 127.0.0.1, port: {knot.port}, "
                f"interval: 1, timeout: 0.5, queries: [{{qname: {qname}}}]}}\n"
            )

        served = tmp_path / "served.yaml"
        served.write_text("targets:\n" + target("served", "example.test") + target("mine", "x."))
        local = tmp_path / "local.yaml"
        local.write_text("targets:\n" + target("mine", "example.test"))
        collector = Collector(influx, data, "both")
        collector.env["POPWATCH_TARGETS"] = str(served)
        collector.start()
        conf = tmp_path / "probe.yaml"
        conf.write_text("id: probe-both\nbatch_s: 0.3\n")
        probe = subprocess.Popen(
            [PROBE, "run", "--config", str(conf), "--targets", str(local)],
            env=probe_env(collector, token, tmp_path / "probe"),
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60  # both measured and stored (~4 s; not a sleep)
            while time.monotonic() < deadline:
                if {r["target"] for r in stored(influx, "both")} == {"mine", "served"}:
                    break
                time.sleep(0.5)
        finally:
            probe.send_signal(signal.SIGTERM)
            _, err = probe.communicate(timeout=30)
        time.sleep(1)
    rows = influx.query("SELECT rtt_ms, target, qname FROM dns", db="both")
    assert {r["target"] for r in rows} == {"mine", "served"}, err
    # "mine" is the local one: it asks example.test., not the served x.
    assert {r["qname"] for r in rows if r["target"] == "mine"} == {"example.test."}
    assert "served targets mine have the names of local targets" in err
