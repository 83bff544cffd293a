"""``popwatch-collector alerts check``: one evaluation, printed, nothing written or sent.

Each line is an alert whose condition holds at the evaluation time (``fires``: already
firing by the ``alert`` measurement; ``would fire``: not yet), or one firing now whose
condition no longer holds (``would resolve``), with its value, baseline and probes.
``for_s`` and ``keep_firing_for_s`` are not applied: this shows what the rules see at that
time. The exit status is 1 when anything fires or would fire.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TextIO

from collector.alerts.config import AlertsConfig
from collector.alerts.engine import Engine
from collector.alerts.inflation import Sites
from collector.alerts.rules import annotate
from collector.store.influxql import InfluxQL
from probe.configfile import ConfigError
from probe.wire import NS


def parse_time(text: str) -> float:
    """Epoch seconds from ``now``, ``-15m`` (``s``/``m``/``h``/``d`` ago), epoch seconds, or
    an ISO 8601 time (UTC unless it says otherwise)."""
    text = text.strip()
    if text == "now":
        return time.time()
    if m := re.fullmatch(r"-(\d+(?:\.\d+)?)([smhd])", text):
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return time.time() - float(m.group(1)) * unit
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"--at: {text!r} is not a time (now, -15m, epoch seconds or ISO 8601)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _when(ns: int) -> str:
    return datetime.fromtimestamp(ns / NS, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def check(
    influx: InfluxQL,
    cfg: AlertsConfig,
    at: float,
    out: TextIO = sys.stdout,
    sites: Mapping[str, Sites] | None = None,
) -> int:
    """Evaluate once at ``at`` (epoch s) and print; 1 when something fires. ``sites``:
    the anycast targets' sites (from the collector's targets file), for ``inflation``."""
    at_ns = int(at * NS)
    engine = Engine(cfg, influx, dry=True, sites=(lambda: sites) if sites else None)
    await engine.start(at_ns)
    firing = {a.labels: a for a in engine.states.firing()}
    result = await engine.step(at_ns)
    holding = {c.labels for c in result.conditions}
    for c in result.conditions:
        text = annotate(c)
        since = firing.get(c.labels)
        verb = f"fires (since {_when(since.since)})" if since else "would fire"
        where = " ".join(f"{k}={v}" for k, v in c.labels if k not in ("alertname", "severity"))
        base = "".join(f" {k}={text[k]}" for k in ("baseline", "threshold") if k in text)
        print(
            f"{verb}: {c.rule} ({c.label('severity')}) {where} value={text['value']}{base} "
            f"probes={text['probes']}: {c.summary}",
            file=out,
        )
    for key, alert in sorted(firing.items()):
        if key not in holding:
            d = dict(key)
            where = " ".join(f"{k}={v}" for k, v in key if k not in ("alertname", "severity"))
            print(
                f"would resolve: {d['alertname']} ({d.get('severity', '')}) {where} "
                f"(firing since {_when(alert.since)}; its condition no longer holds)",
                file=out,
            )
    print(
        f"{_when(at_ns)}: {len(result.conditions)} firing or would fire, "
        f"{len(set(firing) - holding)} would resolve "
        f"({len(engine.rollups.rings)} series with a baseline; InfluxDB "
        f"{result.influx_seconds:.2f} s)",
        file=sys.stderr,
    )
    return 1 if result.conditions else 0


__all__ = ["check", "parse_time"]
