"""What the collector tells its operator: where the status page is, that it stops on
a signal, each alert state change in one line, and a probe pointed at the wrong port is
told which port is which."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.influx import InfluxDB
from test_alerts import PROBES, STEP_S, World, engine, slow
from test_hostile import Served, _db, register

PROBE = str(Path(sys.executable).parent / "popwatch-probe")


def test_the_start_names_the_status_page_and_a_signal_is_logged(
    influx: InfluxDB, tmp_path: Path
) -> None:
    """The start lines name the status page at / on the admin listener; SIGTERM logs
    that the collector stops (was: nothing)."""
    data = tmp_path / "c"
    register(data, {"p": "eu"})
    c = Served(influx, data, _db())
    c.start()
    assert c.proc is not None
    c.proc.send_signal(signal.SIGTERM)
    c.proc.wait(15)
    log = c.stderr()
    assert f"admin listener on http://127.0.0.1:{c.admin_port}: the status page at /" in log
    assert "collector stopping (a signal)" in log


def test_a_probe_pointed_at_the_admin_port_is_told_so(influx: InfluxDB, tmp_path: Path) -> None:
    """collector_url with the admin listener's port: the probe logs that it is the
    admin listener and which port probes use (was: "this collector serves no targets",
    then 404 ten times)."""
    data = tmp_path / "c"
    tokens = register(data, {"p": "eu"})
    with Served(influx, data, _db()) as c:
        env = {
            **os.environ,
            "POPWATCH_COLLECTOR_URL": c.admin_url,
            "POPWATCH_TOKEN": tokens["p"],
            "POPWATCH_DATA_DIR": str(tmp_path / "p"),
        }
        proc = subprocess.Popen([PROBE, "run"], env=env, stderr=subprocess.PIPE, text=True)
        time.sleep(4)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert "admin listener" in err and "public API (listen, port 8080" in err, err
    assert "serves no targets" not in err


async def test_each_state_change_is_one_info_line(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A region degrading: the engine logs the firing alert in one INFO line with the
    rule, where, the value and the line it is judged against (was: nothing)."""
    await world.seed()
    world.overrides.append(
        slow(5, {p for p, r in PROBES.items() if r == "eu"}, {"ns-uni"}, world.t0)
    )
    caplog.set_level(logging.INFO, logger="popwatch.collector.alerts")
    async with engine(world) as e:
        for k in range(1, 6):
            at = world.t0 + k * STEP_S
            await world.tick(at)
            await e.step(at * 1_000_000_000)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("alert ")]
    assert any(
        line.startswith("alert latency firing: region=eu target=ns-uni, value ")
        and "against baseline" in line
        for line in lines
    ), lines


@pytest.fixture
async def world(influx: InfluxDB, tmp_path: Path):  # type: ignore[no-untyped-def]
    async with World(influx, tmp_path) as w:
        yield w


def test_a_threshold_is_called_a_threshold() -> None:
    """An errors alert's line is the configured max_error_ratio: its annotation (and the
    alert measurement's field) is `threshold`, not `baseline` (was: "baseline=5.0% (the
    most failures allowed)"); latency keeps `baseline`, the series' own."""
    from collector.alerts.rules import Condition, annotate, labels, line_of

    c = Condition(
        labels=labels(alertname="errors", severity="critical", region="eu", target="t"),
        value=0.2,
        unit="ratio",
        baseline=0.05,
        probes=("a", "b"),
        of=3,
        summary="eu: t failing",
        for_s=30,
        keep_firing_for_s=60,
    )
    text = annotate(c)
    assert text["threshold"] == "5.0% (the most failures allowed)" and "baseline" not in text
    assert (line_of("errors"), line_of("latency")) == ("threshold", "baseline")
